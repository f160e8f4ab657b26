//! Readers that wait for the read models (`waitFor`, `orderUpdated`) wake on
//! the read-model backend's change feed ([`ReadModelSink::changes`]: Redis
//! pub/sub from the projection commits, or the in-process channel of the
//! memory sink) instead of polling it.
//!
//! A waiter registers the key it waits for ([`Changes::watch`]: a stream's
//! applied version, or a document), notes the key's change count
//! ([`Watch::seen`]), and only then looks at the read model; it then waits
//! until the count moves ([`Watch::changed_since`]), so a change committed
//! between the look and the wait still wakes it. One task per process follows the feed and wakes the
//! waiters of the keys a commit names; a switch to a rebuilt generation, or a
//! feed that reconnects (pub/sub may drop messages meanwhile), wakes every
//! waiter. While the feed is down, waiters look again every
//! `Limits::subscription_poll`; while it is up, every [`SAFETY_NET`] in case
//! a message was lost anyway. A thousand waiting requests cost a thousand
//! entries in a map, not a thousand polls.
//!
//! Waiters look at the read model through [`Changes::look`], at most
//! [`CONCURRENT_LOOKS`] at a time: a burst of thousands of waiting fields
//! (a flood of aliased `waitFor`s arriving together, or a switch waking
//! everyone) then queues here instead of in front of every other query on
//! the read model's connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use strata_projections::sink::{Change, ReadModelSink};
use tokio::sync::Notify;

/// How often a waiter looks again while the feed is up.
pub const SAFETY_NET: Duration = Duration::from_secs(5);

/// Waiters looking at the read model at once, per process.
pub const CONCURRENT_LOOKS: usize = 16;

type Key = (String, String);

/// The waiters of one process, by (projection, key).
pub struct Changes {
    sink: Arc<dyn ReadModelSink>,
    waiters: Mutex<HashMap<Key, Waiting>>,
    connected: AtomicBool,
    listening: Once,
    looks: tokio::sync::Semaphore,
}

struct Waiting {
    changed: Arc<Changed>,
    watchers: usize,
}

/// A key's change count and its waiters' wake-up.
#[derive(Default)]
struct Changed {
    count: AtomicU64,
    notify: Notify,
}

impl Changed {
    fn wake(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_waiters();
    }
}

impl std::fmt::Debug for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changes").field("connected", &self.connected()).field("keys", &self.watched_keys()).finish()
    }
}

/// One waiter's registration; dropping it forgets the key once nobody waits.
pub struct Watch {
    changes: Arc<Changes>,
    key: Key,
    changed: Arc<Changed>,
}

impl Watch {
    /// The key's change count: note it before looking at the read model.
    pub fn seen(&self) -> u64 {
        self.changed.count.load(Ordering::Acquire)
    }

