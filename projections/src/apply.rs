//! The planner shared by the live runner and rebuilds: turns a batch of
//! events into one [`Batch`] for the sink.
//!
//! Per stream it keeps the applied version, so an event at or below it is a
//! duplicate (skipped) and an event above the next one reveals a gap, which it
//! fills from the log before going on: the bus only has to say *that*
//! something happened, the log says exactly what. A stream whose event
//! `apply` keeps refusing is parked from that event on (or the projection
//! stops, per its policy).
//!
//! **Prefix consistency.** Streams that feed the same documents
//! ([`Projection::related_streams`]) are applied in global position order:
//! before an event at position P, every event of its related streams below
//! P is read from the log and applied first (all of them, merged with the
//! event's own gap, in position order). So a document fed by several streams
//! always equals the fold of some prefix of the log, whatever order the bus
//! delivered them in and however many replicas apply them: a replica that
//! gets a later event first catches up from the log, and the stream guards
//! make the replica that applies the same events second write nothing.
//! The related streams of a whole batch are read once, in one query, before
//! planning ([`RelatedRead`] says why one read serves every event of the
//! batch): a read per event, one after the other, made the live projection
//! fall behind at 500 orders/s (BENCHMARKS.md, issue 19).
//!
//! **Bounded fills.** Fills read the log in pages, and one batch fills at
//! most [`FILL_BUDGET`] events per source; past that, the batch covers what
//! it filled, and the rest of its events are planned again once it is
//! committed (see [`Plan::covered`]).

use std::collections::HashMap;
use std::time::Duration;

use strata_store::{EventReader, Position, ReadError, ReadStream, RecordedEvent, StreamId};

/// Events one batch reads from the log per source (its own stream's gap, a
/// related stream) before it commits what it has and goes on in the next.
pub const FILL_BUDGET: usize = 2_000;

/// Events read from the log per page while filling.
const FILL_PAGE: usize = 500;

/// Related streams read from the log at once while a batch is planned, when
/// they are too long to read in one query.
const RELATED_READS_AT_ONCE: usize = 4;

use crate::projection::{apply_to_document, ApplyError, Document, PoisonPolicy, Projection, Write};
use crate::sink::{Batch, DeadLetter, ReadModelSink, SinkError, StreamGuard, Target};

/// Why planning a batch failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The sink failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// Reading the log (to fill a gap) failed.
    #[error("reading the log to fill a gap failed")]
    Log(#[from] ReadError),
    /// An event kept failing and the projection's policy is to stop.
    #[error("projection stopped at event {event_id} ({event_type}, stream {stream_id} version {stream_version}): {error}")]
    Poison {
        /// The event.
        event_id: uuid::Uuid,
        /// Its type.
        event_type: String,
        /// Its stream.
        stream_id: String,
        /// Its version.
        stream_version: u64,
        /// Why `apply` refused it.
        error: ApplyError,
    },
}

/// How hard to try an event before parking it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts of `apply` per event.
    pub attempts: u32,
    /// Wait before the second attempt; doubles each time.
    pub backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { attempts: 3, backoff: Duration::from_millis(20) }
    }
}

#[derive(Debug, Clone, Copy)]
struct StreamState {
    expected: u64,
    reached: u64,
    parked_from: Option<u64>,
}

/// What planning returned.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub(crate) batch: Batch,
    /// Events of the input (a prefix, by index) the batch covers: all unless
    /// the projection stopped on a poison event, or a fill reached its budget
    /// (then the rest is planned again after this batch commits).
    pub(crate) covered: usize,
    /// The poison event the projection stopped at.
    pub(crate) stopped: Option<PlanError>,
    /// Stream states and documents after the batch, to plan the next batch of
    /// a single writer before this one is committed (rebuilds).
    pub(crate) carry: Carry,
}

