//! [`MongoSink`]: read models in MongoDB (feature `mongo`).
//!
//! # Layout
//! One database (the URL's path, default `strata`). One control collection
//! and one collection per projection generation:
//!
//! | collection | `_id` | holds |
//! |---|---|---|
//! | `strata_projections` | projection name | `live`, `next`, `rebuilding` (numbers) and the operator state in `m` (paused, state, lastError, rate, losses) |
//! | `strata_<projection>_g<N>` | `#gen` | the generation's marker: `state` (`reserved`, `rebuilding`, `live`, `retired`), `seq` (commits), `position`, `events`, `dead` |
//! | | `d:<key>` | a read-model document, its fields in `f` (none: deleted) |
//! | | `i:<len>:<index>:<member>` | an index entry: `ix` (index), `m` (member), `s` (score), none of them once removed; the sink creates the index `{ix: 1, s: 1, m: 1}` that pages walk |
//! | | `s:<stream>` | a stream's applied version `v`, and `p`, the version it is parked from |
//! | | `x:<position>:<event id>` | a dead letter |
//! | | `c:<seq mod 1024>` | what commit `seq` changed (for waiting readers) |
//!
//! Field names are stored with `%`, `.`, `$` and NUL escaped as `%25`, `%2E`,
//! `%24`, `%00`, and an empty name as `%`, at every depth, so any JSON object
//! is a valid document.
//! Integers are stored as 64-bit integers, other numbers as doubles (an
//! unsigned integer above `i64::MAX` becomes a double).
//!
//! # Atomicity
//! A commit is one multi-document transaction (MongoDB needs a replica set
//! for that; a single node can be a one-member replica set): it reads the
//! generation's marker and the batch's stream versions, checks every guard,
//! then sends every write of the batch (documents, index entries, stream
//! versions, dead letters, the marker's counters, the change entry) as one
//! unordered `update` command (several only past 8 MiB of statements), and
//! commits. Removals are updates too (`$unset` of a document's fields or of
//! an entry's index fields: readers and dumps see neither), then, in the
//! same transaction, one `delete` command removes those records if they are
//! still without fields. On a server without isolation (below) a process
//! killed between the two commands leaves such tombstones, which are a
//! whole, readable state; a later removal of the same record deletes them,
//! and a rebuild's generation starts without them.
//! A document that would grow past 16 MiB − 64 KiB (MongoDB refuses
//! one over 16 MiB on every retry) is not written: the runner parks the
//! event that would grow it, with the reason, as a poison event
//! ([`ReadModelSink::oversized`]). A batch's writes are first folded per document (the last
//! value of each field, the greatest of each `SetMax`, a delete followed by
//! sets as a replacement), so their order within the command does not
//! matter; a rebuild's batches go through the same path.
//! Two commits to one generation write its marker, so MongoDB lets one
//! through and aborts the other with a transient error, which is retried; a
//! switch writes the old generation's marker too, so a commit planned against
//! the old generation either lands before the switch or finds it retired. A
//! refused commit (guard, retired, lost) ends its transaction with a commit
//! of nothing, never an abort. Every transaction begins with a write to the
//! document it is about (the marker, or the projection's pointer), so
//! concurrent ones conflict at once rather than at their end. Transactions
//! of one process take turns per generation (a commit) or per projection (a
//! switch), which MongoDB would impose anyway; different projections commit
//! side by side.
//!
//! Every transaction reads a snapshot and commits with majority write
//! concern (`wtimeout` and `maxCommitTimeMS` 10 s): a commit acknowledged by
//! one member alone could be rolled back at a failover while its events are
//! acked on the bus. Failures are retried by the drivers' rules within 30 s
//! ([`retry`]): a transient error (write conflict, failover) runs the
//! transaction again, an unknown commit result commits again, and
//! `MaxTimeMSExpired` or anything else is given up, so the runner sees the
//! error (and retries the batch) instead of a loop that never ends.
//!
//! # Servers without isolation
//! A server that is not a replica set member (no `setName` in its `hello`,
//! and not a `mongos`) cannot run MongoDB transactions at all: a real
//! standalone `mongod` refuses the probe transaction made at connect, and
//! the sink refuses it ("replica set required"); a
//! MongoDB-compatible server that accepts them there may not isolate them
//! (nx-27017, the test server here, runs every session on one SQLite
//! connection: one session's commit or abort ends the others'). On such a
//! server every transaction first takes a lease on the whole database (a
//! document `#lease` in `strata_projections` whose `until` has passed,
//! set to now + 5 s, cleared after the transaction), so transactions from
//! every process take turns; a process killed while holding it stalls the
//! others for up to 5 s (the lease is not renewed: a transaction longer
//! than 5 s on such a server could overlap the next). And because a commit's writes are one command sent
//! after its reads, a process killed mid-commit leaves either nothing or
//! the whole batch, which a redelivery then finds applied. On a replica set
//! none of this applies: transactions are isolated, and two commits to one
//! generation conflict on its marker, so MongoDB lets one through and the
//! other is retried.
//!
//! Queries (a document, an index page) read the live pointer and the
//! generation through one snapshot session, so a reader sees one commit of
//! one generation, never half of two.
//!
//! # Changes
//! MongoDB change streams are not used (a MongoDB-compatible server may lack
//! them, and they need a connection per watcher). Each commit to a live
//! generation writes what it moved into slot `c:<seq mod 1024>` of the
//! generation; [`ReadModelSink::changes`] polls every projection's live
//! generation every 25 ms for new commit numbers and reads their slots (one
//! poller per process, shared by every waiting reader), with majority read
//! concern: a waiter is woken only by a commit its snapshot query can see. A generation switch,
//! or a gap longer than the ring, is reported as "everything".
//!
//! # What it does not use
//! No change streams, no `$addToSet`, no `$project` of `_id`, no aggregation:
//! finds, `update` commands, `$set`, `$max`, `$min`, `$inc`,
//! `$setOnInsert` and `$unset` only, so MongoDB-compatible servers that lack
//! those work too.
//!
//! # Loss
//! A missing `#gen` marker (a dropped database or collection, a new server)
//! is a lost generation, as on Redis: [`ReadModelSink::live_generation`]
//! answers `None` and commits answer [`Committed::Lost`].

