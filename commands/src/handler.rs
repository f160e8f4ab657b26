//! [`CommandHandler`]: load → decide → append, for any [`Aggregate`].
//!
//! # Guarantees
//!
//! - **Optimistic concurrency.** The append expects the version the state was
//!   loaded at. On a conflict the handler reloads and decides again, at most
//!   [`HandlerConfig::max_attempts`] times, then returns
//!   [`CommandError::Conflict`]. A conflict means another command was appended
//!   to the stream, so retries are bounded by the real contention.
//! - **Idempotent command ids.** Event ids are UUIDv5 of the command id and the
//!   event's index, so a command id maps to the same event ids forever. Handling
//!   a command id that was already applied returns the first outcome with
//!   `replayed = true` and writes nothing, whatever the state is now: after a
//!   restart, when the first reply was lost, or when two copies race (the
//!   store's idempotent append refuses a second copy of those ids). A command
//!   that was refused wrote nothing, so sending it again decides it again.
//! - **Metadata.** Every event carries the command id, the correlation id
//!   (default: the command id), the causation id (default: the command id), the
//!   actor and the W3C `traceparent` (from the command's context, else from
//!   [`HandlerConfig::traceparent`]).
//! - **Creating commands skip the read.** A command for which
//!   [`Aggregate::creates_stream`] is true is decided on an absent stream's
//!   state first and appended expecting no stream; a stream that exists is a
//!   conflict and the command is decided again on the loaded state, so the
//!   answer is the same as with a read first.
//! - **State cache.** A handler remembers the state it last wrote for up to
//!   [`HandlerConfig::cache_capacity`] streams and decides the next command on
//!   that state without reading the log. This is safe because the append
//!   still expects the cached version (a stream moved by anyone else is a
//!   conflict, and the conflict reloads from the log), and because a refusal
//!   or a no-op decided on cached state is decided again on freshly loaded
//!   state before it is returned: nothing is refused on stale state.
//! - **One command per stream at a time, per handler.** Commands on the same
//!   stream queue (FIFO) inside a handler and its clones, so they do not race
//!   each other into conflicts; each decides on the state the previous one
//!   wrote. Other processes are still kept apart only by the expected version.
//! - **Snapshots.** When a [`SnapshotStore`] is given, loading starts from the
//!   stream's snapshot if its format is the aggregate's current
//!   [`Aggregate::SNAPSHOT_VERSION`] (others are ignored), and a new snapshot is
//!   saved once [`HandlerConfig::snapshot_every`] events have been appended
//!   since the one loaded. Snapshots are a cache: failing to save one is logged
//!   and the command still succeeds.
//!
//! # Failure modes
//!
//! [`CommandError::Append`] with a backend cause means the outcome is unknown;
//! handling the same command again (same id) is always safe and tells.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::Utc;
use rand::Rng;
use strata_schemas::{DecodeError, DomainEvent};
use strata_store::{
    AppendError, AppendOutcome, EventMetadata, EventStore, ExpectedVersion, Form, InvalidStreamId, NewEvent, Position, ReadError,
    ReadStream, RecordedEvent, Snapshot, SnapshotStore, StreamAppend, StreamId, MAX_EVENTS_PER_APPEND,
};
use tracing::Instrument;
use uuid::Uuid;

use crate::Aggregate;

/// Supplies the W3C `traceparent` of the current span, when there is one.
/// The default, [`strata_store::trace::current`], reads the `command` span's
/// context from the OpenTelemetry layer the composition root installs (and
/// gives `None` without one).
pub type TraceparentSource = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// How a handler behaves. `HandlerConfig::default()` suits most aggregates.
#[derive(Clone)]
pub struct HandlerConfig {
    /// Decide/append attempts before a conflict is returned (at least 1).
    pub max_attempts: u32,
    /// Save a snapshot once this many events were appended since the loaded
    /// one; `None` never snapshots.
    pub snapshot_every: Option<u64>,
    /// Events read per page while folding a stream.
    pub page_size: usize,
    /// Where `traceparent` comes from when the command's context has none.
    pub traceparent: Option<TraceparentSource>,
    /// Streams whose last written state the handler keeps in memory (0: none).
    pub cache_capacity: usize,
}

