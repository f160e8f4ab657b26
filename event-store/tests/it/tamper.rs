//! Tampering with plain SQL, each kind on a fresh log, on every SQL backend:
//! what `audit verify` reports with and without an anchor taken before.

use std::future::Future;

use strata_store::verify::{recompute, verify_log, Anchor, LinkProblem, LogProblem, VerifyReport};
use strata_store::{ChainHash, ChainKey, ChainKeyring, EventStore, ExpectedVersion, Form, ReadStream, StreamId};

use crate::support::{noted, stream, to};

/// A connection that runs a tampering statement.
pub trait Sql {
    fn run(&mut self, statement: String) -> impl Future<Output = ()> + Send;
    /// `bytes` as an SQL literal of the hash columns' type.
    fn bytes(bytes: &[u8]) -> String;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(feature = "sqlite")]
impl Sql for sqlx::SqliteConnection {
    async fn run(&mut self, statement: String) {
        sqlx::Executor::execute(self, statement.as_str()).await.unwrap_or_else(|err| panic!("{statement}: {err}"));
    }
    fn bytes(bytes: &[u8]) -> String {
        format!("X'{}'", hex(bytes))
    }
}

/// On PostgreSQL the log refuses UPDATE and DELETE by trigger: the insider
/// tampering here is a superuser, who switches triggers off first.
#[cfg(feature = "postgres")]
impl Sql for sqlx::PgConnection {
    async fn run(&mut self, statement: String) {
        sqlx::Executor::execute(&mut *self, "SET session_replication_role = replica").await.unwrap();
        sqlx::Executor::execute(self, statement.as_str()).await.unwrap_or_else(|err| panic!("{statement}: {err}"));
    }
    fn bytes(bytes: &[u8]) -> String {
        format!("'\\x{}'::bytea", hex(bytes))
    }
}

/// Three streams: `a` at positions 1..=3, `b` at 4..=6, `c` at 7..=8.
async fn three_streams(store: &impl EventStore) -> [StreamId; 3] {
    let streams = [stream("order"), stream("order"), stream("payment")];
    for (s, n) in streams.iter().zip([3, 3, 2]) {
        let events = (0..n).map(|i| noted(&format!("{s} {i}"))).collect();
        store.append(to(s, ExpectedVersion::NoStream, events)).await.unwrap();
    }
    streams
}

async fn verify(store: &impl EventStore, anchor: Option<&Anchor>) -> VerifyReport {
    verify_log(store, 3, anchor, &Default::default(), &mut |_, _| {}).await.unwrap()
}

async fn verify_with(store: &impl EventStore, anchor: Option<&Anchor>, keys: &ChainKeyring) -> VerifyReport {
    verify_log(store, 3, anchor, keys, &mut |_, _| {}).await.unwrap()
}

/// What a database user can do without the chain key: rewrite the payload of
/// `streams`' events from `from_version` on (to "forged …") and recompute
/// their hashes (unkeyed, v2) and their heads, so that every link and head
/// agrees again.
async fn rewrite_with_recomputed_hashes<C: Sql>(store: &impl EventStore, sql: &mut C, streams: &[&StreamId], from_version: u64) {
    for stream_id in streams {
        let events = store.read_stream(stream_id, ReadStream { form: Form::AsStored, ..ReadStream::forward(100) }).await.unwrap();
        let mut previous = ChainHash::GENESIS;
        for mut event in events {
            if event.stream_version >= from_version {
                event.payload = serde_json::json!({ "text": format!("forged {}", event.stream_version) });
                event.hash = recompute(&previous, &event);
                sql.run(format!(
                    "UPDATE strata_events SET payload = '{}', hash = {} WHERE stream_id = '{stream_id}' AND stream_version = {}",
                    event.payload,
                    C::bytes(&event.hash.0),
                    event.stream_version
                ))
                .await;
            }
            previous = event.hash;
        }
        sql.run(format!("UPDATE strata_streams SET last_hash = {} WHERE stream_id = '{stream_id}'", C::bytes(&previous.0))).await;
    }
}

