//! The GraphQL contract of docs/design.md §5, with async-graphql.
//!
//! - [`query`]: `order`, `orders`, `stock`, `projections` read the read
//!   models (never the log); `streamEvents`, `globalEvents`, `orderAt` read
//!   the log for auditors and operators.
//! - [`mutation`]: `placeOrder`, `cancelOrder`, `restock` go through the
//!   command handlers; operators `rebuildProjection`, `pauseProjection`,
//!   `resumeProjection`.
//! - [`subscription`]: the subscription `orderUpdated(id)`.
//! - [`types`]: the object and input types, and the stock DataLoader that
//!   batches every `lines { stock }` of a response into one read.
//!
//! Every field checks the caller's role ([`Needs`]); every error carries
//! `extensions.code` ([`Code`]); internal errors are logged with a reference
//! and reach the client as that reference only.
//!
//! Read-your-writes: every mutation answers a `consistencyToken`
//! (`<streamId>@<version>`, to be treated as opaque) and the read-model
//! queries take `waitFor: <token>`: they answer once the read model they
//! read has applied that stream up to that version, or fail with `TIMEOUT`
//! after [`Limits::read_your_writes_wait`].

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_graphql::dataloader::DataLoader;
use async_graphql::{Context, Data, ErrorExtensions, Guard, Schema};
use strata_commands::inventory::Inventory;
use strata_commands::orders::Order;
use strata_commands::{CommandHandler, HandlerConfig};
use strata_projections::ReadModelSink;
use strata_store::{CheckpointStore, EventStore, SnapshotStore};

use crate::auth::Permission;

mod bounds;
pub mod mutation;
pub mod query;
pub mod subscription;
pub mod types;

pub(crate) use bounds::OverSocket;
pub use mutation::Mutation;
pub use query::Query;
pub use subscription::Subscription;

/// The executable schema.
pub type StrataSchema = Schema<Query, Mutation, Subscription>;

/// Bounds on what one request may cost.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Deepest selection (introspection included: GraphiQL's query needs about 14).
    pub max_depth: usize,
    /// Highest complexity (one per field, lists times their page size).
    pub max_complexity: usize,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Longest a request may run.
    pub request_timeout: Duration,
    /// Longest a `waitFor` waits for the read model.
    pub read_your_writes_wait: Duration,
    /// Largest `first` of `orders`.
    pub max_page: usize,
    /// Largest `limit` of `streamEvents` and `globalEvents`.
    pub max_events: usize,
    /// How often `orderUpdated` looks at the read model.
    pub subscription_poll: Duration,
    /// Most root fields (aliases included) one operation may select: each
    /// is a resolver run, and `waitFor` ones wait.
    pub max_root_fields: usize,
    /// WebSocket: largest frame and message, in bytes.
    pub max_ws_message_bytes: usize,
    /// WebSocket: how long a connection may stay without a valid
    /// `connection_init` (or a token at the upgrade).
    pub ws_init_timeout: Duration,
    /// WebSocket: open connections in this process.
    pub max_ws_connections: usize,
    /// WebSocket: open connections per token.
    pub max_ws_connections_per_token: usize,
    /// WebSocket: subscriptions open at once on one connection.
    pub max_subscriptions_per_connection: usize,
    /// WebSocket: connections from one client address not yet
    /// authenticated (more are refused at the upgrade).
    pub max_ws_unauthenticated_per_address: usize,
    /// `orderUpdated` on an order the caller cannot see (none, or another
    /// customer's) ends with `NOT_FOUND` after this long: a client may
    /// subscribe right after `placeOrder`, before the view exists, and both
    /// cases take the same time, so neither says whether the order exists.
    pub subscription_not_found_after: Duration,
    /// The longest one subscription stays open (it completes then; the
    /// client subscribes again).
    pub max_subscription_lifetime: Duration,
    /// Requests (POST or upgrade) per token (`None`: unlimited).
    pub rate_per_token: Option<governor::Quota>,
    /// Requests per client address, checked before the token (`None`: unlimited).
    pub rate_per_ip: Option<governor::Quota>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_depth: 20,
            max_complexity: 5_000,
            max_body_bytes: 64 * 1024,
            request_timeout: Duration::from_secs(30),
            read_your_writes_wait: Duration::from_secs(5),
            max_page: strata_projections::orders::MAX_PAGE,
            max_events: 1_000,
            subscription_poll: Duration::from_millis(50),
            max_root_fields: 20,
            max_ws_message_bytes: 64 * 1024,
            ws_init_timeout: Duration::from_secs(10),
            max_ws_connections: 1_024,
            max_ws_connections_per_token: 16,
            max_subscriptions_per_connection: 16,
            max_ws_unauthenticated_per_address: 16,
            subscription_not_found_after: Duration::from_secs(10),
            max_subscription_lifetime: Duration::from_secs(3_600),
            rate_per_token: crate::rate::per_second(crate::rate::DEFAULT_PER_TOKEN),
            rate_per_ip: crate::rate::per_second(crate::rate::DEFAULT_PER_IP),
        }
    }
}