impl Default for HandlerConfig {
    fn default() -> Self {
        Self {
            max_attempts: 20,
            snapshot_every: Some(100),
            page_size: 1_000,
            traceparent: Some(Arc::new(strata_store::trace::current)),
            cache_capacity: 10_000,
        }
    }
}

impl std::fmt::Debug for HandlerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerConfig")
            .field("max_attempts", &self.max_attempts)
            .field("snapshot_every", &self.snapshot_every)
            .field("page_size", &self.page_size)
            .field("traceparent", &self.traceparent.is_some())
            .field("cache_capacity", &self.cache_capacity)
            .finish()
    }
}

/// Who sent a command and which flow it belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandContext {
    /// The business flow (default: the command id).
    pub correlation_id: Option<Uuid>,
    /// The event or command that caused this command (default: the command id).
    pub causation_id: Option<Uuid>,
    /// The authenticated user or service.
    pub actor: Option<String>,
    /// W3C trace context; overrides [`HandlerConfig::traceparent`].
    pub traceparent: Option<String>,
}

/// A command with its id and context.
#[derive(Debug, Clone)]
pub struct Envelope<C> {
    /// Unique per intended effect: the same id means "the same command again".
    pub command_id: Uuid,
    /// What to do.
    pub command: C,
    /// Who and why.
    pub context: CommandContext,
}

impl<C> Envelope<C> {
    /// A command with an id and an empty context.
    pub fn new(command_id: Uuid, command: C) -> Self {
        Self { command_id, command, context: CommandContext::default() }
    }

    /// Sets the actor.
    pub fn by(mut self, actor: impl Into<String>) -> Self {
        self.context.actor = Some(actor.into());
        self
    }
}

/// One event a command appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedEvent {
    /// Its id (derived from the command id).
    pub event_id: Uuid,
    /// Its type.
    pub event_type: String,
    /// Its stream version.
    pub version: u64,
    /// Its global position.
    pub position: Position,
}

/// What a handled command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutcome {
    /// The command.
    pub command_id: Uuid,
    /// The stream it targeted.
    pub stream_id: StreamId,
    /// The stream version after the command's events (the loaded version when
    /// it decided no events).
    pub version: u64,
    /// The events it appended, in order (possibly none).
    pub events: Vec<AppliedEvent>,
    /// True when the command had already been applied: this is the first
    /// outcome and nothing was written now.
    pub replayed: bool,
    /// How many times it was decided (1 + conflict retries).
    pub attempts: u32,
}

/// Why a command was not applied. Whatever the variant (but see
/// [`CommandError::Append`]), nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError<E: std::error::Error + 'static> {
    /// The aggregate refused the command (a domain answer).
    #[error("command refused")]
    Rejected(#[source] E),
    /// Other writers kept changing the stream; every attempt conflicted.
    #[error("stream {stream_id} kept changing: gave up after {attempts} attempts (last seen at version {actual})")]
    Conflict {
        /// The contended stream.
        stream_id: StreamId,
        /// Attempts made.
        attempts: u32,
        /// The version found by the last attempt.
        actual: u64,
    },
    /// The command id was already used for a command on another stream.
    #[error("command id {command_id} was already used on stream {stream_id}")]
    CommandIdReused {
        /// The reused id.
        command_id: Uuid,
        /// Where it was used.
        stream_id: StreamId,
    },
    /// The command's aggregate id does not make a valid stream id.
    #[error(transparent)]
    InvalidTarget(#[from] InvalidStreamId),
    /// A stored event of the stream does not decode into the aggregate's events.
    #[error("stream {stream_id} holds an event this aggregate cannot read")]
    Undecodable {
        /// The stream.
        stream_id: StreamId,
        /// Why.
        #[source]
        source: DecodeError,
    },
    /// Reading the stream failed.
    #[error("reading the stream failed")]
    Read(#[source] ReadError),
    /// Appending failed; with a backend cause the outcome is unknown and the
    /// same command id can be sent again safely.
    #[error("appending failed")]
    Append(#[source] AppendError),
}

/// A stream's state as loaded.
#[derive(Debug, Clone)]
pub struct Loaded<S> {
    /// The folded state.
    pub state: S,
    /// The stream version the state includes (0: absent stream).
    pub version: u64,
    /// The version of the snapshot loading started from, if one was used.
    pub snapshot_version: Option<u64>,
    /// How many events were read and folded after the snapshot.
    pub events_folded: u64,
}

/// Handles the commands of one aggregate type. Cheap to clone; clones share
/// the state cache.
pub struct CommandHandler<A: Aggregate> {
    store: Arc<dyn EventStore>,
    snapshots: Option<Arc<dyn SnapshotStore>>,
    config: HandlerConfig,
    cache: Arc<Mutex<HashMap<StreamId, Loaded<A::State>>>>,
    turns: Arc<Mutex<HashMap<StreamId, Arc<tokio::sync::Mutex<()>>>>>,
    aggregate: PhantomData<fn() -> A>,
}

impl<A: Aggregate> Clone for CommandHandler<A> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            snapshots: self.snapshots.clone(),
            config: self.config.clone(),
            cache: self.cache.clone(),
            turns: self.turns.clone(),
            aggregate: PhantomData,
        }
    }
}