/// State a single writer carries from one planned batch to the next.
#[derive(Debug, Default, Clone)]
pub(crate) struct Carry {
    streams: HashMap<String, (u64, Option<u64>)>,
    documents: HashMap<String, Option<Document>>,
    /// Writes to documents the batch never loaded: the next batch applies
    /// them over what it loads from the sink, which may not hold them yet.
    pending: HashMap<String, Vec<Write>>,
    /// In log order: every stream parked so far (few), since stream states
    /// are not loaded.
    parked: HashMap<String, u64>,
}

pub(crate) struct Planner<'a> {
    pub(crate) projection: &'a dyn Projection,
    pub(crate) sink: &'a dyn ReadModelSink,
    pub(crate) log: &'a dyn EventReader,
    pub(crate) retry: RetryPolicy,
    /// The events come straight from the log, in order, each once, and no
    /// one else writes the target (a rebuild before its switch): no
    /// duplicate or gap checks, no stream versions to load, versions written
    /// without guards.
    pub(crate) log_order: bool,
}

/// What [`Planner::event`] did with an event.
enum Flow {
    /// Applied (or skipped as a duplicate).
    Applied,
    /// Not applied: filling before it reached its budget; what was filled is
    /// in the batch.
    Deferred,
}

struct Work<'c> {
    target: Target,
    streams: HashMap<String, StreamState>,
    /// Per related stream: it has no unapplied event below this position
    /// (established by a read of the log in this batch).
    checked: HashMap<String, Position>,
    /// Per related stream: its events after the version the read model had
    /// when the batch began, up to the batch's last position, read once per
    /// batch ([`RelatedRead`]).
    related: HashMap<String, RelatedRead>,
    /// The batch's last position.
    horizon: Position,
    documents: HashMap<String, Option<Document>>,
    /// Writes to documents not loaded yet, applied when they are.
    pending: HashMap<String, Vec<Write>>,
    batch: Batch,
    carry: Option<&'c Carry>,
}

/// A related stream's events read from the log for one batch: those after
/// the version the read model had, up to the batch's last position (or the
/// fill budget), and the position below which that list is complete (`read_after`).
///
/// One read serves every event of the batch: the batch's events were all
/// committed before it, and anything committed after it lands above them all
/// (positions follow commit order), so the events of the stream below any
/// of the batch's positions are all in it.
struct RelatedRead {
    events: Vec<RecordedEvent>,
    bound: Position,
}

impl RelatedRead {
    /// What `read_after(stream, reached, |e| e.position < before)` would
    /// answer: the events above `reached` below `before`, and the position
    /// of the first one not below it (or the read's own bound).
    fn below(&self, reached: u64, before: Position) -> (Vec<RecordedEvent>, Position) {
        let mut missing = Vec::new();
        for event in self.events.iter().filter(|e| e.stream_version > reached) {
            if event.position >= before {
                return (missing, event.position);
            }
            missing.push(event.clone());
        }
        (missing, self.bound)
    }
}

