//! The [`Projection`] seam: how events become read-model writes.
//!
//! A projection is pure: given an event and the one document it declares it
//! reads, it returns [`Write`]s. It never does IO, so the runner can retry,
//! batch, replay and rebuild it freely. Everything that makes the result
//! effectively-once (per-stream version guards, the checkpoint committed with
//! the writes, dead letters) lives in the runner and the sink, not here.
//!
//! # The document model
//!
//! A read model is a set of *documents* (a key and named fields holding JSON)
//! and *indexes* (sorted sets of document keys by an integer score, for cursor
//! pagination). Several streams may feed one document as long as each writes
//! its own fields: the order stream owns an order view's `order` field, the
//! payment stream its `payment` field. Field-level writes are what let
//! replicas apply different streams concurrently without losing updates.

use std::collections::BTreeMap;

use serde_json::Value;
use strata_store::{RecordedEvent, StreamId};

/// A document: field name → JSON value.
pub type Document = BTreeMap<String, Value>;

/// One change to a read model. Keys are relative to the projection's
/// generation; the sink adds the namespace.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Sets one field of a document (creating the document).
    SetField {
        /// Document key.
        key: String,
        /// Field name.
        field: String,
        /// New value.
        value: Value,
    },
    /// Sets an integer field only if `value` is greater than the stored one
    /// (last-update times fed by several streams).
    SetMax {
        /// Document key.
        key: String,
        /// Field name.
        field: String,
        /// Candidate value.
        value: i64,
    },
    /// Removes a document and all its fields.
    DeleteDocument {
        /// Document key.
        key: String,
    },
    /// Adds (or re-scores) a document key in an index.
    IndexAdd {
        /// Index name.
        index: String,
        /// Sort score; a page after cursor `s` returns scores `> s`.
        score: i64,
        /// The document key.
        member: String,
    },
    /// Removes a document key from an index.
    IndexRemove {
        /// Index name.
        index: String,
        /// The document key.
        member: String,
    },
}

/// What to do with an event that keeps failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PoisonPolicy {
    /// Park it with the later events of its stream as dead letters; every
    /// other stream goes on.
    #[default]
    Park,
    /// Stop the projection (nothing acked past the event) until an operator
    /// acts.
    Stop,
}

/// Why a projection could not apply an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct ApplyError {
    /// Human-readable cause, shown in `projections status`.
    pub reason: String,
}

impl ApplyError {
    /// An error with this reason.
    pub fn new(reason: impl Into<String>) -> Self {
        Self { reason: reason.into() }
    }
}

/// A read model fed by events.
///
/// # Contract
/// - `apply` is deterministic and does no IO: the same event and document
///   give the same writes (it is retried, replayed and rebuilt).
/// - `apply` receives events of one stream in stream order, each exactly
///   once per generation (the runner guarantees it); events of different
///   streams may be interleaved in any order.
/// - An event type not in `event_types` is never passed to `apply`.
pub trait Projection: Send + Sync + 'static {
    /// Stable name: letters, digits, `-`, `_` (also the consumer group).
    fn name(&self) -> &str;

    /// Version of the projection's code. Changing what `apply` writes means a
    /// new version, and a rebuild.
    fn version(&self) -> u32;

    /// The stream categories this projection follows. Every event of these
    /// categories moves the stream's applied version (handled or not), so the
    /// runner can tell a duplicate from a gap; events of other categories are
    /// ignored.
    fn categories(&self) -> &[&'static str];

    /// The event types this projection handles (all in `categories`).
    fn event_types(&self) -> &[&'static str];

    /// What happens to an event `apply` keeps refusing.
    fn poison_policy(&self) -> PoisonPolicy {
        PoisonPolicy::Park
    }

    /// The other streams that feed the same documents as `event`'s stream
    /// (for an order's view: its saga's stream, and the other way round).
    /// The runner applies a group's events in global position order, so a
    /// document never shows a combination of its streams that no prefix of
    /// the log produces (see the planner). Every stream of a group must name
    /// every other one. Default: none (each document is fed by one stream,
    /// or its streams write fields that need no common order).
    fn related_streams(&self, event: &RecordedEvent) -> Vec<StreamId> {
        let _ = event;
        Vec::new()
    }

    /// The one document `apply` needs to read for `event`, if any. The runner
    /// loads it, with the writes of earlier events of the batch applied.
    fn document_key(&self, event: &RecordedEvent) -> Option<String>;

    /// The writes that `event` causes, given the current `document` (the one
    /// named by `document_key`, `None` if it does not exist).
    fn apply(&self, event: &RecordedEvent, document: Option<&Document>) -> Result<Vec<Write>, ApplyError>;
}

/// Applies `writes` to an in-memory copy of documents (the runner's view of
/// the batch so far, and the memory sink). Index writes are ignored here.
pub(crate) fn apply_to_document(document: &mut Option<Document>, key: &str, write: &Write) {
    match write {
        Write::SetField { key: k, field, value } if k == key => {
            document.get_or_insert_with(Document::new).insert(field.clone(), value.clone());
        }
        Write::SetMax { key: k, field, value } if k == key => {
            let doc = document.get_or_insert_with(Document::new);
            let current = doc.get(field).and_then(Value::as_i64);
            if current.is_none_or(|current| *value > current) {
                doc.insert(field.clone(), Value::from(*value));
            }
        }
        Write::DeleteDocument { key: k } if k == key => *document = None,
        _ => {}
    }
}
