//! The MongoDB side of `bench project` and `bench rebuild`: scratch
//! databases, and the raw baselines (the same writes as plain unordered
//! `update` commands, or the same final documents as unordered inserts: no
//! transaction, no guards, no reads).

use std::sync::Arc;
use std::time::Instant;

use mongodb::bson::{doc, Bson, Document as BsonDocument};
use mongodb::options::ClientOptions;
use mongodb::Client;
use strata_projections::sink::Dump;
use strata_projections::{MongoSink, MongoSinkConfig, Write};
use uuid::Uuid;

use super::kit::Share;

/// A Mongo sink on a scratch database `bench_<uuid>` of the server `url` names.
pub(crate) async fn scratch_sink(url: &str) -> anyhow::Result<Arc<MongoSink>> {
    let database = format!("bench_{}", Uuid::new_v4().simple());
    let config = MongoSinkConfig { url: url.to_owned(), database: Some(database) };
    Ok(Arc::new(MongoSink::connect(config).await?))
}

async fn scratch_database(url: &str) -> anyhow::Result<mongodb::Database> {
    let client = Client::with_options(ClientOptions::parse(url).await?)?;
    Ok(client.database(&format!("bench_{}", Uuid::new_v4().simple())))
}

fn json_to_bson(value: &serde_json::Value) -> anyhow::Result<Bson> {
    Ok(mongodb::bson::to_bson(value)?)
}

/// The raw projection baseline: every worker sends, per batch of its share,
/// one unordered `update` command holding the same folded upserts a commit
/// sends (one per document and index entry) and one per stream's version:
/// what a commit writes, without its transaction, reads and guards.
/// Returns seconds.
pub(crate) async fn raw_writes(url: &str, shares: &Arc<Vec<Share>>, batch_size: usize) -> anyhow::Result<f64> {
    let database = scratch_database(url).await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..shares.len() {
        let (shares, database) = (shares.clone(), database.clone());
        tasks.push(tokio::spawn(async move {
            for chunk in shares[worker].chunks(batch_size) {
                // The documents a commit writes for this batch, folded the
                // same way, and each stream's version.
                let writes: Vec<Write> = chunk.iter().flat_map(|(_, writes)| writes.iter().cloned()).collect();
                let statements = MongoSink::statements(&writes);
                let mut versions: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
                for (event, _) in chunk {
                    versions.insert(event.stream_id.as_str(), event.stream_version);
                }
                let mut updates: Vec<Bson> = statements.into_iter().map(Bson::Document).collect();
                for (stream, version) in versions {
                    let version = i64::try_from(version)?;
                    updates.push(Bson::Document(
                        doc! { "q": { "_id": format!("s:{stream}") }, "u": { "$set": { "v": version } }, "upsert": true },
                    ));
                }
                database.run_command(doc! { "update": "raw", "updates": updates, "ordered": false }).await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    database.drop().await?;
    Ok(seconds)
}

/// The raw rebuild baseline: the rebuilt model's documents, index entries
/// and stream versions inserted into an empty collection in unordered
/// batches of `batch_size`. Returns seconds and how many were written.
pub(crate) async fn raw_inserts(url: &str, dump: &Dump, batch_size: usize) -> anyhow::Result<(f64, usize)> {
    let mut documents: Vec<BsonDocument> = Vec::new();
    for (key, fields) in &dump.documents {
        let fields: BsonDocument = fields.iter().map(|(k, v)| Ok((k.clone(), json_to_bson(v)?))).collect::<anyhow::Result<_>>()?;
        documents.push(doc! { "_id": format!("d:{key}"), "f": fields });
    }
    for (index, entries) in &dump.indexes {
        for (score, member) in entries {
            documents.push(doc! { "_id": format!("i:{index}:{member}"), "ix": index, "m": member, "s": *score });
        }
    }
    for (stream, version) in &dump.stream_versions {
        documents.push(doc! { "_id": format!("s:{stream}"), "v": i64::try_from(*version)? });
    }
    let database = scratch_database(url).await?;
    let collection = database.collection::<BsonDocument>("raw");
    let started = Instant::now();
    for chunk in documents.chunks(batch_size.max(1)) {
        collection.insert_many(chunk).ordered(false).await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    database.drop().await?;
    Ok((seconds, documents.len()))
}
