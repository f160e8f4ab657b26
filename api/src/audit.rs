//! `strata audit …`: what auditors run against the log.
//!
//! - `audit stream ID [--at-version N | --as-of TIME] [--as-stored] [--json]`
//!   prints a stream's events with every piece of metadata;
//! - `audit verify [--stream ID | --anchor FILE [--verify-key FILE]] [--json]`
//!   walks the hash chain (keyed under `STRATA_CHAIN_KEY`), the positions
//!   and the stream heads (and checks the anchored prefix, and the anchor's
//!   signature) and exits non-zero on any problem;
//! - `audit anchor [--out FILE] [--sign-key FILE] [--previous FILE]`
//!   verifies the log (extending the previous anchor) and writes its anchor
//!   (`crate::anchor`);
//! - `audit keygen --sign-key FILE --verify-key FILE` makes the auditor's
//!   Ed25519 key pair;
//! - `audit invariants [--json]` checks the order-fulfilment invariants over
//!   the whole log (`strata_sagas::fulfilment::audit`) and exits non-zero on
//!   any violation.

use std::io::Write;

use anyhow::Context;
use chrono::{DateTime, Utc};
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde_json::{json, Value};
use strata_store::verify::{verify_log, verify_stream, Anchor, LinkProblem, LogProblem, VerifyReport};
use strata_store::{ChainKeyring, EventReader, Form, ReadStream, RecordedEvent, StreamId};

use crate::anchor::AnchorFile;
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

async fn verify_whole_log(reader: &dyn EventReader, anchor: Option<&Anchor>, keys: &ChainKeyring) -> anyhow::Result<VerifyReport> {
    let mut progress = Progress::new("verifying", "events", 0);
    let report = verify_log(reader, 5_000, anchor, keys, &mut |done, total| progress.set(done.0, total.0)).await?;
    progress.finish();
    Ok(report)
}

/// The anchor an auditor gave, and the key its signature must hold under.
#[derive(Clone, Copy)]
pub struct GivenAnchor<'a> {
    /// The anchor file.
    pub file: &'a AnchorFile,
    /// `--verify-key`: the anchor must be signed by it.
    pub verify_key: Option<&'a VerifyingKey>,
}

impl GivenAnchor<'_> {
    /// The anchor, once its signature holds (when a key was given).
    fn checked(&self, name: &str) -> anyhow::Result<Anchor> {
        match self.verify_key {
            Some(key) => self.file.check_signature(key).with_context(|| format!("the {name} anchor cannot be trusted"))?,
            None if self.file.is_signed() => {
                eprintln!("note: the {name} anchor is signed but its signature was not checked (give --verify-key)")
            }
            None => {}
        }
        self.file.anchor()
    }
}

/// `audit verify`: walks the chain with progress (accepting keyed hashes
/// under `keys`), prints the report, and returns whether the log is intact
/// (and holds the anchored prefix, whose signature is checked first).
pub async fn verify(
    reader: &dyn EventReader,
    stream_id: Option<&StreamId>,
    anchor: Option<GivenAnchor<'_>>,
    keys: &ChainKeyring,
    as_json: bool,
) -> anyhow::Result<bool> {
    let anchor = anchor.map(|anchor| anchor.checked("given")).transpose()?;
    let report: VerifyReport = match stream_id {
        Some(stream_id) => verify_stream(reader, stream_id, 1_000, keys).await?,
        None => verify_whole_log(reader, anchor.as_ref(), keys).await?,
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
        writeln!(out, "{}", describe(problem))?;
    }
    let problems = report.broken.len() + report.log.len();
    let anchored = match report.anchor_checked {
        Some(position) if report.log.is_empty() => format!(", anchored prefix 1..={position} unchanged"),
        _ => String::new(),
    };
    writeln!(
        out,
        "{} events in {} streams checked{}: {}{anchored}",
        report.events_checked,
        report.streams_checked,
        if keys.is_empty() { "" } else { " with the chain key" },
        if problems == 0 { "chain intact".to_owned() } else { format!("{problems} problems") }
    )?;
    let mismatched = report.broken.iter().any(|link| matches!(link.problem, LinkProblem::HashMismatch { .. }));
    if mismatched && keys.is_empty() {
        writeln!(out, "hint: if this log was written with STRATA_CHAIN_KEY, set it (and STRATA_CHAIN_KEY_RETIRED) to verify keyed hashes")?;
    }
    Ok(report.is_intact())
}