type Result<T, A> = std::result::Result<T, CommandError<<A as Aggregate>::Error>>;

/// The id of the `index`-th event of a command: UUIDv5 in the command id's namespace.
pub fn event_id(command_id: Uuid, index: usize) -> Uuid {
    Uuid::new_v5(&command_id, format!("event-{index}").as_bytes())
}

impl<A: Aggregate> CommandHandler<A> {
    /// A handler appending to `store`, snapshotting to `snapshots` if given.
    pub fn new(store: Arc<dyn EventStore>, snapshots: Option<Arc<dyn SnapshotStore>>, config: HandlerConfig) -> Self {
        Self { store, snapshots, config, cache: Arc::default(), turns: Arc::default(), aggregate: PhantomData }
    }

    /// The stream of an aggregate id.
    pub fn stream_id(aggregate_id: &str) -> std::result::Result<StreamId, InvalidStreamId> {
        StreamId::new(A::CATEGORY, aggregate_id)
    }

    /// Handles one command; see the module docs for every guarantee.
    pub async fn handle(&self, envelope: Envelope<A::Command>) -> Result<CommandOutcome, A> {
        let stream_id = Self::stream_id(&A::aggregate_id(&envelope.command))?;
        let span = tracing::info_span!(
            "command",
            aggregate = A::CATEGORY,
            stream_id = %stream_id,
            command_id = %envelope.command_id,
            attempts = tracing::field::Empty,
        );
        async {
            let turn = self.turn(&stream_id);
            let outcome = {
                let _held = turn.lock().await;
                self.handle_on(stream_id.clone(), envelope).await
            };
            self.end_turn(&stream_id, turn);
            outcome
        }
        .instrument(span)
        .await
    }

    /// The queue of commands on one stream (shared by clones of the handler).
    fn turn(&self, stream_id: &StreamId) -> Arc<tokio::sync::Mutex<()>> {
        let mut turns = self.turns.lock().unwrap_or_else(|poison| poison.into_inner());
        turns.entry(stream_id.clone()).or_default().clone()
    }

    /// Drops the stream's queue when nobody else waits on it. A command that
    /// picks up the queue between this check and the removal only loses the
    /// in-process ordering; the expected version still keeps it correct.
    fn end_turn(&self, stream_id: &StreamId, turn: Arc<tokio::sync::Mutex<()>>) {
        let mut turns = self.turns.lock().unwrap_or_else(|poison| poison.into_inner());
        // Two references: the map's and ours.
        if Arc::strong_count(&turn) <= 2 {
            turns.remove(stream_id);
        }
    }