mod codec;
mod retry;
mod statements;
mod transaction;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{StreamExt, TryStreamExt};
use mongodb::bson::{doc, Bson, Document as BsonDocument};
use mongodb::error::{Error as MongoError, ErrorKind};
use mongodb::options::{ClientOptions, DatabaseOptions, ReadConcern};
use mongodb::{Client, ClientSession, Collection, Database, IndexModel};
use strata_store::Position;

use super::{
    Batch, Change, ChangeFeed, Committed, DeadLetter, Dump, GenerationStats, IndexEntry, Loaded, Meta, MetaField, ReadModelSink, SinkError,
    Target,
};
use crate::projection::{Document, Write};

use codec::{
    change_id, collection_name, dead_id, document_id, escape, now_millis, number, parse_document, signed, stored_id, stream_id, to_bson,
    to_json,
};
use statements::{dead_letter_document, delete_tombstones, run_updates, Statements};
use transaction::{claim, transaction_options, MongoTransaction};

/// Where the Mongo sink connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MongoSinkConfig {
    /// `mongodb://host:27017/DB[?replicaSet=rs0]`.
    pub url: String,
    /// The database; `None`: the URL's path, else `strata`.
    pub database: Option<String>,
}

impl MongoSinkConfig {
    /// The database named in the URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), database: None }
    }
}

/// Read models in MongoDB.
pub struct MongoSink {
    client: Client,
    database: Database,
    projections: Collection<BsonDocument>,
    /// Transactions of this process take turns per generation (and all
    /// together on a server without isolation; see "Atomicity").
    turns: Turns,
    /// Whether the server takes snapshot sessions for queries.
    snapshots: bool,
    /// Whether transactions take turns through the database lease (a server
    /// that is not a replica set member; see "Servers without isolation").
    serialized: bool,
    /// Largest stored document this sink writes ([`MAX_DOCUMENT_BYTES`]).
    document_bytes: usize,
}

impl std::fmt::Debug for MongoSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoSink").field("database", &self.database.name()).finish_non_exhaustive()
    }
}

/// Slots of the change ring per generation.
const CHANGE_SLOTS: u64 = 1_024;
/// How often the change feed looks for commits.
const CHANGE_POLL: Duration = Duration::from_millis(25);
/// How long a commit may wait for a majority of the replica set to have it
/// (`wtimeout`), and for the commit itself (`maxCommitTimeMS`).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the database lease lasts (a process killed mid-transaction
/// holds it that long; see "Servers without isolation").
const LEASE_MILLIS: i64 = 5_000;
/// Largest `update` command sent at once (MongoDB's limit is 16 MiB).
const COMMAND_BYTES: usize = 8 << 20;
/// How long a generation replaced by a rebuild is kept before it is
/// dropped: a query that read the old pointer just before the switch reads
/// its snapshot of the old generation undisturbed (one caught by the drop
/// anyway reads again, on the new one).
const RETIRE_GRACE: Duration = Duration::from_secs(1);
/// Largest document written: MongoDB refuses a document, or an update whose
/// result, over 16 MiB (`BSONObjectTooLarge`, code 17419), on every retry;
/// 64 KiB are kept for the `update` statement around a replacement.
pub(crate) const MAX_DOCUMENT_BYTES: usize = (16 << 20) - (64 << 10);

const LIVE: &str = "live";
const REBUILDING: &str = "rebuilding";
const RESERVED: &str = "reserved";
const RETIRED: &str = "retired";

fn backend(context: &'static str) -> impl FnOnce(MongoError) -> SinkError {
    move |e| SinkError::backend(context, e)
}

fn malformed(key: impl Into<String>, reason: impl Into<String>) -> SinkError {
    SinkError::Malformed { key: key.into(), reason: reason.into() }
}

impl MongoSink {
    /// Connects (and checks the connection with a ping).
    pub async fn connect(config: MongoSinkConfig) -> Result<Self, SinkError> {
        let mut options = ClientOptions::parse(&config.url).await.map_err(backend("parsing the mongodb url"))?;
        options.app_name.get_or_insert_with(|| "strata".to_owned());
        options.server_selection_timeout.get_or_insert(Duration::from_secs(5));
        options.connect_timeout.get_or_insert(Duration::from_secs(5));
        let name = config.database.clone().or_else(|| options.default_database.clone()).unwrap_or_else(|| "strata".to_owned());
        let client = Client::with_options(options).map_err(backend("configuring the mongodb client"))?;
        let database = client.database(&name);
        let projections = database.collection("strata_projections");
        let mut sink = Self {
            client,
            database,
            projections,
            turns: Turns::default(),
            snapshots: false,
            serialized: false,
            document_bytes: MAX_DOCUMENT_BYTES,
        };
        sink.ping().await?;
        let hello = sink.database.run_command(doc! { "hello": 1 }).await.map_err(backend("asking the server what it is"))?;
        sink.serialized = hello.get_str("setName").is_err() && hello.get_str("msg") != Ok("isdbgrid");
        if sink.serialized {
            // A real standalone mongod refuses transactions; a server that
            // takes them without a replica set (a MongoDB-compatible one)
            // goes on with the lease. The probe itself runs under the lease:
            // such a server may not isolate transactions, and another
            // process's commit would end this probe's (nx-27017: "no such
            // transaction").
            let lease = sink.lease().await?;
            let probed = sink.probe_transaction().await;
            if let Some(owner) = lease {
                sink.release(&owner).await;
            }
            probed.map_err(|e| {
                SinkError::backend(
                    "checking that the server runs transactions",
                    format!("replica set required: {e} (a standalone mongod cannot run multi-document transactions; start it as a one-member replica set, `mongod --replSet rs0` then `rs.initiate()`, and name it in the URL: `?replicaSet=rs0`)"),
                )
            })?;
            tracing::info!(
                "the MongoDB server is not a replica set member: read-model transactions from every process take turns through a lease"
            );
        }
        sink.snapshots = sink.snapshot_reads_work().await;
        if !sink.snapshots {
            tracing::warn!("the MongoDB server refuses snapshot sessions: a query may read two commits of a generation (MongoDB 5.0+ replica sets take them)");
        }
        Ok(sink)
    }

