//! Walking the hash chain: recompute every event's hash from its stored
//! content, its position and the stored hash of the previous event of its
//! stream; check that positions run densely from 1 to the log head; compare
//! each stream's last hash and version with its recorded head; and, given an
//! [`Anchor`] kept outside the database, check that the log still holds the
//! anchored prefix unchanged.
//!
//! One tampered payload shows as exactly one broken link (the event whose
//! content changed); a rewritten hash also breaks the link of the next event;
//! an event moved to another position breaks its hash; a deleted stream or
//! event leaves a position gap (or, at the end, a log shorter than its head);
//! a deleted tail shows as a head mismatch. What the chain cannot show alone
//! is a rewrite that recomputes every later hash and moves every head, or a
//! cut of the log's last events with the heads rewritten to match: the anchor
//! shows both, because its digest covers every event of the prefix in order.
//!
//! A keyed chain ([`ChainKeyring`]) takes the recomputing away from a database
//! user: keyed hashes cannot be made without the key, and in log order a hash
//! may only move forward (v1, v2, then each key of the ring), so an unkeyed
//! hash after a keyed one is a broken link. The events before the first keyed
//! one can still be rewritten with unkeyed hashes; given keys, the whole-log
//! walk reports them ([`LogProblem::UnkeyedNotAnchored`]) unless an anchor
//! covers them, which is how a log keyed late becomes fully covered.

use std::collections::HashMap;

use serde::Serialize;

use crate::hash::{canonical_json, chain_hash, log_digest, ChainKeyring, HashInput};
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
    /// Positions below this event are missing (a deleted event or stream).
    PositionGap {
        /// The position that should come next.
        expected: u64,
        /// The position found.
        found: u64,
    },
}

/// What is wrong with the log as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LogProblem {
    /// The log head says more events were written than the log holds.
    Truncated {
        /// The recorded log head.
        log_head: u64,
        /// The last position found.
        last_position: u64,
    },
    /// The log holds fewer events than an anchor was taken over.
    ShorterThanAnchor {
        /// The anchored position.
        anchored: u64,
        /// The last position found.
        last_position: u64,
    },
    /// The chain is keyed, but positions up to `through` carry unkeyed hashes
    /// (written before the key, or rewritten by someone without it) and no
    /// anchor covers them.
    UnkeyedNotAnchored {
        /// The last position with an unkeyed hash.
        through: u64,
        /// The anchored position, if an anchor was checked.
        anchored: Option<u64>,
    },
    /// The prefix up to the anchored position is not the one anchored.
    AnchorMismatch {
        /// The anchored position.
        anchored: u64,
        /// The digest the anchor keeps.
        expected: String,
        /// The digest of the log's prefix today.
        found: String,
    },
}

/// The log's head position and the digest of every event up to it
/// ([`log_digest`]), kept outside the database by an auditor
/// (`strata audit anchor`); JSON as `{"position": …, "logDigest": "…"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    /// The last position covered.
    pub position: Position,
    /// The digest of positions 1 ..= `position`.
    pub log_digest: ChainHash,
}

impl Anchor {
    /// The anchor as the JSON an auditor keeps (with the time it was taken).
    pub fn to_json(&self, anchored_at: chrono::DateTime<chrono::Utc>) -> serde_json::Value {
        serde_json::json!({
            "position": self.position.0,
            "logDigest": self.log_digest.to_string(),
            "anchoredAt": anchored_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        })
    }

    /// Reads an anchor written by [`Anchor::to_json`].
    pub fn from_json(value: &serde_json::Value) -> Result<Self, String> {
        let position = value["position"].as_u64().ok_or("the anchor has no \"position\" number")?;
        let digest = value["logDigest"].as_str().ok_or("the anchor has no \"logDigest\" text")?;
        let log_digest = ChainHash::from_hex(digest).ok_or("the anchor's \"logDigest\" is not 64 hex digits")?;
        Ok(Self { position: Position(position), log_digest })
    }
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
    /// What is wrong with the log as a whole (whole-log verification only).
    pub log: Vec<LogProblem>,
    /// The last position checked (whole-log verification only).
    pub last_position: u64,
    /// The digest of the log up to `last_position`: what an anchor keeps.
    #[serde(serialize_with = "as_hex")]
    pub log_digest: ChainHash,
    /// The anchored position, when an anchor was checked (and held if nothing
    /// in `log` says otherwise).
    pub anchor_checked: Option<u64>,
}

fn as_hex<S: serde::Serializer>(hash: &ChainHash, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(hash)
}

impl VerifyReport {
    /// True when no link is broken and nothing is wrong with the log.
    pub fn is_intact(&self) -> bool {
        self.broken.is_empty() && self.log.is_empty()
    }

    /// The anchor of what was checked.
    pub fn anchor(&self) -> Anchor {
        Anchor { position: Position(self.last_position), log_digest: self.log_digest }
    }
}

#[derive(Clone, Copy)]
struct Tail {
    version: u64,
    hash: ChainHash,
}

