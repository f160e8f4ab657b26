//! Bounds on the work one operation asks for, beyond async-graphql's depth
//! and complexity limits: at most [`Limits::max_root_fields`] root fields
//! (aliases and fragments included). Without it, one 48 KB request could ask
//! for 1,500 aliased `order(waitFor: …)` fields, each waiting and polling.

use std::collections::HashSet;
use std::sync::Arc;

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery};
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{ServerError, ServerResult, Variables};

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
