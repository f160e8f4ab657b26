//! What the SQL backends share beyond the commit path (`commit.rs`): row
//! decoding, the reader, snapshots, checkpoints and `append`'s dispatch.
//!
//! A backend implements [`SqlBackend`] (its pools, queries and the few column
//! types its driver decodes differently) and invokes [`sql_backend_impls!`]
//! once, which writes the row decoders and the `EventReader`, `EventStore`,
//! `SnapshotStore` and `CheckpointStore` impls for it. Only driver
//! differences stay in `sqlite.rs` and `postgres.rs`. A macro rather than
//! generic functions: sqlx's executor and codec bounds cannot be stated once
//! on a trait, and every generic function would have to repeat them.

use chrono::{DateTime, Utc};
use strata_schemas::SchemaRegistry;
use tokio::sync::watch;

use crate::commit::{BatchWriter, GroupCommit};
use crate::plan::AppendLimits;

/// The SQL text of the reading and bookkeeping statements.
pub(crate) struct Queries {
    pub(crate) read_event: &'static str,
    pub(crate) read_stream_forward: &'static str,
    pub(crate) read_stream_backward: &'static str,
    pub(crate) read_streams: &'static str,
    pub(crate) read_all: &'static str,
    pub(crate) read_category: &'static str,
    pub(crate) stream_head: &'static str,
    pub(crate) stream_heads: &'static str,
    pub(crate) head_position: &'static str,
    pub(crate) categories: &'static str,
    pub(crate) load_snapshot: &'static str,
    pub(crate) save_snapshot: &'static str,
    pub(crate) load_checkpoint: &'static str,
    pub(crate) save_checkpoint: &'static str,
    pub(crate) log_identity: &'static str,
    pub(crate) raise_epoch: &'static str,
}

/// The parts of a SQL backend that differ by driver.
pub(crate) trait SqlBackend: Clone + Send + Sync + 'static {
    /// The sqlx driver.
    type Db: sqlx::Database;
    /// How a timestamp column decodes: microseconds since the epoch
    /// (SQLite) or `timestamptz` (PostgreSQL).
    type Time;
    /// How the `schema_version` and `snapshot_version` columns decode.
    type SmallInt: Copy;
    /// `sqlite` or `postgres` (`EventReader::backend_name`).
    const NAME: &'static str;
    /// The context of a failed ping: `pinging SQLite`.
    const PINGING: &'static str;
    const QUERIES: Queries;

    /// Connections for reads.
    fn readers(&self) -> &sqlx::Pool<Self::Db>;
    /// The connection(s) that write snapshots and checkpoints.
    fn writers(&self) -> &sqlx::Pool<Self::Db>;
    fn registry(&self) -> &SchemaRegistry;
    fn limits(&self) -> AppendLimits;
    /// `None` when group commit is off: every append commits alone.
    fn group_commit(&self) -> Option<&GroupCommit>;
    fn batch_writer(&self) -> &dyn BatchWriter;
    /// A receiver woken after each commit that may have added events (PostgreSQL
    /// starts its listener here, on the first subscription).
    fn wake(&self) -> watch::Receiver<u64>;
    fn listener_silence(&self) -> Option<std::time::Duration> {
        None
    }

    fn micros(time: Self::Time) -> i64;
    fn time(at: DateTime<Utc>) -> Self::Time;
    fn widen(value: Self::SmallInt) -> i64;
    /// Saturates at the column's maximum.
    fn narrow(value: u32) -> Self::SmallInt;
}

