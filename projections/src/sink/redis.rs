//! [`RedisSink`]: read models in Redis (feature `redis`).
//!
//! # Layout
//! Every key of a projection shares the hash tag `{<prefix>:<projection>}`,
//! so a projection lives in one Redis Cluster slot and one script can touch
//! all of it:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `R live` | string | the generation readers follow |
//! | `R next` | string | the last generation number handed out |
//! | `R meta` | hash | paused, state, lastError, rate, rebuilding |
//! | `R gN:marker` | string | written when the generation is created; gone = data lost |
//! | `R gN:streams` | hash | stream → applied version |
//! | `R gN:parked` | hash | stream → version it is parked from |
//! | `R gN:dead` | hash | `<position>:<event id>` → dead letter JSON |
//! | `R gN:stats` | hash | position, events, dead |
//! | `R gN:d:<key>` | hash | a document: field → JSON |
//! | `R gN:i:<index>` | sorted set | document keys by score |
//!
//! (`R` = `{<prefix>:<projection>}:`.)
//!
//! # Atomicity
//! A commit is one Lua script: it checks every stream guard, then applies the
//! writes, dead letters and position, so a batch is all or nothing and a
//! redelivery (whose guard no longer holds) writes nothing. Queries are
//! scripts too: they read the `live` pointer and the data in one step, so a
//! generation switch or drop never shows a reader half a model. Batches are
//! sent on one multiplexed connection, so concurrent commits pipeline.
//!
//! # Changes
//! A commit to a live generation also PUBLISHes, inside its script, what it
//! moved to `<prefix>:changes` ([`Change::to_text`]: the projection, then one
//! `s:<stream>` or `d:<document>` per line); a switch publishes an empty
//! message (everything). [`ReadModelSink::changes`] subscribes on a
//! connection of its own, so readers in any process wake on a commit instead
//! of polling.
//!
//! # Loss
//! Redis may lose data: restarted without persistence, flushed, or keys
//! evicted under `maxmemory` with an `allkeys-*` policy. A missing live
//! pointer (where a commit expected one) or a missing generation marker is
//! reported as lost (see the seam's guarantees); a single evicted document
//! under a surviving marker is not detectable, so [`RedisSink::connect`]
//! warns when the server's eviction policy could evict Strata's keys (use
//! `noeviction`, the default, or a `volatile-*` policy: Strata sets no TTLs).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Script, Value as RedisValue};
use serde_json::Value;
use strata_store::Position;

use super::{
    Batch, Change, ChangeFeed, Committed, DeadLetter, Dump, GenerationStats, IndexEntry, Loaded, Meta, MetaField, ReadModelSink, SinkError,
    Target,
};
use crate::projection::{Document, Write};

/// Where the Redis sink connects and which keys it uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSinkConfig {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// First part of every key (letters, digits, `_`, `-`, `:`); one per
    /// deployment, or per test.
    pub key_prefix: String,
}

impl RedisSinkConfig {
    /// The default prefix `strata`.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), key_prefix: "strata".into() }
    }
}

/// Read models in Redis.
pub struct RedisSink {
    client: Client,
    connection: Mutex<MultiplexedConnection>,
    key_prefix: String,
    commit: Script,
    document: Script,
    page: Script,
    init_live: Script,
    new_generation: Script,
    live: Script,
    switch_live: Script,
}

impl std::fmt::Debug for RedisSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSink").field("key_prefix", &self.key_prefix).finish_non_exhaustive()
    }
}

const COMMIT: &str = include_str!("../../lua/commit.lua");

const DOCUMENT: &str = include_str!("../../lua/document.lua");

const PAGE: &str = include_str!("../../lua/page.lua");

const INIT_LIVE: &str = include_str!("../../lua/init_live.lua");

const NEW_GENERATION: &str = include_str!("../../lua/new_generation.lua");

const LIVE: &str = include_str!("../../lua/live.lua");

const SWITCH_LIVE: &str = include_str!("../../lua/switch_live.lua");

