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
//! client goes away. An order the caller cannot see (none yet, or another
//! customer's) is waited for `Limits::subscription_not_found_after`, then
//! the stream ends with `NOT_FOUND`: the same answer, after the same time,
//! whether or not the order exists.

use std::time::Instant;

use async_graphql::{Context, Subscription as SubscriptionRoot, ID};
use futures_util::Stream;
use strata_projections::orders::{self, OrderView};
use strata_projections::sink::document_key;

use super::query::order_id;
use super::types::Order;
use super::{api, caller, error, visible_to, Code, Needs};
use crate::auth::Permission;

/// The root of subscriptions.
#[derive(Debug, Default)]
pub struct Subscription;

#[SubscriptionRoot]
impl Subscription {
    /// The order each time its view changes, until it settles.
    #[graphql(guard = "Needs(Permission::Read)")]
    async fn order_updated(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<Order>>> {
        let order_id = order_id(&id)?;
        let api = api(ctx).clone();
        let caller = std::sync::Arc::new(caller(ctx)?.clone());
        let poll = api.limits.subscription_poll;
        // Until then an order the caller cannot see may still appear (its
        // view is being built); after it, it is not found.
        let give_up = Instant::now() + api.limits.subscription_not_found_after;
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
                        let mut pause = api.changes.pause(poll);
                        if last.is_none() {
                            pause = pause.min(give_up.saturating_duration_since(Instant::now()));
                        }
                        let _ = tokio::time::timeout(pause, watch.changed_since(seen)).await;
                    }
                    first = false;
                    // Noted before the look: a change after it ends the next wait.
                    seen = watch.seen();
                    let view = match api.changes.look(orders::order(&*api.read_model, order_id)).await {
                        Ok(view) => view,
                        Err(error) => {
                            tracing::warn!(%order_id, error = %strata_store::chain(&error), "orderUpdated: reading the read model failed; ending the subscription");
                            return None;
                        }
                    };
                    // Another customer's order does not exist for a client.
                    let view = view.filter(|view| visible_to(&caller, &view.customer_id));
                    if view.is_none() && last.is_none() && Instant::now() >= give_up {
                        let not_found = Err(error(Code::NotFound, format!("order {order_id} not found")));
                        return Some((not_found, (api, None, true, seen)));
                    }
                    if let Some(view) = view.filter(|view| last.as_ref() != Some(view)) {
                        let done = view.is_settled();
                        return Some((Ok(Order(view.clone())), (api, Some(view), done, seen)));
                    }
                }
            }
        }))
    }
}
