// Strata's GraphiQL page: the editor on /graphql with the caller's token.
// Open /graphql?token=<token printed by `strata serve`>, or set the
// Authorization header in the Headers tab.
const token = new URLSearchParams(window.location.search).get("token") || "PASTE-A-TOKEN";
const authorization = "Bearer " + token;
const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
const fetcher = GraphiQL.createFetcher({
  url: "/graphql",
  subscriptionUrl: scheme + "//" + window.location.host + "/graphql",
  wsConnectionParams: { Authorization: authorization },
});
const example = "# Place an order, then read it back at once with its consistency token.\n"
  + "mutation Place {\n  placeOrder(input: {customerId: \"c-1\", paymentMethod: \"card\",\n"
  + "    lines: [{sku: \"SKU-1\", quantity: 1, unitPriceCents: 1250}],\n"
  + "    shippingAddress: {name: \"Ada\", street: \"Rue de la Loi 16\", city: \"Brussels\", postalCode: \"1000\", country: \"BE\"}})\n"
  + "  { orderId consistencyToken }\n}\n";
ReactDOM.createRoot(document.getElementById("graphiql")).render(
  React.createElement(GraphiQL, {
    fetcher,
    defaultQuery: example,
    defaultHeaders: JSON.stringify({ Authorization: authorization }, null, 2),
    shouldPersistHeaders: true,
  }),
);