    async fn handle_on(&self, stream_id: StreamId, envelope: Envelope<A::Command>) -> Result<CommandOutcome, A> {
        let command_id = envelope.command_id;
        let metadata = self.metadata(&envelope);
        let mut attempts = 0;
        // A command that creates its stream is first decided on the state of
        // an absent stream, without reading: the append expects no stream, so
        // if it exists after all the conflict reloads it (as for a cached state).
        let mut cached = self.cached(&stream_id).or_else(|| {
            A::creates_stream(&envelope.command).then(|| Loaded {
                state: A::State::default(),
                version: 0,
                snapshot_version: None,
                events_folded: 0,
            })
        });
        loop {
            attempts += 1;
            let (loaded, from_cache) = match cached.take() {
                Some(loaded) => (loaded, true),
                None => (self.load_stream(&stream_id).instrument(tracing::info_span!("load")).await?, false),
            };
            let events = match A::decide(&loaded.state, envelope.command.clone()) {
                Ok(events) if !events.is_empty() => events,
                _ if from_cache => {
                    // Never refuse (or do nothing) on remembered state: decide
                    // again on the log as it is now.
                    self.forget(&stream_id);
                    attempts -= 1;
                    continue;
                }
                decided => {
                    // Nothing to write: either a refusal or a no-op. If this command
                    // id was applied before, its first outcome is the answer.
                    if let Some(first) = self.first_outcome(&stream_id, command_id, attempts).await? {
                        return Ok(first);
                    }
                    return match decided {
                        Err(refusal) => Err(CommandError::Rejected(refusal)),
                        Ok(_) => Ok(CommandOutcome {
                            command_id,
                            stream_id,
                            version: loaded.version,
                            events: Vec::new(),
                            replayed: false,
                            attempts,
                        }),
                    };
                }
            };
            let new_events: Vec<NewEvent> = events
                .iter()
                .enumerate()
                .map(|(index, event)| NewEvent {
                    event_id: event_id(command_id, index),
                    event_type: event.event_type().to_owned(),
                    schema_version: event.schema_version(),
                    payload: event.to_payload(),
                    metadata: metadata.clone(),
                })
                .collect();
            let expected = match loaded.version {
                0 => ExpectedVersion::NoStream,
                version => ExpectedVersion::Exact(version),
            };
            let request = vec![StreamAppend { stream_id: stream_id.clone(), expected, events: new_events }];
            match self.store.append(request).instrument(tracing::info_span!("append", events = events.len())).await {
                Ok(outcome) => {
                    tracing::Span::current().record("attempts", attempts);
                    if outcome.replayed {
                        self.forget(&stream_id);
                    } else {
                        self.after_append(&stream_id, loaded, &events, &outcome).await;
                    }
                    let event_types = events.iter().map(DomainEvent::event_type);
                    return Ok(applied(command_id, stream_id, event_types, &outcome, attempts));
                }
                Err(AppendError::Conflict { actual, .. }) => {
                    self.forget(&stream_id);
                    if attempts >= self.config.max_attempts.max(1) {
                        return Err(CommandError::Conflict { stream_id, attempts, actual });
                    }
                    tracing::debug!(attempts, actual, "conflict; deciding again");
                    backoff(attempts).await;
                }
                Err(AppendError::EventIdReused { stored_stream_id, .. }) => {
                    self.forget(&stream_id);
                    return match self.first_outcome(&stream_id, command_id, attempts).await? {
                        Some(first) => Ok(first),
                        None => Err(CommandError::CommandIdReused { command_id, stream_id: stored_stream_id }),
                    };
                }
                Err(other) => {
                    self.forget(&stream_id);
                    return Err(CommandError::Append(other));
                }
            }
        }
    }

    /// Loads an aggregate's state (from its snapshot when usable).
    pub async fn load(&self, aggregate_id: &str) -> Result<Loaded<A::State>, A> {
        self.load_stream(&Self::stream_id(aggregate_id)?).await
    }

    async fn load_stream(&self, stream_id: &StreamId) -> Result<Loaded<A::State>, A> {
        let page_size = self.config.page_size.max(1);
        let mut loaded = Loaded { state: A::State::default(), version: 0, snapshot_version: None, events_folded: 0 };
        // Most streams are shorter than the snapshot interval and have no
        // snapshot: read their head first, and look for a snapshot only when
        // that first page is full (one round trip for a short stream, instead
        // of a snapshot lookup and a read).
        let probe = match (&self.snapshots, self.config.snapshot_every) {
            (Some(_), Some(every)) => usize::try_from(every).unwrap_or(usize::MAX).clamp(1, page_size),
            _ => page_size,
        };
        let first = self.read_page(stream_id, 1, probe).await?;
        if first.len() < probe || self.snapshots.is_none() {
            let more = first.len() == probe;
            self.fold_page(stream_id, &mut loaded, first)?;
            if more {
                self.fold_rest(stream_id, &mut loaded, page_size).await?;
            }
            return Ok(loaded);
        }
        match self.usable_snapshot(stream_id).await? {
            Some((state, version)) if version >= first.len() as u64 => {
                loaded.state = state;
                loaded.version = version;
                loaded.snapshot_version = Some(version);
            }
            _ => self.fold_page(stream_id, &mut loaded, first)?,
        }
        self.fold_rest(stream_id, &mut loaded, page_size).await?;
        Ok(loaded)
    }

