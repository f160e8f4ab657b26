//! The MongoDB transaction retry rules, apart from the driver so they can be
//! tested with injected, labelled errors (a stand-in server never fails
//! over or conflicts).
//!
//! As the drivers' transactions specification says for its convenient API:
//! - an error labelled `TransientTransactionError` (a write conflict, a
//!   primary stepping down, a network error before the commit) aborts the
//!   transaction and runs it again from the start;
//! - a commit error labelled `UnknownTransactionCommitResult` (the commit
//!   may or may not have happened: a lost connection, a write-concern
//!   timeout, a failover during the commit) sends the commit again, which is
//!   idempotent, without running the work again; except `MaxTimeMSExpired`
//!   (the commit ran out of its `maxCommitTimeMS`), which is given up;
//! - anything else is given up at once;
//! - and all of it within one deadline ([`RetryPolicy::deadline`]), with
//!   jittered, doubling pauses between tries, so a lost primary ends in an
//!   error the caller (the projection runner) sees instead of a loop.

use std::time::{Duration, Instant};

use async_trait::async_trait;

/// `MaxTimeMSExpired`: the server gave up on the operation's time limit.
pub(crate) const MAX_TIME_MS_EXPIRED: i32 = 50;
/// `WriteConflict` (also labelled `TransientTransactionError`).
#[cfg(test)]
pub(crate) const WRITE_CONFLICT: i32 = 112;
/// The label of errors after which the whole transaction may run again.
pub(crate) const TRANSIENT: &str = "TransientTransactionError";
/// The label of commit errors whose outcome is not known.
pub(crate) const UNKNOWN_COMMIT: &str = "UnknownTransactionCommitResult";

/// What the rules need to know of an error.
pub(crate) trait Classify {
    /// Whether the server or the driver labelled it so.
    fn has_label(&self, label: &str) -> bool;
    /// The server's error code, if it answered one.
    fn code(&self) -> Option<i32>;
}

/// One transaction, step by step.
#[async_trait]
pub(crate) trait Transaction: Send {
    /// What the work returns.
    type Value: Send;
    /// The driver's error.
    type Error: Classify + Send;
    /// Starts a new transaction (on a new session).
    async fn begin(&mut self) -> Result<(), Self::Error>;
    /// The reads and writes.
    async fn work(&mut self) -> Result<Self::Value, Self::Error>;
    /// Commits (may be called again after an unknown result).
    async fn commit(&mut self) -> Result<(), Self::Error>;
    /// Aborts, ignoring errors (the transaction may already be gone).
    async fn abort(&mut self);
}

/// How long and how often to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryPolicy {
    /// No new try starts after this much time from the first one.
    pub(crate) deadline: Duration,
    /// The first pause; each next one doubles, up to `max_pause`.
    pub(crate) first_pause: Duration,
    /// The longest pause.
    pub(crate) max_pause: Duration,
}

impl Default for RetryPolicy {
    /// 30 s in all; pauses from 5 ms doubling to 500 ms, jittered.
    fn default() -> Self {
        Self { deadline: Duration::from_secs(30), first_pause: Duration::from_millis(5), max_pause: Duration::from_millis(500) }
    }
}

impl RetryPolicy {
    fn pause(&self, tries: u32) -> Duration {
        let nominal = self.first_pause.saturating_mul(1u32 << tries.saturating_sub(1).min(16)).min(self.max_pause);
        // Uniform in [nominal / 2, nominal]: two writers that conflicted
        // do not meet again at the same instant.
        nominal / 2 + (nominal / 2).mul_f64(rand::random::<f64>())
    }
}

/// Why a transaction was given up.
#[derive(Debug)]
pub(crate) struct GaveUp<E> {
    /// The last error.
    pub(crate) error: E,
    /// Tries of the whole transaction.
    pub(crate) transactions: u32,
    /// Commit requests sent.
    pub(crate) commits: u32,
}

