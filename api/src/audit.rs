//! `strata audit …`: what auditors run against the log.
//!
//! - `audit stream ID [--at-version N | --as-of TIME] [--as-stored] [--json]`
//!   prints a stream's events with every piece of metadata;
//! - `audit verify [--stream ID | --anchor FILE] [--json]` walks the hash
//!   chain, the positions and the stream heads (and checks the anchored
//!   prefix) and exits non-zero on any problem;
//! - `audit anchor [--out FILE]` verifies the log and writes its anchor;
//! - `audit invariants [--json]` checks the order-fulfilment invariants over
//!   the whole log (`strata_sagas::fulfilment::audit`) and exits non-zero on
//!   any violation.

use std::io::Write;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use strata_store::verify::{verify_log, verify_stream, Anchor, LogProblem, VerifyReport};
use strata_store::{EventReader, Form, ReadStream, RecordedEvent, StreamId};

use crate::progress::Progress;

/// Which events of a stream to print.
#[derive(Debug, Clone, Default)]
pub struct StreamQuery {
    /// Stop at this version.
    pub at_version: Option<u64>,
    /// Only events recorded at or before this time.
    pub as_of: Option<DateTime<Utc>>,
    /// Payloads as written instead of upcast.
    pub as_stored: bool,
}

/// An event as `audit stream --json` prints it.
pub fn event_json(event: &RecordedEvent) -> Value {
    json!({
        "eventId": event.event_id,
        "eventType": event.event_type,
        "schemaVersion": event.schema_version,
        "streamId": event.stream_id,
        "streamVersion": event.stream_version,
        "position": event.position,
        "recordedAt": event.recorded_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "metadata": event.metadata,
        "hash": event.hash.to_string(),
        "payload": event.payload,
    })
}

/// Reads the events of `stream_id` that the query selects.
pub async fn stream_events(reader: &dyn EventReader, stream_id: &StreamId, query: &StreamQuery) -> anyhow::Result<Vec<RecordedEvent>> {
    let form = if query.as_stored { Form::AsStored } else { Form::Latest };
    let mut events = Vec::new();
    let mut from_version = 1;
    loop {
        let page = reader
            .read_stream(stream_id, ReadStream { from_version, form, ..ReadStream::forward(1_000) })
            .await
            .with_context(|| format!("reading stream {stream_id}"))?;
        let Some(last) = page.last() else { break };
        from_version = last.stream_version + 1;
        let before = events.len();
        events.extend(page.into_iter().filter(|event| {
            query.at_version.is_none_or(|version| event.stream_version <= version)
                && query.as_of.is_none_or(|as_of| event.recorded_at <= as_of)
        }));
        if events.len() == before && query.at_version.is_some_and(|version| from_version > version) {
            break;
        }
    }
    Ok(events)
}

/// `audit stream`: prints the events, as JSON or one line each.
pub async fn print_stream(reader: &dyn EventReader, stream_id: &StreamId, query: &StreamQuery, as_json: bool) -> anyhow::Result<()> {
    let events = stream_events(reader, stream_id, query).await?;
    let mut out = std::io::stdout().lock();
    if as_json {
        let events: Vec<Value> = events.iter().map(event_json).collect();
        serde_json::to_writer_pretty(&mut out, &json!({ "streamId": stream_id, "events": events }))?;
        writeln!(out)?;
        return Ok(());
    }
    if events.is_empty() {
        writeln!(out, "stream {stream_id}: no events")?;
        return Ok(());
    }
    for event in &events {
        writeln!(
            out,
            "v{:<4} #{:<8} {}  {} v{}  actor={} command={} correlation={}  {}",
            event.stream_version,
            event.position,
            event.recorded_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            event.event_type,
            event.schema_version,
            event.metadata.actor.as_deref().unwrap_or("-"),
            event.metadata.command_id.map_or("-".into(), |id| id.to_string()),
            event.metadata.correlation_id.map_or("-".into(), |id| id.to_string()),
            serde_json::to_string(&event.payload)?,
        )?;
    }
    Ok(())
}

/// Reads an anchor file written by `audit anchor`.
pub fn read_anchor(path: &std::path::Path) -> anyhow::Result<Anchor> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the anchor {}", path.display()))?;
    let value: Value = serde_json::from_str(&text).with_context(|| format!("the anchor {} is not JSON", path.display()))?;
    Anchor::from_json(&value).map_err(|reason| anyhow::anyhow!("the anchor {}: {reason}", path.display()))
}

async fn verify_whole_log(reader: &dyn EventReader, anchor: Option<&Anchor>) -> anyhow::Result<VerifyReport> {
    let mut progress = Progress::new("verifying", "events", 0);
    let report = verify_log(reader, 5_000, anchor, &mut |done, total| progress.set(done.0, total.0)).await?;
    progress.finish();
    Ok(report)
}

