//! The CLI as users run it: migrate, audit stream, audit verify (which must
//! catch a payload edited with plain SQL), and clear errors for bad input.

use serde_json::{json, Value};
use sqlx::{Connection, Executor};
use strata_api::backend::{registry, EventStoreBackend};
use strata_store::{EventMetadata, ExpectedVersion, NewEvent, StreamAppend, StreamId};
use uuid::Uuid;

use crate::support::{run_ok, scratch_sqlite, strata, TestDatabase};

fn order_placed_v1(order_id: Uuid) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: "OrderPlaced".into(),
        schema_version: 1,
        payload: json!({
            "orderId": order_id.to_string(), "customerId": "c-7",
            "lines": [{ "sku": "SKU-1", "quantity": 2, "unitPrice": "10.00" }],
            "paymentMethod": "card",
            "shippingAddress": { "name": "N", "street": "S", "city": "C", "postalCode": "P", "country": "DE" }
        }),
        metadata: EventMetadata { actor: Some("client:carol".into()), command_id: Some(Uuid::new_v4()), ..EventMetadata::default() },
    }
}

/// Seeds two orders through the library, then audits them through the binary.
async fn audit_round_trip(url: &str, tamper: &str) {
    run_ok(strata().args(["migrate", "--event-store", url]));
    let backend = EventStoreBackend::open(url, registry().unwrap(), Default::default(), None).await.unwrap();
    let order_id = Uuid::new_v4();
    let stream_id = StreamId::new("order", order_id).unwrap();
    let other = StreamId::new("order", Uuid::new_v4()).unwrap();
    let store = backend.store();
    store
        .append(vec![
            StreamAppend { stream_id: stream_id.clone(), expected: ExpectedVersion::NoStream, events: vec![order_placed_v1(order_id)] },
            StreamAppend { stream_id: other.clone(), expected: ExpectedVersion::NoStream, events: vec![order_placed_v1(Uuid::new_v4())] },
        ])
        .await
        .unwrap();

    let output = run_ok(strata().env("STRATA_EVENT_STORE", url).args(["audit", "stream", stream_id.as_str(), "--json"]));
    let audit: Value = serde_json::from_slice(&output.stdout).unwrap();
    let event = &audit["events"][0];
    assert_eq!(event["schemaVersion"], 2, "audit shows the upcast event: {audit}");
    assert_eq!(event["payload"]["totalCents"], 2000);
    assert_eq!(event["metadata"]["actor"], "client:carol");
    assert_eq!(event["streamVersion"], 1);
    let output = run_ok(strata().env("STRATA_EVENT_STORE", url).args(["audit", "stream", stream_id.as_str(), "--json", "--as-stored"]));
    let stored: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(stored["events"][0]["payload"]["lines"][0]["unitPrice"], "10.00");
    let text = run_ok(strata().env("STRATA_EVENT_STORE", url).args(["audit", "stream", stream_id.as_str()]));
    assert!(String::from_utf8_lossy(&text.stdout).contains("OrderPlaced v2"));

    let clean = run_ok(strata().env("STRATA_EVENT_STORE", url).args(["audit", "verify"]));
    assert!(String::from_utf8_lossy(&clean.stdout).contains("chain intact"), "{clean:?}");
    let anchors = tempfile::tempdir().unwrap();
    let anchor = anchors.path().join("anchor.json");
    run_ok(strata().env("STRATA_EVENT_STORE", url).args(["audit", "anchor", "--out"]).arg(&anchor));
    let kept: Value = serde_json::from_str(&std::fs::read_to_string(&anchor).unwrap()).unwrap();
    assert_eq!(kept["position"], 2, "{kept}");
    let held = run_ok(strata().env("STRATA_EVENT_STORE", url).args(["audit", "verify", "--anchor"]).arg(&anchor));
    assert!(String::from_utf8_lossy(&held.stdout).contains("anchored prefix 1..=2 unchanged"), "{held:?}");
    std::fs::write(anchors.path().join("bad.json"), r#"{"position": 2, "logDigest": "00"}"#).unwrap();
    let bad = strata()
        .env("STRATA_EVENT_STORE", url)
        .args(["audit", "verify", "--anchor"])
        .arg(anchors.path().join("bad.json"))
        .output()
        .unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("logDigest"), "{bad:?}");

    let sql = tamper.replace("{stream}", stream_id.as_str());
    if url.starts_with("sqlite") {
        let mut connection = sqlx::SqliteConnection::connect(url).await.unwrap();
        connection.execute(sql.as_str()).await.unwrap();
    } else {
        let mut connection = sqlx::PgConnection::connect(url).await.unwrap();
        // The log refuses UPDATE by trigger: the insider here is a superuser.
        connection.execute("SET session_replication_role = replica").await.unwrap();
        connection.execute(sql.as_str()).await.unwrap();
    }
    let broken = strata().env("STRATA_EVENT_STORE", url).args(["audit", "verify", "--json"]).output().unwrap();
    assert_eq!(broken.status.code(), Some(1), "{broken:?}");
    let report: Value = serde_json::from_slice(&broken.stdout).unwrap();
    assert_eq!(report["broken"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(report["broken"][0]["stream_id"], stream_id.as_str());
    assert_eq!(report["broken"][0]["problem"]["kind"], "hash_mismatch");
    let against = strata().env("STRATA_EVENT_STORE", url).args(["audit", "verify", "--json", "--anchor"]).arg(&anchor).output().unwrap();
    assert_eq!(against.status.code(), Some(1), "{against:?}");
    let report: Value = serde_json::from_slice(&against.stdout).unwrap();
    // The digest covers the stored hashes (unchanged here); the chain shows the edit.
    assert_eq!((report["anchor_checked"].as_u64(), report["broken"][0]["problem"]["kind"].as_str()), (Some(2), Some("hash_mismatch")));
    let refused = strata().env("STRATA_EVENT_STORE", url).args(["audit", "anchor"]).output().unwrap();
    assert_eq!(refused.status.code(), Some(1), "a broken log is not anchored: {refused:?}");
    assert!(refused.stdout.is_empty() && String::from_utf8_lossy(&refused.stderr).contains("not anchoring"), "{refused:?}");
    let other_only = strata().env("STRATA_EVENT_STORE", url).args(["audit", "verify", "--stream", other.as_str()]).output().unwrap();
    assert!(other_only.status.success(), "{other_only:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_on_sqlite_shows_metadata_and_catches_an_edited_payload() {
    let scratch = scratch_sqlite();
    audit_round_trip(
        &scratch.url,
        "UPDATE strata_events SET payload = replace(payload, '\"quantity\":2', '\"quantity\":20') WHERE stream_id = '{stream}'",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_on_postgres_shows_metadata_and_catches_an_edited_payload() {
    let Some(database) = TestDatabase::create().await else { return };
    let url = database.url.clone();
    audit_round_trip(
        &url,
        "UPDATE strata_events SET payload = jsonb_set(payload, '{paymentMethod}', '\"stolen\"') WHERE stream_id = '{stream}'",
    )
    .await;
    database.drop_database().await;
}

/// A keyed chain, rotated once, with anchors signed by the auditor and
/// chained: what the auditor runs, and what an insider cannot get past.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_chain_rotation_and_signed_chained_anchors_through_the_cli() {
    const FIRST: &str = "first-chain-key-0123456789abcdefghijkl";
    const SECOND: &str = "second-chain-key-0123456789abcdefghijk";
    let scratch = scratch_sqlite();
    let url = scratch.url.as_str();
    let dir = scratch.dir.path();
    let audit = |keys: &[(&str, &str)]| {
        let mut command = strata();
        command.env("STRATA_EVENT_STORE", url).arg("audit");
        for (name, value) in keys {
            command.env(name, value);
        }
        command
    };
    let keyed = [("STRATA_CHAIN_KEY", FIRST)];
    let rotated = [("STRATA_CHAIN_KEY", SECOND), ("STRATA_CHAIN_KEY_RETIRED", FIRST)];
    run_ok(strata().args(["migrate", "--event-store", url]));
    let append = |key: &str, n: usize| {
        let key = strata_store::ChainKey::new(key).unwrap();
        async move {
            let backend = EventStoreBackend::open(url, registry().unwrap(), Default::default(), Some(key)).await.unwrap();
            for _ in 0..n {
                let order_id = Uuid::new_v4();
                let stream_id = StreamId::new("order", order_id).unwrap();
                let events = vec![order_placed_v1(order_id)];
                backend.store().append(vec![StreamAppend { stream_id, expected: ExpectedVersion::NoStream, events }]).await.unwrap();
            }
        }
    };
    append(FIRST, 2).await;

    // Keyed hashes hold under their key only; without it, a hint.
    let unkeyed = audit(&[]).arg("verify").output().unwrap();
    assert_eq!(unkeyed.status.code(), Some(1), "{unkeyed:?}");
    assert!(String::from_utf8_lossy(&unkeyed.stdout).contains("hint: if this log was written with STRATA_CHAIN_KEY"), "{unkeyed:?}");
    let held = run_ok(audit(&keyed).arg("verify"));
    assert!(String::from_utf8_lossy(&held.stdout).contains("2 events in 2 streams checked with the chain key: chain intact"), "{held:?}");
    for (name, value, says) in [
        ("STRATA_CHAIN_KEY", "short", "STRATA_CHAIN_KEY: a chain key needs at least 32 characters"),
        ("STRATA_CHAIN_KEY_RETIRED", FIRST, "STRATA_CHAIN_KEY_RETIRED is set without STRATA_CHAIN_KEY"),
    ] {
        let refused = audit(&[(name, value)]).arg("verify").output().unwrap();
        assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains(says), "{refused:?}");
        assert!(!String::from_utf8_lossy(&refused.stderr).contains(FIRST), "a key is never printed: {refused:?}");
    }

    // The auditor's key pair; a signed anchor holds under its public half only.
    let (sign, public) = (dir.join("auditor.key"), dir.join("auditor.pub"));
    run_ok(audit(&[]).args(["keygen", "--sign-key"]).arg(&sign).arg("--verify-key").arg(&public));
    let again = audit(&[]).args(["keygen", "--sign-key"]).arg(&sign).arg("--verify-key").arg(&public).output().unwrap();
    assert!(!again.status.success(), "keygen never overwrites a key: {again:?}");
    let (other_sign, other_public) = (dir.join("other.key"), dir.join("other.pub"));
    run_ok(audit(&[]).args(["keygen", "--sign-key"]).arg(&other_sign).arg("--verify-key").arg(&other_public));
    let first = dir.join("first.json");
    run_ok(audit(&keyed).args(["anchor", "--sign-key"]).arg(&sign).arg("--out").arg(&first));
    let verify_against = |anchor: &std::path::Path, public: &std::path::Path, keys: &[(&str, &str)]| {
        audit(keys).args(["verify", "--anchor"]).arg(anchor).arg("--verify-key").arg(public).output().unwrap()
    };
    let held = verify_against(&first, &public, &keyed);
    assert!(held.status.success() && String::from_utf8_lossy(&held.stdout).contains("anchored prefix 1..=2 unchanged"), "{held:?}");
    let foreign = verify_against(&first, &other_public, &keyed);
    assert!(!foreign.status.success() && String::from_utf8_lossy(&foreign.stderr).contains("signed by another key"), "{foreign:?}");
    // An anchor edited after signing (moved back to cover less) is refused.
    let mut edited: Value = serde_json::from_str(&std::fs::read_to_string(&first).unwrap()).unwrap();
    edited["position"] = json!(1);
    let forged = dir.join("forged.json");
    std::fs::write(&forged, edited.to_string()).unwrap();
    let refused = verify_against(&forged, &public, &keyed);
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("altered after signing"), "{refused:?}");

    // Rotation: new events under the second key, the first one retired.
    append(SECOND, 1).await;
    let only_new = audit(&[("STRATA_CHAIN_KEY", SECOND)]).arg("verify").output().unwrap();
    assert_eq!(only_new.status.code(), Some(1), "events under the retired key need it: {only_new:?}");
    let only_old = audit(&keyed).arg("verify").output().unwrap();
    assert_eq!(only_old.status.code(), Some(1), "events under the new key need it: {only_old:?}");
    let both = run_ok(audit(&rotated).arg("verify"));
    assert!(String::from_utf8_lossy(&both.stdout).contains("3 events in 3 streams checked with the chain key: chain intact"), "{both:?}");

    // The next anchor extends the first and names it.
    let second = dir.join("second.json");
    run_ok(audit(&rotated).args(["anchor", "--sign-key"]).arg(&sign).arg("--previous").arg(&first).arg("--out").arg(&second));
    let kept: Value = serde_json::from_str(&std::fs::read_to_string(&second).unwrap()).unwrap();
    assert_eq!((kept["position"].as_u64(), kept["previous"]["position"].as_u64()), (Some(3), Some(2)), "{kept}");
    assert!(kept["previous"]["anchorDigest"].as_str().is_some_and(|digest| digest.len() == 64), "{kept}");
    assert!(verify_against(&second, &public, &rotated).status.success());
    // A previous anchor that is not the auditor's is refused before anything is written.
    let third = dir.join("third.json");
    let unsigned = dir.join("unsigned.json");
    run_ok(audit(&rotated).args(["anchor", "--out"]).arg(&unsigned));
    let refused = audit(&rotated)
        .args(["anchor", "--sign-key"])
        .arg(&sign)
        .arg("--previous")
        .arg(&unsigned)
        .arg("--out")
        .arg(&third)
        .output()
        .unwrap();
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("not signed"), "{refused:?}");
    assert!(!third.exists());

    // An insider cuts the last event and rewrites the heads to match: the
    // chain alone is consistent, but the log no longer extends the last
    // anchor, so it is not anchored again.
    let mut connection = sqlx::SqliteConnection::connect(url).await.unwrap();
    for statement in [
        "DELETE FROM strata_streams WHERE stream_id = (SELECT stream_id FROM strata_events WHERE position = 3)",
        "DELETE FROM strata_events WHERE position = 3",
        "UPDATE strata_log_head SET position = 2",
    ] {
        connection.execute(statement).await.unwrap();
    }
    assert!(audit(&rotated).arg("verify").output().unwrap().status.success(), "a consistent cut shows no trace without the anchor");
    let refused =
        audit(&rotated).args(["anchor", "--sign-key"]).arg(&sign).arg("--previous").arg(&second).arg("--out").arg(&third).output().unwrap();
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("does not extend the previous anchor"), "{refused:?}");
    assert!(!third.exists());
    let shown = verify_against(&second, &public, &rotated);
    assert!(
        !shown.status.success() && String::from_utf8_lossy(&shown.stdout).contains("TRUNCATED the anchor covers positions 1..=3"),
        "{shown:?}"
    );
}