    /// One transaction that writes a probe document, as commits do.
    async fn probe_transaction(&self) -> Result<(), MongoError> {
        let mut session = self.client.start_session().await?;
        session.start_transaction().with_options(transaction_options()).await?;
        let written = self
            .projections
            .update_one(doc! { "_id": "#probe" }, doc! { "$inc": { "tries": 1_i64 } })
            .upsert(true)
            .session(&mut session)
            .await;
        match written {
            Ok(_) => session.commit_transaction().await,
            Err(e) => {
                let _ = session.abort_transaction().await;
                Err(e)
            }
        }
    }

    async fn snapshot_reads_work(&self) -> bool {
        let Ok(mut session) = self.client.start_session().snapshot(true).await else { return false };
        self.projections.find_one(doc! { "_id": "#probe" }).session(&mut session).await.is_ok()
    }

    /// The `update` statements (`{q, u, upsert}`) a commit sends for
    /// `writes`, folded per document and index entry, as if no document
    /// existed yet: for raw baselines and tools.
    pub fn statements(writes: &[Write]) -> Vec<BsonDocument> {
        let mut statements = Statements::default();
        statements.fold(writes, &HashSet::new());
        statements.updates
    }

    /// Writes no document over `bytes` as stored (default and most:
    /// 16 MiB − 64 KiB); a smaller bound lets a test reach it.
    pub fn with_document_limit(mut self, bytes: usize) -> Self {
        self.document_bytes = bytes.min(MAX_DOCUMENT_BYTES);
        self
    }

    /// A document as stored: `{_id, f: {escaped fields}}`.
    fn stored_document(key: &str, document: &crate::projection::Document) -> BsonDocument {
        let fields: BsonDocument = document.iter().map(|(field, value)| (escape(field), to_bson(value))).collect();
        doc! { "_id": document_id(key), "f": fields }
    }

    /// The database this sink uses.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Drops the whole database (scratch databases of tests and benches).
    pub async fn drop_database(&self) -> Result<(), SinkError> {
        self.database.drop().await.map_err(backend("dropping the database"))
    }

    /// The collection of one generation: `strata_<projection>_g<N>`.
    pub fn generation_collection(&self, target: &Target) -> Collection<BsonDocument> {
        self.database.collection(&collection_name(&target.projection, target.generation))
    }

    fn generation(&self, projection: &str, generation: u64) -> Collection<BsonDocument> {
        self.database.collection(&collection_name(projection, generation))
    }

    async fn session(&self, snapshot: bool) -> Result<ClientSession, SinkError> {
        let start = self.client.start_session();
        let start = if snapshot && self.snapshots { start.snapshot(true) } else { start };
        start.await.map_err(backend("starting a session"))
    }

    async fn projection_doc(&self, projection: &str, session: Option<&mut ClientSession>) -> Result<Option<BsonDocument>, SinkError> {
        let find = self.projections.find_one(doc! { "_id": projection });
        let found = match session {
            Some(session) => find.session(session).await,
            None => find.await,
        };
        found.map_err(backend("reading the projection's pointer"))
    }

    /// Runs `work` in a transaction, retrying transient failures (write
    /// conflicts) and commits whose outcome is unknown.
    async fn transaction<T, F>(&self, context: &'static str, about: &str, mut work: F) -> Result<T, SinkError>
    where
        T: Send,
        F: for<'s> FnMut(&'s mut ClientSession) -> futures_util::future::BoxFuture<'s, Result<T, MongoError>> + Send,
    {
        // Two transactions of this process on one generation would conflict
        // on its marker (one is retried); on a server without isolation
        // every transaction must wait for the others.
        let turn = self.turns.of(if self.serialized { "" } else { about });
        let _turn = turn.lock().await;
        let lease = self.lease().await?;
        let outcome = self.transaction_turn(context, &mut work).await;
        if let Some(owner) = lease {
            self.release(&owner).await;
        }
        outcome
    }

    /// One transaction by the drivers' retry rules ([`retry`]): within a
    /// deadline, a transient error runs it again, an unknown commit result
    /// commits again.
    async fn transaction_turn<T, F>(&self, context: &'static str, work: &mut F) -> Result<T, SinkError>
    where
        T: Send,
        F: for<'s> FnMut(&'s mut ClientSession) -> futures_util::future::BoxFuture<'s, Result<T, MongoError>> + Send,
    {
        let mut transaction = MongoTransaction { client: &self.client, session: None, work };
        retry::run(&mut transaction, retry::RetryPolicy::default()).await.map_err(|gave_up| {
            let retry::GaveUp { error, transactions, commits } = gave_up;
            tracing::warn!(error = %strata_store::chain(&error), transactions, commits, "a read-model transaction was given up");
            SinkError::backend(context, error)
        })
    }

    /// Whether the live pointer of `projection` names another generation
    /// than `read` now (read outside any snapshot).
    async fn moved(&self, projection: &str, read: u64) -> Result<bool, SinkError> {
        let now = self.projection_doc(projection, None).await?.and_then(|pointer| number(pointer.get("live")));
        Ok(now.is_some_and(|now| now != read))
    }

    /// One snapshot read of a document; `Moved` when the generation the
    /// pointer named was dropped under the read (a rebuild switched).
    async fn document_once(&self, projection: &str, key: &str) -> Result<Read<Option<Document>>, SinkError> {
        let mut session = self.session(true).await?;
        let Some(pointer) = self.projection_doc(projection, Some(&mut session)).await? else { return Ok(Read::Found(None)) };
        let Some(live) = number(pointer.get("live")) else { return Ok(Read::Found(None)) };
        let id = document_id(key);
        let mut cursor = self
            .generation(projection, live)
            .find(doc! { "_id": { "$in": ["#gen", &id] } })
            .session(&mut session)
            .await
            .map_err(backend("reading a document"))?;
        let (mut marker, mut document) = (false, None);
        while let Some(stored) = cursor.next(&mut session).await {
            let stored = stored.map_err(backend("reading a document"))?;
            match stored.get_str("_id") {
                Ok("#gen") => marker = true,
                Ok(_) => document = parse_document(&stored),
                Err(_) => {}
            }
        }
        if !marker && self.moved(projection, live).await? {
            return Ok(Read::Moved);
        }
        Ok(Read::Found(if marker { document } else { None }))
    }