/// A database user rewriting events and recomputing their hashes: invisible
/// to an unkeyed chain without an anchor, caught by a keyed one. `open(key)`
/// gives a fresh, migrated, empty log sealing with `key`, and a connection.
pub async fn a_keyed_chain_cannot_be_recomputed_by_an_insider<S, C, F, Fut>(mut open: F)
where
    S: EventStore,
    C: Sql,
    F: FnMut(Option<ChainKey>) -> Fut,
    Fut: Future<Output = (S, C)>,
{
    let key = || ChainKey::new("a-chain-key-the-database-never-sees-0123456789").unwrap();
    let ring = ChainKeyring::new(vec![], Some(key()));

    // Unkeyed: the rewrite leaves no trace but an anchor taken before.
    let (store, mut sql) = open(None).await;
    let [_, b, _] = three_streams(&store).await;
    let anchor = verify(&store, None).await.anchor();
    rewrite_with_recomputed_hashes(&store, &mut sql, &[&b], 2).await;
    assert!(verify(&store, None).await.is_intact(), "recomputed unkeyed hashes hold without an anchor");
    assert!(matches!(verify(&store, Some(&anchor)).await.log.as_slice(), [LogProblem::AnchorMismatch { anchored: 8, .. }]));

    // Keyed: intact under the key (and only under it), and the same rewrite
    // breaks exactly the rewritten links.
    let (store, mut sql) = open(Some(key())).await;
    let [_, b, _] = three_streams(&store).await;
    let clean = verify_with(&store, None, &ring).await;
    assert!(clean.is_intact(), "{clean:?}");
    let other_key = ChainKeyring::new(vec![], Some(ChainKey::new(&"another-key-".repeat(4)).unwrap()));
    for wrong in [ChainKeyring::default(), other_key] {
        let report = verify_with(&store, None, &wrong).await;
        assert_eq!(report.broken.len(), 8, "keyed hashes do not hold without their key: {report:?}");
    }
    rewrite_with_recomputed_hashes(&store, &mut sql, &[&b], 2).await;
    let report = verify_with(&store, None, &ring).await;
    let broken: Vec<(StreamId, u64)> = report.broken.iter().map(|link| (link.stream_id.clone(), link.stream_version)).collect();
    assert_eq!(broken, vec![(b.clone(), 2), (b.clone(), 3)], "{report:?}");
    assert!(report.broken.iter().all(|link| matches!(link.problem, LinkProblem::HashMismatch { .. })));

    // Every event rewritten unkeyed (a downgrade of the whole log): each
    // link holds as v2, but the keyed chain says the log is unkeyed and
    // unanchored; an anchor taken before shows the change too.
    let (store, mut sql) = open(Some(key())).await;
    let streams = three_streams(&store).await;
    let anchor = verify_with(&store, None, &ring).await.anchor();
    rewrite_with_recomputed_hashes(&store, &mut sql, &streams.iter().collect::<Vec<_>>(), 1).await;
    let report = verify_with(&store, None, &ring).await;
    assert!(report.broken.is_empty(), "{report:?}");
    assert_eq!(report.log, vec![LogProblem::UnkeyedNotAnchored { through: 8, anchored: None }]);
    let report = verify_with(&store, Some(&anchor), &ring).await;
    assert!(report.log.iter().any(|problem| matches!(problem, LogProblem::AnchorMismatch { anchored: 8, .. })), "{report:?}");

    // A log keyed late: its unkeyed prefix is reported until an anchor
    // covers it (the CLI test walks the keyed writes after it and rotation).
    let (store, _) = open(None).await;
    three_streams(&store).await;
    let report = verify_with(&store, None, &ring).await;
    assert_eq!(report.log, vec![LogProblem::UnkeyedNotAnchored { through: 8, anchored: None }]);
    let vouched = report.anchor();
    assert!(verify_with(&store, Some(&vouched), &ring).await.is_intact());
}

