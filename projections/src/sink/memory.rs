//! [`MemorySink`]: read models in process memory, the embedded default.
//!
//! Nothing survives the process: the embedded server rebuilds its read models
//! from the log at start-up. One lock guards everything, so a commit is
//! atomic and a query sees one generation whole.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::RwLock;

use async_trait::async_trait;
use futures_util::StreamExt;
use strata_store::Position;

use super::{
    Batch, Change, ChangeFeed, Committed, DeadLetter, Dump, GenerationStats, IndexEntry, Loaded, Meta, MetaField, ReadModelSink, SinkError,
    Target,
};
use crate::projection::{apply_to_document, Document, Write};

/// Read models in memory.
#[derive(Debug)]
pub struct MemorySink {
    projections: RwLock<HashMap<String, ProjectionData>>,
    /// What commits to live generations changed, for waiting readers.
    changes: tokio::sync::broadcast::Sender<Change>,
}

impl Default for MemorySink {
    fn default() -> Self {
        Self { projections: RwLock::default(), changes: tokio::sync::broadcast::channel(1_024).0 }
    }
}

#[derive(Debug, Default)]
struct ProjectionData {
    live: Option<u64>,
    last_generation: u64,
    meta: BTreeMap<String, String>,
    generations: HashMap<u64, Generation>,
}

#[derive(Debug, Default)]
struct Generation {
    documents: HashMap<String, Document>,
    indexes: HashMap<String, Index>,
    streams: HashMap<String, u64>,
    parked: HashMap<String, u64>,
    dead: BTreeMap<(u64, uuid::Uuid), DeadLetter>,
    position: Position,
    events: u64,
}

#[derive(Debug, Default)]
struct Index {
    scores: HashMap<String, i64>,
    ordered: BTreeSet<(i64, String)>,
}

impl Index {
    fn add(&mut self, score: i64, member: &str) {
        if let Some(old) = self.scores.insert(member.to_owned(), score) {
            self.ordered.remove(&(old, member.to_owned()));
        }
        self.ordered.insert((score, member.to_owned()));
    }

    fn remove(&mut self, member: &str) {
        if let Some(old) = self.scores.remove(member) {
            self.ordered.remove(&(old, member.to_owned()));
        }
    }
}

impl MemorySink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets everything, as a Redis restarted without persistence would:
    /// what tests use to check that a lost read model is noticed.
    pub fn clear(&self) {
        self.projections.write().unwrap_or_else(|poisoned| poisoned.into_inner()).clear();
    }

    fn read<T>(&self, projection: &str, f: impl FnOnce(Option<&ProjectionData>) -> T) -> T {
        let projections = self.projections.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(projections.get(projection))
    }

    fn write<T>(&self, projection: &str, f: impl FnOnce(&mut ProjectionData) -> T) -> T {
        let mut projections = self.projections.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(projections.entry(projection.to_owned()).or_default())
    }

    /// The live generation's data; `None` without a live pointer, or when the
    /// generation it names is gone (its data was lost).
    fn with_live<T>(&self, projection: &str, f: impl FnOnce(&Generation) -> T) -> Option<T> {
        self.read(projection, |data| {
            let data = data?;
            data.generations.get(&data.live?).map(f)
        })
    }
}

impl Generation {
    fn apply(&mut self, write: &Write) {
        match write {
            Write::SetField { key, .. } | Write::SetMax { key, .. } | Write::DeleteDocument { key } => {
                let mut document = self.documents.remove(key);
                apply_to_document(&mut document, key, write);
                if let Some(document) = document {
                    self.documents.insert(key.clone(), document);
                }
            }
            Write::IndexAdd { index, score, member } => self.indexes.entry(index.clone()).or_default().add(*score, member),
            Write::IndexRemove { index, member } => {
                if let Some(entries) = self.indexes.get_mut(index) {
                    entries.remove(member);
                    if entries.scores.is_empty() {
                        self.indexes.remove(index);
                    }
                }
            }
        }
    }

    fn page(&self, index: &str, after: Option<i64>, limit: usize) -> Vec<IndexEntry> {
        let Some(entries) = self.indexes.get(index) else {
            return Vec::new();
        };
        let start = match after {
            Some(after) => std::ops::Bound::Excluded((after, String::from("\u{10FFFF}"))),
            None => std::ops::Bound::Unbounded,
        };
        entries
            .ordered
            .range((start, std::ops::Bound::Unbounded))
            .filter(|(score, _)| after.is_none_or(|after| *score > after))
            .take(limit)
            .map(|(score, key)| IndexEntry { score: *score, key: key.clone(), document: self.documents.get(key).cloned() })
            .collect()
    }
}