/// `audit verify`: walks the chain with progress, prints the report, and
/// returns whether the log is intact (and holds the anchored prefix).
pub async fn verify(
    reader: &dyn EventReader,
    stream_id: Option<&StreamId>,
    anchor: Option<&Anchor>,
    as_json: bool,
) -> anyhow::Result<bool> {
    let report: VerifyReport = match stream_id {
        Some(stream_id) => verify_stream(reader, stream_id, 1_000).await?,
        None => verify_whole_log(reader, anchor).await?,
    };
    let mut out = std::io::stdout().lock();
    if as_json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
        return Ok(report.is_intact());
    }
    for link in &report.broken {
        writeln!(
            out,
            "BROKEN {} v{}{}: {}",
            link.stream_id,
            link.stream_version,
            link.position.map_or(String::new(), |p| format!(" (position {p})")),
            serde_json::to_string(&link.problem)?
        )?;
    }
    for problem in &report.log {
        let line = match problem {
            LogProblem::Truncated { log_head, last_position } => {
                format!("TRUNCATED the log head is {log_head} but the last event is at {last_position}")
            }
            LogProblem::ShorterThanAnchor { anchored, last_position } => {
                format!("TRUNCATED the anchor covers positions 1..={anchored} but the log ends at {last_position}")
            }
            LogProblem::AnchorMismatch { anchored, expected, found } => {
                format!("ANCHOR positions 1..={anchored} changed since anchored: digest {found}, anchored {expected}")
            }
        };
        writeln!(out, "{line}")?;
    }
    let problems = report.broken.len() + report.log.len();
    let anchored = match report.anchor_checked {
        Some(position) if report.log.is_empty() => format!(", anchored prefix 1..={position} unchanged"),
        _ => String::new(),
    };
    writeln!(
        out,
        "{} events in {} streams checked: {}{anchored}",
        report.events_checked,
        report.streams_checked,
        if problems == 0 { "chain intact".to_owned() } else { format!("{problems} problems") }
    )?;
    Ok(report.is_intact())
}

/// `audit anchor`: verifies the whole log and, when intact, writes its
/// anchor as JSON to `out` (or stdout). Returns whether it was written.
pub async fn anchor(reader: &dyn EventReader, out: Option<&std::path::Path>) -> anyhow::Result<bool> {
    let report = verify_whole_log(reader, None).await?;
    if !report.is_intact() {
        eprintln!(
            "the log is not intact ({} broken links, {} log problems): not anchoring; run `strata audit verify`",
            report.broken.len(),
            report.log.len()
        );
        return Ok(false);
    }
    let text = serde_json::to_string_pretty(&report.anchor().to_json(Utc::now()))? + "\n";
    match out {
        Some(path) => {
            std::fs::write(path, &text).with_context(|| format!("writing the anchor {}", path.display()))?;
            eprintln!("anchored positions 1..={} in {}", report.last_position, path.display());
        }
        None => std::io::stdout().lock().write_all(text.as_bytes())?,
    }
    Ok(true)
}

/// `audit invariants`: checks the fulfilment invariants over the whole log,
/// prints the report, and returns whether every invariant holds.
pub async fn invariants(reader: std::sync::Arc<dyn EventReader>, saga: strata_sagas::SagaConfig, as_json: bool) -> anyhow::Result<bool> {
    let config = strata_sagas::fulfilment::AuditConfig { saga, ..Default::default() };
    let report = strata_sagas::fulfilment::audit(reader, &config).await.context("reading the log")?;
    let mut out = std::io::stdout().lock();
    if as_json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
        return Ok(report.violations.is_empty());
    }
    let counts = |map: &std::collections::BTreeMap<String, u64>| map.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ");
    writeln!(out, "orders: {}", if report.orders.is_empty() { "none".into() } else { counts(&report.orders) })?;
    writeln!(out, "sagas: {}", if report.sagas.is_empty() { "none".into() } else { counts(&report.sagas) })?;
    for (sku, stock) in &report.stock {
        writeln!(
            out,
            "stock {sku}: restocked {} = available {} + reserved {} + shipped {}",
            stock.restocked, stock.available, stock.reserved, stock.shipped
        )?;
    }
    for violation in &report.violations {
        writeln!(out, "VIOLATION {} {}: {}", violation.rule, violation.subject, violation.detail)?;
    }
    writeln!(
        out,
        "{} events checked: {}",
        report.events,
        if report.violations.is_empty() { "every invariant holds".to_owned() } else { format!("{} violations", report.violations.len()) }
    )?;
    Ok(report.violations.is_empty())
}
