//! Walking the hash chain: recompute every event's hash from its stored
//! content and the stored hash of the previous event of its stream, and
//! compare each stream's last hash and version with its recorded head.
//!
//! One tampered payload shows as exactly one broken link (the event whose
//! content changed); a rewritten hash also breaks the link of the next event;
//! a deleted tail shows as a head mismatch. The chain proves that the log was
//! not edited *without recomputing every later hash*; anchoring the stream
//! heads outside the database is what makes a full rewrite detectable too.

use std::collections::HashMap;

use serde::Serialize;

use crate::hash::{canonical_json, chain_hash, HashInput};
use crate::plan::metadata_json;
use crate::{ChainHash, EventReader, Form, Position, ReadAll, ReadError, ReadStream, RecordedEvent, StreamId};

/// What is wrong at a link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LinkProblem {
    /// The stored hash is not the hash of the stored content and the previous hash.
    HashMismatch {
        /// Hash stored with the event.
        stored: String,
        /// Hash recomputed from its content.
        computed: String,
    },
    /// The event's version does not follow the previous event of its stream.
    VersionGap {
        /// The version that should come next.
        expected: u64,
        /// The version found.
        found: u64,
    },
    /// The stream's recorded head disagrees with the end of its chain.
    HeadMismatch {
        /// Version recorded in the stream head.
        head_version: u64,
        /// Version of the last event found.
        chain_version: u64,
    },
}

/// One broken link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokenLink {
    /// The stream.
    pub stream_id: StreamId,
    /// The event's version in the stream (for a head mismatch: the head's).
    pub stream_version: u64,
    /// The event's global position, if the problem is at an event.
    pub position: Option<Position>,
    /// What is wrong.
    pub problem: LinkProblem,
}

/// The outcome of a verification.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Events whose hash was recomputed.
    pub events_checked: u64,
    /// Streams whose head was compared.
    pub streams_checked: u64,
    /// Every broken link, in log order (head mismatches last).
    pub broken: Vec<BrokenLink>,
}

impl VerifyReport {
    /// True when no link is broken.
    pub fn is_intact(&self) -> bool {
        self.broken.is_empty()
    }
}

#[derive(Clone, Copy)]
struct Tail {
    version: u64,
    hash: ChainHash,
}

/// Recomputes the hash of `event` given the previous hash of its stream.
pub fn recompute(previous: &ChainHash, event: &RecordedEvent) -> ChainHash {
    chain_hash(HashInput {
        previous,
        event_id: &event.event_id,
        stream_id: event.stream_id.as_str(),
        stream_version: event.stream_version,
        event_type: &event.event_type,
        schema_version: event.schema_version,
        recorded_at_micros: event.recorded_at.timestamp_micros(),
        metadata_json: &metadata_json(&event.metadata),
        payload_json: &canonical_json(&event.payload),
    })
}

fn check(tails: &mut HashMap<StreamId, Tail>, event: &RecordedEvent, report: &mut VerifyReport) {
    let tail = tails.get(&event.stream_id).copied().unwrap_or(Tail { version: 0, hash: ChainHash::GENESIS });
    if event.stream_version != tail.version + 1 {
        report.broken.push(BrokenLink {
            stream_id: event.stream_id.clone(),
            stream_version: event.stream_version,
            position: Some(event.position),
            problem: LinkProblem::VersionGap { expected: tail.version + 1, found: event.stream_version },
        });
    }
    let computed = recompute(&tail.hash, event);
    if computed != event.hash {
        report.broken.push(BrokenLink {
            stream_id: event.stream_id.clone(),
            stream_version: event.stream_version,
            position: Some(event.position),
            problem: LinkProblem::HashMismatch { stored: event.hash.to_string(), computed: computed.to_string() },
        });
    }
    // Continue from the *stored* hash so one edited event breaks one link.
    tails.insert(event.stream_id.clone(), Tail { version: event.stream_version, hash: event.hash });
    report.events_checked += 1;
}

fn check_head(tail: Option<Tail>, head_version: u64, head_hash: ChainHash, stream_id: &StreamId, report: &mut VerifyReport) {
    let (chain_version, chain_hash) = tail.map_or((0, ChainHash::GENESIS), |tail| (tail.version, tail.hash));
    if chain_version != head_version || chain_hash != head_hash {
        report.broken.push(BrokenLink {
            stream_id: stream_id.clone(),
            stream_version: head_version,
            position: None,
            problem: LinkProblem::HeadMismatch { head_version, chain_version },
        });
    }
    report.streams_checked += 1;
}

/// Verifies the whole log in one pass in position order. `progress` is called
/// after each page with (last position checked, head position).
pub async fn verify_log(
    reader: &dyn EventReader,
    page_size: usize,
    progress: &mut (dyn FnMut(Position, Position) + Send),
) -> Result<VerifyReport, ReadError> {
    let head = reader.head_position().await?;
    let mut report = VerifyReport::default();
    let mut tails: HashMap<StreamId, Tail> = HashMap::new();
    let mut after = Position::START;
    loop {
        let page = reader.read_all(ReadAll { after, limit: page_size, category: None, form: Form::AsStored }).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        for event in &page {
            check(&mut tails, event, &mut report);
        }
        progress(after, head.max(after));
        if after >= head {
            break;
        }
    }
    let mut after_stream: Option<StreamId> = None;
    loop {
        let heads = reader.stream_heads(after_stream.as_ref(), 1_000).await?;
        let Some(last) = heads.last() else { break };
        after_stream = Some(last.stream_id.clone());
        for stream_head in &heads {
            let tail = tails.remove(&stream_head.stream_id);
            check_head(tail, stream_head.version, stream_head.last_hash, &stream_head.stream_id, &mut report);
        }
    }
    // Events of streams that have no head at all (a deleted head row).
    let mut orphans: Vec<(StreamId, Tail)> = tails.into_iter().collect();
    orphans.sort_by(|a, b| a.0.cmp(&b.0));
    for (stream_id, tail) in orphans {
        check_head(Some(tail), 0, ChainHash::GENESIS, &stream_id, &mut report);
    }
    Ok(report)
}

/// Verifies one stream.
pub async fn verify_stream(reader: &dyn EventReader, stream_id: &StreamId, page_size: usize) -> Result<VerifyReport, ReadError> {
    let mut report = VerifyReport::default();
    let mut tails: HashMap<StreamId, Tail> = HashMap::new();
    let mut from_version = 1;
    loop {
        let page =
            reader.read_stream(stream_id, ReadStream { form: Form::AsStored, from_version, ..ReadStream::forward(page_size) }).await?;
        let Some(last) = page.last() else { break };
        from_version = last.stream_version + 1;
        for event in &page {
            check(&mut tails, event, &mut report);
        }
    }
    let head = reader.stream_head(stream_id).await?;
    let (head_version, head_hash) = head.map_or((0, ChainHash::GENESIS), |head| (head.version, head.last_hash));
    check_head(tails.remove(stream_id), head_version, head_hash, stream_id, &mut report);
    Ok(report)
}