/// Runs `transaction` by the rules above.
pub(crate) async fn run<X: Transaction>(transaction: &mut X, policy: RetryPolicy) -> Result<X::Value, GaveUp<X::Error>> {
    let started = Instant::now();
    let within = |pause: Duration| started.elapsed() + pause < policy.deadline;
    let (mut transactions, mut commits, mut pauses) = (0u32, 0u32, 0u32);
    'transaction: loop {
        transactions += 1;
        let worked = match transaction.begin().await {
            Ok(()) => transaction.work().await,
            Err(error) => Err(error),
        };
        let value = match worked {
            Ok(value) => value,
            Err(error) => {
                transaction.abort().await;
                pauses += 1;
                let pause = policy.pause(pauses);
                if error.has_label(TRANSIENT) && within(pause) {
                    tokio::time::sleep(pause).await;
                    continue 'transaction;
                }
                return Err(GaveUp { error, transactions, commits });
            }
        };
        loop {
            commits += 1;
            let error = match transaction.commit().await {
                Ok(()) => return Ok(value),
                Err(error) => error,
            };
            pauses += 1;
            let pause = policy.pause(pauses);
            if !within(pause) {
                return Err(GaveUp { error, transactions, commits });
            }
            if error.has_label(UNKNOWN_COMMIT) && error.code() != Some(MAX_TIME_MS_EXPIRED) {
                tokio::time::sleep(pause).await;
                continue;
            }
            if error.has_label(TRANSIENT) {
                transaction.abort().await;
                tokio::time::sleep(pause).await;
                continue 'transaction;
            }
            return Err(GaveUp { error, transactions, commits });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct Injected {
        labels: Vec<&'static str>,
        code: Option<i32>,
    }

    impl Classify for Injected {
        fn has_label(&self, label: &str) -> bool {
            self.labels.contains(&label)
        }
        fn code(&self) -> Option<i32> {
            self.code
        }
    }

    fn error(labels: &[&'static str], code: Option<i32>) -> Injected {
        Injected { labels: labels.to_vec(), code }
    }

    /// A transaction whose work and commits fail as scripted, then succeed.
    #[derive(Default)]
    struct Scripted {
        work: VecDeque<Injected>,
        commit: VecDeque<Injected>,
        calls: Vec<&'static str>,
        /// The work's effect: applied once per successful work, kept only by a commit.
        applied: u32,
    }

    #[async_trait]
    impl Transaction for Scripted {
        type Value = u32;
        type Error = Injected;
        async fn begin(&mut self) -> Result<(), Injected> {
            self.calls.push("begin");
            Ok(())
        }
        async fn work(&mut self) -> Result<u32, Injected> {
            self.calls.push("work");
            match self.work.pop_front() {
                Some(error) => Err(error),
                None => {
                    self.applied += 1;
                    Ok(self.applied)
                }
            }
        }
        async fn commit(&mut self) -> Result<(), Injected> {
            self.calls.push("commit");
            self.commit.pop_front().map_or(Ok(()), Err)
        }
        async fn abort(&mut self) {
            self.calls.push("abort");
        }
    }

    fn quick() -> RetryPolicy {
        RetryPolicy { deadline: Duration::from_secs(5), first_pause: Duration::from_millis(1), max_pause: Duration::from_millis(4) }
    }

    #[tokio::test]
    async fn an_unknown_commit_result_sends_the_commit_again_without_running_the_work_again() {
        let unknown = error(&[UNKNOWN_COMMIT], None);
        let mut transaction = Scripted { commit: VecDeque::from([unknown.clone(), unknown]), ..Scripted::default() };
        let value = run(&mut transaction, quick()).await.unwrap();
        assert_eq!(value, 1);
        assert_eq!(transaction.calls, ["begin", "work", "commit", "commit", "commit"]);
    }

    #[tokio::test]
    async fn a_commit_that_ran_out_of_its_max_time_is_given_up_even_if_labelled_unknown() {
        let expired = error(&[UNKNOWN_COMMIT], Some(MAX_TIME_MS_EXPIRED));
        let mut transaction = Scripted { commit: VecDeque::from([expired.clone()]), ..Scripted::default() };
        let gave_up = run(&mut transaction, quick()).await.unwrap_err();
        assert_eq!((gave_up.error, gave_up.transactions, gave_up.commits), (expired, 1, 1));
        assert_eq!(transaction.calls, ["begin", "work", "commit"]);
    }

    #[tokio::test]
    async fn a_write_conflict_aborts_and_runs_the_whole_transaction_again() {
        let conflict = error(&[TRANSIENT], Some(WRITE_CONFLICT));
        let mut transaction = Scripted { work: VecDeque::from([conflict.clone(), conflict]), ..Scripted::default() };
        assert_eq!(run(&mut transaction, quick()).await.unwrap(), 1);
        assert_eq!(transaction.calls, ["begin", "work", "abort", "begin", "work", "abort", "begin", "work", "commit"]);
    }

    #[tokio::test]
    async fn a_transient_commit_error_runs_the_whole_transaction_again() {
        let stepped_down = error(&[TRANSIENT], Some(189));
        let mut transaction = Scripted { commit: VecDeque::from([stepped_down]), ..Scripted::default() };
        assert_eq!(run(&mut transaction, quick()).await.unwrap(), 2, "the work ran again");
        assert_eq!(transaction.calls, ["begin", "work", "commit", "abort", "begin", "work", "commit"]);
    }

    #[tokio::test]
    async fn an_unlabelled_error_is_given_up_at_once() {
        let duplicate = error(&[], Some(11000));
        let mut transaction = Scripted { work: VecDeque::from([duplicate.clone()]), ..Scripted::default() };
        let gave_up = run(&mut transaction, quick()).await.unwrap_err();
        assert_eq!((gave_up.error, gave_up.transactions, gave_up.commits), (duplicate, 1, 0));
        assert_eq!(transaction.calls, ["begin", "work", "abort"]);
    }

    #[tokio::test]
    async fn a_commit_result_that_stays_unknown_ends_in_an_error_at_the_deadline() {
        let unknown = error(&[UNKNOWN_COMMIT], None);
        let mut transaction = Scripted { commit: std::iter::repeat_n(unknown, 10_000).collect(), ..Scripted::default() };
        let policy = RetryPolicy { deadline: Duration::from_millis(300), ..quick() };
        let started = Instant::now();
        let gave_up = run(&mut transaction, policy).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2), "bounded by the deadline: {:?}", started.elapsed());
        assert_eq!(gave_up.transactions, 1);
        assert!(gave_up.commits > 1 && gave_up.commits < 10_000, "{} commits", gave_up.commits);
    }

    #[test]
    fn pauses_double_up_to_the_cap_and_are_jittered() {
        let policy =
            RetryPolicy { deadline: Duration::from_secs(30), first_pause: Duration::from_millis(8), max_pause: Duration::from_millis(64) };
        for (tries, nominal) in [(1, 8), (2, 16), (3, 32), (4, 64), (5, 64), (40, 64)] {
            for _ in 0..20 {
                let pause = policy.pause(tries).as_micros();
                assert!((nominal * 500..=nominal * 1000).contains(&pause), "try {tries}: {pause} µs");
            }
        }
    }
}