    async fn read_page(&self, stream_id: &StreamId, from_version: u64, limit: usize) -> Result<Vec<RecordedEvent>, A> {
        let request = ReadStream { from_version, ..ReadStream::forward(limit) };
        self.store.read_stream(stream_id, request).await.map_err(CommandError::Read)
    }

    fn fold_page(&self, stream_id: &StreamId, loaded: &mut Loaded<A::State>, page: Vec<RecordedEvent>) -> Result<(), A> {
        let mut state = std::mem::take(&mut loaded.state);
        for recorded in page {
            let event = decode::<A>(stream_id, recorded.event_type, recorded.payload)?;
            state = A::evolve(state, &event);
            loaded.version = recorded.stream_version;
            loaded.events_folded += 1;
        }
        loaded.state = state;
        Ok(())
    }

    /// Folds every event after `loaded.version`, a page at a time.
    async fn fold_rest(&self, stream_id: &StreamId, loaded: &mut Loaded<A::State>, page_size: usize) -> Result<(), A> {
        loop {
            let page = self.read_page(stream_id, loaded.version + 1, page_size).await?;
            let full_page = page.len() == page_size;
            self.fold_page(stream_id, loaded, page)?;
            if !full_page {
                return Ok(());
            }
        }
    }

    async fn usable_snapshot(&self, stream_id: &StreamId) -> Result<Option<(A::State, u64)>, A> {
        let Some(snapshots) = &self.snapshots else {
            return Ok(None);
        };
        let Some(snapshot) = snapshots.load_snapshot(stream_id).await.map_err(CommandError::Read)? else {
            return Ok(None);
        };
        if snapshot.snapshot_version != A::SNAPSHOT_VERSION {
            tracing::debug!(stored = snapshot.snapshot_version, current = A::SNAPSHOT_VERSION, "ignoring a snapshot of another format");
            return Ok(None);
        }
        match serde_json::from_value(snapshot.state) {
            Ok(state) => Ok(Some((state, snapshot.stream_version))),
            Err(err) => {
                tracing::warn!(error = %strata_store::chain(&err), "ignoring a snapshot that does not decode; folding the whole stream");
                Ok(None)
            }
        }
    }

    /// Remembers the state after a successful append and, when
    /// `snapshot_every` events have passed since the last snapshot, saves one.
    async fn after_append(&self, stream_id: &StreamId, loaded: Loaded<A::State>, events: &[A::Event], outcome: &AppendOutcome) {
        let version = outcome.streams[0].last_version();
        let state = A::fold(loaded.state, events);
        let mut snapshot_version = loaded.snapshot_version;
        if let (Some(snapshots), Some(every)) = (&self.snapshots, self.config.snapshot_every) {
            if version - loaded.snapshot_version.unwrap_or(0) >= every.max(1) {
                match serde_json::to_value(&state) {
                    Ok(serialized) => {
                        let snapshot = Snapshot {
                            stream_id: stream_id.clone(),
                            snapshot_version: A::SNAPSHOT_VERSION,
                            stream_version: version,
                            state: serialized,
                            taken_at: Utc::now(),
                        };
                        match snapshots.save_snapshot(snapshot).await {
                            Ok(()) => snapshot_version = Some(version),
                            Err(err) => {
                                tracing::warn!(error = %strata_store::chain(&err), "saving a snapshot failed; the next load folds more events")
                            }
                        }
                    }
                    Err(err) => tracing::warn!(error = %strata_store::chain(&err), "aggregate state does not serialize; no snapshot"),
                }
            }
        }
        self.remember(stream_id, Loaded { state, version, snapshot_version, events_folded: 0 });
    }

    fn cache(&self) -> MutexGuard<'_, HashMap<StreamId, Loaded<A::State>>> {
        // The cache holds plain values; a panic elsewhere cannot corrupt it.
        self.cache.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    fn cached(&self, stream_id: &StreamId) -> Option<Loaded<A::State>> {
        if self.config.cache_capacity == 0 {
            return None;
        }
        self.cache().get(stream_id).cloned()
    }

