//! The conformance suite on PostgreSQL (a fresh database per test), the
//! racing-writers proof of the gap-safe global order, and PostgreSQL-specific
//! failure cases.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use rand::Rng;
use sqlx::{Connection, Executor, PgConnection};
use strata_store::verify::{verify_log, LinkProblem};
use strata_store::{
    AppendError, AppendHook, AppendPhase, EventReader, EventStore, ExpectedVersion, Position, PostgresConfig, PostgresEventStore, ReadAll,
    Subscribe,
};
use uuid::Uuid;

use crate::conformance::{conformance_suite, Backend};
use crate::support::postgres::{fresh_database, TestDatabase};
use crate::support::{noted, registry, stream, to, wait_until, Cleanup};

async fn store_on(database: &TestDatabase, config: impl FnOnce(&mut PostgresConfig)) -> PostgresEventStore {
    let mut settings = PostgresConfig::new(&database.url);
    settings.max_connections = 8;
    config(&mut settings);
    let store = PostgresEventStore::connect(settings, registry()).await.unwrap();
    store.migrate().await.unwrap();
    store
}

async fn open() -> Option<(Arc<dyn Backend>, Cleanup)> {
    let database = fresh_database().await?;
    let store = store_on(&database, |_| {}).await;
    Some((Arc::new(store), Cleanup::new(move || database.drop_database())))
}

async fn open_without_group_commit() -> Option<(Arc<dyn Backend>, Cleanup)> {
    let database = fresh_database().await?;
    let store = store_on(&database, |config| config.group_commit = false).await;
    Some((Arc::new(store), Cleanup::new(move || database.drop_database())))
}

conformance_suite!(open);

/// The same suite with one transaction per append.
mod without_group_commit {
    use super::*;
    conformance_suite!(open_without_group_commit);
}

/// Random delays inside every append transaction, before the log head is
/// taken and while it is held, and a share of transactions rolled back at the
/// last moment.
fn chaos_hook(rollback_share: f64) -> AppendHook {
    Arc::new(move |phase| {
        let (delay_us, fail) = {
            let mut rng = rand::rng();
            match phase {
                AppendPhase::StreamsLocked => (rng.random_range(0..4_000), false),
                AppendPhase::BeforeCommit => (rng.random_range(0..1_500), rng.random_bool(rollback_share)),
            }
        };
        Box::pin(async move {
            tokio::time::sleep(Duration::from_micros(delay_us)).await;
            if fail {
                Err("rolled back by the test".to_owned())
            } else {
                Ok(())
            }
        })
    })
}