#[test]
fn a_bad_event_store_url_is_a_clear_error() {
    let output = strata().args(["migrate", "--event-store", "mysql://localhost/db"]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("STRATA_EVENT_STORE") && stderr.contains("mysql"), "{stderr}");
}

#[test]
fn an_invalid_stream_id_is_refused_before_touching_the_store() {
    let scratch = scratch_sqlite();
    let output = strata().env("STRATA_EVENT_STORE", &scratch.url).args(["audit", "stream", "no dash here"]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid stream id"), "{output:?}");
    assert!(!scratch.dir.path().join("strata.db").exists());
}

#[test]
fn bench_append_prints_one_json_object_with_a_baseline_and_a_ratio() {
    let scratch = scratch_sqlite();
    let output = run_ok(strata().env("STRATA_EVENT_STORE", &scratch.url).args([
        "bench",
        "append",
        "--writers",
        "2",
        "--events-per-append",
        "3",
        "--duration",
        "0.3",
        "--runs",
        "1",
    ]));
    let result: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(result["bench"], "append");
    assert_eq!(result["backend"], "sqlite");
    assert_eq!(result["writers"], 2);
    assert!(result["events_per_s"].as_f64().unwrap() > 0.0, "{result}");
    assert!(result["baseline"]["events_per_s"].as_f64().unwrap() > 0.0, "{result}");
    assert!(result["ratio"].as_f64().unwrap() > 0.0, "{result}");
    for key in ["p50_ms", "p95_ms", "p99_ms", "appends_per_s", "seconds"] {
        assert!(result[key].is_number(), "{key} missing: {result}");
    }
}

#[test]
fn bench_commands_on_one_hot_aggregate_queues_commands_instead_of_conflicting() {
    let scratch = scratch_sqlite();
    let output = run_ok(strata().env("STRATA_EVENT_STORE", &scratch.url).args([
        "bench",
        "commands",
        "--aggregates",
        "1",
        "--writers",
        "4",
        "--duration",
        "0.3",
        "--runs",
        "1",
    ]));
    let result: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(result["bench"], "commands");
    assert_eq!((result["aggregates"].as_u64(), result["writers"].as_u64()), (Some(1), Some(4)));
    assert!(result["commands_per_s"].as_f64().unwrap() > 0.0, "{result}");
    assert!(result["baseline"]["events_per_s"].as_f64().unwrap() > 0.0, "{result}");
    assert!(result["ratio"].as_f64().unwrap() > 0.0, "{result}");
    // One process, one handler: commands on one stream queue, they never race.
    assert_eq!(result["conflict_retry_rate"].as_f64(), Some(0.0), "{result}");
    for key in ["p50_ms", "p95_ms", "p99_ms", "seconds"] {
        assert!(result[key].is_number(), "{key} missing: {result}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_relay_puts_a_scratch_log_on_jetstream_next_to_raw_publishing() {
    let nats = strata_store::testkit::Service::Nats.url();
    let address = nats.trim_start_matches("nats://").to_owned();
    if let Err(err) = tokio::net::TcpStream::connect(&address).await {
        strata_store::testkit::report_unreachable(strata_store::testkit::Service::Nats, &nats, &err);
        return;
    }
    let scratch = scratch_sqlite();
    let output = run_ok(strata().env("STRATA_EVENT_STORE", &scratch.url).env("STRATA_BUS", &nats).args([
        "bench",
        "relay",
        "--events",
        "450",
        "--batch-size",
        "100",
        "--runs",
        "2",
    ]));
    let result: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!((result["bench"].as_str(), result["events"].as_u64()), (Some("relay"), Some(450)));
    assert!(result["events_per_s"].as_f64().unwrap() > 0.0, "{result}");
    assert!(result["baseline"]["events_per_s"].as_f64().unwrap() > 0.0, "{result}");
    assert!(result["ratio"].as_f64().unwrap() > 0.0, "{result}");
}

#[test]
fn an_unknown_bus_is_a_clear_error() {
    let output = strata().args(["migrate", "--bus", "kafka-ish://x"]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("STRATA_BUS") && stderr.contains("nats://"), "{stderr}");
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_commands_rebuild_pause_resume_and_report_status() {
    use strata_projections::orders::sample::{requests, sample, SampleConfig};
    use strata_projections::{RedisSink, RedisSinkConfig};

    let redis = strata_store::testkit::Service::Redis.url();
    let prefix = format!("test_{}", Uuid::new_v4().simple());
    let sink = match RedisSink::connect(RedisSinkConfig { key_prefix: prefix.clone(), ..RedisSinkConfig::new(redis.clone()) }).await {
        Ok(sink) => sink,
        Err(err) => return strata_store::testkit::report_unreachable(strata_store::testkit::Service::Redis, &redis, &err),
    };
    let scratch = scratch_sqlite();
    run_ok(strata().args(["migrate", "--event-store", &scratch.url]));
    let backend = EventStoreBackend::open(&scratch.url, registry().unwrap(), Default::default(), None).await.unwrap();
    for request in requests(sample(SampleConfig { orders: 30, ..SampleConfig::default() }), 50) {
        backend.store().append(request).await.unwrap();
    }
    // A poison event: a confirmation of an order that was never placed.
    let broken = Uuid::new_v4();
    let poison = NewEvent {
        event_id: Uuid::new_v4(),
        event_type: "OrderConfirmed".into(),
        schema_version: 1,
        payload: json!({"orderId": broken, "confirmedAt": "2027-01-15T08:00:00Z"}),
        metadata: EventMetadata::default(),
    };
    let broken_stream = StreamId::new("order", broken).unwrap();
    let append = StreamAppend { stream_id: broken_stream.clone(), expected: ExpectedVersion::NoStream, events: vec![poison] };
    backend.store().append(vec![append]).await.unwrap();
    let head = backend.store().head_position().await.unwrap().0;
    let read_model = format!("{redis}?key_prefix={prefix}");
    let cli = |args: &[&str]| {
        let mut command = strata();
        command.env("STRATA_EVENT_STORE", &scratch.url).env("STRATA_READ_MODEL", &read_model).args(args);
        command
    };
    let json = |args: &[&str]| -> Value { serde_json::from_slice(&run_ok(&mut cli(args)).stdout).unwrap() };

    let listed = json(&["projections", "list", "--json"]);
    let names: Vec<&str> = listed.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["orders", "stock"]);
    assert_eq!(listed[0]["state"], "not built");
    assert_eq!(listed[0]["lag"], head);
    // Not built: its oldest unapplied event is the log's first, written before the command ran.
    assert!(listed[0]["lag_seconds"].as_f64().is_some_and(|age| age > 0.0), "{listed}");

    let report = json(&["projections", "rebuild", "orders", "--batch-size", "40"]);
    assert_eq!(report["events"], head, "{report}");
    let status = json(&["projections", "status", "orders", "--json"]);
    assert_eq!(
        (status["generation"].clone(), status["position"].clone(), status["lag"].clone()),
        (report["generation"].clone(), json!(head), json!(0))
    );
    assert_eq!(status["dead_letters"], 1, "{status}");
    assert_eq!((status["lag_seconds"].as_f64(), &status["rebuild"]), (Some(0.0), &Value::Null), "caught up, no rebuild running: {status}");
    assert_eq!(status["parked"][0]["streamId"], broken_stream.as_str());
    assert!(status["parked"][0]["reason"].as_str().unwrap().contains("without OrderPlaced"), "{status}");

    run_ok(&mut cli(&["projections", "pause", "orders"]));
    assert_eq!(json(&["projections", "status", "orders", "--json"])["state"], "paused");
    run_ok(&mut cli(&["projections", "resume", "orders"]));
    assert_eq!(json(&["projections", "status", "orders", "--json"])["paused"], false);

    let again = json(&["projections", "rebuild", "orders"]);
    assert_eq!(again["previous"], report["generation"]);
    let human = String::from_utf8(run_ok(&mut cli(&["projections", "status", "orders"])).stdout).unwrap();
    assert!(human.contains(&format!("generation    {}", again["generation"])), "{human}");
    assert!(human.contains(&format!("parked        {broken_stream} v1 OrderConfirmed")), "{human}");

    let output = cli(&["projections", "rebuild", "nope"]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown projection \"nope\"") && stderr.contains("orders, stock"), "{stderr}");
    let output = cli(&["projections", "list", "--read-model", &format!("{redis}?prefix=x")]).output().unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown option \"prefix\""));

    sink.delete_all().await.unwrap();
}

