//! A batch's writes as MongoDB statements: folded per document (the last
//! value of each field, the greatest of each `SetMax`), sent as unordered
//! `update` commands of at most 8 MiB, then the tombstones deleted.

use std::collections::{BTreeMap, HashMap, HashSet};

use mongodb::bson::{doc, Bson, Document as BsonDocument};
use mongodb::error::Error as MongoError;
use mongodb::{ClientSession, Database};
use serde_json::Value;

use super::codec::{document_id, entry_id, escape, to_bson};
use super::COMMAND_BYTES;
use crate::projection::Write;
use crate::sink::DeadLetter;

/// What a batch does to one document, its writes folded.
#[derive(Default)]
pub(super) struct Folded {
    /// A delete came first: the stored fields go.
    pub(super) replace: bool,
    pub(super) set: BTreeMap<String, Value>,
    pub(super) max: BTreeMap<String, i64>,
}

impl Folded {
    pub(super) fn apply(&mut self, write: &Write) {
        match write {
            Write::SetField { field, value, .. } => {
                self.max.remove(field);
                self.set.insert(field.clone(), value.clone());
            }
            Write::SetMax { field, value, .. } => match self.set.get(field) {
                // Set earlier in this batch: decide here, as the memory sink does.
                Some(current) => {
                    if current.as_i64().is_none_or(|current| *value > current) {
                        self.set.insert(field.clone(), Value::from(*value));
                    }
                }
                None if self.replace => {
                    self.set.insert(field.clone(), Value::from(*value));
                }
                None => {
                    let max = self.max.entry(field.clone()).or_insert(*value);
                    *max = (*max).max(*value);
                }
            },
            Write::DeleteDocument { .. } => {
                *self = Folded { replace: true, ..Folded::default() };
            }
            Write::IndexAdd { .. } | Write::IndexRemove { .. } => {}
        }
    }
}

/// The writes of one commit as `update` statements. A removal is an update
/// too (`$unset` of the document's fields, or of the entry's index fields),
/// so a whole batch is one command.
#[derive(Default)]
pub(super) struct Statements {
    pub(super) updates: Vec<BsonDocument>,
    /// Documents and entries removed: deleted after the updates, in the
    /// same transaction, if still without fields (see [`delete_tombstones`]).
    pub(super) gone: Vec<String>,
}

impl Statements {
    fn upsert(&mut self, id: String, update: impl Into<Bson>) {
        self.updates.push(doc! { "q": { "_id": id }, "u": update.into(), "upsert": true });
    }

    /// Folds `writes`; `existing` holds the documents with a `SetMax` that
    /// exist already (a `$max` is sent only to those: nx-27017 mis-applies
    /// `$max` on a dotted path when an upsert inserts).
    pub(super) fn fold(&mut self, writes: &[Write], existing: &HashSet<String>) {
        let mut documents: Vec<(&str, Folded)> = Vec::new();
        let mut positions: HashMap<&str, usize> = HashMap::new();
        let mut entries: Vec<((&str, &str), Option<i64>)> = Vec::new();
        let mut entry_positions: HashMap<(&str, &str), usize> = HashMap::new();
        for write in writes {
            match write {
                Write::SetField { key, .. } | Write::SetMax { key, .. } | Write::DeleteDocument { key } => {
                    let at = *positions.entry(key).or_insert_with(|| {
                        documents.push((key, Folded::default()));
                        documents.len() - 1
                    });
                    documents[at].1.apply(write);
                }
                Write::IndexAdd { index, score, member } => {
                    let at = *entry_positions.entry((index, member)).or_insert_with(|| {
                        entries.push(((index, member), None));
                        entries.len() - 1
                    });
                    entries[at].1 = Some(*score);
                }
                Write::IndexRemove { index, member } => {
                    let at = *entry_positions.entry((index, member)).or_insert_with(|| {
                        entries.push(((index, member), None));
                        entries.len() - 1
                    });
                    entries[at].1 = None;
                }
            }
        }
        for (key, folded) in documents {
            let id = document_id(key);
            if folded.replace {
                if folded.set.is_empty() && folded.max.is_empty() {
                    // Gone: a document without fields is no document.
                    self.updates.push(doc! { "q": { "_id": &id }, "u": { "$unset": { "f": "" } } });
                    self.gone.push(id);
                } else {
                    let fields: BsonDocument = folded
                        .set
                        .iter()
                        .map(|(field, value)| (escape(field), to_bson(value)))
                        .chain(folded.max.iter().map(|(field, value)| (escape(field), Bson::Int64(*value))))
                        .collect();
                    self.upsert(id.clone(), doc! { "_id": id, "f": fields });
                }
                continue;
            }
            let mut set: BsonDocument = folded.set.iter().map(|(field, value)| (format!("f.{}", escape(field)), to_bson(value))).collect();
            let mut update = BsonDocument::new();
            if !folded.max.is_empty() && existing.contains(&id) {
                let max: BsonDocument =
                    folded.max.iter().map(|(field, value)| (format!("f.{}", escape(field)), Bson::Int64(*value))).collect();
                update.insert("$max", max);
            } else {
                // A new document: its greatest value is the value.
                set.extend(folded.max.iter().map(|(field, value)| (format!("f.{}", escape(field)), Bson::Int64(*value))));
            }
            if !set.is_empty() {
                update.insert("$set", set);
            }
            self.upsert(id, update);
        }
        for ((index, member), score) in entries {
            let id = entry_id(index, member);
            match score {
                Some(score) => self.upsert(id, doc! { "$set": { "ix": index, "m": member, "s": score } }),
                // Out of the index: an entry without `ix` is in none.
                None => {
                    self.updates.push(doc! { "q": { "_id": &id }, "u": { "$unset": { "ix": "", "m": "", "s": "" } } });
                    self.gone.push(id);
                }
            }
        }
    }
}

