//! `orderUpdated(id)`: the order's view each time it changes.
//!
//! The read models may live in another process (Redis): the stream looks at
//! the order's view when the read models say its document changed
//! ([`crate::changes`]; every `Limits::subscription_poll` while their change
//! feed is down) and sends it when it differs from the last one sent. The
//! first view is sent as soon
//! as the order exists (subscribing right after `placeOrder` is fine); the
//! stream ends after the view that settles the order ([`OrderView::is_settled`]:
//! shipped, undone, or completed and still confirmed — a confirmed order's
//! cancellation keeps the stream open until its undo ends), or when the
//! client goes away.

use async_graphql::{Context, Subscription as SubscriptionRoot, ID};
use futures_util::Stream;
use strata_projections::orders::{self, OrderView};
use strata_projections::sink::document_key;

use super::query::order_id;
use super::types::Order;
use super::{api, caller, error, internal, visible_to, Code, Needs};
use crate::auth::Permission;

/// The root of subscriptions.
#[derive(Debug, Default)]
pub struct Subscription;

#[SubscriptionRoot]
impl Subscription {
    /// The order each time its view changes, until it settles.
    #[graphql(guard = "Needs(Permission::Read)")]
    async fn order_updated(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<impl Stream<Item = Order>> {
        let order_id = order_id(&id)?;
        let api = api(ctx).clone();
        let caller = std::sync::Arc::new(caller(ctx)?.clone());
        // Another customer's order does not exist for a client.
        if let Some(view) = orders::order(&*api.read_model, order_id).await.map_err(internal)? {
            if !visible_to(&caller, &view.customer_id) {
                return Err(error(Code::NotFound, format!("order {order_id} not found")));
            }
        }
        let poll = api.limits.subscription_poll;
        let watch = std::sync::Arc::new(api.changes.watch("orders", document_key(&orders::order_key(order_id))));
        let state = (api, None::<OrderView>, false, 0);
        Ok(futures_util::stream::unfold(state, move |(api, last, done, mut seen)| {
            let (caller, watch) = (caller.clone(), watch.clone());
            async move {
                if done {
                    return None;
                }
                let mut first = last.is_none();
                loop {
                    if !first {
                        let _ = tokio::time::timeout(api.changes.pause(poll), watch.changed_since(seen)).await;
                    }
                    first = false;
                    // Noted before the look: a change after it ends the next wait.
                    seen = watch.seen();
                    let view = match api.changes.look(orders::order(&*api.read_model, order_id)).await {
                        Ok(view) => view,
                        Err(error) => {
                            tracing::warn!(%order_id, %error, "orderUpdated: reading the read model failed; ending the subscription");
                            return None;
                        }
                    };
                    if view.as_ref().is_some_and(|view| !visible_to(&caller, &view.customer_id)) {
                        return None;
                    }
                    if let Some(view) = view.filter(|view| last.as_ref() != Some(view)) {
                        let done = view.is_settled();
                        return Some((Order(view.clone()), (api, Some(view), done, seen)));
                    }
                }
            }
        }))
    }
}