async fn racing_writers_never_make_a_subscriber_skip_or_reorder(group_commit: bool) {
    const WRITERS: usize = 32;
    const APPENDS_PER_WRITER: usize = 25;
    const SUBSCRIBERS: usize = 4;
    let Some(database) = fresh_database().await else { return };
    let writers = store_on(&database, |config| {
        config.group_commit = group_commit;
        config.max_connections = WRITERS as u32 + 4;
        config.hook = Some(chaos_hook(0.15));
    })
    .await;
    // Subscribers on another store: they are woken by NOTIFY, not in-process.
    let readers = store_on(&database, |config| config.max_connections = 8).await;

    let subscribers: Vec<_> = (0..SUBSCRIBERS)
        .map(|i| {
            let source: &dyn EventReader = if i == 0 { &writers } else { &readers };
            let mut subscription = source.subscribe(Subscribe { batch_size: 7, ..Subscribe::after(Position::START) });
            let seen = Arc::new(Mutex::new(Vec::new()));
            let sink = seen.clone();
            let task = tokio::spawn(async move {
                while let Some(event) = subscription.next().await {
                    let event = event.unwrap();
                    sink.lock().unwrap().push((event.position, event.event_id));
                }
            });
            (seen, task)
        })
        .collect();
    // A reader that polls the log as fast as it can and checks it never sees
    // a new event below the highest position it has already seen.
    let poller_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let readers = readers.clone();
        let done = poller_done.clone();
        tokio::spawn(async move {
            let mut after = Position::START;
            let mut seen = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let page = readers.read_all(ReadAll::after(after, 50)).await.unwrap();
                for event in page {
                    assert!(event.position > after, "poller saw {} after {after}", event.position);
                    after = event.position;
                    seen.push(event.event_id);
                }
            }
            seen
        })
    };

    let committed = Arc::new(Mutex::new(HashSet::new()));
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let writers = writers.clone();
            let committed = committed.clone();
            let shared_stream = stream("order");
            tokio::spawn(async move {
                let own = stream("stock");
                for i in 0..APPENDS_PER_WRITER {
                    let n = 1 + (w + i) % 3;
                    let events: Vec<_> = (0..n).map(|k| noted(&format!("{w}-{i}-{k}"))).collect();
                    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
                    let target = if i % 2 == 0 { &own } else { &shared_stream };
                    match writers.append(to(target, ExpectedVersion::Any, events)).await {
                        Ok(_) => committed.lock().unwrap().extend(ids),
                        Err(AppendError::Backend(err)) if strata_store::chain(&err).contains("rolled back by the test") => {}
                        Err(other) => panic!("writer {w}: {other:?}"),
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let committed = committed.lock().unwrap().clone();
    assert!(committed.len() > WRITERS * APPENDS_PER_WRITER / 2, "too few commits: {}", committed.len());

    let log: Vec<(Position, Uuid)> =
        readers.read_all(ReadAll::after(Position::START, 1_000_000)).await.unwrap().into_iter().map(|e| (e.position, e.event_id)).collect();
    let in_log: HashSet<Uuid> = log.iter().map(|(_, id)| *id).collect();
    assert_eq!(in_log, committed, "the log and the acknowledged commits differ");
    assert_eq!(log.len(), committed.len(), "an event is stored twice");
    for (seen, _) in &subscribers {
        let seen = seen.clone();
        let expected = log.len();
        wait_until(Duration::from_secs(30), || {
            let n = seen.lock().unwrap().len();
            async move {
                if n >= expected {
                    Ok(())
                } else {
                    Err(format!("{n} of {expected} delivered"))
                }
            }
        })
        .await;
    }
    for (index, (seen, task)) in subscribers.into_iter().enumerate() {
        task.abort();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen, log, "subscriber {index} saw another order, a gap or a duplicate");
    }
    poller_done.store(true, std::sync::atomic::Ordering::Relaxed);
    let polled = poller.await.unwrap();
    let log_ids: Vec<Uuid> = log.iter().map(|(_, id)| *id).collect();
    assert_eq!(polled[..], log_ids[..polled.len()], "the poller saw another order");
    // Rolled-back transactions give their positions back: the log has no gaps.
    let positions: Vec<u64> = log.iter().map(|(p, _)| p.0).collect();
    assert_eq!(positions, (1..=log.len() as u64).collect::<Vec<_>>());
    drop((writers, readers));
    database.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_with_delays_and_rollbacks_never_make_a_subscriber_skip_or_reorder() {
    racing_writers_never_make_a_subscriber_skip_or_reorder(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_through_group_commit_never_make_a_subscriber_skip_or_reorder() {
    racing_writers_never_make_a_subscriber_skip_or_reorder(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_transaction_elsewhere_in_the_database_does_not_stall_subscribers() {
    let Some(database) = fresh_database().await else { return };
    let store = store_on(&database, |_| {}).await;
    let mut other = PgConnection::connect(&database.url).await.unwrap();
    other.execute("CREATE TABLE unrelated (x int)").await.unwrap();
    other.execute("BEGIN").await.unwrap();
    // A write gives the transaction an xid and keeps it in every snapshot's xip list.
    other.execute("INSERT INTO unrelated VALUES (1)").await.unwrap();

    let mut subscription = store.subscribe(Subscribe::after(Position::START));
    let s = stream("order");
    store.append(to(&s, ExpectedVersion::NoStream, vec![noted("while another transaction is open")])).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), subscription.next())
        .await
        .expect("the subscriber was stalled by an unrelated transaction")
        .unwrap()
        .unwrap();
    assert_eq!(event.stream_id, s);
    other.execute("ROLLBACK").await.unwrap();
    drop((subscription, store, other));
    database.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_creating_the_same_stream_get_one_winner_and_one_conflict() {
    let Some(database) = fresh_database().await else { return };
    let (a, b) = (store_on(&database, |_| {}).await, store_on(&database, |_| {}).await);
    for round in 0..20 {
        let s = stream("order");
        let (left, right) = tokio::join!(
            a.append(to(&s, ExpectedVersion::NoStream, vec![noted(&format!("a{round}"))])),
            b.append(to(&s, ExpectedVersion::NoStream, vec![noted(&format!("b{round}"))])),
        );
        let outcomes = [left, right];
        let wins = outcomes.iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "round {round}: {outcomes:?}");
        assert!(outcomes.iter().any(|r| matches!(r, Err(AppendError::Conflict { actual: 1, .. }))), "{outcomes:?}");
    }
    drop((a, b));
    database.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_refuses_update_and_delete_and_verify_reports_what_a_superuser_alters() {
    let Some(database) = fresh_database().await else { return };
    let store = store_on(&database, |_| {}).await;
    let (victim, other) = (stream("order"), stream("order"));
    store.append(to(&victim, ExpectedVersion::NoStream, vec![noted("a"), noted("b"), noted("c")])).await.unwrap();
    store.append(to(&other, ExpectedVersion::NoStream, vec![noted("x")])).await.unwrap();
    assert!(verify_log(&store, 2, None, &Default::default(), &mut |_, _| {}).await.unwrap().is_intact());
    let mut connection = PgConnection::connect(&database.url).await.unwrap();
    let forge = format!(
        "UPDATE strata_events SET payload = jsonb_set(payload, '{{text}}', '\"forged\"') \
         WHERE stream_id = '{victim}' AND stream_version = 2"
    );
    // The log refuses it…
    let refused = connection.execute(forge.as_str()).await.unwrap_err().to_string();
    assert!(refused.contains("append-only"), "{refused}");
    let refused = connection.execute(format!("DELETE FROM strata_events WHERE stream_id = '{other}'").as_str()).await.unwrap_err();
    assert!(refused.to_string().contains("append-only: DELETE refused"), "{refused}");
    assert!(verify_log(&store, 2, None, &Default::default(), &mut |_, _| {}).await.unwrap().is_intact());
    // …unless a superuser switches its triggers off: the chain shows it.
    connection.execute("SET session_replication_role = replica").await.unwrap();
    connection.execute(forge.as_str()).await.unwrap();
    let report = verify_log(&store, 2, None, &Default::default(), &mut |_, _| {}).await.unwrap();
    assert_eq!(report.broken.len(), 1, "{report:?}");
    assert_eq!((&report.broken[0].stream_id, report.broken[0].stream_version), (&victim, 2));
    assert!(matches!(report.broken[0].problem, LinkProblem::HashMismatch { .. }));
    drop((store, connection));
    database.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_leaves_nothing_behind_and_a_retry_succeeds() {
    let Some(database) = fresh_database().await else { return };
    let fail_next = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = fail_next.clone();
    let hook: AppendHook = Arc::new(move |phase| {
        let fail = phase == AppendPhase::BeforeCommit && flag.swap(false, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            if fail {
                Err("injected".to_owned())
            } else {
                Ok(())
            }
        })
    });
    let store = store_on(&database, |config| config.hook = Some(hook)).await;
    let s = stream("order");
    let events = vec![noted("a")];
    let err = store.append(to(&s, ExpectedVersion::NoStream, events.clone())).await.unwrap_err();
    assert!(matches!(err, AppendError::Backend(_)), "{err:?}");
    assert_eq!(store.head_position().await.unwrap(), Position::START);
    assert_eq!(store.stream_head(&s).await.unwrap(), None);
    let outcome = store.append(to(&s, ExpectedVersion::NoStream, events)).await.unwrap();
    assert_eq!(outcome.streams[0].positions, vec![Position(1)]);
    drop(store);
    database.drop_database().await;
}

/// An append the database refuses for its own data (a row a CHECK constraint
/// rejects, added here below every validation) fails alone: the appends that
/// shared its group-commit batch still commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_the_database_refuses_fails_alone_and_the_rest_of_its_batch_commits() {
    let Some(database) = fresh_database().await else { return };
    let store = store_on(&database, |config| config.max_connections = 16).await;
    let mut connection = PgConnection::connect(&database.url).await.unwrap();
    connection
        .execute("ALTER TABLE strata_events ADD CONSTRAINT refuse_poison CHECK ((payload->>'text') IS DISTINCT FROM 'poison')")
        .await
        .unwrap();
    crate::support::poison_appends_fail_alone(store).await;
    database.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_chain_cannot_be_recomputed_by_an_insider() {
    let mut databases = Vec::new();
    for _ in 0..4 {
        let Some(database) = fresh_database().await else { return };
        databases.push(database);
    }
    let mut fresh = databases.iter();
    crate::tamper::a_keyed_chain_cannot_be_recomputed_by_an_insider(|chain_key| {
        let database = fresh.next().expect("one database per scenario");
        async move {
            let store = store_on(database, |config| config.chain_key = chain_key).await;
            (store, PgConnection::connect(&database.url).await.unwrap())
        }
    })
    .await;
    for database in databases {
        database.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_tampering_is_reported() {
    let mut databases = Vec::new();
    for _ in 0..5 {
        let Some(database) = fresh_database().await else { return };
        databases.push(database);
    }
    let mut fresh = databases.iter();
    crate::tamper::every_kind_of_tampering_is_reported(|| {
        let database = fresh.next().expect("one database per scenario");
        async move { (store_on(database, |_| {}).await, PgConnection::connect(&database.url).await.unwrap()) }
    })
    .await;
    for database in databases {
        database.drop_database().await;
    }
}

/// A commit's statements and a projection's read of related streams stay
/// on their keys as the log grows from nothing. Plans are made once per
/// connection (generic plans), often while the tables are nearly empty: a
/// sequential scan of `strata_streams` chosen then was kept for the
/// connection's life (under the log head's lock, every stream head scanned
/// per batch), and the related-streams read became a scan of the log up to
/// its position. Counted by PostgreSQL itself (`pg_stat_user_tables`,
/// flushed when a connection ends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_and_related_reads_stay_on_their_keys_however_small_the_log_was_when_their_plans_were_made() {
    let Some(database) = fresh_database().await else { return };
    let admin = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&database.url).await.unwrap();
    // Migrating scans the new tables (building their indexes): counted apart.
    drop(store_on(&database, |_| {}).await);
    let migrated = table_scans(&admin).await;

    let mut config = PostgresConfig::new(&database.url);
    config.max_connections = 2;
    let store = PostgresEventStore::connect(config, registry()).await.unwrap();
    // Plans made on a log of three streams.
    for stream_id in (0..3).map(|_| stream("order")) {
        store.append(to(&stream_id, ExpectedVersion::NoStream, vec![noted("first")])).await.unwrap();
    }
    // Then 3,000 streams, and batches that move 50 existing heads each.
    let streams: Vec<_> = (0..3_000).map(|_| stream("order")).collect();
    for chunk in streams.chunks(100) {
        let appends = chunk.iter().flat_map(|s| to(s, ExpectedVersion::NoStream, vec![noted("created")])).collect();
        store.append(appends).await.unwrap();
    }
    for chunk in streams.chunks(50).take(20) {
        let appends = chunk.iter().flat_map(|s| to(s, ExpectedVersion::Exact(1), vec![noted("moved")])).collect();
        store.append(appends).await.unwrap();
    }
    let head = store.head_position().await.unwrap();
    assert_eq!(head, Position(3 + 3_000 + 1_000));
    // A projection's read of a batch's related streams: ten streams of two
    // events each, five times.
    let wanted: Vec<_> = streams.iter().take(10).map(|s| (s.clone(), 0)).collect();
    for _ in 0..5 {
        let read = store.read_streams(&wanted, head, 1_000).await.unwrap();
        assert_eq!(read.len(), 20);
        assert!(read.windows(2).all(|pair| pair[0].position < pair[1].position));
    }
    drop(store);

    let scans = table_scans(&admin).await;
    let (streams_scanned, streams_looked_up, _) = scans["strata_streams"];
    assert!(
        streams_looked_up >= 20,
        "the heads were not looked up by key ({streams_looked_up} index scans): the statistics were not flushed"
    );
    assert_eq!(streams_scanned - migrated["strata_streams"].0, 0, "appends scanned every stream head");
    let (_, _, events_read) = scans["strata_events"];
    assert_eq!(events_read - migrated["strata_events"].2, 100, "reading ten streams five times fetched other events of the log");
    admin.close().await;
    database.drop_database().await;
}

/// Per table so far: sequential scans, index scans, and rows read by
/// either; once every other connection to the database has ended (a
/// backend flushes its statistics when it exits).
async fn table_scans(admin: &sqlx::PgPool) -> std::collections::HashMap<String, (i64, i64, i64)> {
    wait_until(Duration::from_secs(10), || async {
        let others: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
        )
        .fetch_one(admin)
        .await
        .unwrap();
        if others == 0 {
            Ok(())
        } else {
            Err(others)
        }
    })
    .await;
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT relname::text, seq_scan, coalesce(idx_scan, 0), seq_tup_read + coalesce(idx_tup_fetch, 0) FROM pg_stat_user_tables",
    )
    .fetch_all(admin)
    .await
    .unwrap();
    rows.into_iter().map(|(table, seq, idx, read)| (table, (seq, idx, read))).collect()
}