#[test]
fn splitting_roles_over_an_in_process_bus_is_a_clear_error() {
    let scratch = scratch_sqlite();
    let output = strata().env("STRATA_EVENT_STORE", &scratch.url).args(["serve", "--roles", "relay"]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("STRATA_BUS=memory"), "{stderr}");
}

#[test]
fn splitting_roles_over_an_embedded_event_store_is_a_clear_error() {
    let scratch = scratch_sqlite();
    let output = strata()
        .env("STRATA_EVENT_STORE", &scratch.url)
        .args(["serve", "--roles", "api", "--bus", "nats://127.0.0.1:4222", "--read-model", "redis://127.0.0.1:6379"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("embedded in one process") && stderr.contains("postgres://"), "{stderr}");
}

#[test]
fn sagas_commands_list_no_stuck_saga_and_refuse_to_resume_one_that_is_not() {
    let scratch = scratch_sqlite();
    run_ok(strata().env("STRATA_EVENT_STORE", &scratch.url).arg("migrate"));
    let output = run_ok(strata().env("STRATA_EVENT_STORE", &scratch.url).args(["sagas", "stuck"]));
    assert!(String::from_utf8_lossy(&output.stdout).contains("no saga is stuck"));
    let output = run_ok(strata().env("STRATA_EVENT_STORE", &scratch.url).args(["sagas", "stuck", "--json"]));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "[]");
    let output = strata()
        .env("STRATA_EVENT_STORE", &scratch.url)
        .args(["sagas", "resume", "00000000-0000-0000-0000-000000000001"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not stuck"));
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_project_and_rebuild_print_rates_next_to_their_baselines() {
    let redis = strata_store::testkit::Service::Redis.url();
    if let Err(err) = tokio::net::TcpStream::connect(redis.trim_start_matches("redis://")).await {
        return strata_store::testkit::report_unreachable(strata_store::testkit::Service::Redis, &redis, &err);
    }
    let output = run_ok(strata().env("STRATA_READ_MODEL", &redis).args(["bench", "project", "--events", "3000", "--runs", "2"]));
    let result: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!((result["bench"].as_str(), result["events"].as_u64()), (Some("project"), Some(3000)));
    assert!(result["events_per_s"].as_f64().unwrap() > 0.0, "{result}");
    assert!(result["baseline"]["events_per_s"].as_f64().unwrap() > 0.0, "{result}");
    assert!(result["ratio"].as_f64().unwrap() > 0.0, "{result}");

    let scratch = scratch_sqlite();
    let output = run_ok(strata().env("STRATA_EVENT_STORE", &scratch.url).env("STRATA_READ_MODEL", &redis).args([
        "bench",
        "rebuild",
        "--events",
        "3000",
        "--batch-size",
        "700",
    ]));
    let result: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!((result["bench"].as_str(), result["events"].as_u64()), (Some("rebuild"), Some(3000)));
    assert!(result["seconds"].as_f64().unwrap() > 0.0, "{result}");
    assert!(result["rss_peak_mb"].as_f64().unwrap() >= result["rss_before_mb"].as_f64().unwrap(), "{result}");
}

/// `serve`'s log on stderr (not a terminal here), as text and as JSON, until
/// it listens; returns what it wrote.
fn serve_log(format: Option<&str>) -> String {
    let scratch = scratch_sqlite();
    let log = scratch.dir.path().join("stderr.log");
    let mut command = strata();
    command.current_dir(scratch.dir.path()).env("RUST_LOG", "info").stderr(std::fs::File::create(&log).unwrap());
    if let Some(format) = format {
        command.env("STRATA_LOG_FORMAT", format);
    }
    let server = crate::support::Server::start(command);
    drop(server);
    std::fs::read_to_string(&log).unwrap()
}

#[test]
fn logs_have_no_colour_codes_off_a_terminal_and_are_one_json_object_per_line_in_json() {
    let text = serve_log(None);
    assert!(text.contains(" INFO "), "{text}");
    assert!(!text.contains('\u{1b}'), "colour codes in a log written to a file: {text:?}");

    let json = serve_log(Some("json"));
    let lines: Vec<&str> = json.lines().filter(|line| !line.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let object: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line:?}"));
        assert!(object["level"].is_string() && object["timestamp"].is_string() && object["fields"]["message"].is_string(), "{line}");
    }
    assert!(lines.iter().any(|line| line.contains("\"level\":\"INFO\"")), "{json}");

    let refused = strata().env("STRATA_LOG_FORMAT", "xml").arg("migrate").output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("STRATA_LOG_FORMAT"), "{refused:?}");
}

/// Development tokens only where nobody else can reach them: 86e7a2f, on
/// PostgreSQL listening on 0.0.0.0 with an empty `STRATA_TOKENS` (compose's
/// `${STRATA_TOKENS:-}`), minted an operator token and printed it.
#[test]
fn without_authentication_serve_starts_only_on_the_embedded_default_on_loopback_or_with_dev() {
    let scratch = scratch_sqlite();
    // Refused before anything is opened: this PostgreSQL is never reached.
    let postgres = "postgres://postgres@127.0.0.1:1/unreachable";
    let cases: [(&[(&str, &str)], &str); 5] = [
        (&[("STRATA_EVENT_STORE", postgres)], "no authentication is configured"),
        (&[("STRATA_EVENT_STORE", postgres), ("STRATA_TOKENS", "")], "STRATA_TOKENS is set but empty"),
        (&[("STRATA_EVENT_STORE", postgres), ("STRATA_TOKENS", " ")], "STRATA_TOKENS is set but empty"),
        (&[("STRATA_EVENT_STORE", postgres), ("STRATA_JWT_SECRET", "")], "STRATA_JWT_SECRET is set but empty"),
        (&[("STRATA_EVENT_STORE", &scratch.url), ("STRATA_LISTEN", "0.0.0.0:0")], "no authentication is configured"),
    ];
    for (env, expected) in cases {
        let output = strata().arg("serve").envs(env.iter().copied()).output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(!output.status.success(), "{env:?} started: {stdout}");
        assert!(stderr.contains(expected), "{env:?}: {stderr}");
        assert!(!stdout.contains("token operator:"), "{env:?} printed a development token: {stdout}");
    }
    // --dev (STRATA_DEV=1) asks for them anywhere.
    let mut serving = strata()
        .arg("serve")
        .env("STRATA_EVENT_STORE", &scratch.url)
        .env("STRATA_LISTEN", "0.0.0.0:0")
        .env("STRATA_DEV", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(serving.stdout.take().unwrap());
    let printed = std::io::BufRead::lines(stdout).map_while(Result::ok).any(|line| line.starts_with("token operator:"));
    let _ = serving.kill();
    let _ = serving.wait();
    assert!(printed, "--dev printed no development token");
}