/// Sends `updates` as unordered `update` commands of at most
/// [`COMMAND_BYTES`] each; any write error fails the whole.
pub(super) async fn run_updates(
    database: &Database,
    collection: &str,
    updates: Vec<BsonDocument>,
    session: &mut ClientSession,
) -> Result<(), MongoError> {
    let mut chunk: Vec<Bson> = Vec::new();
    let mut bytes = 0;
    let mut pending = updates.into_iter().peekable();
    while let Some(update) = pending.next() {
        let mut raw = Vec::new();
        bytes += update.to_writer(&mut raw).map_or(0, |()| raw.len());
        chunk.push(Bson::Document(update));
        if bytes >= COMMAND_BYTES || chunk.len() >= 50_000 || pending.peek().is_none() {
            let command = doc! { "update": collection, "updates": std::mem::take(&mut chunk), "ordered": false };
            check_write_reply(database.run_command(command).session(&mut *session).await?)?;
            bytes = 0;
        }
    }
    Ok(())
}

/// Deletes the records in `ids` that the updates just before left without
/// fields (a removed document or index entry). The updates alone are a
/// whole, readable state, since a record without `f` is no document and one
/// without `ix` is in no index: on a server whose transactions are not
/// atomic (see "Servers without isolation") a process killed between the
/// two leaves tombstones, never a half batch, and the next commit that
/// removes them again deletes them.
pub(super) async fn delete_tombstones(
    database: &Database,
    collection: &str,
    ids: Vec<String>,
    session: &mut ClientSession,
) -> Result<(), MongoError> {
    for chunk in ids.chunks(10_000) {
        let filter = doc! { "_id": { "$in": chunk }, "f": { "$exists": false }, "ix": { "$exists": false } };
        let command = doc! { "delete": collection, "deletes": [ { "q": filter, "limit": 0 } ], "ordered": true };
        check_write_reply(database.run_command(command).session(&mut *session).await?)?;
    }
    Ok(())
}

/// A dead letter as stored: its JSON fields.
pub(super) fn dead_letter_document(letter: &DeadLetter) -> Bson {
    to_bson(&serde_json::to_value(letter).unwrap_or_default())
}

/// `update` answers `ok: 1` with `writeErrors` when statements fail.
pub(super) fn check_write_reply(reply: BsonDocument) -> Result<(), MongoError> {
    match reply.get_array("writeErrors") {
        Ok(errors) if !errors.is_empty() => {
            let first = errors[0].as_document().cloned().unwrap_or_default();
            let message = format!("{} write error(s), first: {}", errors.len(), first);
            Err(MongoError::custom(message))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_batch_folds_to_one_statement_per_document_and_entry() {
        let writes = vec![
            Write::SetField { key: "a".into(), field: "n".into(), value: json!(1) },
            Write::SetMax { key: "a".into(), field: "at".into(), value: 5 },
            Write::SetMax { key: "a".into(), field: "at".into(), value: 3 },
            Write::SetField { key: "a".into(), field: "n".into(), value: json!(2) },
            Write::DeleteDocument { key: "b".into() },
            Write::SetMax { key: "b".into(), field: "at".into(), value: 1 },
            Write::DeleteDocument { key: "c".into() },
            Write::IndexAdd { index: "i".into(), score: 1, member: "a".into() },
            Write::IndexRemove { index: "i".into(), member: "a".into() },
            Write::IndexAdd { index: "i".into(), score: 2, member: "b".into() },
            Write::IndexAdd { index: "i".into(), score: 3, member: "b".into() },
        ];
        let mut statements = Statements::default();
        statements.fold(&writes, &HashSet::from(["d:a".to_owned()]));
        assert_eq!(
            statements.updates,
            vec![
                doc! { "q": { "_id": "d:a" }, "u": { "$max": { "f.at": 5_i64 }, "$set": { "f.n": 2_i64 } }, "upsert": true },
                doc! { "q": { "_id": "d:b" }, "u": { "_id": "d:b", "f": { "at": 1_i64 } }, "upsert": true },
                doc! { "q": { "_id": "d:c" }, "u": { "$unset": { "f": "" } } },
                doc! { "q": { "_id": "i:1:i:a" }, "u": { "$unset": { "ix": "", "m": "", "s": "" } } },
                doc! { "q": { "_id": "i:1:i:b" }, "u": { "$set": { "ix": "i", "m": "b", "s": 3_i64 } }, "upsert": true },
            ]
        );
        // What the removals leave is deleted in the same transaction.
        assert_eq!(statements.gone, vec!["d:c".to_owned(), "i:1:i:a".to_owned()]);
    }
}