impl RedisSink {
    /// Connects (and checks the connection with a PING).
    pub async fn connect(config: RedisSinkConfig) -> Result<Self, SinkError> {
        let prefix_ok =
            !config.key_prefix.is_empty() && config.key_prefix.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':'));
        if !prefix_ok {
            return Err(SinkError::backend(
                "checking the key prefix",
                format!("key prefix {:?} must be letters, digits, '_', '-' or ':'", config.key_prefix),
            ));
        }
        let client = Client::open(config.url.as_str()).map_err(|e| SinkError::backend("parsing the redis url", e))?;
        let connection = Self::open(&client).await?;
        let sink = Self {
            client,
            connection: Mutex::new(connection),
            key_prefix: config.key_prefix,
            commit: Script::new(COMMIT),
            document: Script::new(DOCUMENT),
            page: Script::new(PAGE),
            init_live: Script::new(INIT_LIVE),
            new_generation: Script::new(NEW_GENERATION),
            live: Script::new(LIVE),
            switch_live: Script::new(SWITCH_LIVE),
        };
        sink.ping().await?;
        sink.warn_if_keys_may_be_evicted().await;
        Ok(sink)
    }

    /// See "Loss" in the module docs. Managed servers may refuse `CONFIG`;
    /// then nothing is said.
    async fn warn_if_keys_may_be_evicted(&self) {
        let mut connection = self.connection();
        let policy: Result<Vec<String>, _> = redis::cmd("CONFIG").arg("GET").arg("maxmemory-policy").query_async(&mut connection).await;
        if let Ok(policy) = policy {
            if let Some(policy) = policy.get(1).filter(|p| p.starts_with("allkeys")) {
                tracing::warn!(%policy, "redis may evict read-model keys under memory pressure; Strata notices a lost generation but not a single evicted document: use maxmemory-policy noeviction");
            }
        }
    }

    async fn open(client: &Client) -> Result<MultiplexedConnection, SinkError> {
        // Big commits and rebuild batches take longer than the client's
        // default 500 ms response timeout on a busy machine.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(60)));
        client.get_multiplexed_async_connection_with_config(&config).await.map_err(|e| SinkError::backend("connecting to redis", e))
    }

    fn connection(&self) -> MultiplexedConnection {
        self.connection.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Maps an error, replacing the connection when it broke so the next call
    /// reconnects (the multiplexed connection does not).
    async fn fail(&self, context: &'static str, error: redis::RedisError) -> SinkError {
        if error.is_io_error() || error.is_connection_dropped() || error.is_unrecoverable_error() {
            if let Ok(fresh) = Self::open(&self.client).await {
                *self.connection.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
            }
        }
        SinkError::backend(context, error)
    }

    /// The pub/sub channel of [`Change`]s: `<prefix>:changes`.
    fn channel(&self) -> String {
        format!("{}:changes", self.key_prefix)
    }

    /// `{<prefix>:<projection>}:`
    fn root(&self, projection: &str) -> String {
        format!("{{{}:{}}}:", self.key_prefix, projection)
    }

    fn base(&self, target: &Target) -> String {
        format!("{}g{}:", self.root(&target.projection), target.generation)
    }

    /// Deletes every key under this sink's prefix, every projection and
    /// generation (scratch prefixes of tests and benches).
    pub async fn delete_all(&self) -> Result<(), SinkError> {
        let keys = self.scan(&format!("{{{}:*", self.key_prefix)).await?;
        self.unlink(&keys).await
    }

    async fn unlink(&self, keys: &[String]) -> Result<(), SinkError> {
        let mut connection = self.connection();
        for chunk in keys.chunks(500) {
            if let Err(e) = redis::cmd("UNLINK").arg(chunk).exec_async(&mut connection).await {
                return Err(self.fail("deleting keys", e).await);
            }
        }
        Ok(())
    }

    async fn scan(&self, pattern: &str) -> Result<Vec<String>, SinkError> {
        let mut connection = self.connection();
        let mut cursor: u64 = 0;
        let mut keys = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) =
                match redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000).query_async(&mut connection).await {
                    Ok(reply) => reply,
                    Err(e) => return Err(self.fail("scanning keys", e).await),
                };
            keys.extend(batch);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }
}

fn parse_document(key: &str, fields: Vec<(String, String)>) -> Result<Option<Document>, SinkError> {
    if fields.is_empty() {
        return Ok(None);
    }
    let mut document = Document::new();
    for (field, json) in fields {
        let value: Value =
            serde_json::from_str(&json).map_err(|e| SinkError::Malformed { key: format!("{key} field {field}"), reason: e.to_string() })?;
        document.insert(field, value);
    }
    Ok(Some(document))
}