/// Runs every scenario; `open` gives a fresh, migrated, empty log and a
/// connection to its database.
pub async fn every_kind_of_tampering_is_reported<S, C, F, Fut>(mut open: F)
where
    S: EventStore,
    C: Sql,
    F: FnMut() -> Fut,
    Fut: Future<Output = (S, C)>,
{
    // A clean log anchors, and the anchor still holds after later appends.
    let (store, _) = open().await;
    let [a, ..] = three_streams(&store).await;
    let clean = verify(&store, None).await;
    assert!(clean.is_intact(), "{clean:?}");
    let anchor = clean.anchor();
    assert_eq!(anchor.position.0, 8);
    let json = anchor.to_json(chrono::Utc::now());
    assert_eq!(Anchor::from_json(&json).unwrap(), anchor);
    store.append(to(&a, ExpectedVersion::Exact(3), vec![noted("later")])).await.unwrap();
    let later = verify(&store, Some(&anchor)).await;
    assert!(later.is_intact() && later.anchor_checked == Some(8), "{later:?}");
    assert_ne!(later.anchor(), anchor, "the digest moves with the log");

    // A stream deleted in the middle, events and head: a position gap.
    let (store, mut sql) = open().await;
    let [_, b, c] = three_streams(&store).await;
    sql.run(format!("DELETE FROM strata_events WHERE stream_id = '{b}'")).await;
    sql.run(format!("DELETE FROM strata_streams WHERE stream_id = '{b}'")).await;
    let report = verify(&store, None).await;
    assert!(
        report.broken.iter().any(|link| link.stream_id == c
            && link.position.map(|p| p.0) == Some(7)
            && link.problem == LinkProblem::PositionGap { expected: 4, found: 7 }),
        "{report:?}"
    );

    // The last stream deleted and the log head moved back to match: only an
    // anchor taken before shows it.
    let (store, mut sql) = open().await;
    let [_, _, c] = three_streams(&store).await;
    let anchor = verify(&store, None).await.anchor();
    sql.run(format!("DELETE FROM strata_events WHERE stream_id = '{c}'")).await;
    sql.run(format!("DELETE FROM strata_streams WHERE stream_id = '{c}'")).await;
    sql.run("UPDATE strata_log_head SET position = 6".into()).await;
    assert!(verify(&store, None).await.is_intact(), "no trace without an anchor");
    let report = verify(&store, Some(&anchor)).await;
    assert_eq!(report.log, vec![LogProblem::ShorterThanAnchor { anchored: 8, last_position: 6 }], "{report:?}");

    // Two events of different streams swapped between positions (each
    // stream keeps its order): both hashes break, and the anchor.
    let (store, mut sql) = open().await;
    let [a, b, _] = three_streams(&store).await;
    let anchor = verify(&store, None).await.anchor();
    sql.run("UPDATE strata_events SET position = -3 WHERE position = 3".into()).await;
    sql.run("UPDATE strata_events SET position = 3 WHERE position = 4".into()).await;
    sql.run("UPDATE strata_events SET position = 4 WHERE position = -3".into()).await;
    let report = verify(&store, Some(&anchor)).await;
    let mismatched: Vec<(StreamId, u64)> = report
        .broken
        .iter()
        .filter(|link| matches!(link.problem, LinkProblem::HashMismatch { .. }))
        .map(|link| (link.stream_id.clone(), link.stream_version))
        .collect();
    assert_eq!(mismatched, vec![(b.clone(), 1), (a.clone(), 3)], "{report:?}");
    assert!(matches!(report.log.as_slice(), [LogProblem::AnchorMismatch { anchored: 8, .. }]), "{report:?}");

    // The last event cut: the log head says more was written…
    let (store, mut sql) = open().await;
    let [_, _, c] = three_streams(&store).await;
    let anchor = verify(&store, None).await.anchor();
    sql.run("DELETE FROM strata_events WHERE position = 8".into()).await;
    let report = verify(&store, None).await;
    assert!(report.log.contains(&LogProblem::Truncated { log_head: 8, last_position: 7 }), "{report:?}");
    assert!(
        report
            .broken
            .iter()
            .any(|link| link.stream_id == c && link.problem == LinkProblem::HeadMismatch { head_version: 2, chain_version: 1 }),
        "{report:?}"
    );
    // …and with its stream head and the log head rewritten to match, the
    // chain is consistent again: the anchor is what shows the cut.
    sql.run(format!(
        "UPDATE strata_streams SET version = 1, \
         last_hash = (SELECT hash FROM strata_events WHERE stream_id = '{c}' AND stream_version = 1) WHERE stream_id = '{c}'"
    ))
    .await;
    sql.run("UPDATE strata_log_head SET position = 7".into()).await;
    assert!(verify(&store, None).await.is_intact());
    let report = verify(&store, Some(&anchor)).await;
    assert_eq!(report.log, vec![LogProblem::ShorterThanAnchor { anchored: 8, last_position: 7 }], "{report:?}");
    // A forged anchor (another digest) does not hold either.
    let forged = Anchor { position: strata_store::Position(7), log_digest: strata_store::ChainHash([7; 32]) };
    assert!(matches!(verify(&store, Some(&forged)).await.log.as_slice(), [LogProblem::AnchorMismatch { anchored: 7, .. }]));
}
