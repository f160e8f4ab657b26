//! Group commit, shared by the SQL backends: callers hand their (already
//! validated) appends to a queue; a committer task takes everything queued and
//! writes it through the backend's [`BatchWriter`] in one transaction, so N
//! concurrent appends cost one lock of the log head and one fsync instead of N.
//!
//! Each request of a batch keeps its own expected-version check and its own
//! result (`plan.rs` decides them in queue order against the locked heads).
//! When the database refuses a batch as a whole (a row it will not store),
//! every request of it is committed alone, so a request that fails for its
//! own data fails alone and the others commit; any other failure (a lost
//! connection) fails the whole batch at once, and the outcome of each request
//! is then unknown (a retry with the same event ids is safe).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::plan::PreparedAppend;
use crate::{AppendError, AppendOutcome, BackendError};

/// Why a batch as a whole did not commit.
pub(crate) struct BatchFailure {
    pub(crate) error: Arc<dyn std::error::Error + Send + Sync>,
    /// The database answered and refused the batch (a row it will not store);
    /// committing the requests one by one isolates the culprit. Otherwise
    /// (the connection is gone, the batch was aborted) retrying alone would
    /// only wait longer.
    pub(crate) refused_by_database: bool,
}

/// A batch given up before COMMIT, for a reason of Strata's (not the database's).
#[derive(Debug, thiserror::Error)]
#[error("append batch aborted: {0}")]
struct AbortedBatch(String);

/// How a SQL backend's batch transaction fails, before it becomes a
/// [`BatchFailure`].
pub(crate) enum CommitError {
    /// The driver or the database failed.
    Sql(sqlx::Error),
    /// Strata gave the batch up before COMMIT.
    Aborted(String),
}

impl From<sqlx::Error> for CommitError {
    fn from(err: sqlx::Error) -> Self {
        Self::Sql(err)
    }
}

impl From<CommitError> for BatchFailure {
    fn from(err: CommitError) -> Self {
        match err {
            CommitError::Sql(err) => Self { refused_by_database: matches!(err, sqlx::Error::Database(_)), error: Arc::new(err) },
            CommitError::Aborted(reason) => Self { error: Arc::new(AbortedBatch(reason)), refused_by_database: false },
        }
    }
}

type Results = Vec<Result<AppendOutcome, AppendError>>;

/// Writes one batch in one transaction, deciding each request in order.
pub(crate) trait BatchWriter: Send + Sync + 'static {
    /// One result per request, in order, or the batch's failure (nothing of
    /// it committed).
    fn commit_together<'a>(
        &'a self,
        appends: &'a [&'a PreparedAppend],
    ) -> Pin<Box<dyn Future<Output = Result<Results, BatchFailure>> + Send + 'a>>;
}

/// Commits a batch; a batch the database refused is split into single
/// requests (see the module docs).
pub(crate) async fn commit_or_split(writer: &dyn BatchWriter, appends: &[&PreparedAppend]) -> Results {
    match writer.commit_together(appends).await {
        Ok(results) => results,
        Err(failure) if failure.refused_by_database && appends.len() > 1 => {
            tracing::warn!(appends = appends.len(), error = %failure.error, "the database refused an append batch; committing its appends one by one");
            let mut alone = Vec::with_capacity(appends.len());
            for append in appends {
                alone.extend(writer.commit_together(std::slice::from_ref(append)).await.unwrap_or_else(|failure| fail_all(1, failure)));
            }
            alone
        }
        Err(failure) => fail_all(appends.len(), failure),
    }
}

/// Every request of a failed batch fails with its cause.
fn fail_all(appends: usize, failure: BatchFailure) -> Results {
    (0..appends).map(|_| Err(AppendError::Backend(BackendError::new("committing an append", failure.error.clone())))).collect()
}

struct Pending {
    append: PreparedAppend,
    reply: oneshot::Sender<Result<AppendOutcome, AppendError>>,
}

/// The queue in front of the committer tasks. Dropping it (and aborting the
/// returned tasks) stops committing; queued callers then get
/// [`AppendError::Closed`].
pub(crate) struct GroupCommit {
    queue: mpsc::Sender<Pending>,
}

impl GroupCommit {
    /// Starts `committers` tasks taking batches of at most `max_batch_events`
    /// events (a single larger request still goes alone).
    pub(crate) fn start(writer: Arc<dyn BatchWriter>, committers: usize, max_batch_events: usize) -> (Self, Vec<JoinHandle<()>>) {
        let (queue, receiver) = mpsc::channel::<Pending>(8_192);
        let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
        let tasks = (0..committers.max(1))
            .map(|_| tokio::spawn(run_committer(writer.clone(), receiver.clone(), max_batch_events.max(1))))
            .collect();
        (Self { queue }, tasks)
    }

    /// Queues one request and waits for its batch.
    pub(crate) async fn append(&self, append: PreparedAppend) -> Result<AppendOutcome, AppendError> {
        let (reply, answer) = oneshot::channel();
        self.queue.send(Pending { append, reply }).await.map_err(|_| AppendError::Closed)?;
        answer.await.map_err(|_| AppendError::Closed)?
    }
}

async fn run_committer(writer: Arc<dyn BatchWriter>, queue: Arc<tokio::sync::Mutex<mpsc::Receiver<Pending>>>, max_batch_events: usize) {
    loop {
        let batch = {
            let mut queue = queue.lock().await;
            let Some(first) = queue.recv().await else { return };
            let mut n_events = first.append.n_events();
            let mut batch = vec![first];
            // Callers answered by the previous batch resubmit within a few
            // scheduler turns: yield until the queue stops growing, so the
            // first of them does not go alone in a transaction of its own.
            for _ in 0..4 {
                let before = batch.len();
                while n_events < max_batch_events {
                    match queue.try_recv() {
                        Ok(next) => {
                            n_events += next.append.n_events();
                            batch.push(next);
                        }
                        Err(_) => break,
                    }
                }
                if n_events >= max_batch_events || (batch.len() == before && before > 1) {
                    break;
                }
                tokio::task::yield_now().await;
            }
            batch
        };
        let appends: Vec<&PreparedAppend> = batch.iter().map(|pending| &pending.append).collect();
        let results = commit_or_split(writer.as_ref(), &appends).await;
        for (pending, result) in batch.into_iter().zip(results) {
            // The caller may have gone away (timeout, cancellation); its
            // append still committed, and a retry will be replayed.
            let _ = pending.reply.send(result);
        }
    }
}