/// What resolvers work with.
pub struct Api {
    /// The log (commands append to it, auditors read it).
    pub store: Arc<dyn EventStore>,
    /// The checkpoints beside the log (the sagas' recovery low-water mark).
    pub checkpoints: Arc<dyn CheckpointStore>,
    /// The read models.
    pub read_model: Arc<dyn ReadModelSink>,
    /// Order commands.
    pub orders: CommandHandler<Order>,
    /// Stock commands.
    pub inventory: CommandHandler<Inventory>,
    /// Request bounds.
    pub limits: Limits,
    /// Readers waiting for the read models, woken by their changes.
    pub changes: Arc<crate::changes::Changes>,
    /// Projections this process is rebuilding.
    rebuilding: Mutex<HashSet<String>>,
}

impl Api {
    /// Resolvers over these backends.
    pub fn new(
        store: Arc<dyn EventStore>,
        snapshots: Option<Arc<dyn SnapshotStore>>,
        checkpoints: Arc<dyn CheckpointStore>,
        read_model: Arc<dyn ReadModelSink>,
        limits: Limits,
    ) -> Self {
        Self {
            checkpoints,
            orders: CommandHandler::new(store.clone(), snapshots.clone(), HandlerConfig::default()),
            inventory: CommandHandler::new(store.clone(), snapshots, HandlerConfig::default()),
            store,
            changes: crate::changes::Changes::new(read_model.clone()),
            read_model,
            limits,
            rebuilding: Mutex::new(HashSet::new()),
        }
    }

    /// Marks `name` as being rebuilt here; false if it already is.
    pub(crate) fn start_rebuild(&self, name: &str) -> bool {
        self.rebuilding.lock().expect("rebuild set poisoned").insert(name.to_owned())
    }

    /// Unmarks `name`.
    pub(crate) fn end_rebuild(&self, name: &str) {
        self.rebuilding.lock().expect("rebuild set poisoned").remove(name);
    }
}

/// The schema over `api`, with its limits.
pub fn schema(api: Arc<Api>) -> StrataSchema {
    let limits = api.limits.clone();
    Schema::build(Query, Mutation, Subscription)
        .data(api)
        .limit_depth(limits.max_depth)
        .limit_complexity(limits.max_complexity)
        .limit_recursive_depth(32)
        .limit_directives(8)
        .extension(bounds::RootFields(limits.max_root_fields))
        .extension(bounds::Budgets { request_timeout: limits.request_timeout, lifetime: limits.max_subscription_lifetime })
        .finish()
}

/// The SDL of the contract, as exported to `schemas/graphql/schema.graphql`.
pub fn sdl() -> String {
    Schema::build(Query, Mutation, Subscription).finish().sdl()
}

/// The per-request data: who calls, and the batch loaders (one per request,
/// so nothing is cached across requests).
pub fn request_data(api: &Arc<Api>, caller: Caller) -> Data {
    let mut data = Data::default();
    data.insert(caller);
    data.insert(DataLoader::new(types::StockLoader { sink: api.read_model.clone() }, tokio::spawn));
    data
}

pub use crate::auth::Caller;

/// `extensions.code` of every error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// The write lost to another, or the state does not allow it.
    Conflict,
    /// The request is malformed, too big, too deep or breaks a rule.
    Validation,
    /// No valid token.
    Unauthenticated,
    /// The token's role may not do this.
    Forbidden,
    /// No such order, stock, stream or projection.
    NotFound,
    /// A bound on time was reached (`waitFor`, the request timeout).
    Timeout,
    /// Too many requests or connections for this token, address or process;
    /// try again after the `Retry-After` header's seconds.
    RateLimited,
    /// A backend (the event store) cannot be reached now; the same request
    /// can be sent again.
    Unavailable,
    /// Something failed on our side; the message carries a log reference only.
    Internal,
}

impl Code {
    /// As it appears in `extensions.code`.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Conflict => "CONFLICT",
            Code::Validation => "VALIDATION",
            Code::Unauthenticated => "UNAUTHENTICATED",
            Code::Forbidden => "FORBIDDEN",
            Code::NotFound => "NOT_FOUND",
            Code::Timeout => "TIMEOUT",
            Code::RateLimited => "RATE_LIMITED",
            Code::Unavailable => "UNAVAILABLE",
            Code::Internal => "INTERNAL",
        }
    }
}

/// An error with its code.
pub fn error(code: Code, message: impl Into<String>) -> async_graphql::Error {
    async_graphql::Error::new(message).extend_with(|_, extensions| extensions.set("code", code.as_str()))
}