    /// Resolves once the key changed (or everything did) after `seen`.
    pub async fn changed_since(&self, seen: u64) {
        loop {
            let woken = self.changed.notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.seen() != seen {
                return;
            }
            woken.await;
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut waiters = self.changes.lock();
        if let Some(waiting) = waiters.get_mut(&self.key) {
            waiting.watchers -= 1;
            if waiting.watchers == 0 {
                waiters.remove(&self.key);
            }
        }
    }
}

impl Changes {
    /// Waiters on `sink`'s feed (followed from the first watch on).
    pub fn new(sink: Arc<dyn ReadModelSink>) -> Arc<Self> {
        Arc::new(Self {
            sink,
            waiters: Mutex::default(),
            connected: AtomicBool::new(false),
            listening: Once::new(),
            looks: tokio::sync::Semaphore::new(CONCURRENT_LOOKS),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Waiting>> {
        self.waiters.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a waiter for `key` of `projection` (see
    /// [`strata_projections::sink::stream_key`] and `document_key`).
    pub fn watch(self: &Arc<Self>, projection: &str, key: String) -> Watch {
        self.listening.call_once(|| {
            tokio::spawn(listen(Arc::downgrade(self), self.sink.clone()));
        });
        let key = (projection.to_owned(), key);
        let mut waiters = self.lock();
        let waiting = waiters.entry(key.clone()).or_insert_with(|| Waiting { changed: Arc::default(), watchers: 0 });
        waiting.watchers += 1;
        let changed = waiting.changed.clone();
        drop(waiters);
        Watch { changes: self.clone(), key, changed }
    }

    /// Runs a waiter's look at the read model, at most [`CONCURRENT_LOOKS`]
    /// at once.
    pub async fn look<T>(&self, look: impl std::future::Future<Output = T>) -> T {
        // The semaphore is never closed.
        let _permit = self.looks.acquire().await.ok();
        look.await
    }

    /// Whether the feed is up (waiters then rely on it).
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// How long a waiter may sleep before looking again: [`SAFETY_NET`]
    /// while the feed is up, `polling` while it is not.
    pub fn pause(&self, polling: Duration) -> Duration {
        if self.connected() {
            SAFETY_NET
        } else {
            polling
        }
    }

    /// Keys with waiters now.
    pub fn watched_keys(&self) -> usize {
        self.lock().len()
    }

    fn wake(&self, change: &Change) {
        let waiters = self.lock();
        match change {
            Change::Applied { projection, keys } => {
                for key in keys {
                    if let Some(waiting) = waiters.get(&(projection.clone(), key.clone())) {
                        waiting.changed.wake();
                    }
                }
            }
            Change::Everything => waiters.values().for_each(|waiting| waiting.changed.wake()),
        }
    }
}

/// Follows the feed while the waiters exist, reconnecting with a growing pause.
async fn listen(changes: Weak<Changes>, sink: Arc<dyn ReadModelSink>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let feed = sink.changes().await;
        let Some(current) = changes.upgrade() else { return };
        match feed {
            Ok(None) => return,
            Ok(Some(mut feed)) => {
                current.connected.store(true, Ordering::Release);
                drop(current);
                backoff = Duration::from_millis(100);
                while let Some(change) = feed.next().await {
                    let Some(current) = changes.upgrade() else { return };
                    current.wake(&change);
                }
                let Some(current) = changes.upgrade() else { return };
                current.connected.store(false, Ordering::Release);
                current.wake(&Change::Everything);
                tracing::warn!("the read models' change feed ended; waiters poll until it is back");
            }
            Err(error) => {
                drop(current);
                tracing::warn!(error = %strata_store::chain(&error), "cannot follow the read models' changes; waiters poll meanwhile");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_projections::sink::{stream_key, Batch, StreamGuard, Target};
    use strata_projections::MemorySink;

    #[tokio::test]
    async fn a_commit_wakes_the_waiters_of_its_keys_only_and_watches_are_forgotten() {
        let sink = Arc::new(MemorySink::new());
        sink.init_live("p", 1).await.unwrap();
        let changes = Changes::new(sink.clone());
        let (mine, other) = (changes.watch("p", stream_key("s-1")), changes.watch("p", stream_key("s-2")));
        let again = changes.watch("p", stream_key("s-1"));
        assert_eq!(changes.watched_keys(), 2);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !changes.connected() {
            assert!(tokio::time::Instant::now() < deadline, "the feed never came up");
            tokio::task::yield_now().await;
        }
        let (seen, other_seen) = (mine.seen(), other.seen());
        let batch = Batch {
            guards: vec![StreamGuard { stream_id: "s-1".into(), expected: Some(0), reached: 1 }],
            position: strata_store::Position(1),
            events: 1,
            ..Batch::default()
        };
        sink.commit(&Target { projection: "p".into(), generation: 1 }, &batch).await.unwrap();
        // Committed before anyone waits: the count moved, so the wait ends at once.
        tokio::time::timeout(Duration::from_secs(10), mine.changed_since(seen)).await.expect("the commit wakes its stream's waiter");
        assert_eq!(again.seen(), mine.seen(), "one count per key");
        assert_eq!(other.seen(), other_seen, "another stream's count stays");
        {
            let not_woken = other.changed_since(other_seen);
            tokio::pin!(not_woken);
            assert!(futures_util::poll!(not_woken.as_mut()).is_pending(), "another stream's waiter sleeps on");
        }
        drop((mine, other));
        assert_eq!(changes.watched_keys(), 1, "s-1 still has a waiter");
        drop(again);
        assert_eq!(changes.watched_keys(), 0);
    }
}
