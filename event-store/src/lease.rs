//! The lease seam: [`Lease`] elects one holder of a named role (the relay)
//! among processes, so exactly one is active and another takes over within
//! seconds when it dies.
//!
//! - [`MemoryLease`]: one process (the embedded default).
//! - `PostgresLease` (feature `postgres`): a session advisory lock on a
//!   connection of its own. The lock lives exactly as long as the connection:
//!   a holder that dies (even `kill -9`) closes its socket and PostgreSQL
//!   releases the lock at once; waiters retry every `retry` interval. The
//!   holder checks its connection every second and reports [`LeaseGuard::lost`]
//!   when it breaks, so it stops working before someone else starts.
//!
//!   A holder that stops without dying (SIGSTOP, a paused VM or container, a
//!   network that drops packets but no connection) keeps its socket open, so
//!   the connection alone would keep the lock for hours. The lease's session
//!   therefore runs with PostgreSQL's `idle_session_timeout` set to the
//!   lease's expiry (10 s unless [`PostgresLease::with_expiry`]): the holder's
//!   checks keep it busy every second, and a holder silent for longer than
//!   the expiry has its session ended by the server, which releases the lock
//!   for the next holder. When the stopped one runs again, its first check
//!   fails and it reports the lease lost. (PostgreSQL 13 and older lack the
//!   setting: a warning says so, and there only a dead holder passes on.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::BackendError;

/// Held while the lease is ours; dropping it releases the lease.
pub struct LeaseGuard {
    lost: watch::Receiver<bool>,
    _held: Box<dyn Send + Sync>,
}

impl std::fmt::Debug for LeaseGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseGuard").field("lost", &*self.lost.borrow()).finish()
    }
}

impl LeaseGuard {
    /// Resolves when the lease is lost (never, for a lease that cannot be lost).
    pub async fn lost(&mut self) {
        if self.lost.wait_for(|lost| *lost).await.is_err() {
            // The keeper is gone without reporting: treat as lost.
        }
    }
}

/// Electing one holder of a named role.
#[async_trait]
pub trait Lease: Send + Sync {
    /// Waits until this caller holds `name`.
    async fn acquire(&self, name: &str) -> Result<LeaseGuard, BackendError>;
}

/// Leases within one process.
#[derive(Clone, Default)]
pub struct MemoryLease {
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

#[async_trait]
impl Lease for MemoryLease {
    async fn acquire(&self, name: &str) -> Result<LeaseGuard, BackendError> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|poison| poison.into_inner());
            locks.entry(name.to_owned()).or_default().clone()
        };
        let held = lock.lock_owned().await;
        let (sender, lost) = watch::channel(false);
        Ok(LeaseGuard { lost, _held: Box::new((held, sender)) })
    }
}

#[cfg(feature = "postgres")]
pub use postgres::PostgresLease;

#[cfg(feature = "postgres")]
mod postgres {
    use std::time::Duration;

    use async_trait::async_trait;
    use sqlx::postgres::PgConnectOptions;
    use sqlx::{ConnectOptions, Connection};
    use tokio::sync::watch;

    use super::{Lease, LeaseGuard};
    use crate::BackendError;

    /// `pg_try_advisory_lock(NAMESPACE, hashtext(name))`: the first key keeps
    /// Strata's locks apart from anyone else's in the same database.
    const TRY_LOCK: &str = include_str!("../sql/postgres/try_lease.sql");

    /// How often a holder checks its connection (and so stays not idle).
    const CHECK_EVERY: Duration = Duration::from_secs(1);

    /// Leases held as PostgreSQL advisory locks (see the module docs).
    #[derive(Debug, Clone)]
    pub struct PostgresLease {
        options: PgConnectOptions,
        retry: Duration,
        expiry: Duration,
    }

    impl PostgresLease {
        /// How long a holder may be silent before the server ends its session.
        pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(10);

        /// Leases on the database at `url`; waiters retry every `retry`.
        pub fn new(url: &str, retry: Duration) -> Result<Self, BackendError> {
            let options: PgConnectOptions = url.parse().map_err(|err| BackendError::new("parsing the PostgreSQL URL", err))?;
            Ok(Self { options: options.application_name("strata-lease"), retry, expiry: Self::DEFAULT_EXPIRY })
        }

        /// A holder silent for longer than `expiry` loses the lease (at
        /// least three of its checks, so a busy holder keeps it).
        pub fn with_expiry(mut self, expiry: Duration) -> Self {
            self.expiry = expiry.max(CHECK_EVERY * 3);
            self
        }

        async fn connect(&self, name: &str) -> Result<sqlx::PgConnection, sqlx::Error> {
            let mut connection = self.options.connect().await?;
            let expiry = format!("SET idle_session_timeout = {}", self.expiry.as_millis());
            if let Err(err) = sqlx::query(&expiry).execute(&mut connection).await {
                tracing::warn!(
                    error = %crate::chain(&err),
                    lease = name,
                    "idle_session_timeout is not available (PostgreSQL 13 or older): a stopped holder keeps this lease until its connection closes"
                );
            }
            Ok(connection)
        }
    }

    struct Keeper(tokio::task::JoinHandle<()>);

    impl Drop for Keeper {
        fn drop(&mut self) {
            // Dropping the task drops its connection: the lock is released.
            self.0.abort();
        }
    }

    #[async_trait]
    impl Lease for PostgresLease {
        async fn acquire(&self, name: &str) -> Result<LeaseGuard, BackendError> {
            // Waiting survives PostgreSQL restarts: any failure reconnects
            // after `retry`; only holding the lock ends the wait.
            loop {
                let mut connection = match self.connect(name).await {
                    Ok(connection) => connection,
                    Err(err) => {
                        tracing::warn!(error = %crate::chain(&err), lease = name, "cannot connect for a lease; retrying");
                        tokio::time::sleep(self.retry).await;
                        continue;
                    }
                };
                loop {
                    let held: bool = match sqlx::query_scalar(TRY_LOCK).bind(name).fetch_one(&mut connection).await {
                        Ok(held) => held,
                        Err(err) => {
                            tracing::warn!(error = %crate::chain(&err), lease = name, "trying a lease failed; reconnecting");
                            break;
                        }
                    };
                    if held {
                        let (sender, lost) = watch::channel(false);
                        let keeper = tokio::spawn(async move {
                            loop {
                                tokio::time::sleep(CHECK_EVERY).await;
                                if connection.ping().await.is_err() {
                                    sender.send_replace(true);
                                    return;
                                }
                            }
                        });
                        return Ok(LeaseGuard { lost, _held: Box::new(Keeper(keeper)) });
                    }
                    tokio::time::sleep(self.retry).await;
                }
                tokio::time::sleep(self.retry).await;
            }
        }
    }
}
