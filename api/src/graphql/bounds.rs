//! Bounds on the work one operation asks for, beyond async-graphql's depth
//! and complexity limits: at most [`Limits::max_root_fields`] root fields
//! (aliases and fragments included). Without it, one 48 KB request could ask
//! for 1,500 aliased `order(waitFor: …)` fields, each waiting and polling.
//!
//! And the budgets every request has, over HTTP and over a WebSocket alike
//! ([`Budgets`]): one `waitFor` deadline per request; over a socket, where
//! the HTTP layer does not see each operation, the token's rate for every
//! operation, [`Limits::request_timeout`] for queries and mutations, and
//! [`Limits::max_subscription_lifetime`] for subscriptions.

use std::collections::HashSet;
use std::sync::Arc;

use std::time::Duration;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery, NextPrepareRequest, NextSubscribe,
};
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{Pos, Request, Response, ServerError, ServerResult, Variables};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;

use super::query::WaitBudget;
use super::{error, Code};

#[cfg(doc)]
use super::Limits;

/// The extension: refuses an operation with more root fields than the limit.
pub(super) struct RootFields(pub(super) usize);

impl ExtensionFactory for RootFields {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(RootFieldsCheck(self.0))
    }
}

struct RootFieldsCheck(usize);

#[async_trait::async_trait]
impl Extension for RootFieldsCheck {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await?;
        for (_, operation) in document.operations.iter() {
            let fields = count(&document, &operation.node.selection_set.node, &mut HashSet::new());
            if fields > self.0 {
                return Err(ServerError::new(format!("the operation selects {fields} root fields; at most {} per request", self.0), None));
            }
        }
        Ok(document)
    }
}

/// Fields of a selection set, fragments expanded (each fragment once: a
/// cycle is refused by validation anyway).
fn count(document: &ExecutableDocument, set: &SelectionSet, seen: &mut HashSet<String>) -> usize {
    set.items
        .iter()
        .map(|item| match &item.node {
            Selection::Field(_) => 1,
            Selection::InlineFragment(fragment) => count(document, &fragment.node.selection_set.node, seen),
            Selection::FragmentSpread(spread) => {
                let name = spread.node.fragment_name.node.to_string();
                match document.fragments.get(spread.node.fragment_name.node.as_str()) {
                    Some(fragment) if seen.insert(name) => count(document, &fragment.node.selection_set.node, seen),
                    _ => 0,
                }
            }
        })
        .sum()
}

/// What a WebSocket connection's requests carry (its session data): the
/// token whose rate each operation takes from.
pub(crate) struct OverSocket {
    /// The token as presented (the rate's key, as on the POST path).
    pub(crate) token: String,
    /// The process's rates.
    pub(crate) rates: Arc<crate::rate::RateLimits>,
}

/// The extension: every request's budgets (see the module docs).
pub(super) struct Budgets {
    pub(super) request_timeout: Duration,
    pub(super) lifetime: Duration,
}

impl ExtensionFactory for Budgets {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(BudgetsOfOne { request_timeout: self.request_timeout, lifetime: self.lifetime })
    }
}

struct BudgetsOfOne {
    request_timeout: Duration,
    lifetime: Duration,
}

#[async_trait::async_trait]
impl Extension for BudgetsOfOne {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        mut request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        if let Some(socket) = ctx.data_opt::<OverSocket>() {
            socket.rates.check_token(&socket.token).map_err(|wait| {
                let seconds = crate::rate::retry_after_seconds(wait);
                error(Code::RateLimited, format!("too many requests from this token; retry in {seconds} s"))
                    .into_server_error(Pos::default())
            })?;
        }
        // Every waitFor of this request shares one deadline.
        request.data.insert(WaitBudget::default());
        next.run(ctx, request).await
    }

    async fn execute(&self, ctx: &ExtensionContext<'_>, operation_name: Option<&str>, next: NextExecute<'_>) -> Response {
        if ctx.data_opt::<OverSocket>().is_none() {
            // Over HTTP the handler bounds the whole request.
            return next.run(ctx, operation_name).await;
        }
        match tokio::time::timeout(self.request_timeout, next.run(ctx, operation_name)).await {
            Ok(response) => response,
            Err(_) => {
                let message =
                    format!("the request took longer than {:?}; a mutation may or may not have been applied", self.request_timeout);
                Response::from_errors(vec![error(Code::Timeout, message).into_server_error(Pos::default())])
            }
        }
    }

    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        let stream = next.run(ctx, stream);
        if ctx.data_opt::<OverSocket>().is_none() {
            return stream;
        }
        stream.take_until(tokio::time::sleep(self.lifetime)).boxed()
    }
}