impl Planner<'_> {
    fn follows(&self, event: &RecordedEvent) -> bool {
        self.projection.categories().contains(&event.stream_id.category())
    }

    fn handles(&self, event: &RecordedEvent) -> bool {
        self.projection.event_types().contains(&event.event_type.as_str())
    }

    /// Plans `events` (in bus or log order) against `target`. With `carry`,
    /// streams and documents it knows are taken from it instead of the sink.
    pub(crate) async fn plan(&self, target: &Target, events: &[RecordedEvent], carry: Option<&Carry>) -> Result<Plan, PlanError> {
        let mut work = Work {
            target: target.clone(),
            streams: HashMap::new(),
            checked: HashMap::new(),
            related: HashMap::new(),
            horizon: events.iter().map(|e| e.position).max().unwrap_or(Position::START),
            documents: HashMap::new(),
            pending: HashMap::new(),
            batch: Batch::default(),
            carry,
        };
        let mut streams: Vec<String> = Vec::new();
        let mut keys: Vec<String> = Vec::new();
        for event in events.iter().filter(|e| self.follows(e)) {
            if !self.log_order {
                for related in self.projection.related_streams(event) {
                    let related = related.as_str();
                    if !work.streams.contains_key(related) && carry.and_then(|c| c.streams.get(related)).is_none() {
                        work.streams.insert(related.to_owned(), StreamState { expected: 0, reached: 0, parked_from: None });
                        streams.push(related.to_owned());
                    }
                }
            }
            let stream = event.stream_id.as_str();
            if !work.streams.contains_key(stream) {
                match carry.and_then(|c| c.streams.get(stream)) {
                    Some(&(reached, parked_from)) => {
                        work.streams.insert(stream.to_owned(), StreamState { expected: reached, reached, parked_from });
                    }
                    None if self.log_order => {
                        let parked_from = carry.and_then(|c| c.parked.get(stream).copied());
                        let reached = event.stream_version.saturating_sub(1);
                        work.streams.insert(stream.to_owned(), StreamState { expected: reached, reached, parked_from });
                    }
                    None => {
                        work.streams.insert(stream.to_owned(), StreamState { expected: 0, reached: 0, parked_from: None });
                        streams.push(stream.to_owned());
                    }
                }
            }
            if self.handles(event) {
                if let Some(key) = self.projection.document_key(event) {
                    if !work.documents.contains_key(&key) {
                        match carry.and_then(|c| c.documents.get(&key)) {
                            Some(document) => {
                                work.documents.insert(key, document.clone());
                            }
                            None => {
                                work.documents.insert(key.clone(), None);
                                keys.push(key);
                            }
                        }
                    }
                }
            }
        }
        if !streams.is_empty() || !keys.is_empty() {
            let loaded = self.sink.load(target, &streams, &keys).await?;
            for (i, stream) in streams.iter().enumerate() {
                let version = loaded.stream_versions.get(i).copied().unwrap_or(0);
                let parked_from = loaded.parked_from.get(i).copied().flatten();
                work.streams.insert(stream.clone(), StreamState { expected: version, reached: version, parked_from });
            }
            for (key, mut document) in keys.into_iter().zip(loaded.documents) {
                for write in carry.and_then(|c| c.pending.get(&key)).into_iter().flatten() {
                    apply_to_document(&mut document, &key, write);
                }
                work.documents.insert(key, document);
            }
        }

        if !self.log_order {
            self.read_related(&mut work, events).await?;
        }

        let mut covered = 0;
        let mut stopped = None;
        for event in events {
            if self.follows(event) {
                match self.event(&mut work, event).await {
                    Ok(Flow::Applied) => {}
                    Ok(Flow::Deferred) => break,
                    Err(error @ PlanError::Poison { .. }) => {
                        stopped = Some(error);
                        break;
                    }
                    Err(other) => return Err(other),
                }
            } else {
                // Nothing to apply, but the projection has seen it: its
                // position (and so its lag) covers it too.
                work.batch.position = work.batch.position.max(event.position);
            }
            covered += 1;
        }

        // Only log-order planning (a rebuild's build) plans its next batch
        // from this one; the live runner plans every batch afresh.
        let mut carry = Carry::default();
        if self.log_order {
            carry.parked = work.carry.map(|c| c.parked.clone()).unwrap_or_default();
        }
        for (stream, state) in &work.streams {
            if self.log_order {
                carry.streams.insert(stream.clone(), (state.reached, state.parked_from));
                if let Some(parked_from) = state.parked_from {
                    carry.parked.insert(stream.clone(), parked_from);
                }
            }
            if state.reached != state.expected {
                work.batch.guards.push(StreamGuard {
                    stream_id: stream.clone(),
                    expected: (!self.log_order).then_some(state.expected),
                    reached: state.reached,
                });
            }
        }
        work.batch.guards.sort_by(|a, b| a.stream_id.cmp(&b.stream_id));
        work.batch.writes = coalesce(std::mem::take(&mut work.batch.writes));
        if self.log_order {
            carry.documents = work.documents;
            carry.pending = work.pending;
        }
        Ok(Plan { batch: work.batch, covered, stopped, carry })
    }

    async fn event(&self, work: &mut Work<'_>, event: &RecordedEvent) -> Result<Flow, PlanError> {
        let stream = event.stream_id.as_str();
        let state = work.streams.get(stream).copied().unwrap_or(StreamState { expected: 0, reached: 0, parked_from: None });
        if self.log_order {
            self.one(work, event).await?;
            return Ok(Flow::Applied);
        }
        if state.parked_from.is_none() && event.stream_version <= state.reached {
            return Ok(Flow::Applied); // a duplicate: already applied
        }
        // Everything that must be applied before this event, and the position
        // below which that is complete (the event's own when every source was
        // read whole).
        let mut due: Vec<RecordedEvent> = Vec::new();
        let mut complete_below = event.position;
        if state.parked_from.is_none() && event.stream_version > state.reached + 1 {
            let (missing, bound) = self.read_after(&event.stream_id, state.reached, |e| e.stream_version < event.stream_version).await?;
            complete_below = complete_below.min(bound);
            tracing::debug!(stream = %event.stream_id, from = state.reached + 1, read = missing.len(), "filled a gap from the log");
            due.extend(missing);
        }
        for related in self.projection.related_streams(event) {
            let key = related.as_str();
            if work.checked.get(key).is_some_and(|checked| *checked >= event.position) {
                continue;
            }
            let reached = work.streams.get(key).map_or(0, |s| s.reached);
            if !work.related.contains_key(key) {
                let read = self.read_related_stream(&related, reached, work.horizon).await?;
                work.related.insert(key.to_owned(), read);
            }
            let (missing, bound) = work.related[key].below(reached, event.position);
            complete_below = complete_below.min(bound);
            work.checked.insert(key.to_owned(), bound);
            due.extend(missing);
        }
        due.sort_by_key(|e| e.position);
        for earlier in due.iter().filter(|e| e.position < complete_below) {
            Box::pin(self.one(work, earlier)).await?;
        }
        if complete_below < event.position {
            return Ok(Flow::Deferred);
        }
        self.one(work, event).await?;
        Ok(Flow::Applied)
    }

    /// Reads every related stream of the batch's events from the log before
    /// planning, in one query (`EventReader::read_streams`): one round trip
    /// per batch, not one per event. When that answers [`FILL_BUDGET`]
    /// events (long streams), each stream is read on its own instead, a few
    /// at a time, within the budget per stream.
    async fn read_related(&self, work: &mut Work<'_>, events: &[RecordedEvent]) -> Result<(), PlanError> {
        use futures_util::stream::{StreamExt, TryStreamExt};
        let horizon = work.horizon;
        let mut wanted: Vec<(StreamId, u64)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for event in events.iter().filter(|e| self.follows(e)) {
            for related in self.projection.related_streams(event) {
                if !work.related.contains_key(related.as_str()) && seen.insert(related.clone()) {
                    let reached = work.streams.get(related.as_str()).map_or(0, |s| s.reached);
                    wanted.push((related, reached));
                }
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let read = self.log.read_streams(&wanted, horizon, FILL_BUDGET).await?;
        if read.len() < FILL_BUDGET {
            // Everything of those streams at or below the horizon: complete
            // below the position after it.
            let mut by_stream: HashMap<String, RelatedRead> = wanted
                .iter()
                .map(|(stream, _)| (stream.as_str().to_owned(), RelatedRead { events: Vec::new(), bound: Position(horizon.0 + 1) }))
                .collect();
            for event in read {
                if let Some(related) = by_stream.get_mut(event.stream_id.as_str()) {
                    related.events.push(event);
                }
            }
            work.related.extend(by_stream);
            return Ok(());
        }
        let reads: Vec<(StreamId, RelatedRead)> = futures_util::stream::iter(wanted)
            .map(|(stream, reached)| async move {
                let read = self.read_related_stream(&stream, reached, horizon).await?;
                Ok::<_, PlanError>((stream, read))
            })
            .buffer_unordered(RELATED_READS_AT_ONCE)
            .try_collect()
            .await?;
        for (stream, read) in reads {
            work.related.insert(stream.as_str().to_owned(), read);
        }
        Ok(())
    }

    /// `stream`'s events after version `reached`, up to position `horizon`.
    async fn read_related_stream(&self, stream: &StreamId, reached: u64, horizon: Position) -> Result<RelatedRead, PlanError> {
        let (events, bound) = self.read_after(stream, reached, |e| e.position <= horizon).await?;
        Ok(RelatedRead { events, bound })
    }

    /// The events of `stream` after version `reached` while `wanted` holds
    /// (in stream order), a page at a time, at most [`FILL_BUDGET`]; and the
    /// position below which the stream has nothing else unapplied: the first
    /// event not wanted, past the last one read when the budget ran out, or
    /// anywhere (`u64::MAX`) when the stream ended (an event appended later
    /// lands above everything this batch holds).
    async fn read_after(
        &self,
        stream: &StreamId,
        reached: u64,
        wanted: impl Fn(&RecordedEvent) -> bool,
    ) -> Result<(Vec<RecordedEvent>, Position), PlanError> {
        let mut events: Vec<RecordedEvent> = Vec::new();
        let mut from = reached + 1;
        loop {
            let page_size = FILL_PAGE.min(FILL_BUDGET - events.len());
            if page_size == 0 {
                let bound = events.last().map_or(Position::START, |e| Position(e.position.0 + 1));
                return Ok((events, bound));
            }
            let mut request = ReadStream::forward(page_size);
            request.from_version = from;
            let page = self.log.read_stream(stream, request).await?;
            let full = page.len() == page_size;
            for recorded in page {
                if !wanted(&recorded) {
                    return Ok((events, recorded.position));
                }
                from = recorded.stream_version + 1;
                events.push(recorded);
            }
            if !full {
                return Ok((events, Position(u64::MAX)));
            }
        }
    }

    async fn one(&self, work: &mut Work<'_>, event: &RecordedEvent) -> Result<(), PlanError> {
        let stream = event.stream_id.as_str();
        let mut state = work.streams.get(stream).copied().unwrap_or(StreamState { expected: 0, reached: 0, parked_from: None });
        if let Some(parked_from) = state.parked_from {
            if event.stream_version >= parked_from {
                count(work, event);
                work.batch.dead_letters.push(dead_letter(event, format!("stream {stream} is parked since version {parked_from}"), 0));
                return Ok(());
            }
        }
        if event.stream_version <= state.reached {
            return Ok(());
        }
        if self.handles(event) {
            let key = self.projection.document_key(event);
            if let Some(key) = &key {
                self.ensure_loaded(work, key).await?;
            }
            let document = key.as_ref().and_then(|key| work.documents.get(key)).and_then(Option::as_ref);
            let applied = self.apply_with_retries(event, document).await.and_then(|writes| match self.oversized(work, &writes) {
                // The backend would refuse its commit on every retry: a poison event.
                Some(reason) => Err((ApplyError::new(reason), 1)),
                None => Ok(writes),
            });
            match applied {
                Ok(writes) => self.record(work, writes).await?,
                Err((error, attempts)) => match self.projection.poison_policy() {
                    PoisonPolicy::Park => {
                        tracing::warn!(projection = self.projection.name(), event_id = %event.event_id, stream = stream, error = %strata_store::chain(&error), "parking a poison event and its stream");
                        count(work, event);
                        work.batch.dead_letters.push(dead_letter(event, error.reason.clone(), attempts));
                        state.parked_from = Some(event.stream_version);
                        work.streams.insert(stream.to_owned(), state);
                        return Ok(());
                    }
                    PoisonPolicy::Stop => {
                        return Err(PlanError::Poison {
                            event_id: event.event_id,
                            event_type: event.event_type.clone(),
                            stream_id: stream.to_owned(),
                            stream_version: event.stream_version,
                            error,
                        });
                    }
                },
            }
        }
        count(work, event);
        match work.streams.get_mut(stream) {
            Some(known) => known.reached = event.stream_version,
            None => {
                state.reached = event.stream_version;
                work.streams.insert(stream.to_owned(), state);
            }
        }
        Ok(())
    }

    async fn apply_with_retries(&self, event: &RecordedEvent, document: Option<&Document>) -> Result<Vec<Write>, (ApplyError, u32)> {
        let mut backoff = self.retry.backoff;
        let mut attempt = 1;
        loop {
            match self.projection.apply(event, document) {
                Ok(writes) => return Ok(writes),
                Err(error) if attempt >= self.retry.attempts.max(1) => return Err((error, attempt)),
                Err(_) => {
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
            }
        }
    }

    /// Why `writes` would make a loaded document too large for the sink.
    fn oversized(&self, work: &Work<'_>, writes: &[Write]) -> Option<String> {
        if !self.sink.bounds_documents() {
            return None;
        }
        let mut touched: Vec<&str> = Vec::new();
        for write in writes {
            if let Write::SetField { key, .. } | Write::SetMax { key, .. } = write {
                if !touched.contains(&key.as_str()) {
                    touched.push(key);
                }
            }
        }
        touched.into_iter().find_map(|key| {
            let mut document = work.documents.get(key)?.clone();
            for write in writes {
                apply_to_document(&mut document, key, write);
            }
            self.sink.oversized(key, document.as_ref()?)
        })
    }

    async fn ensure_loaded(&self, work: &mut Work<'_>, key: &str) -> Result<(), PlanError> {
        if work.documents.contains_key(key) {
            return Ok(());
        }
        let mut document = match work.carry.and_then(|c| c.documents.get(key)) {
            Some(document) => document.clone(),
            None => {
                let mut document = self.sink.load(&work.target, &[], &[key.to_owned()]).await?.documents.pop().flatten();
                for write in work.carry.and_then(|c| c.pending.get(key)).into_iter().flatten() {
                    apply_to_document(&mut document, key, write);
                }
                document
            }
        };
        for write in work.pending.remove(key).unwrap_or_default() {
            apply_to_document(&mut document, key, &write);
        }
        work.documents.insert(key.to_owned(), document);
        Ok(())
    }

    async fn record(&self, work: &mut Work<'_>, writes: Vec<Write>) -> Result<(), PlanError> {
        for write in &writes {
            let key = match write {
                Write::SetField { key, .. } | Write::SetMax { key, .. } | Write::DeleteDocument { key } => key,
                Write::IndexAdd { .. } | Write::IndexRemove { .. } => continue,
            };
            match work.documents.get_mut(key) {
                Some(document) => apply_to_document(document, key, write),
                None => work.pending.entry(key.clone()).or_default().push(write.clone()),
            }
        }
        work.batch.writes.extend(writes);
        Ok(())
    }
}

/// The same final state with fewer writes: a batch commits atomically, so
/// only the last value of a field, the largest of a `SetMax`, and the last
/// add or remove of an index member matter. Order is kept where it matters:
/// per document field, and a document delete before the fields set after it.
pub(crate) fn coalesce(writes: Vec<Write>) -> Vec<Write> {
    #[derive(Default)]
    struct Doc {
        deleted: bool,
        fields: Vec<(String, Vec<Write>)>,
    }
    let mut order: Vec<Slot> = Vec::new();
    let mut docs: HashMap<String, Doc> = HashMap::new();
    let mut members: HashMap<(String, String), usize> = HashMap::new();
    enum Slot {
        Doc(String),
        Index(Option<Write>),
    }
    for write in writes {
        match &write {
            Write::SetField { key, field, .. } | Write::SetMax { key, field, .. } => {
                let doc = docs.entry(key.clone()).or_insert_with(|| {
                    order.push(Slot::Doc(key.clone()));
                    Doc::default()
                });
                let slot = match doc.fields.iter().position(|(f, _)| f == field) {
                    Some(slot) => slot,
                    None => {
                        doc.fields.push((field.clone(), Vec::new()));
                        doc.fields.len() - 1
                    }
                };
                let ops = &mut doc.fields[slot].1;
                match (&write, ops.last_mut()) {
                    (Write::SetField { .. }, _) => {
                        ops.clear();
                        ops.push(write);
                    }
                    (Write::SetMax { value, .. }, Some(Write::SetMax { value: last, .. })) => *last = (*last).max(*value),
                    _ => ops.push(write),
                }
            }
            Write::DeleteDocument { key } => {
                let doc = docs.entry(key.clone()).or_insert_with(|| {
                    order.push(Slot::Doc(key.clone()));
                    Doc::default()
                });
                doc.deleted = true;
                doc.fields.clear();
            }
            Write::IndexAdd { index, member, .. } | Write::IndexRemove { index, member } => {
                let id = (index.clone(), member.clone());
                match members.get(&id) {
                    Some(&slot) => order[slot] = Slot::Index(Some(write)),
                    None => {
                        members.insert(id, order.len());
                        order.push(Slot::Index(Some(write)));
                    }
                }
            }
        }
    }
    let mut out = Vec::with_capacity(order.len());
    for slot in order {
        match slot {
            Slot::Index(Some(write)) => out.push(write),
            Slot::Index(None) => {}
            Slot::Doc(key) => {
                if let Some(doc) = docs.remove(&key) {
                    if doc.deleted {
                        out.push(Write::DeleteDocument { key });
                    }
                    out.extend(doc.fields.into_iter().flat_map(|(_, ops)| ops));
                }
            }
        }
    }
    out
}

fn count(work: &mut Work<'_>, event: &RecordedEvent) {
    work.batch.events += 1;
    work.batch.position = work.batch.position.max(event.position);
}

fn dead_letter(event: &RecordedEvent, reason: String, attempts: u32) -> DeadLetter {
    DeadLetter {
        event_id: event.event_id,
        event_type: event.event_type.clone(),
        stream_id: event.stream_id.as_str().to_owned(),
        stream_version: event.stream_version,
        position: event.position.0,
        reason,
        attempts,
    }
}

/// `Position` of the last event of a slice, for progress.
pub(crate) fn last_position(events: &[RecordedEvent]) -> Position {
    events.iter().map(|e| e.position).max().unwrap_or(Position::START)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn set(key: &str, field: &str, value: i64) -> Write {
        Write::SetField { key: key.into(), field: field.into(), value: json!(value) }
    }

    fn max(key: &str, field: &str, value: i64) -> Write {
        Write::SetMax { key: key.into(), field: field.into(), value }
    }

    fn add(index: &str, member: &str, score: i64) -> Write {
        Write::IndexAdd { index: index.into(), score, member: member.into() }
    }

    fn remove(index: &str, member: &str) -> Write {
        Write::IndexRemove { index: index.into(), member: member.into() }
    }

    fn delete(key: &str) -> Write {
        Write::DeleteDocument { key: key.into() }
    }

    #[test]
    fn coalescing_keeps_the_last_field_value_the_largest_max_and_the_last_index_move() {
        let writes = vec![
            set("a", "x", 1),
            add("pending", "a", 5),
            max("a", "at", 10),
            set("a", "x", 2),
            remove("pending", "a"),
            add("done", "a", 5),
            max("a", "at", 7),
            set("b", "y", 1),
        ];
        let out = coalesce(writes);
        assert_eq!(out, vec![set("a", "x", 2), max("a", "at", 10), remove("pending", "a"), add("done", "a", 5), set("b", "y", 1)]);
    }

    #[test]
    fn coalescing_keeps_a_delete_before_the_fields_set_after_it_and_drops_those_before() {
        let out = coalesce(vec![set("a", "x", 1), set("a", "z", 1), delete("a"), set("a", "y", 2)]);
        assert_eq!(out, vec![delete("a"), set("a", "y", 2)]);
        let out = coalesce(vec![set("a", "x", 1), max("a", "x", 5)]);
        assert_eq!(out, vec![set("a", "x", 1), max("a", "x", 5)], "a max after a set stays a max");
    }
}
