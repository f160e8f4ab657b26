//! One MongoDB transaction as the sink runs it: its first write (the claim),
//! its options (snapshot reads, majority commits with time limits) and the
//! session under the drivers' retry rules ([`retry`](super::retry)).

use async_trait::async_trait;
use mongodb::bson::{doc, Document as BsonDocument};
use mongodb::error::{Error as MongoError, ErrorKind};
use mongodb::options::{Acknowledgment, ReadConcern, TransactionOptions, WriteConcern};
use mongodb::{Client, ClientSession, Collection};

use super::{retry, COMMIT_TIMEOUT};

/// A transaction's first operation: a write to the document it is about
/// (`tries` counts them), so that concurrent transactions on it conflict at
/// once rather than at their end, and so that servers that begin a
/// transaction only with its first write (nx-27017 ignores `startTransaction`
/// on a find) really begin it before the reads.
pub(super) async fn claim(
    collection: &Collection<BsonDocument>,
    id: &str,
    create: bool,
    session: &mut ClientSession,
) -> Result<(), MongoError> {
    collection.update_one(doc! { "_id": id }, doc! { "$inc": { "tries": 1_i64 } }).upsert(create).session(session).await?;
    Ok(())
}

/// Every transaction reads a snapshot and commits to a majority of the
/// replica set: a commit acknowledged by one member alone could be rolled
/// back at a failover while the batch's events are acked on the bus (lost
/// for good). The commit waits at most [`COMMIT_TIMEOUT`] for the majority
/// (an unknown result, committed again) and runs at most as long.
pub(super) fn transaction_options() -> TransactionOptions {
    TransactionOptions::builder()
        .read_concern(ReadConcern::snapshot())
        .write_concern(WriteConcern::builder().w(Acknowledgment::Majority).w_timeout(COMMIT_TIMEOUT).build())
        .max_commit_time(COMMIT_TIMEOUT)
        .build()
}

/// A transaction on a session of its own, for [`retry::run`].
pub(super) struct MongoTransaction<'a, F> {
    pub(super) client: &'a Client,
    pub(super) session: Option<ClientSession>,
    pub(super) work: &'a mut F,
}

#[async_trait]
impl<T, F> retry::Transaction for MongoTransaction<'_, F>
where
    T: Send,
    F: for<'s> FnMut(&'s mut ClientSession) -> futures_util::future::BoxFuture<'s, Result<T, MongoError>> + Send,
{
    type Value = T;
    type Error = MongoError;

    async fn begin(&mut self) -> Result<(), MongoError> {
        let session = self.session.insert(self.client.start_session().await?);
        session.start_transaction().with_options(transaction_options()).await
    }

    async fn work(&mut self) -> Result<T, MongoError> {
        match self.session.as_mut() {
            Some(session) => (self.work)(session).await,
            None => Err(MongoError::custom("no session")),
        }
    }

    async fn commit(&mut self) -> Result<(), MongoError> {
        match self.session.as_mut() {
            Some(session) => session.commit_transaction().await,
            None => Err(MongoError::custom("no session")),
        }
    }

    async fn abort(&mut self) {
        if let Some(mut session) = self.session.take() {
            let _ = session.abort_transaction().await;
        }
    }
}

impl retry::Classify for MongoError {
    fn has_label(&self, label: &str) -> bool {
        self.contains_label(label)
    }

    fn code(&self) -> Option<i32> {
        match &*self.kind {
            ErrorKind::Command(command) => Some(command.code),
            ErrorKind::Write(mongodb::error::WriteFailure::WriteConcernError(concern)) => Some(concern.code),
            _ => None,
        }
    }
}