    fn remember(&self, stream_id: &StreamId, loaded: Loaded<A::State>) {
        if self.config.cache_capacity == 0 {
            return;
        }
        let mut cache = self.cache();
        if cache.len() >= self.config.cache_capacity && !cache.contains_key(stream_id) {
            // Evict an arbitrary entry: a miss only costs a load.
            if let Some(evicted) = cache.keys().next().cloned() {
                cache.remove(&evicted);
            }
        }
        cache.insert(stream_id.clone(), loaded);
    }

    fn forget(&self, stream_id: &StreamId) {
        if self.config.cache_capacity > 0 {
            self.cache().remove(stream_id);
        }
    }

    /// The outcome of the first application of `command_id`, if it was applied.
    async fn first_outcome(&self, stream_id: &StreamId, command_id: Uuid, attempts: u32) -> Result<Option<CommandOutcome>, A> {
        let Some(first) = self.store.read_event(event_id(command_id, 0), Form::AsStored).await.map_err(CommandError::Read)? else {
            return Ok(None);
        };
        if first.stream_id != *stream_id {
            return Err(CommandError::CommandIdReused { command_id, stream_id: first.stream_id });
        }
        let request = ReadStream { from_version: first.stream_version, form: Form::AsStored, ..ReadStream::forward(MAX_EVENTS_PER_APPEND) };
        let events: Vec<AppliedEvent> = self
            .store
            .read_stream(stream_id, request)
            .await
            .map_err(CommandError::Read)?
            .into_iter()
            .take_while(|event: &RecordedEvent| event.metadata.command_id == Some(command_id))
            .map(|event| AppliedEvent {
                event_id: event.event_id,
                event_type: event.event_type,
                version: event.stream_version,
                position: event.position,
            })
            .collect();
        Ok(Some(CommandOutcome {
            command_id,
            stream_id: stream_id.clone(),
            version: events.last().map_or(first.stream_version, |event| event.version),
            events,
            replayed: true,
            attempts,
        }))
    }

    fn metadata(&self, envelope: &Envelope<A::Command>) -> EventMetadata {
        let context = &envelope.context;
        EventMetadata {
            correlation_id: Some(context.correlation_id.unwrap_or(envelope.command_id)),
            causation_id: Some(context.causation_id.unwrap_or(envelope.command_id)),
            traceparent: context.traceparent.clone().or_else(|| self.config.traceparent.as_ref().and_then(|source| source())),
            actor: context.actor.clone(),
            command_id: Some(envelope.command_id),
        }
    }
}

fn decode<A: Aggregate>(stream_id: &StreamId, event_type: String, payload: serde_json::Value) -> Result<A::Event, A> {
    A::Event::from_payload(&event_type, payload).map_err(|source| CommandError::Undecodable { stream_id: stream_id.clone(), source })
}

/// The outcome of an append of a command's events (their ids are derived
/// from the command id, so only their types need passing).
fn applied<'a>(
    command_id: Uuid,
    stream_id: StreamId,
    event_types: impl Iterator<Item = &'a str>,
    outcome: &AppendOutcome,
    attempts: u32,
) -> CommandOutcome {
    let appended = &outcome.streams[0];
    CommandOutcome {
        command_id,
        stream_id,
        version: appended.last_version(),
        events: event_types
            .zip(appended.versions.iter().zip(&appended.positions))
            .enumerate()
            .map(|(index, (event_type, (&version, &position)))| AppliedEvent {
                event_id: event_id(command_id, index),
                event_type: event_type.to_owned(),
                version,
                position,
            })
            .collect(),
        replayed: outcome.replayed,
        attempts,
    }
}

/// The first retry goes at once (the reload is already a round trip); later
/// ones wait a random moment, growing with the attempt, so racing writers
/// spread out instead of colliding again in lockstep.
async fn backoff(attempt: u32) {
    if attempt < 2 {
        return;
    }
    let ceiling_micros = 500 * u64::from(attempt.min(10));
    let wait = rand::rng().random_range(0..=ceiling_micros);
    tokio::time::sleep(Duration::from_micros(wait)).await;
}
