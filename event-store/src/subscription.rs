//! Catch-up-then-live subscriptions, shared by every backend.
//!
//! A subscription reads pages of the global log after its last position until
//! a page comes back empty, then sleeps on a `watch` channel that the backend
//! bumps whenever something may have committed (an in-process commit, a
//! PostgreSQL NOTIFY, a reconnect of the listener). The channel is marked seen
//! *before* each read, so a commit that lands during the read wakes the next
//! wait. A notification can still be lost outside the process (a listener
//! whose connection went half-open hears nothing until it is replaced), so
//! an idle subscription also reads again every `poll_every`: a bound on how
//! long a commit can go unseen.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::stream::{self, BoxStream, StreamExt};
use tokio::sync::watch;

use crate::{Form, Position, ReadAll, ReadError, RecordedEvent, StoredEvent, Subscribe};

pub(crate) type PageFuture<T = RecordedEvent> = Pin<Box<dyn Future<Output = Result<Vec<T>, ReadError>> + Send>>;

/// Reads one page of the global log; the backend's `read_all` (or `read_all_stored`).
pub(crate) type PageReader<T = RecordedEvent> = Arc<dyn Fn(ReadAll) -> PageFuture<T> + Send + Sync>;

/// What a page holds: something with a log position.
pub(crate) trait Positioned: Send + 'static {
    fn position(&self) -> Position;
}

impl Positioned for RecordedEvent {
    fn position(&self) -> Position {
        self.position
    }
}

impl Positioned for StoredEvent {
    fn position(&self) -> Position {
        self.position
    }
}

struct State<T> {
    read: PageReader<T>,
    wake: watch::Receiver<u64>,
    after: Position,
    category: Option<String>,
    batch_size: usize,
    poll_every: std::time::Duration,
    buffer: VecDeque<T>,
    done: bool,
}

/// Builds the subscription stream over a backend's page reader and wake-up channel.
pub(crate) fn follow<T: Positioned>(
    read: PageReader<T>,
    wake: watch::Receiver<u64>,
    request: Subscribe,
) -> BoxStream<'static, Result<T, ReadError>> {
    let state = State {
        read,
        wake,
        after: request.after,
        category: request.category,
        batch_size: request.batch_size.clamp(1, 10_000),
        poll_every: request.poll_every.max(std::time::Duration::from_millis(10)),
        buffer: VecDeque::new(),
        done: false,
    };
    stream::unfold(state, |mut state| async move {
        loop {
            if let Some(event) = state.buffer.pop_front() {
                return Some((Ok(event), state));
            }
            if state.done {
                return None;
            }
            state.wake.borrow_and_update();
            let page =
                (state.read)(ReadAll { after: state.after, limit: state.batch_size, category: state.category.clone(), form: Form::Latest })
                    .await;
            match page {
                Ok(page) if !page.is_empty() => {
                    state.after = page.last().map_or(state.after, Positioned::position);
                    state.buffer.extend(page);
                }
                Ok(_) => {
                    let woken = tokio::time::timeout(state.poll_every, state.wake.changed()).await;
                    if let Ok(Err(_)) = woken {
                        state.done = true;
                        return Some((Err(ReadError::Closed), state));
                    }
                }
                Err(err) => {
                    state.done = true;
                    return Some((Err(err), state));
                }
            }
        }
    })
    .boxed()
}