#[async_trait]
impl ReadModelSink for MemorySink {
    fn backend_name(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> Result<(), SinkError> {
        Ok(())
    }

    async fn live_generation(&self, projection: &str) -> Result<Option<u64>, SinkError> {
        Ok(self.read(projection, |data| data.and_then(|data| data.live.filter(|live| data.generations.contains_key(live)))))
    }

    async fn new_generation(&self, projection: &str) -> Result<u64, SinkError> {
        Ok(self.write(projection, |data| {
            data.last_generation += 1;
            data.generations.entry(data.last_generation).or_default();
            data.last_generation
        }))
    }

    async fn switch_live(&self, projection: &str, generation: u64) -> Result<bool, SinkError> {
        let switched = self.write(projection, |data| {
            let rebuilding = MetaField::Rebuilding.as_str();
            if data.meta.get(rebuilding) != Some(&generation.to_string()) || !data.generations.contains_key(&generation) {
                return false;
            }
            data.meta.remove(rebuilding);
            data.live = Some(generation);
            true
        });
        if switched {
            let _ = self.changes.send(Change::Everything);
        }
        Ok(switched)
    }

    async fn changes(&self) -> Result<Option<ChangeFeed>, SinkError> {
        // A reader that fell behind by more than the channel holds looks again at everything.
        let feed = futures_util::stream::unfold(self.changes.subscribe(), |mut receiver| async move {
            match receiver.recv().await {
                Ok(change) => Some((change, receiver)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Some((Change::Everything, receiver)),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
            }
        });
        // Like every feed, it starts by telling readers to look once more.
        Ok(Some(Box::pin(futures_util::stream::once(async { Change::Everything }).chain(feed))))
    }

    async fn init_live(&self, projection: &str, generation: u64) -> Result<u64, SinkError> {
        Ok(self.write(projection, |data| {
            data.last_generation = data.last_generation.max(generation);
            data.generations.entry(generation).or_default();
            *data.live.get_or_insert(generation)
        }))
    }

    async fn drop_generation(&self, target: &Target) -> Result<(), SinkError> {
        self.write(&target.projection, |data| {
            if data.live != Some(target.generation) {
                data.generations.remove(&target.generation);
            }
        });
        Ok(())
    }

    async fn load(&self, target: &Target, streams: &[String], documents: &[String]) -> Result<Loaded, SinkError> {
        Ok(self.read(&target.projection, |data| {
            let generation = data.and_then(|data| data.generations.get(&target.generation));
            Loaded {
                stream_versions: streams
                    .iter()
                    .map(|stream| generation.and_then(|g| g.streams.get(stream).copied()).unwrap_or(0))
                    .collect(),
                parked_from: streams.iter().map(|stream| generation.and_then(|g| g.parked.get(stream).copied())).collect(),
                documents: documents.iter().map(|key| generation.and_then(|g| g.documents.get(key).cloned())).collect(),
            }
        }))
    }

    async fn commit(&self, target: &Target, batch: &Batch) -> Result<Committed, SinkError> {
        let mut live = false;
        let committed = self.write(&target.projection, |data| {
            let rebuilding = data.meta.get(MetaField::Rebuilding.as_str()).and_then(|g| g.parse::<u64>().ok());
            if data.live != Some(target.generation) && rebuilding != Some(target.generation) {
                return if data.live.is_none() { Committed::Lost } else { Committed::Retired };
            }
            let Some(generation) = data.generations.get_mut(&target.generation) else {
                return Committed::Lost;
            };
            for guard in &batch.guards {
                let actual = generation.streams.get(&guard.stream_id).copied().unwrap_or(0);
                if guard.expected.is_some_and(|expected| expected != actual) {
                    return Committed::Conflict { stream_id: guard.stream_id.clone(), actual };
                }
            }
            for guard in &batch.guards {
                generation.streams.insert(guard.stream_id.clone(), guard.reached);
            }
            for write in &batch.writes {
                generation.apply(write);
            }
            for letter in &batch.dead_letters {
                generation.parked.entry(letter.stream_id.clone()).or_insert(letter.stream_version);
                // The first record of a dead letter stays (a redelivery
                // parks it again behind itself), as in every backend.
                generation.dead.entry((letter.position, letter.event_id)).or_insert_with(|| letter.clone());
            }
            generation.position = generation.position.max(batch.position);
            generation.events += batch.events;
            live = data.live == Some(target.generation);
            Committed::Done
        });
        if live && self.changes.receiver_count() > 0 {
            let _ = self.changes.send(Change::of(&target.projection, batch));
        }
        Ok(committed)
    }

    async fn document(&self, projection: &str, key: &str) -> Result<Option<Document>, SinkError> {
        Ok(self.with_live(projection, |g| g.documents.get(key).cloned()).flatten())
    }

    async fn page(&self, projection: &str, index: &str, after: Option<i64>, limit: usize) -> Result<Vec<IndexEntry>, SinkError> {
        Ok(self.with_live(projection, |g| g.page(index, after, limit)).unwrap_or_default())
    }

    async fn stats(&self, target: &Target) -> Result<GenerationStats, SinkError> {
        Ok(self.read(&target.projection, |data| {
            data.and_then(|data| data.generations.get(&target.generation))
                .map(|g| GenerationStats { position: g.position, events: g.events, dead_letters: g.dead.len() as u64 })
                .unwrap_or_default()
        }))
    }

    async fn dead_letters(&self, target: &Target, limit: usize) -> Result<Vec<DeadLetter>, SinkError> {
        Ok(self.read(&target.projection, |data| {
            data.and_then(|data| data.generations.get(&target.generation))
                .map(|g| g.dead.values().take(limit).cloned().collect())
                .unwrap_or_default()
        }))
    }

    async fn meta(&self, projection: &str) -> Result<Meta, SinkError> {
        Ok(self.read(projection, |data| {
            data.map(|data| Meta::from_fields(data.meta.iter().map(|(k, v)| (k.as_str(), v.as_str())))).unwrap_or_default()
        }))
    }

    async fn set_meta(&self, projection: &str, field: MetaField, value: Option<String>) -> Result<(), SinkError> {
        self.write(projection, |data| match value {
            Some(value) => data.meta.insert(field.as_str().to_owned(), value),
            None => data.meta.remove(field.as_str()),
        });
        Ok(())
    }

    async fn dump(&self, target: &Target) -> Result<Dump, SinkError> {
        Ok(self.read(&target.projection, |data| {
            let Some(g) = data.and_then(|data| data.generations.get(&target.generation)) else {
                return Dump::default();
            };
            Dump {
                documents: g.documents.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                indexes: g.indexes.iter().map(|(name, index)| (name.clone(), index.ordered.iter().cloned().collect())).collect(),
                stream_versions: g.streams.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            }
        }))
    }
}