/// The fields of `event`'s hash given the previous hash of its stream.
fn hash_input<'a>(previous: &'a ChainHash, event: &'a RecordedEvent, metadata_json: &'a str, payload_json: &'a str) -> HashInput<'a> {
    HashInput {
        previous,
        position: event.position.0,
        event_id: &event.event_id,
        stream_id: event.stream_id.as_str(),
        stream_version: event.stream_version,
        event_type: &event.event_type,
        schema_version: event.schema_version,
        recorded_at_micros: event.recorded_at.timestamp_micros(),
        metadata_json,
        payload_json,
    }
}

/// Recomputes the unkeyed (v2) hash of `event` given the previous hash of its
/// stream: what anyone with access to the database can do.
pub fn recompute(previous: &ChainHash, event: &RecordedEvent) -> ChainHash {
    chain_hash(hash_input(previous, event, &metadata_json(&event.metadata), &canonical_json(&event.payload)))
}

/// The newest hash generation seen so far (1: v1, 2: v2, 3 + i: the ring's
/// key i): a hash is accepted only in that generation or a newer one, so a
/// v1 hash after a v2 one, or an unkeyed hash after a keyed one, is refused.
struct Versions<'a> {
    keys: &'a ChainKeyring,
    newest_seen: usize,
}

impl<'a> Versions<'a> {
    fn new(keys: &'a ChainKeyring) -> Self {
        Self { keys, newest_seen: 1 }
    }

    /// The hash `event` should have, and whether it has it.
    fn check(&mut self, previous: &ChainHash, event: &RecordedEvent) -> (ChainHash, bool) {
        let (metadata, payload) = (metadata_json(&event.metadata), canonical_json(&event.payload));
        let input = hash_input(previous, event, &metadata, &payload);
        for generation in self.newest_seen..=self.keys.newest_generation() {
            let hash = self.keys.hash_in(generation, input);
            if hash == event.hash {
                self.newest_seen = generation;
                return (hash, true);
            }
        }
        (self.keys.hash_in(self.newest_seen.max(2), input), false)
    }

    /// Whether the hashes seen so far are all unkeyed.
    fn unkeyed(&self) -> bool {
        self.newest_seen < 3
    }
}