fn describe(problem: &LogProblem) -> String {
    match problem {
        LogProblem::Truncated { log_head, last_position } => {
            format!("TRUNCATED the log head is {log_head} but the last event is at {last_position}")
        }
        LogProblem::ShorterThanAnchor { anchored, last_position } => {
            format!("TRUNCATED the anchor covers positions 1..={anchored} but the log ends at {last_position}")
        }
        LogProblem::AnchorMismatch { anchored, expected, found } => {
            format!("ANCHOR positions 1..={anchored} changed since anchored: digest {found}, anchored {expected}")
        }
        LogProblem::UnkeyedNotAnchored { through, anchored } => format!(
            "UNKEYED positions 1..={through} carry unkeyed hashes{}: a database user could have rewritten them; \
             anchor the log (`strata audit anchor`) to vouch for them as they are",
            anchored.map_or(" and no anchor was given".to_owned(), |position| format!(" and the anchor covers only 1..={position}"))
        ),
    }
}

/// What `audit anchor` is given besides the log.
#[derive(Clone, Copy, Default)]
pub struct AnchorOptions<'a> {
    /// `--out`: the file to write (stdout otherwise).
    pub out: Option<&'a std::path::Path>,
    /// `--sign-key`: sign the new anchor.
    pub sign_key: Option<&'a SigningKey>,
    /// `--previous`: the log must extend this anchor, and the new one names it.
    pub previous: Option<GivenAnchor<'a>>,
}

/// `audit anchor`: verifies the whole log (against the previous anchor when
/// given: the log must extend it) and, when it holds, writes the new anchor,
/// chained to the previous one and signed when a key is given. Returns
/// whether it was written.
pub async fn anchor(reader: &dyn EventReader, keys: &ChainKeyring, options: AnchorOptions<'_>) -> anyhow::Result<bool> {
    let previous = match options.previous {
        Some(previous) => {
            // The previous anchor is checked with the signing key's own half
            // unless another verifying key was given.
            let own = options.sign_key.map(SigningKey::verifying_key);
            let given = GivenAnchor { verify_key: previous.verify_key.or(own.as_ref()), ..previous };
            if previous.file.is_signed() && given.verify_key.is_none() {
                anyhow::bail!("the previous anchor is signed: give --verify-key (or --sign-key) to check it before extending it");
            }
            Some(given.checked("previous")?)
        }
        None => None,
    };
    let report = verify_whole_log(reader, previous.as_ref(), keys).await?;
    let (unkeyed, problems): (Vec<&LogProblem>, Vec<&LogProblem>) =
        report.log.iter().partition(|problem| matches!(problem, LogProblem::UnkeyedNotAnchored { .. }));
    let diverged =
        problems.iter().any(|problem| matches!(problem, LogProblem::AnchorMismatch { .. } | LogProblem::ShorterThanAnchor { .. }));
    if diverged {
        for problem in &problems {
            eprintln!("{}", describe(problem));
        }
        eprintln!("the log does not extend the previous anchor: not anchoring; run `strata audit verify --anchor` on it");
        return Ok(false);
    }
    if !report.broken.is_empty() || !problems.is_empty() {
        eprintln!(
            "the log is not intact ({} broken links, {} log problems): not anchoring; run `strata audit verify`",
            report.broken.len(),
            problems.len()
        );
        return Ok(false);
    }
    for problem in unkeyed {
        if let LogProblem::UnkeyedNotAnchored { through, .. } = problem {
            eprintln!("note: positions 1..={through} carry unkeyed hashes; this anchor vouches for them as they are now");
        }
    }
    let mut file = AnchorFile::new(&report.anchor(), options.previous.map(|previous| previous.file))?;
    if let Some(key) = options.sign_key {
        file.sign(key);
    }
    let text = file.to_text();
    match options.out {
        Some(path) => {
            std::fs::write(path, &text).with_context(|| format!("writing the anchor {}", path.display()))?;
            eprintln!(
                "anchored positions 1..={}{} in {}",
                report.last_position,
                if options.sign_key.is_some() { ", signed," } else { "" },
                path.display()
            );
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