/// Writes, in a module `shared` of the caller, the row decoders and the
/// store impls for `$store` (a type of the calling module that implements
/// [`SqlBackend`]); `$row` is the full path of its driver's row type. The
/// row decoders (`shared::decode_head`, `shared::decode_stored`) also serve
/// the backend's own commit path.
macro_rules! sql_backend_impls {
    ($store:ident, $row:path) => {
        mod shared {
            use async_trait::async_trait;
            use futures_util::stream::BoxStream;
            use sqlx::Row as _;
            use strata_schemas::SchemaRegistry;
            use $crate::sql_backend::SqlBackend as _;
            use $crate::{
                AppendError, AppendOutcome, BackendError, ChainHash, CheckpointStore, Direction, EventReader, EventStore, Form, Position,
                ReadAll, ReadError, ReadStream, RecordedEvent, Snapshot, SnapshotStore, StoredEvent, StreamAppend, StreamHead, StreamId,
                Subscribe,
            };

            type Backend = super::$store;

            pub(crate) fn decode_head(row: &$row) -> Result<(StreamId, $crate::plan::Head), sqlx::Error> {
                let stream_id: String = row.try_get("stream_id")?;
                let stream_id = StreamId::parse(&stream_id).map_err(|err| sqlx::Error::Decode(err.into()))?;
                let version: i64 = row.try_get("version")?;
                let hash: Vec<u8> = row.try_get("last_hash")?;
                let hash = ChainHash::from_slice(&hash).ok_or_else(|| sqlx::Error::Decode("stream hash is not 32 bytes".into()))?;
                Ok((stream_id, $crate::plan::Head { version: version as u64, hash }))
            }

            pub(crate) fn decode_stored(row: &$row) -> Result<$crate::plan::StoredRow, sqlx::Error> {
                Ok($crate::plan::StoredRow {
                    position: row.try_get("position")?,
                    event_id: row.try_get("event_id")?,
                    stream_id: row.try_get("stream_id")?,
                    stream_version: row.try_get("stream_version")?,
                    event_type: row.try_get("event_type")?,
                    schema_version: Backend::widen(row.try_get("schema_version")?),
                    payload_json: row.try_get("payload")?,
                    metadata_json: row.try_get("metadata")?,
                    recorded_at_micros: Backend::micros(row.try_get("recorded_at")?),
                    hash: row.try_get("hash")?,
                })
            }

            fn decode_rows(rows: &[$row], registry: &SchemaRegistry, form: Form) -> Result<Vec<RecordedEvent>, ReadError> {
                rows.iter().map(|row| decode_row(row)?.decode(registry, form)).collect()
            }

            fn decode_row(row: &$row) -> Result<$crate::plan::StoredRow, ReadError> {
                decode_stored(row).map_err(|err| ReadError::Backend(BackendError::new("decoding an event row", err)))
            }

            fn decode_stream_head(row: &$row) -> Result<StreamHead, ReadError> {
                let (stream_id, head) =
                    decode_head(row).map_err(|err| ReadError::Backend(BackendError::new("decoding a stream head", err)))?;
                Ok(StreamHead { stream_id, version: head.version, last_hash: head.hash })
            }

            fn backend(context: &'static str) -> impl FnOnce(sqlx::Error) -> BackendError {
                move |err| BackendError::new(context, err)
            }

            /// One page of the global log (or of a category), as rows.
            async fn read_page(store: &Backend, request: &ReadAll) -> Result<Vec<$row>, ReadError> {
                let after = i64::try_from(request.after.0).unwrap_or(i64::MAX);
                let limit = i64::try_from(request.limit).unwrap_or(i64::MAX);
                let queries = &Backend::QUERIES;
                match &request.category {
                    None => sqlx::query(queries.read_all).bind(after).bind(limit).fetch_all(store.readers()).await,
                    Some(category) => {
                        sqlx::query(queries.read_category).bind(after).bind(limit).bind(category).fetch_all(store.readers()).await
                    }
                }
                .map_err(|err| ReadError::Backend(backend("reading the global log")(err)))
            }

            async fn page(store: &Backend, request: ReadAll) -> Result<Vec<RecordedEvent>, ReadError> {
                decode_rows(&read_page(store, &request).await?, store.registry(), request.form)
            }

            async fn page_stored(store: &Backend, request: ReadAll) -> Result<Vec<StoredEvent>, ReadError> {
                read_page(store, &request).await?.iter().map(|row| decode_row(row)?.into_stored(store.registry())).collect()
            }

            /// Follows the log from `request`, woken by the backend's commits; the
            /// stream keeps the store (its committers, its listener) alive.
            fn follow_pages<T: $crate::subscription::Positioned>(
                store: &Backend,
                request: Subscribe,
                read: fn(Backend, ReadAll) -> $crate::subscription::PageFuture<T>,
            ) -> BoxStream<'static, Result<T, ReadError>> {
                let wake = store.wake();
                let store = store.clone();
                let reader: $crate::subscription::PageReader<T> = std::sync::Arc::new(move |request| read(store.clone(), request));
                $crate::subscription::follow(reader, wake, request)
            }

            #[async_trait]
            impl EventReader for Backend {
                async fn read_event(&self, event_id: uuid::Uuid, form: Form) -> Result<Option<RecordedEvent>, ReadError> {
                    let row = sqlx::query(Self::QUERIES.read_event)
                        .bind(event_id)
                        .fetch_optional(self.readers())
                        .await
                        .map_err(backend("reading an event by id"))?;
                    Ok(decode_rows(row.as_slice(), self.registry(), form)?.pop())
                }

                async fn read_stream(&self, stream_id: &StreamId, request: ReadStream) -> Result<Vec<RecordedEvent>, ReadError> {
                    let from = i64::try_from(request.from_version).unwrap_or(i64::MAX);
                    let limit = i64::try_from(request.limit).unwrap_or(i64::MAX);
                    let query = match request.direction {
                        Direction::Forward => Self::QUERIES.read_stream_forward,
                        Direction::Backward => Self::QUERIES.read_stream_backward,
                    };
                    let rows = sqlx::query(query)
                        .bind(stream_id.as_str())
                        .bind(from)
                        .bind(limit)
                        .fetch_all(self.readers())
                        .await
                        .map_err(backend("reading a stream"))?;
                    decode_rows(&rows, self.registry(), request.form)
                }

                async fn read_streams(&self, after: &[(StreamId, u64)], until: Position, limit: usize) -> Result<Vec<RecordedEvent>, ReadError> {
                    if after.is_empty() || limit == 0 {
                        return Ok(Vec::new());
                    }
                    // One query for every stream: the list travels as JSON, the
                    // one array both dialects can take apart.
                    let wanted: Vec<serde_json::Value> = after
                        .iter()
                        .map(|(stream_id, version)| {
                            serde_json::json!({ "stream_id": stream_id.as_str(), "after": i64::try_from(*version).unwrap_or(i64::MAX) })
                        })
                        .collect();
                    let rows = sqlx::query(Self::QUERIES.read_streams)
                        .bind(serde_json::Value::Array(wanted).to_string())
                        .bind(i64::try_from(until.0).unwrap_or(i64::MAX))
                        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                        .fetch_all(self.readers())
                        .await
                        .map_err(backend("reading several streams"))?;
                    decode_rows(&rows, self.registry(), Form::Latest)
                }

                async fn read_all(&self, request: ReadAll) -> Result<Vec<RecordedEvent>, ReadError> {
                    page(self, request).await
                }

                fn subscribe(&self, request: Subscribe) -> BoxStream<'static, Result<RecordedEvent, ReadError>> {
                    follow_pages(self, request, |store, request| Box::pin(async move { page(&store, request).await }))
                }

                async fn read_all_stored(&self, request: ReadAll) -> Result<Vec<StoredEvent>, ReadError> {
                    page_stored(self, request).await
                }

                fn subscribe_stored(&self, request: Subscribe) -> BoxStream<'static, Result<StoredEvent, ReadError>> {
                    follow_pages(self, request, |store, request| Box::pin(async move { page_stored(&store, request).await }))
                }

                async fn stream_head(&self, stream_id: &StreamId) -> Result<Option<StreamHead>, ReadError> {
                    let row = sqlx::query(Self::QUERIES.stream_head)
                        .bind(stream_id.as_str())
                        .fetch_optional(self.readers())
                        .await
                        .map_err(backend("reading a stream head"))?;
                    row.as_ref().map(decode_stream_head).transpose()
                }

                async fn stream_heads(&self, after: Option<&StreamId>, limit: usize) -> Result<Vec<StreamHead>, ReadError> {
                    let rows = sqlx::query(Self::QUERIES.stream_heads)
                        .bind(after.map_or("", StreamId::as_str))
                        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                        .fetch_all(self.readers())
                        .await
                        .map_err(backend("listing streams"))?;
                    rows.iter().map(decode_stream_head).collect()
                }

                async fn head_position(&self) -> Result<Position, ReadError> {
                    let position: i64 = sqlx::query_scalar(Self::QUERIES.head_position)
                        .fetch_one(self.readers())
                        .await
                        .map_err(backend("reading the log head"))?;
                    Ok(Position(position as u64))
                }

                async fn categories(&self) -> Result<Vec<String>, ReadError> {
                    Ok(sqlx::query_scalar(Self::QUERIES.categories)
                        .fetch_all(self.readers())
                        .await
                        .map_err(backend("listing categories"))?)
                }

                async fn ping(&self) -> Result<(), ReadError> {
                    sqlx::query("SELECT 1").execute(self.readers()).await.map_err(backend(Self::PINGING))?;
                    Ok(())
                }

                async fn log_identity(&self) -> Result<$crate::LogIdentity, ReadError> {
                    let (id, epoch): (String, i64) = sqlx::query_as(Self::QUERIES.log_identity)
                        .fetch_one(self.readers())
                        .await
                        .map_err(backend("reading the log's identity (migrated?)"))?;
                    Ok($crate::LogIdentity { id, epoch: epoch as u64 })
                }

                fn listener_silence(&self) -> Option<std::time::Duration> {
                    $crate::sql_backend::SqlBackend::listener_silence(self)
                }

                fn backend_name(&self) -> &'static str {
                    Self::NAME
                }
            }

            #[async_trait]
            impl EventStore for Backend {
                async fn append(&self, request: Vec<StreamAppend>) -> Result<AppendOutcome, AppendError> {
                    let append = $crate::plan::prepare(self.registry(), self.limits(), request)?;
                    match self.group_commit() {
                        Some(group_commit) => group_commit.append(append).await,
                        None => {
                            $crate::commit::commit_or_split(self.batch_writer(), &[&append]).await.pop().unwrap_or(Err(AppendError::Closed))
                        }
                    }
                }
            }

            #[async_trait]
            impl SnapshotStore for Backend {
                async fn load_snapshot(&self, stream_id: &StreamId) -> Result<Option<Snapshot>, ReadError> {
                    let Some(row) = sqlx::query(Self::QUERIES.load_snapshot)
                        .bind(stream_id.as_str())
                        .fetch_optional(self.readers())
                        .await
                        .map_err(backend("reading a snapshot"))?
                    else {
                        return Ok(None);
                    };
                    let decode = || -> Result<Snapshot, Box<dyn std::error::Error + Send + Sync>> {
                        let state: String = row.try_get("state")?;
                        let taken_at = Self::micros(row.try_get("taken_at")?);
                        Ok(Snapshot {
                            stream_id: stream_id.clone(),
                            snapshot_version: u32::try_from(Self::widen(row.try_get("snapshot_version")?))?,
                            stream_version: u64::try_from(row.try_get::<i64, _>("stream_version")?)?,
                            state: serde_json::from_str(&state)?,
                            taken_at: chrono::DateTime::from_timestamp_micros(taken_at).ok_or("snapshot time out of range")?,
                        })
                    };
                    decode().map(Some).map_err(|err| ReadError::Backend(BackendError::new("decoding a snapshot", err)))
                }

                async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), BackendError> {
                    sqlx::query(Self::QUERIES.save_snapshot)
                        .bind(snapshot.stream_id.as_str())
                        .bind(Self::narrow(snapshot.snapshot_version))
                        .bind(i64::try_from(snapshot.stream_version).unwrap_or(i64::MAX))
                        .bind(snapshot.state.to_string())
                        .bind(Self::time(snapshot.taken_at))
                        .execute(self.writers())
                        .await
                        .map_err(backend("saving a snapshot"))?;
                    Ok(())
                }
            }

            #[async_trait]
            impl CheckpointStore for Backend {
                async fn load_checkpoint(&self, name: &str) -> Result<Position, ReadError> {
                    let position: Option<i64> = sqlx::query_scalar(Self::QUERIES.load_checkpoint)
                        .bind(name)
                        .fetch_optional(self.readers())
                        .await
                        .map_err(backend("reading a checkpoint"))?;
                    Ok(Position(position.map_or(0, |position| position.max(0) as u64)))
                }

                async fn save_checkpoint(&self, name: &str, position: Position) -> Result<(), BackendError> {
                    sqlx::query(Self::QUERIES.save_checkpoint)
                        .bind(name)
                        .bind(i64::try_from(position.0).unwrap_or(i64::MAX))
                        .bind(Self::time(chrono::Utc::now()))
                        .execute(self.writers())
                        .await
                        .map_err(backend("saving a checkpoint"))?;
                    Ok(())
                }
            }

            impl Backend {
                /// Raises the log's epoch, after the database was restored
                /// from a backup: the bus's records of the old epoch are then
                /// no longer taken as what this log published (the relay
                /// publishes again from its checkpoint; consumers' stream
                /// guards skip what they had). Returns the new identity.
                pub async fn raise_epoch(&self) -> Result<$crate::LogIdentity, BackendError> {
                    let (id, epoch): (String, i64) =
                        sqlx::query_as(Self::QUERIES.raise_epoch).fetch_one(self.writers()).await.map_err(|err| BackendError::new("raising the log's epoch", err))?;
                    Ok($crate::LogIdentity { id, epoch: epoch as u64 })
                }
            }
        }
    };
}

pub(crate) use sql_backend_impls;
