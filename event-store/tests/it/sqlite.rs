//! The conformance suite on SQLite, plus tamper detection with plain SQL.

use std::sync::Arc;

use sqlx::{Connection, Executor, SqliteConnection};
use strata_store::verify::{verify_log, verify_stream, LinkProblem};
use strata_store::{AppendError, EventReader, EventStore, ExpectedVersion, Position, ReadAll, SqliteConfig, SqliteEventStore};

use crate::conformance::{conformance_suite, Backend};
use crate::support::{noted, registry, stream, to, Cleanup};

fn temp_url() -> (String, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("strata-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    (format!("sqlite://{}", dir.join("log.db").display()), dir)
}

async fn open_store() -> (SqliteEventStore, String, std::path::PathBuf) {
    let (url, dir) = temp_url();
    let store = SqliteEventStore::connect(SqliteConfig::new(&url), registry()).await.unwrap();
    store.migrate().await.unwrap();
    (store, url, dir)
}

async fn open() -> Option<(Arc<dyn Backend>, Cleanup)> {
    let (store, _, dir) = open_store().await;
    Some((
        Arc::new(store),
        Cleanup::new(move || async move {
            let _ = std::fs::remove_dir_all(dir);
        }),
    ))
}

async fn open_without_group_commit() -> Option<(Arc<dyn Backend>, Cleanup)> {
    let (url, dir) = temp_url();
    let mut config = SqliteConfig::new(&url);
    config.group_commit = false;
    let store = SqliteEventStore::connect(config, registry()).await.unwrap();
    store.migrate().await.unwrap();
    Some((
        Arc::new(store),
        Cleanup::new(move || async move {
            let _ = std::fs::remove_dir_all(dir);
        }),
    ))
}

conformance_suite!(open);

/// The same suite with one transaction per append.
mod without_group_commit {
    use super::*;
    conformance_suite!(open_without_group_commit);
}

/// Many concurrent appends share group-commit batches: each keeps its own
/// expected-version check (one winner per contested stream), positions stay
/// gap-free, the hash chain verifies, and text a JSON round trip could bend
/// (control characters, quotes, backslashes, non-ASCII) is stored as given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_in_shared_batches_keep_their_own_checks_and_a_gap_free_log() {
    let (store, _, dir) = open_store().await;
    let contested: Vec<_> = (0..5).map(|_| stream("order")).collect();
    let odd = "control \u{1} quote \" backslash \\ tab \t é 漢字 🦀";
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = store.clone();
            let target = if i % 4 == 0 { contested[i % 5].clone() } else { stream("order") };
            let text = format!("{odd} {i}");
            tokio::spawn(async move {
                (target.clone(), text.clone(), store.append(to(&target, ExpectedVersion::NoStream, vec![noted(&text)])).await)
            })
        })
        .collect();
    let (mut written, mut conflicts) = (Vec::new(), 0);
    for task in tasks {
        match task.await.unwrap() {
            (target, text, Ok(outcome)) => written.push((target, text, outcome.streams[0].positions[0])),
            (_, _, Err(AppendError::Conflict { .. })) => conflicts += 1,
            (_, _, Err(err)) => panic!("an append failed: {err}"),
        }
    }
    assert_eq!((written.len(), conflicts), (155, 45), "one winner per contested stream");
    let log = store.read_all(ReadAll::after(Position::START, 1_000)).await.unwrap();
    let positions: Vec<u64> = log.iter().map(|event| event.position.0).collect();
    assert_eq!(positions, (1..=155).collect::<Vec<_>>(), "positions are gap-free and in order");
    for (target, text, position) in &written {
        let event = &log[position.0 as usize - 1];
        assert_eq!((&event.stream_id, event.payload["text"].as_str()), (target, Some(text.as_str())));
    }
    assert!(verify_log(&store, 100, None, &Default::default(), &mut |_, _| {}).await.unwrap().is_intact());
    std::fs::remove_dir_all(dir).unwrap();
}

/// An append the database refuses for its own data (a trigger added below
/// every validation) fails alone: the appends that shared its batch commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_the_database_refuses_fails_alone_and_the_rest_of_its_batch_commits() {
    let (store, url, dir) = open_store().await;
    let mut connection = SqliteConnection::connect(&url).await.unwrap();
    connection
        .execute(
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON strata_events
             WHEN json_extract(NEW.payload, '$.text') = 'poison'
             BEGIN SELECT RAISE(ABORT, 'poison refused'); END",
        )
        .await
        .unwrap();
    crate::support::poison_appends_fail_alone(store).await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn migrating_twice_is_harmless() {
    let (store, _, dir) = open_store().await;
    store.migrate().await.unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn audit_verify_reports_a_payload_altered_with_plain_sql() {
    let (store, url, dir) = open_store().await;
    let (victim, other) = (stream("order"), stream("order"));
    store.append(to(&victim, ExpectedVersion::NoStream, vec![noted("a"), noted("b"), noted("c")])).await.unwrap();
    store.append(to(&other, ExpectedVersion::NoStream, vec![noted("x")])).await.unwrap();
    assert!(verify_log(&store, 100, None, &Default::default(), &mut |_, _| {}).await.unwrap().is_intact());

    let mut connection = SqliteConnection::connect(&url).await.unwrap();
    connection
        .execute(
            format!("UPDATE strata_events SET payload = '{{\"text\":\"forged\"}}' WHERE stream_id = '{victim}' AND stream_version = 2")
                .as_str(),
        )
        .await
        .unwrap();
    let report = verify_log(&store, 100, None, &Default::default(), &mut |_, _| {}).await.unwrap();
    assert_eq!(report.broken.len(), 1, "{report:?}");
    assert_eq!(report.broken[0].stream_id, victim);
    assert_eq!(report.broken[0].stream_version, 2);
    assert!(matches!(report.broken[0].problem, LinkProblem::HashMismatch { .. }));
    assert!(verify_stream(&store, &other, 100, &Default::default()).await.unwrap().is_intact());
    assert!(!verify_stream(&store, &victim, 100, &Default::default()).await.unwrap().is_intact());

    // Deleting the tail is caught by the stream head.
    connection.execute(format!("DELETE FROM strata_events WHERE stream_id = '{other}'").as_str()).await.unwrap();
    let report = verify_log(&store, 100, None, &Default::default(), &mut |_, _| {}).await.unwrap();
    assert!(
        report
            .broken
            .iter()
            .any(|link| link.stream_id == other && matches!(link.problem, LinkProblem::HeadMismatch { head_version: 1, chain_version: 0 })),
        "{report:?}"
    );
    drop(store);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_keyed_chain_cannot_be_recomputed_by_an_insider() {
    let mut dirs = Vec::new();
    crate::tamper::a_keyed_chain_cannot_be_recomputed_by_an_insider(|chain_key| {
        let (url, dir) = temp_url();
        dirs.push(dir);
        async move {
            let store = SqliteEventStore::connect(SqliteConfig { chain_key, ..SqliteConfig::new(&url) }, registry()).await.unwrap();
            store.migrate().await.unwrap();
            (store, SqliteConnection::connect(&url).await.unwrap())
        }
    })
    .await;
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[tokio::test]
async fn every_kind_of_tampering_is_reported() {
    let mut dirs = Vec::new();
    crate::tamper::every_kind_of_tampering_is_reported(|| {
        let (url, dir) = temp_url();
        dirs.push(dir);
        async move {
            let store = SqliteEventStore::connect(SqliteConfig::new(&url), registry()).await.unwrap();
            store.migrate().await.unwrap();
            (store, SqliteConnection::connect(&url).await.unwrap())
        }
    })
    .await;
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}