    /// One snapshot read of an index page; `Moved` as for a document.
    async fn page_once(&self, projection: &str, index: &str, after: Option<i64>, limit: usize) -> Result<Read<Vec<IndexEntry>>, SinkError> {
        let mut session = self.session(true).await?;
        let Some(pointer) = self.projection_doc(projection, Some(&mut session)).await? else { return Ok(Read::Found(Vec::new())) };
        let Some(live) = number(pointer.get("live")) else { return Ok(Read::Found(Vec::new())) };
        let collection = self.generation(projection, live);
        let marker = collection.find_one(doc! { "_id": "#gen" }).session(&mut session).await.map_err(backend("reading an index page"))?;
        if marker.is_none() {
            return Ok(if self.moved(projection, live).await? { Read::Moved } else { Read::Found(Vec::new()) });
        }
        let filter = match after {
            Some(after) => doc! { "ix": index, "s": { "$gt": after } },
            None => doc! { "ix": index },
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut cursor = collection
            .find(filter)
            .sort(doc! { "s": 1, "m": 1 })
            .limit(limit)
            .session(&mut session)
            .await
            .map_err(backend("reading an index page"))?;
        let mut entries: Vec<(i64, String)> = Vec::new();
        while let Some(stored) = cursor.next(&mut session).await {
            let stored = stored.map_err(backend("reading an index page"))?;
            let member = stored.get_str("m").map_err(|e| malformed(format!("index {index}"), e.to_string()))?.to_owned();
            let score = match stored.get("s") {
                Some(Bson::Int64(s)) => *s,
                Some(Bson::Int32(s)) => i64::from(*s),
                Some(Bson::Double(s)) => *s as i64,
                _ => return Err(malformed(format!("index {index} member {member}"), "score is not a number")),
            };
            entries.push((score, member));
        }
        if entries.is_empty() {
            return Ok(Read::Found(Vec::new()));
        }
        let ids: Vec<String> = entries.iter().map(|(_, member)| document_id(member)).collect();
        let mut documents: HashMap<String, Document> = HashMap::new();
        let mut cursor =
            collection.find(doc! { "_id": { "$in": ids } }).session(&mut session).await.map_err(backend("reading an index page"))?;
        while let Some(stored) = cursor.next(&mut session).await {
            let stored = stored.map_err(backend("reading an index page"))?;
            if let (Ok(id), Some(document)) = (stored.get_str("_id"), parse_document(&stored)) {
                documents.insert(id[2..].to_owned(), document);
            }
        }
        Ok(Read::Found(entries.into_iter().map(|(score, key)| IndexEntry { score, document: documents.remove(&key), key }).collect()))
    }

    /// Takes the database lease when transactions must take turns.
    async fn lease(&self) -> Result<Option<String>, SinkError> {
        if !self.serialized {
            return Ok(None);
        }
        let owner = uuid::Uuid::new_v4().simple().to_string();
        let started = std::time::Instant::now();
        loop {
            let now = now_millis();
            let taken = self
                .projections
                .update_one(
                    doc! { "_id": "#lease", "until": { "$lt": now } },
                    doc! { "$set": { "until": now + LEASE_MILLIS, "owner": &owner } },
                )
                .await;
            let failure = match taken {
                Ok(taken) if taken.matched_count == 1 => return Ok(Some(owner)),
                // Held by another, or not there yet (a new or wiped
                // database): create it if missing, then try again. Two
                // processes creating it at once may see an error (nx-27017
                // answers "Failed to get last row id."): also try again.
                Ok(_) => self
                    .projections
                    .update_one(doc! { "_id": "#lease" }, doc! { "$setOnInsert": { "until": 0_i64 } })
                    .upsert(true)
                    .await
                    .err(),
                Err(e) => Some(e),
            };
            if started.elapsed() > Duration::from_millis(LEASE_MILLIS as u64 * 12) {
                let why = failure.map_or_else(|| "another process held it for over a minute".to_owned(), |e| e.to_string());
                return Err(SinkError::backend("taking the database lease", why));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn release(&self, owner: &str) {
        let released = self.projections.update_one(doc! { "_id": "#lease", "owner": owner }, doc! { "$set": { "until": 0_i64 } }).await;
        if let Err(e) = released {
            tracing::warn!(error = %strata_store::chain(&e), "releasing the database lease failed; it expires by itself");
        }
    }

    /// Creates the index pages walk, before the generation's marker exists
    /// (so no commit waits on a build). On a replica set the build needs a
    /// majority of members, not every voting one (the default): one member
    /// down must not hold a new generation back.
    async fn ensure_query_index(&self, projection: &str, generation: u64) -> Result<(), SinkError> {
        let model = IndexModel::builder().keys(doc! { "ix": 1, "s": 1, "m": 1 }).build();
        let collection = self.generation(projection, generation);
        let create = collection.create_index(model);
        let create = if self.serialized { create } else { create.commit_quorum(mongodb::options::CommitQuorum::Majority) };
        create.await.map_err(backend("creating the index of index entries"))?;
        Ok(())
    }

    async fn poll_changes(&self, known: &mut HashMap<String, (u64, u64)>, out: &mut Vec<Change>) -> Result<(), SinkError> {
        let pointers: Vec<BsonDocument> = self
            .projections
            .find(doc! { "live": { "$exists": true } })
            .await
            .map_err(backend("polling changes"))?
            .try_collect()
            .await
            .map_err(backend("polling changes"))?;
        let mut everything = false;
        for pointer in pointers {
            let (Ok(projection), Some(live)) = (pointer.get_str("_id"), number(pointer.get("live"))) else { continue };
            let collection = self.generation(projection, live);
            let Some(marker) = collection.find_one(doc! { "_id": "#gen" }).await.map_err(backend("polling changes"))? else { continue };
            let seq = number(marker.get("seq")).unwrap_or(0);
            let last = match known.get(projection) {
                Some(&(generation, last)) if generation == live && last <= seq => last,
                _ => {
                    everything = true;
                    known.insert(projection.to_owned(), (live, seq));
                    continue;
                }
            };
            if seq == last {
                continue;
            }
            if seq - last > CHANGE_SLOTS / 2 {
                everything = true;
                known.insert(projection.to_owned(), (live, seq));
                continue;
            }
            let slots: Vec<Bson> = (last + 1..=seq).map(|n| Bson::String(change_id(n))).collect();
            let mut entries: BTreeMap<u64, Vec<String>> = BTreeMap::new();
            let mut cursor = collection.find(doc! { "_id": { "$in": slots } }).await.map_err(backend("polling changes"))?;
            while let Some(entry) = cursor.try_next().await.map_err(backend("polling changes"))? {
                let Some(n) = number(entry.get("seq")) else { continue };
                let keys = entry
                    .get_array("keys")
                    .map(|keys| keys.iter().filter_map(|k| k.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default();
                entries.insert(n, keys);
            }
            if (last + 1..=seq).any(|n| !entries.contains_key(&n)) {
                everything = true;
            } else {
                out.extend(entries.into_values().map(|keys| Change::Applied { projection: projection.to_owned(), keys }));
            }
            known.insert(projection.to_owned(), (live, seq));
        }
        if everything {
            out.clear();
            out.push(Change::Everything);
        }
        Ok(())
    }
}

/// A query's read: what it found, or that the generation it read was
/// dropped under it by a rebuild's switch (read again, on the new one).
enum Read<T> {
    Found(T),
    Moved,
}

/// How often a query reads again after a switch dropped its generation.
const READ_TRIES: usize = 3;

/// One lock per thing transactions are about, made on first use.
#[derive(Default)]
struct Turns(std::sync::Mutex<HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>);

impl Turns {
    fn of(&self, about: &str) -> std::sync::Arc<tokio::sync::Mutex<()>> {
        let mut turns = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Forget the locks nobody holds or waits for (old generations).
        if turns.len() > 64 {
            turns.retain(|_, turn| std::sync::Arc::strong_count(turn) > 1);
        }
        turns.entry(about.to_owned()).or_default().clone()
    }
}

/// What a commit found and decided inside its transaction.
enum Outcome {
    Refused(Committed),
    Done,
}

#[async_trait]
impl ReadModelSink for MongoSink {
    fn backend_name(&self) -> &'static str {
        "mongodb"
    }

    async fn ping(&self) -> Result<(), SinkError> {
        self.database.run_command(doc! { "ping": 1 }).await.map_err(backend("pinging mongodb"))?;
        Ok(())
    }

    async fn live_generation(&self, projection: &str) -> Result<Option<u64>, SinkError> {
        let Some(pointer) = self.projection_doc(projection, None).await? else { return Ok(None) };
        let Some(live) = number(pointer.get("live")) else { return Ok(None) };
        let marker =
            self.generation(projection, live).find_one(doc! { "_id": "#gen" }).await.map_err(backend("reading a generation marker"))?;
        Ok(marker.map(|_| live))
    }

    async fn new_generation(&self, projection: &str) -> Result<u64, SinkError> {
        loop {
            let pointer = self.projection_doc(projection, None).await?.unwrap_or_default();
            let next = number(pointer.get("next"));
            let generation = next.unwrap_or(0).max(number(pointer.get("live")).unwrap_or(0)) + 1;
            // Compare-and-set on `next`, so concurrent callers get distinct numbers.
            let reserved = match (pointer.is_empty(), next) {
                (true, _) => match self.projections.insert_one(doc! { "_id": projection, "next": signed(generation) }).await {
                    Ok(_) => true,
                    Err(e) if is_duplicate_key(&e) => false,
                    Err(e) => return Err(SinkError::backend("reserving a generation", e)),
                },
                (false, next) => {
                    let filter = match next {
                        Some(next) => doc! { "_id": projection, "next": signed(next) },
                        None => doc! { "_id": projection, "next": { "$exists": false } },
                    };
                    let update = self.projections.update_one(filter, doc! { "$set": { "next": signed(generation) } }).await;
                    update.map_err(backend("reserving a generation"))?.matched_count == 1
                }
            };
            if !reserved {
                continue;
            }
            self.ensure_query_index(projection, generation).await?;
            let marker = doc! { "_id": "#gen", "state": RESERVED, "seq": 0_i64, "position": 0_i64, "events": 0_i64, "dead": 0_i64 };
            self.generation(projection, generation).insert_one(marker).await.map_err(backend("writing a generation marker"))?;
            return Ok(generation);
        }
    }

    async fn switch_live(&self, projection: &str, generation: u64) -> Result<bool, SinkError> {
        let (projections, database, name) = (self.projections.clone(), self.database.clone(), projection.to_owned());
        self.transaction("switching the live generation", projection, move |session| {
            let (projections, database, name) = (projections.clone(), database.clone(), name.clone());
            Box::pin(async move {
                claim(&projections, &name, false, session).await?;
                let Some(pointer) = projections.find_one(doc! { "_id": &name }).session(&mut *session).await? else { return Ok(false) };
                if number(pointer.get("rebuilding")) != Some(generation) {
                    return Ok(false);
                }
                let next = database.collection::<BsonDocument>(&collection_name(&name, generation));
                if next.find_one(doc! { "_id": "#gen" }).session(&mut *session).await?.is_none() {
                    return Ok(false);
                }
                // The pointer first: on a server that does not isolate
                // transactions, a process killed after it leaves readers on
                // the new generation, whose state still takes commits.
                projections
                    .update_one(doc! { "_id": &name }, doc! { "$set": { "live": signed(generation) }, "$unset": { "rebuilding": "" } })
                    .session(&mut *session)
                    .await?;
                next.update_one(doc! { "_id": "#gen" }, doc! { "$set": { "state": LIVE } }).session(&mut *session).await?;
                if let Some(old) = number(pointer.get("live")).filter(|old| *old != generation) {
                    let old = database.collection::<BsonDocument>(&collection_name(&name, old));
                    old.update_one(doc! { "_id": "#gen" }, doc! { "$set": { "state": RETIRED } }).session(&mut *session).await?;
                }
                Ok(true)
            })
        })
        .await
    }

    async fn init_live(&self, projection: &str, generation: u64) -> Result<u64, SinkError> {
        // The index first (idempotent; a generation another process made
        // live already has it).
        self.ensure_query_index(projection, generation).await?;
        let (projections, database, name) = (self.projections.clone(), self.database.clone(), projection.to_owned());
        let live = self
            .transaction("initialising the live generation", projection, move |session| {
                let (projections, database, name) = (projections.clone(), database.clone(), name.clone());
                Box::pin(async move {
                    claim(&projections, &name, true, session).await?;
                    let pointer = projections.find_one(doc! { "_id": &name }).session(&mut *session).await?;
                    if let Some(live) = pointer.as_ref().and_then(|p| number(p.get("live"))) {
                        return Ok(live);
                    }
                    let next = pointer.as_ref().and_then(|p| number(p.get("next"))).unwrap_or(0).max(generation);
                    projections
                        .update_one(doc! { "_id": &name }, doc! { "$set": { "live": signed(generation), "next": signed(next) } })
                        .upsert(true)
                        .session(&mut *session)
                        .await?;
                    let marker = database.collection::<BsonDocument>(&collection_name(&name, generation));
                    let counters = doc! { "seq": 0_i64, "position": 0_i64, "events": 0_i64, "dead": 0_i64 };
                    marker
                        .update_one(doc! { "_id": "#gen" }, doc! { "$set": { "state": LIVE }, "$setOnInsert": counters })
                        .upsert(true)
                        .session(&mut *session)
                        .await?;
                    Ok(generation)
                })
            })
            .await?;
        Ok(live)
    }

    async fn drop_generation(&self, target: &Target) -> Result<(), SinkError> {
        let pointer = self.projection_doc(&target.projection, None).await?;
        if pointer.as_ref().and_then(|p| number(p.get("live"))) == Some(target.generation) {
            return Ok(());
        }
        self.generation_collection(target).drop().await.map_err(backend("dropping a generation"))
    }

    async fn load(&self, target: &Target, streams: &[String], documents: &[String]) -> Result<Loaded, SinkError> {
        if streams.is_empty() && documents.is_empty() {
            return Ok(Loaded::default());
        }
        let ids: Vec<String> = streams.iter().map(|s| stream_id(s)).chain(documents.iter().map(|d| document_id(d))).collect();
        let mut found: HashMap<String, BsonDocument> = HashMap::with_capacity(ids.len());
        let mut cursor = self
            .generation_collection(target)
            .find(doc! { "_id": { "$in": ids } })
            .await
            .map_err(backend("loading stream versions and documents"))?;
        while let Some(stored) = cursor.try_next().await.map_err(backend("loading stream versions and documents"))? {
            if let Some(id) = stored_id(&stored) {
                found.insert(id, stored);
            }
        }
        let mut loaded = Loaded::default();
        for stream in streams {
            let stored = found.get(&stream_id(stream));
            loaded.stream_versions.push(stored.and_then(|s| number(s.get("v"))).unwrap_or(0));
            loaded.parked_from.push(stored.and_then(|s| number(s.get("p"))));
        }
        for key in documents {
            loaded.documents.push(found.get(&document_id(key)).and_then(parse_document));
        }
        Ok(loaded)
    }

    async fn commit(&self, target: &Target, batch: &Batch) -> Result<Committed, SinkError> {
        let collection = collection_name(&target.projection, target.generation);
        // Documents that take a `$max`: whether they exist is read in the transaction.
        let max_documents: Vec<String> = batch
            .writes
            .iter()
            .filter_map(|write| match write {
                Write::SetMax { key, .. } => Some(document_id(key)),
                _ => None,
            })
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let writes = std::sync::Arc::new(batch.writes.clone());
        let change = Change::of(&target.projection, batch);
        let (database, projections, generation, projection) =
            (self.database.clone(), self.projections.clone(), target.generation, target.projection.clone());
        // What the transaction needs of the batch, owned: it may run again.
        let batch = std::sync::Arc::new(Batch {
            guards: batch.guards.clone(),
            writes: Vec::new(),
            dead_letters: batch.dead_letters.clone(),
            position: batch.position,
            events: batch.events,
        });
        let outcome = self
            .transaction("committing a batch", &collection, |session| {
                let (database, projections, collection, projection) = (database.clone(), projections.clone(), collection.clone(), projection.clone());
                let (writes, max_documents, change, batch) = (writes.clone(), max_documents.clone(), change.clone(), batch.clone());
                Box::pin(async move {
                    let generation_docs = database.collection::<BsonDocument>(&collection);
                    claim(&generation_docs, "#gen", false, session).await?;
                    // One read: the marker, every guarded stream, dead letter and `$max`ed document.
                    let mut ids: Vec<String> = vec!["#gen".to_owned()];
                    // (A guard without an expected version, a rebuild's, checks nothing.)
                    ids.extend(batch.guards.iter().filter(|g| g.expected.is_some()).map(|g| stream_id(&g.stream_id)));
                    ids.extend(batch.dead_letters.iter().map(dead_id));
                    ids.extend(max_documents.iter().cloned());
                    let mut found: HashMap<String, BsonDocument> = HashMap::new();
                    let mut cursor = generation_docs.find(doc! { "_id": { "$in": ids } }).session(&mut *session).await?;
                    let mut stream = cursor.stream(&mut *session);
                    while let Some(stored) = stream.next().await {
                        let stored = stored?;
                        if let Some(id) = stored_id(&stored) {
                            found.insert(id, stored);
                        }
                    }
                    drop(stream);
                    let Some(marker) = found.get("#gen") else {
                        // Gone: dropped after a switch (retired), or lost.
                        let pointer = projections.find_one(doc! { "_id": &projection }).session(&mut *session).await?;
                        let live = pointer.as_ref().and_then(|p| number(p.get("live")));
                        let rebuilding = pointer.as_ref().and_then(|p| number(p.get("rebuilding")));
                        let refused = match live {
                            Some(live) if live != generation && rebuilding != Some(generation) => Committed::Retired,
                            _ => Committed::Lost,
                        };
                        return Ok(Outcome::Refused(refused));
                    };
                    let state = marker.get_str("state").unwrap_or(RESERVED).to_owned();
                    let seq = number(marker.get("seq")).unwrap_or(0) + 1;
                    let refused = if state != LIVE && state != REBUILDING {
                        Some(Committed::Retired)
                    } else {
                        batch.guards.iter().find_map(|guard| {
                            let expected = guard.expected?;
                            let actual = found.get(&stream_id(&guard.stream_id)).and_then(|s| number(s.get("v"))).unwrap_or(0);
                            (actual != expected).then(|| Committed::Conflict { stream_id: guard.stream_id.clone(), actual })
                        })
                    };
                    if let Some(refused) = refused {
                        return Ok(Outcome::Refused(refused));
                    }
                    let existing: HashSet<String> = max_documents.iter().filter(|id| found.contains_key(*id)).cloned().collect();
                    let mut statements = Statements::default();
                    statements.fold(&writes, &existing);
                    let Statements { mut updates, gone } = statements;
                    let mut parked: HashMap<&str, u64> = HashMap::new();
                    for letter in &batch.dead_letters {
                        let from = parked.entry(&letter.stream_id).or_insert(letter.stream_version);
                        *from = (*from).min(letter.stream_version);
                    }
                    let mut guarded: HashSet<&str> = HashSet::new();
                    for guard in &batch.guards {
                        guarded.insert(&guard.stream_id);
                        let mut update = doc! { "$set": { "v": signed(guard.reached) } };
                        if let Some(from) = parked.get(guard.stream_id.as_str()) {
                            update.insert("$min", doc! { "p": signed(*from) });
                        }
                        updates.push(doc! { "q": { "_id": stream_id(&guard.stream_id) }, "u": update, "upsert": true });
                    }
                    for (stream, from) in &parked {
                        if !guarded.contains(stream) {
                            updates.push(doc! { "q": { "_id": stream_id(stream) }, "u": { "$min": { "p": signed(*from) } }, "upsert": true });
                        }
                    }
                    let mut new_dead = 0_i64;
                    for letter in &batch.dead_letters {
                        let id = dead_id(letter);
                        if found.contains_key(&id) {
                            continue;
                        }
                        new_dead += 1;
                        updates.push(doc! { "q": { "_id": &id }, "u": { "$setOnInsert": dead_letter_document(letter) }, "upsert": true });
                        found.insert(id, BsonDocument::new());
                    }
                    let position = signed(batch.position.0);
                    updates.push(doc! {
                        "q": { "_id": "#gen" },
                        "u": { "$set": { "seq": signed(seq) }, "$inc": { "events": signed(batch.events), "dead": new_dead }, "$max": { "position": position } },
                    });
                    let live = state == LIVE;
                    if live {
                        let keys = match change {
                            Change::Applied { keys, .. } => keys,
                            Change::Everything => Vec::new(),
                        };
                        // Replacements name their `_id` (nx-27017 does not take it from the query).
                        let id = change_id(seq);
                        updates.push(doc! { "q": { "_id": &id }, "u": { "_id": &id, "seq": signed(seq), "keys": keys }, "upsert": true });
                    }
                    run_updates(&database, &collection, updates, session).await?;
                    if !gone.is_empty() {
                        delete_tombstones(&database, &collection, gone, session).await?;
                    }
                    Ok(Outcome::Done)
                })
            })
            .await?;
        Ok(match outcome {
            Outcome::Refused(refused) => refused,
            Outcome::Done => Committed::Done,
        })
    }

    fn bounds_documents(&self) -> bool {
        true
    }

    fn retire_grace(&self) -> Duration {
        RETIRE_GRACE
    }

    fn oversized(&self, key: &str, document: &Document) -> Option<String> {
        let mut raw = Vec::new();
        let bytes = match Self::stored_document(key, document).to_writer(&mut raw) {
            Ok(()) => raw.len(),
            Err(error) => return Some(format!("document {key} cannot be stored in MongoDB: {error}")),
        };
        (bytes > self.document_bytes).then(|| {
            format!(
                "document {key} would be {bytes} bytes in MongoDB, over the {} the sink writes (MongoDB's limit is 16 MiB)",
                self.document_bytes
            )
        })
    }

    async fn document(&self, projection: &str, key: &str) -> Result<Option<Document>, SinkError> {
        for _ in 0..READ_TRIES {
            match self.document_once(projection, key).await? {
                Read::Moved => continue,
                Read::Found(document) => return Ok(document),
            }
        }
        Ok(None)
    }

    async fn page(&self, projection: &str, index: &str, after: Option<i64>, limit: usize) -> Result<Vec<IndexEntry>, SinkError> {
        for _ in 0..READ_TRIES {
            match self.page_once(projection, index, after, limit).await? {
                Read::Moved => continue,
                Read::Found(entries) => return Ok(entries),
            }
        }
        Ok(Vec::new())
    }

    async fn stats(&self, target: &Target) -> Result<GenerationStats, SinkError> {
        let marker =
            self.generation_collection(target).find_one(doc! { "_id": "#gen" }).await.map_err(backend("reading generation stats"))?;
        let marker = marker.unwrap_or_default();
        Ok(GenerationStats {
            position: Position(number(marker.get("position")).unwrap_or(0)),
            events: number(marker.get("events")).unwrap_or(0),
            dead_letters: number(marker.get("dead")).unwrap_or(0),
        })
    }

    async fn dead_letters(&self, target: &Target, limit: usize) -> Result<Vec<DeadLetter>, SinkError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let stored: Vec<BsonDocument> = self
            .generation_collection(target)
            .find(doc! { "_id": { "$gte": "x:", "$lt": "x;" } })
            .sort(doc! { "_id": 1 })
            .limit(limit)
            .await
            .map_err(backend("reading dead letters"))?
            .try_collect()
            .await
            .map_err(backend("reading dead letters"))?;
        stored
            .into_iter()
            .map(|mut letter| {
                let id = letter.remove("_id").unwrap_or(Bson::Null);
                serde_json::from_value(to_json(&Bson::Document(letter))).map_err(|e| malformed(format!("dead letter {id}"), e.to_string()))
            })
            .collect()
    }

    async fn meta(&self, projection: &str) -> Result<Meta, SinkError> {
        let pointer = self.projection_doc(projection, None).await?.unwrap_or_default();
        let fields = pointer.get_document("m").cloned().unwrap_or_default();
        let texts: Vec<(String, String)> = fields.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned()))).collect();
        let mut meta = Meta::from_fields(texts.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        meta.rebuilding = number(pointer.get("rebuilding"));
        Ok(meta)
    }

    async fn set_meta(&self, projection: &str, field: MetaField, value: Option<String>) -> Result<(), SinkError> {
        if field != MetaField::Rebuilding {
            let path = format!("m.{}", field.as_str());
            let update = match value {
                Some(value) => doc! { "$set": { path: value } },
                None => doc! { "$unset": { path: "" } },
            };
            self.projections
                .update_one(doc! { "_id": projection }, update)
                .upsert(true)
                .await
                .map_err(backend("writing projection state"))?;
            return Ok(());
        }
        // The rebuilding mark decides which generation takes commits besides
        // the live one: the pointer and the generations' states move together.
        let generation = match value {
            Some(value) => Some(value.parse::<u64>().map_err(|e| malformed("rebuilding", e.to_string()))?),
            None => None,
        };
        let (projections, database, name) = (self.projections.clone(), self.database.clone(), projection.to_owned());
        self.transaction("marking a rebuild", projection, move |session| {
            let (projections, database, name) = (projections.clone(), database.clone(), name.clone());
            Box::pin(async move {
                claim(&projections, &name, true, session).await?;
                let pointer = projections.find_one(doc! { "_id": &name }).session(&mut *session).await?;
                let previous = pointer.as_ref().and_then(|p| number(p.get("rebuilding")));
                if let Some(previous) = previous.filter(|p| Some(*p) != generation) {
                    let old = database.collection::<BsonDocument>(&collection_name(&name, previous));
                    old.update_one(doc! { "_id": "#gen", "state": REBUILDING }, doc! { "$set": { "state": RESERVED } })
                        .session(&mut *session)
                        .await?;
                }
                let update = match generation {
                    Some(generation) => {
                        let next = database.collection::<BsonDocument>(&collection_name(&name, generation));
                        next.update_one(doc! { "_id": "#gen", "state": RESERVED }, doc! { "$set": { "state": REBUILDING } })
                            .session(&mut *session)
                            .await?;
                        doc! { "$set": { "rebuilding": signed(generation) } }
                    }
                    None => doc! { "$unset": { "rebuilding": "" } },
                };
                projections.update_one(doc! { "_id": &name }, update).upsert(true).session(&mut *session).await?;
                Ok(())
            })
        })
        .await
    }

    async fn changes(&self) -> Result<Option<ChangeFeed>, SinkError> {
        struct Poll {
            sink: MongoSink,
            known: HashMap<String, (u64, u64)>,
            pending: std::collections::VecDeque<Change>,
            started: bool,
            failing: bool,
        }
        // A client of its own (the pool is shared by clones), so dropping the
        // feed ends its polling.
        // It reads with majority read concern: the queries read majority
        // snapshots, so a waiter woken by a commit not yet on a majority
        // would look and not find it.
        let majority = DatabaseOptions::builder().read_concern(ReadConcern::majority()).build();
        let database = self.client.database_with_options(self.database.name(), majority);
        let sink = MongoSink {
            client: self.client.clone(),
            projections: database.collection("strata_projections"),
            database,
            turns: Turns::default(),
            snapshots: self.snapshots,
            serialized: self.serialized,
            document_bytes: self.document_bytes,
        };
        let state = Poll { sink, known: HashMap::new(), pending: Default::default(), started: false, failing: false };
        let feed = futures_util::stream::unfold(state, |mut state| async move {
            loop {
                if let Some(change) = state.pending.pop_front() {
                    return Some((change, state));
                }
                if state.started {
                    tokio::time::sleep(if state.failing { Duration::from_millis(250) } else { CHANGE_POLL }).await;
                }
                let mut changes = Vec::new();
                match state.sink.poll_changes(&mut state.known, &mut changes).await {
                    Ok(()) => {
                        if !state.started || state.failing {
                            // Readers look once when the feed (re)starts.
                            changes = vec![Change::Everything];
                        }
                        state.started = true;
                        state.failing = false;
                        state.pending.extend(changes);
                    }
                    Err(e) => {
                        if !state.failing {
                            tracing::warn!(error = %strata_store::chain(&e), "mongodb change polling failed; readers fall back to their safety net until it answers");
                        }
                        state.started = true;
                        state.failing = true;
                    }
                }
            }
        });
        Ok(Some(Box::pin(feed)))
    }

    async fn dump(&self, target: &Target) -> Result<Dump, SinkError> {
        let mut dump = Dump::default();
        let mut cursor = self.generation_collection(target).find(doc! {}).await.map_err(backend("dumping a generation"))?;
        while let Some(stored) = cursor.try_next().await.map_err(backend("dumping a generation"))? {
            let Ok(id) = stored.get_str("_id") else { continue };
            if let Some(key) = id.strip_prefix("d:") {
                if let Some(document) = parse_document(&stored) {
                    dump.documents.insert(key.to_owned(), document);
                }
            } else if id.starts_with("i:") {
                let (Ok(index), Ok(member)) = (stored.get_str("ix"), stored.get_str("m")) else { continue };
                let score = match stored.get("s") {
                    Some(Bson::Int64(s)) => *s,
                    Some(Bson::Int32(s)) => i64::from(*s),
                    _ => continue,
                };
                dump.indexes.entry(index.to_owned()).or_default().push((score, member.to_owned()));
            } else if let Some(stream) = id.strip_prefix("s:") {
                if let Some(version) = number(stored.get("v")) {
                    dump.stream_versions.insert(stream.to_owned(), version);
                }
            }
        }
        for entries in dump.indexes.values_mut() {
            entries.sort();
        }
        Ok(dump)
    }
}

fn is_duplicate_key(error: &MongoError) -> bool {
    match error.kind.as_ref() {
        ErrorKind::Write(mongodb::error::WriteFailure::WriteError(e)) => e.code == 11000,
        ErrorKind::Command(e) => e.code == 11000,
        _ => false,
    }
}