fn check(tails: &mut HashMap<StreamId, Tail>, versions: &mut Versions<'_>, event: &RecordedEvent, report: &mut VerifyReport) {
    let tail = tails.get(&event.stream_id).copied().unwrap_or(Tail { version: 0, hash: ChainHash::GENESIS });
    if event.stream_version != tail.version + 1 {
        report.broken.push(BrokenLink {
            stream_id: event.stream_id.clone(),
            stream_version: event.stream_version,
            position: Some(event.position),
            problem: LinkProblem::VersionGap { expected: tail.version + 1, found: event.stream_version },
        });
    }
    let (computed, holds) = versions.check(&tail.hash, event);
    if !holds {
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

/// Verifies the whole log in one pass in position order, and the anchored
/// prefix when given an anchor, accepting keyed hashes under `keys`.
/// `progress` is called after each page with (last position checked, head
/// position).
pub async fn verify_log(
    reader: &dyn EventReader,
    page_size: usize,
    anchor: Option<&Anchor>,
    keys: &ChainKeyring,
    progress: &mut (dyn FnMut(Position, Position) + Send),
) -> Result<VerifyReport, ReadError> {
    let head = reader.head_position().await?;
    let mut report = VerifyReport { anchor_checked: anchor.map(|anchor| anchor.position.0), ..VerifyReport::default() };
    let mut tails: HashMap<StreamId, Tail> = HashMap::new();
    let mut versions = Versions::new(keys);
    // The last position whose hash was accepted as unkeyed.
    let mut unkeyed_through = 0;
    let mut digest = ChainHash::GENESIS;
    let mut after = Position::START;
    loop {
        let page = reader.read_all(ReadAll { after, limit: page_size, category: None, form: Form::AsStored }).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        for event in &page {
            let expected = report.last_position + 1;
            if event.position.0 != expected {
                report.broken.push(BrokenLink {
                    stream_id: event.stream_id.clone(),
                    stream_version: event.stream_version,
                    position: Some(event.position),
                    problem: LinkProblem::PositionGap { expected, found: event.position.0 },
                });
            }
            check(&mut tails, &mut versions, event, &mut report);
            if versions.unkeyed() {
                unkeyed_through = event.position.0;
            }
            digest = log_digest(&digest, event.position.0, &event.hash);
            report.last_position = event.position.0;
            if let Some(anchor) = anchor.filter(|anchor| anchor.position == event.position) {
                if anchor.log_digest != digest {
                    report.log.push(LogProblem::AnchorMismatch {
                        anchored: anchor.position.0,
                        expected: anchor.log_digest.to_string(),
                        found: digest.to_string(),
                    });
                }
            }
        }
        progress(after, head.max(after));
        // Events appended while this runs are not checked against heads read before.
        if after >= head && anchor.is_none_or(|anchor| after >= anchor.position) {
            break;
        }
    }
    report.log_digest = digest;
    if report.last_position < head.0 {
        report.log.push(LogProblem::Truncated { log_head: head.0, last_position: report.last_position });
    }
    if let Some(anchor) = anchor.filter(|anchor| anchor.position.0 > report.last_position) {
        report.log.push(LogProblem::ShorterThanAnchor { anchored: anchor.position.0, last_position: report.last_position });
    }
    let anchored = anchor.map_or(0, |anchor| anchor.position.0);
    if !keys.is_empty() && unkeyed_through > anchored {
        report.log.push(LogProblem::UnkeyedNotAnchored { through: unkeyed_through, anchored: anchor.map(|anchor| anchor.position.0) });
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

/// Verifies one stream, accepting keyed hashes under `keys` (an unkeyed hash
/// after a keyed one of the stream is broken; the stream's unkeyed events
/// before its first keyed one are only as safe as the unkeyed chain).
pub async fn verify_stream(
    reader: &dyn EventReader,
    stream_id: &StreamId,
    page_size: usize,
    keys: &ChainKeyring,
) -> Result<VerifyReport, ReadError> {
    let mut report = VerifyReport::default();
    let mut tails: HashMap<StreamId, Tail> = HashMap::new();
    let mut versions = Versions::new(keys);
    let mut from_version = 1;
    loop {
        let page =
            reader.read_stream(stream_id, ReadStream { form: Form::AsStored, from_version, ..ReadStream::forward(page_size) }).await?;
        let Some(last) = page.last() else { break };
        from_version = last.stream_version + 1;
        for event in &page {
            check(&mut tails, &mut versions, event, &mut report);
        }
    }
    let head = reader.stream_head(stream_id).await?;
    let (head_version, head_hash) = head.map_or((0, ChainHash::GENESIS), |head| (head.version, head.last_hash));
    check_head(tails.remove(stream_id), head_version, head_hash, stream_id, &mut report);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(stream_version: u64, position: u64) -> RecordedEvent {
        RecordedEvent {
            event_id: uuid::Uuid::new_v4(),
            event_type: "Noted".into(),
            schema_version: 1,
            stream_id: StreamId::parse("order-1").unwrap(),
            stream_version,
            position: Position(position),
            recorded_at: chrono::Utc::now(),
            payload: serde_json::json!({ "n": position }),
            metadata: Default::default(),
            hash: ChainHash::GENESIS,
        }
    }

    /// `event` sealed in `generation` of `keys` after `previous`.
    fn sealed(keys: &ChainKeyring, generation: usize, previous: &ChainHash, mut event: RecordedEvent) -> RecordedEvent {
        let (metadata, payload) = (metadata_json(&event.metadata), canonical_json(&event.payload));
        event.hash = keys.hash_in(generation, hash_input(previous, &event, &metadata, &payload));
        event
    }

    /// The stream_versions of the broken links when `generations` seal a
    /// stream's events in turn, verified with `keys`.
    fn broken_when_sealed_in(keys: &ChainKeyring, generations: &[usize]) -> Vec<u64> {
        let mut previous = ChainHash::GENESIS;
        let mut report = VerifyReport::default();
        let (mut tails, mut versions) = (HashMap::new(), Versions::new(keys));
        for (index, &generation) in generations.iter().enumerate() {
            let version = index as u64 + 1;
            let event = sealed(keys, generation, &previous, event(version, version));
            previous = event.hash;
            check(&mut tails, &mut versions, &event, &mut report);
        }
        assert_eq!(report.events_checked, generations.len() as u64);
        assert!(report.broken.iter().all(|link| matches!(link.problem, LinkProblem::HashMismatch { .. })), "{report:?}");
        report.broken.iter().map(|link| link.stream_version).collect()
    }

    #[test]
    fn hashes_only_move_forward_through_v1_v2_and_each_key() {
        let unkeyed = ChainKeyring::default();
        assert_eq!(broken_when_sealed_in(&unkeyed, &[1, 1, 2, 2]), Vec::<u64>::new());
        assert_eq!(broken_when_sealed_in(&unkeyed, &[1, 2, 1]), vec![3], "v1 after v2");
        let key = |c: char| crate::hash::ChainKey::new(&c.to_string().repeat(32)).unwrap();
        let ring = ChainKeyring::new(vec![key('a')], Some(key('b')));
        assert_eq!(broken_when_sealed_in(&ring, &[1, 2, 3, 3, 4, 4]), Vec::<u64>::new(), "v1, v2, a retired key, the current one");
        assert_eq!(broken_when_sealed_in(&ring, &[2, 4, 2]), vec![3], "unkeyed after keyed");
        assert_eq!(broken_when_sealed_in(&ring, &[3, 4, 3]), vec![3], "a retired key after the current one");
        // Without the keys, keyed hashes cannot be told from forged ones.
        assert_eq!(broken_when_sealed_in(&ring, &[2, 3]).len(), 0);
        let mut previous = ChainHash::GENESIS;
        let mut report = VerifyReport::default();
        let (mut tails, mut versions) = (HashMap::new(), Versions::new(&unkeyed));
        for version in 1..=2 {
            let event = sealed(&ring, 3, &previous, event(version, version));
            previous = event.hash;
            check(&mut tails, &mut versions, &event, &mut report);
        }
        assert_eq!(report.broken.len(), 2, "{report:?}");
    }
}
