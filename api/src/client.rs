//! A small GraphQL-over-HTTP client: what `strata demo` and `strata bench
//! e2e --url` drive a running server with, exactly as any client would.

use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use strata_commands::inventory::InventoryCommand;
use strata_commands::orders::PlaceOrder;

/// A server's `/graphql` with a bearer token.
#[derive(Clone)]
pub struct GraphQlClient {
    http: reqwest::Client,
    url: String,
    token: String,
}

/// An error the server answered, with its `extensions.code`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Refused {
    /// `extensions.code`.
    pub code: String,
    /// The message.
    pub message: String,
}

impl GraphQlClient {
    /// A client of the server at `base` (`http://host:port`).
    pub fn new(base: &str, token: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build()
            .context("building the HTTP client")?;
        Ok(Self { http, url: format!("{}/graphql", base.trim_end_matches('/')), token: token.to_owned() })
    }

    /// Runs one operation; its `data`, or the first error as [`Refused`].
    pub async fn execute(&self, query: &str, variables: Value) -> anyhow::Result<Value> {
        let response = self
            .http
            .post(&self.url)
            .bearer_auth(&self.token)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .with_context(|| format!("sending a request to {}", self.url))?;
        let status = response.status();
        let body: Value = response.json().await.with_context(|| format!("reading the answer of {} (HTTP {status})", self.url))?;
        if let Some(error) = body.get("errors").and_then(Value::as_array).and_then(|errors| errors.first()) {
            let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
            return Err(Refused { code: text(error.pointer("/extensions/code")), message: text(error.get("message")) }.into());
        }
        match body.get("data") {
            Some(data) if !data.is_null() => Ok(data.clone()),
            _ => bail!("{} answered HTTP {status} without data: {body}", self.url),
        }
    }

    /// The customer a client token acts for (`None` for auditors and
    /// operators), from the server's `me`.
    pub async fn customer(&self) -> anyhow::Result<Option<String>> {
        let me = self.execute("{ me { role subject } }", json!({})).await?;
        let role = me.pointer("/me/role").and_then(Value::as_str).unwrap_or_default();
        Ok((role == "CLIENT").then(|| me.pointer("/me/subject").and_then(Value::as_str).unwrap_or_default().to_owned()))
    }

    /// `restock` of an inventory command of the scenario, once per key; its
    /// consistency token (for `waitFor`).
    pub async fn restock(&self, command: &InventoryCommand, idempotency_key: Option<&str>) -> anyhow::Result<String> {
        let InventoryCommand::Restock { sku, quantity, unit_price_cents, .. } = command else {
            bail!("only restocks go through restock");
        };
        let data = self
            .execute(
                "mutation($sku: String!, $quantity: Int!, $price: Int, $key: String) { restock(sku: $sku, quantity: $quantity, unitPriceCents: $price, idempotencyKey: $key) { consistencyToken } }",
                json!({ "sku": sku.as_str(), "quantity": quantity, "price": unit_price_cents, "key": idempotency_key }),
            )
            .await?;
        data["restock"]["consistencyToken"].as_str().map(str::to_owned).context("the restock answered no consistencyToken")
    }

    /// `placeOrder` with `idempotency_key`; the order id and its consistency token.
    pub async fn place_order(&self, order: &PlaceOrder, idempotency_key: &str) -> anyhow::Result<(String, String)> {
        let address = &order.shipping_address;
        let input = json!({
            "customerId": order.customer_id,
            "paymentMethod": order.payment_method,
            "idempotencyKey": idempotency_key,
            "lines": order.lines.iter().map(|line| json!({
                "sku": line.sku, "quantity": line.quantity, "unitPriceCents": line.unit_price_cents,
            })).collect::<Vec<_>>(),
            "shippingAddress": {
                "name": address.name, "street": address.street, "city": address.city,
                "postalCode": address.postal_code, "country": address.country,
            },
        });
        let data = self
            .execute(
                "mutation($input: PlaceOrderInput!) { placeOrder(input: $input) { orderId consistencyToken } }",
                json!({ "input": input }),
            )
            .await?;
        let text = |pointer: &str| data.pointer(pointer).and_then(Value::as_str).unwrap_or_default().to_owned();
        Ok((text("/placeOrder/orderId"), text("/placeOrder/consistencyToken")))
    }
}
