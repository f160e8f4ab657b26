//! `strata sagas …`: the operators' view of parked fulfilment sagas.
//!
//! `stuck` lists every saga parked because an undo (or a step after the
//! confirmation) kept failing; `resume ORDER_ID` tries its parked part again
//! (the running saga role picks it up at its next recovery sweep, within
//! seconds). The GraphQL `stuckSagas` query and `resumeSaga` mutation do the
//! same.

use anyhow::Context;
use chrono::Utc;
use strata_sagas::fulfilment::{Fulfilment, CATEGORY};
use strata_sagas::StuckSaga;
use strata_store::{CheckpointStore, EventReader, EventStore};
use uuid::Uuid;

/// The parked sagas, oldest first.
pub async fn stuck(log: &dyn EventReader, checkpoints: &dyn CheckpointStore) -> anyhow::Result<Vec<StuckSaga>> {
    strata_sagas::list_stuck(log, checkpoints, CATEGORY).await.context("scanning the fulfilment sagas")
}

/// Prints the parked sagas, one line each (or JSON).
pub async fn print_stuck(log: &dyn EventReader, checkpoints: &dyn CheckpointStore, as_json: bool) -> anyhow::Result<()> {
    let stuck = stuck(log, checkpoints).await?;
    if as_json {
        println!("{}", serde_json::to_string(&stuck)?);
        return Ok(());
    }
    if stuck.is_empty() {
        println!("no saga is stuck");
        return Ok(());
    }
    println!("{:<36} {:<17} {:<12} {:>8} {:<25} REASON", "ORDER", "STEP", "PHASE", "ATTEMPTS", "SINCE");
    for saga in stuck {
        println!(
            "{:<36} {:<17} {:<12} {:>8} {:<25} {}",
            saga.saga_id,
            saga.step,
            format!("{:?}", saga.phase).to_uppercase(),
            saga.attempts,
            saga.since.to_rfc3339(),
            saga.reason
        );
    }
    Ok(())
}

/// Resumes a parked saga; `false` if it is not parked.
pub async fn resume(store: &dyn EventStore, order_id: Uuid, actor: &str) -> anyhow::Result<bool> {
    strata_sagas::resume::<Fulfilment>(store, order_id, actor, Utc::now()).await.context("resuming the saga")
}
