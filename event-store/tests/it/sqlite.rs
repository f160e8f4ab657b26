//! The conformance suite on SQLite, plus tamper detection with plain SQL.

use std::sync::Arc;

use sqlx::{Connection, Executor, SqliteConnection};
use strata_store::verify::{verify_log, verify_stream, LinkProblem};
use strata_store::{EventStore, ExpectedVersion, SqliteConfig, SqliteEventStore};

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

conformance_suite!(open);

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
    assert!(verify_log(&store, 100, None, &mut |_, _| {}).await.unwrap().is_intact());

    let mut connection = SqliteConnection::connect(&url).await.unwrap();
    connection
        .execute(
            format!("UPDATE strata_events SET payload = '{{\"text\":\"forged\"}}' WHERE stream_id = '{victim}' AND stream_version = 2")
                .as_str(),
        )
        .await
        .unwrap();
    let report = verify_log(&store, 100, None, &mut |_, _| {}).await.unwrap();
    assert_eq!(report.broken.len(), 1, "{report:?}");
    assert_eq!(report.broken[0].stream_id, victim);
    assert_eq!(report.broken[0].stream_version, 2);
    assert!(matches!(report.broken[0].problem, LinkProblem::HashMismatch { .. }));
    assert!(verify_stream(&store, &other, 100).await.unwrap().is_intact());
    assert!(!verify_stream(&store, &victim, 100).await.unwrap().is_intact());

    // Deleting the tail is caught by the stream head.
    connection.execute(format!("DELETE FROM strata_events WHERE stream_id = '{other}'").as_str()).await.unwrap();
    let report = verify_log(&store, 100, None, &mut |_, _| {}).await.unwrap();
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