/// An internal failure: logged in full with a reference, answered with the
/// reference only (no internals leak).
pub fn internal(cause: impl Into<anyhow::Error>) -> async_graphql::Error {
    let reference = uuid::Uuid::new_v4();
    let cause = cause.into();
    tracing::error!(%reference, error = %format_args!("{cause:#}"), "graphql request failed");
    error(Code::Internal, format!("internal error (reference {reference})"))
}

/// The guard on every field: the caller's role must grant the permission.
pub struct Needs(pub Permission);

impl Guard for Needs {
    async fn check(&self, ctx: &Context<'_>) -> async_graphql::Result<()> {
        match ctx.data_opt::<Caller>() {
            None => Err(error(Code::Unauthenticated, "missing bearer token")),
            Some(caller) if caller.role.may(self.0) => Ok(()),
            Some(caller) => Err(error(
                Code::Forbidden,
                format!(
                    "the {} role may not {}",
                    caller.role,
                    match self.0 {
                        Permission::Read => "read",
                        Permission::Write => "send commands",
                        Permission::Audit => "read the log",
                        Permission::Operate => "operate the warehouse, projections and sagas",
                    }
                ),
            )),
        }
    }
}

/// The caller of a request (set by the HTTP layer before any resolver runs).
pub(crate) fn caller<'a>(ctx: &Context<'a>) -> async_graphql::Result<&'a Caller> {
    ctx.data_opt::<Caller>().ok_or_else(|| error(Code::Unauthenticated, "missing bearer token"))
}

/// A client may only see its own customer's orders: another customer's
/// order is answered as if it did not exist (`NOT_FOUND`), so a client
/// cannot even learn that an order id is taken.
pub(crate) fn visible_to(caller: &Caller, customer_id: &str) -> bool {
    caller.customer().is_none_or(|customer| customer == customer_id)
}

/// The resolvers' shared state.
pub(crate) fn api<'a>(ctx: &Context<'a>) -> &'a Arc<Api> {
    ctx.data_unchecked::<Arc<Api>>()
}

#[cfg(test)]
mod tests {
    /// The README's limits are the code's (they had drifted: depth 15 and
    /// complexity 2,000 written, 20 and 5,000 enforced).
    #[test]
    fn the_readme_states_the_limits_the_code_enforces() {
        let readme = include_str!("../../../README.md").split_whitespace().collect::<Vec<_>>().join(" ");
        let limits = super::Limits::default();
        let thousands = |n: usize| {
            let digits = n.to_string();
            let mut out = String::new();
            for (i, c) in digits.chars().enumerate() {
                if i > 0 && (digits.len() - i).is_multiple_of(3) {
                    out.push(',');
                }
                out.push(c);
            }
            out
        };
        for stated in [
            format!("depth {}, complexity {}", limits.max_depth, thousands(limits.max_complexity)),
            format!("{} root fields", limits.max_root_fields),
            format!("{} KiB body, {} s", limits.max_body_bytes / 1024, limits.request_timeout.as_secs()),
            format!("within {} s, frames and messages up to {} KiB", limits.ws_init_timeout.as_secs(), limits.max_ws_message_bytes / 1024),
            format!(
                "{} connections per process and {} per token",
                thousands(limits.max_ws_connections),
                limits.max_ws_connections_per_token
            ),
            format!("{} subscriptions per connection", limits.max_subscriptions_per_connection),
            format!("{} not yet authenticated per client address", limits.max_ws_unauthenticated_per_address),
            format!("at most {} s", thousands(limits.max_subscription_lifetime.as_secs() as usize)),
            format!("ends with `NOT_FOUND` after {} s", limits.subscription_not_found_after.as_secs()),
            format!("headers within {} s", crate::http::ServerBounds::default().header_timeout.as_secs()),
            format!("body within {} s", crate::http::ServerBounds::default().body_timeout.as_secs()),
            format!("at most {} connections open", thousands(crate::http::ServerBounds::default().max_connections)),
        ] {
            assert!(readme.contains(&stated), "README.md does not say {stated:?}");
        }
    }

    /// `schemas/graphql/schema.graphql` is the contract clients generate
    /// code from: it must be what the server serves. Regenerate with
    /// `STRATA_UPDATE_SDL=1 cargo test -p strata-api sdl`.
    #[test]
    fn the_exported_sdl_matches_the_schema() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas/graphql/schema.graphql");
        let sdl = super::sdl();
        if std::env::var_os("STRATA_UPDATE_SDL").is_some() {
            std::fs::write(path, &sdl).unwrap();
        }
        let exported = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            exported == sdl,
            "schemas/graphql/schema.graphql is out of date: run `STRATA_UPDATE_SDL=1 cargo test -p strata-api sdl` and commit it"
        );
    }
}