fn parse<T: redis::FromRedisValue>(key: &str, value: RedisValue) -> Result<T, SinkError> {
    redis::from_redis_value(value).map_err(|e| SinkError::Malformed { key: key.to_owned(), reason: e.to_string() })
}

fn push_write(invocation: &mut redis::ScriptInvocation<'_>, write: &Write) {
    match write {
        Write::SetField { key, field, value } => {
            invocation.arg("F").arg(key).arg(field).arg(value.to_string());
        }
        Write::SetMax { key, field, value } => {
            invocation.arg("M").arg(key).arg(field).arg(*value);
        }
        Write::DeleteDocument { key } => {
            invocation.arg("X").arg(key);
        }
        Write::IndexAdd { index, score, member } => {
            invocation.arg("A").arg(index).arg(*score).arg(member);
        }
        Write::IndexRemove { index, member } => {
            invocation.arg("R").arg(index).arg(member);
        }
    }
}

#[async_trait]
impl ReadModelSink for RedisSink {
    fn backend_name(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> Result<(), SinkError> {
        let mut connection = self.connection();
        match redis::cmd("PING").query_async::<String>(&mut connection).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.fail("pinging redis", e).await),
        }
    }

    async fn live_generation(&self, projection: &str) -> Result<Option<u64>, SinkError> {
        let mut connection = self.connection();
        let mut invocation = self.live.prepare_invoke();
        invocation.arg(self.root(projection));
        match invocation.invoke_async(&mut connection).await {
            Ok(live) => Ok(live),
            Err(e) => Err(self.fail("reading the live generation", e).await),
        }
    }

    async fn new_generation(&self, projection: &str) -> Result<u64, SinkError> {
        let mut connection = self.connection();
        let mut invocation = self.new_generation.prepare_invoke();
        invocation.arg(self.root(projection));
        match invocation.invoke_async(&mut connection).await {
            Ok(generation) => Ok(generation),
            Err(e) => Err(self.fail("reserving a generation", e).await),
        }
    }

    async fn switch_live(&self, projection: &str, generation: u64) -> Result<bool, SinkError> {
        let mut connection = self.connection();
        let mut invocation = self.switch_live.prepare_invoke();
        invocation.arg(self.root(projection)).arg(generation).arg(self.channel());
        match invocation.invoke_async::<i64>(&mut connection).await {
            Ok(switched) => Ok(switched == 1),
            Err(e) => Err(self.fail("switching the live generation", e).await),
        }
    }

    async fn init_live(&self, projection: &str, generation: u64) -> Result<u64, SinkError> {
        let mut connection = self.connection();
        let mut invocation = self.init_live.prepare_invoke();
        invocation.arg(self.root(projection)).arg(generation);
        match invocation.invoke_async(&mut connection).await {
            Ok(live) => Ok(live),
            Err(e) => Err(self.fail("initialising the live generation", e).await),
        }
    }

    async fn drop_generation(&self, target: &Target) -> Result<(), SinkError> {
        if self.live_generation(&target.projection).await? == Some(target.generation) {
            return Ok(());
        }
        let keys = self.scan(&format!("{}*", self.base(target))).await?;
        self.unlink(&keys).await
    }

    async fn load(&self, target: &Target, streams: &[String], documents: &[String]) -> Result<Loaded, SinkError> {
        let base = self.base(target);
        let mut pipe = redis::pipe();
        if !streams.is_empty() {
            pipe.cmd("HMGET").arg(format!("{base}streams")).arg(streams);
            pipe.cmd("HMGET").arg(format!("{base}parked")).arg(streams);
        }
        for key in documents {
            pipe.cmd("HGETALL").arg(format!("{base}d:{key}"));
        }
        if streams.is_empty() && documents.is_empty() {
            return Ok(Loaded::default());
        }
        let mut connection = self.connection();
        let replies: Vec<RedisValue> = match pipe.query_async(&mut connection).await {
            Ok(replies) => replies,
            Err(e) => return Err(self.fail("loading stream versions and documents", e).await),
        };
        let mut replies = replies.into_iter();
        let mut loaded = Loaded::default();
        if !streams.is_empty() {
            let versions: Vec<Option<u64>> = parse("streams", replies.next().unwrap_or(RedisValue::Nil))?;
            let parked: Vec<Option<u64>> = parse("parked", replies.next().unwrap_or(RedisValue::Nil))?;
            loaded.stream_versions = versions.into_iter().map(|v| v.unwrap_or(0)).collect();
            loaded.parked_from = parked;
        }
        for key in documents {
            let fields: Vec<(String, String)> = parse(key, replies.next().unwrap_or(RedisValue::Nil))?;
            loaded.documents.push(parse_document(key, fields)?);
        }
        Ok(loaded)
    }

    async fn commit(&self, target: &Target, batch: &Batch) -> Result<Committed, SinkError> {
        let mut invocation = self.commit.prepare_invoke();
        invocation.arg(self.base(target)).arg(self.root(&target.projection)).arg(target.generation).arg(batch.guards.len());
        for guard in &batch.guards {
            let expected = guard.expected.map_or_else(String::new, |e| e.to_string());
            invocation.arg(&guard.stream_id).arg(expected).arg(guard.reached);
        }
        invocation.arg(batch.writes.len());
        for write in &batch.writes {
            push_write(&mut invocation, write);
        }
        invocation.arg(batch.dead_letters.len());
        for letter in &batch.dead_letters {
            let json = serde_json::to_string(letter).unwrap_or_default();
            invocation
                .arg(&letter.stream_id)
                .arg(letter.stream_version)
                .arg(format!("{:020}:{}", letter.position, letter.event_id))
                .arg(json);
        }
        invocation.arg(batch.position.0).arg(batch.events).arg(self.channel()).arg(Change::of(&target.projection, batch).to_text());
        let mut connection = self.connection();
        let reply: Vec<RedisValue> = match invocation.invoke_async(&mut connection).await {
            Ok(reply) => reply,
            Err(e) => return Err(self.fail("committing a batch", e).await),
        };
        let mut reply = reply.into_iter();
        let done: i64 = parse("commit reply", reply.next().unwrap_or(RedisValue::Nil))?;
        match done {
            1 => return Ok(Committed::Done),
            2 => return Ok(Committed::Retired),
            3 => return Ok(Committed::Lost),
            _ => {}
        }
        let stream_id: String = parse("commit reply", reply.next().unwrap_or(RedisValue::Nil))?;
        let actual: u64 = parse("commit reply", reply.next().unwrap_or(RedisValue::Nil))?;
        Ok(Committed::Conflict { stream_id, actual })
    }

    async fn document(&self, projection: &str, key: &str) -> Result<Option<Document>, SinkError> {
        let mut invocation = self.document.prepare_invoke();
        invocation.arg(self.root(projection)).arg(key);
        let mut connection = self.connection();
        let fields: Vec<(String, String)> = match invocation.invoke_async(&mut connection).await {
            Ok(fields) => fields,
            Err(e) => return Err(self.fail("reading a document", e).await),
        };
        parse_document(key, fields)
    }

    async fn page(&self, projection: &str, index: &str, after: Option<i64>, limit: usize) -> Result<Vec<IndexEntry>, SinkError> {
        let min = after.map_or_else(|| "-inf".to_owned(), |after| format!("({after}"));
        let mut invocation = self.page.prepare_invoke();
        invocation.arg(self.root(projection)).arg(index).arg(min).arg(limit);
        let mut connection = self.connection();
        let rows: Vec<(String, String, Vec<(String, String)>)> = match invocation.invoke_async(&mut connection).await {
            Ok(rows) => rows,
            Err(e) => return Err(self.fail("reading an index page", e).await),
        };
        rows.into_iter()
            .map(|(key, score, fields)| {
                let score = score
                    .parse::<f64>()
                    .map_err(|e| SinkError::Malformed { key: format!("index {index} member {key}"), reason: e.to_string() })?
                    as i64;
                let document = parse_document(&key, fields)?;
                Ok(IndexEntry { score, key, document })
            })
            .collect()
    }

    async fn stats(&self, target: &Target) -> Result<GenerationStats, SinkError> {
        let mut connection = self.connection();
        let stats: HashMap<String, u64> =
            match redis::cmd("HGETALL").arg(format!("{}stats", self.base(target))).query_async(&mut connection).await {
                Ok(stats) => stats,
                Err(e) => return Err(self.fail("reading generation stats", e).await),
            };
        Ok(GenerationStats {
            position: Position(stats.get("position").copied().unwrap_or(0)),
            events: stats.get("events").copied().unwrap_or(0),
            dead_letters: stats.get("dead").copied().unwrap_or(0),
        })
    }

    async fn dead_letters(&self, target: &Target, limit: usize) -> Result<Vec<DeadLetter>, SinkError> {
        let mut connection = self.connection();
        let letters: Vec<(String, String)> =
            match redis::cmd("HGETALL").arg(format!("{}dead", self.base(target))).query_async(&mut connection).await {
                Ok(letters) => letters,
                Err(e) => return Err(self.fail("reading dead letters", e).await),
            };
        let mut letters: Vec<(String, String)> = letters;
        letters.sort();
        letters
            .into_iter()
            .take(limit)
            .map(|(field, json)| {
                serde_json::from_str(&json).map_err(|e| SinkError::Malformed { key: format!("dead letter {field}"), reason: e.to_string() })
            })
            .collect()
    }

    async fn meta(&self, projection: &str) -> Result<Meta, SinkError> {
        let mut connection = self.connection();
        let fields: Vec<(String, String)> =
            match redis::cmd("HGETALL").arg(format!("{}meta", self.root(projection))).query_async(&mut connection).await {
                Ok(fields) => fields,
                Err(e) => return Err(self.fail("reading projection state", e).await),
            };
        Ok(Meta::from_fields(fields.iter().map(|(k, v)| (k.as_str(), v.as_str()))))
    }

    async fn set_meta(&self, projection: &str, field: MetaField, value: Option<String>) -> Result<(), SinkError> {
        let key = format!("{}meta", self.root(projection));
        let command = match value {
            Some(value) => {
                let mut command = redis::cmd("HSET");
                command.arg(key).arg(field.as_str()).arg(value);
                command
            }
            None => {
                let mut command = redis::cmd("HDEL");
                command.arg(key).arg(field.as_str());
                command
            }
        };
        let mut connection = self.connection();
        match command.exec_async(&mut connection).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail("writing projection state", e).await),
        }
    }

    async fn changes(&self) -> Result<Option<ChangeFeed>, SinkError> {
        let mut pubsub = self.client.get_async_pubsub().await.map_err(|e| SinkError::backend("subscribing to changes", e))?;
        pubsub.subscribe(self.channel()).await.map_err(|e| SinkError::backend("subscribing to changes", e))?;
        // Subscribed: anything committed before is already readable, so
        // readers look once more, then follow the messages.
        let messages = pubsub.into_on_message().map(|message| Change::from_text(&message.get_payload::<String>().unwrap_or_default()));
        Ok(Some(Box::pin(futures_util::stream::once(async { Change::Everything }).chain(messages))))
    }

    async fn dump(&self, target: &Target) -> Result<Dump, SinkError> {
        let base = self.base(target);
        let mut dump = Dump::default();
        let mut connection = self.connection();
        for key in self.scan(&format!("{base}d:*")).await? {
            let fields: Vec<(String, String)> = match redis::cmd("HGETALL").arg(&key).query_async(&mut connection).await {
                Ok(fields) => fields,
                Err(e) => return Err(self.fail("dumping documents", e).await),
            };
            let name = key[base.len() + 2..].to_owned();
            if let Some(document) = parse_document(&name, fields)? {
                dump.documents.insert(name, document);
            }
        }
        for key in self.scan(&format!("{base}i:*")).await? {
            let entries: Vec<(String, f64)> =
                match redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1).arg("WITHSCORES").query_async(&mut connection).await {
                    Ok(entries) => entries,
                    Err(e) => return Err(self.fail("dumping indexes", e).await),
                };
            let name = key[base.len() + 2..].to_owned();
            dump.indexes.insert(name, entries.into_iter().map(|(member, score)| (score as i64, member)).collect());
        }
        let versions: HashMap<String, u64> = match redis::cmd("HGETALL").arg(format!("{base}streams")).query_async(&mut connection).await {
            Ok(versions) => versions,
            Err(e) => return Err(self.fail("dumping stream versions", e).await),
        };
        dump.stream_versions = versions.into_iter().collect();
        Ok(dump)
    }
}
