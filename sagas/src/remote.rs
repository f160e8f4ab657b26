//! Commands over the bus, for when the saga and the services run in
//! different processes (`STRATA_ROLES=saga` here, `services` there).
//!
//! - [`RemoteServices`] is the saga's [`Services`]: it sends each command as
//!   a request to the service and turns the answer back into an [`Outcome`].
//!   No answer within the timeout is [`Outcome::NoAnswer`] (the command may
//!   or may not have been applied: the saga sends it again under the same
//!   id, and its deadline decides); a bus failure is `Transient`.
//! - [`serve`] runs in the services' process: it takes the requests (shared
//!   by every replica), applies each through the in-process services and
//!   answers — except `NoAnswer`, which is not answered, exactly as a service
//!   that does not reply. A request whose saga stopped waiting (its
//!   deadline passed while it was queued) is skipped: under overload,
//!   working on it would only delay the copy sent again behind it. For the
//!   same reason a command still unfinished at its deadline (typically
//!   queued behind others on the same stream) is abandoned, exactly as if
//!   the service had crashed there: the saga has sent it again under the
//!   same id, and that copy decides.
//!
//! Wire format: JSON `{"commandId", "correlationId", "command", "traceparent"?}`
//! (the W3C trace context of the saga step, when traced); the answer is the
//! outcome as JSON.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use strata_store::bus::{IncomingRequest, Requester, Responder};
use tokio::sync::{watch, Semaphore};
use tracing::Instrument;
use uuid::Uuid;

use crate::saga::{Outcome, Services};
use crate::SagaError;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireCommand<C> {
    command_id: Uuid,
    correlation_id: Uuid,
    command: C,
    /// The saga step's trace context: the service's span is its child.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    traceparent: Option<String>,
}

/// The services of another process, reached through the bus.
pub struct RemoteServices<C> {
    requester: Arc<dyn Requester>,
    service: String,
    timeout: Duration,
    commands: PhantomData<fn(C)>,
}

impl<C> RemoteServices<C> {
    /// Sends commands as requests to `service`, waiting up to `timeout` for each.
    pub fn new(requester: Arc<dyn Requester>, service: impl Into<String>, timeout: Duration) -> Self {
        Self { requester, service: service.into(), timeout, commands: PhantomData }
    }
}

#[async_trait]
impl<C: Serialize + Send + Sync + 'static> Services<C> for RemoteServices<C> {
    async fn execute(&self, command_id: Uuid, correlation_id: Uuid, command: &C) -> Outcome {
        let wire = WireCommand { command_id, correlation_id, command, traceparent: strata_store::trace::current() };
        let payload = match serde_json::to_vec(&wire) {
            Ok(payload) => payload,
            Err(error) => return Outcome::Refused(format!("the command does not serialize: {error}")),
        };
        match self.requester.request(&self.service, payload, self.timeout).await {
            Ok(Some(answer)) => serde_json::from_slice(&answer)
                .unwrap_or_else(|error| Outcome::Transient(format!("unreadable answer from {}: {error}", self.service))),
            Ok(None) => Outcome::NoAnswer,
            Err(error) => Outcome::Transient(strata_store::chain(&error)),
        }
    }
}

/// How long after its requester's deadline a command is still worked on:
/// none. Past it, the requester has sent the command again, and finishing
/// a copy nobody waits for only holds the stream's turn (commands on one
/// stream take turns in a process) from the copies behind it. Seen on a
/// hot stock item after services were killed while sagas retried: the
/// turn's queue held stale copies, every answer came after its deadline,
/// each "no answer" added a copy, and sagas parked. The cost: a command
/// whose own work takes longer than the requester's timeout never lands
/// through requests (the saga's deadline then compensates or parks it).
const WORK_PAST_DEADLINE: Duration = Duration::ZERO;

/// Serves the requests of `service` with `services`, `concurrency` at a
/// time, until `stop`; requests in flight are finished before it returns.
pub async fn serve<C: DeserializeOwned + Send + Sync + 'static>(
    responder: Arc<dyn Responder>,
    service: &str,
    services: Arc<dyn Services<C>>,
    concurrency: usize,
    mut stop: watch::Receiver<bool>,
) -> Result<(), SagaError> {
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut requests = responder.serve(service).await.map_err(SagaError::Bus)?;
    let stopped = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            () = &mut stopped => break,
            request = requests.next() => match request {
                Some(request) => {
                    let permit = permits.clone().acquire_owned().await.expect("never closed");
                    if request.expired() {
                        // Its saga stopped waiting and sent it again: working
                        // on it now only delays the copy queued behind it.
                        tracing::debug!(service, "skipping a request whose requester stopped waiting");
                        continue;
                    }
                    let services = services.clone();
                    tokio::spawn(async move {
                        answer(request, &*services, WORK_PAST_DEADLINE).await;
                        drop(permit);
                    });
                }
                None => {
                    tracing::warn!(service, "the request subscription ended; serving again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    requests = responder.serve(service).await.map_err(SagaError::Bus)?;
                }
            },
        }
    }
    let _all = permits.acquire_many(concurrency.max(1) as u32).await;
    Ok(())
}

/// Applies one request and answers it, unless it is still unfinished
/// `past_deadline` after its requester's deadline (then it is dropped where
/// it stands, as a crash there would: the command is safe to apply again,
/// under the same id).
async fn answer<C: DeserializeOwned>(request: IncomingRequest, services: &dyn Services<C>, past_deadline: Duration) {
    let outcome = match serde_json::from_slice::<WireCommand<C>>(&request.payload) {
        Ok(wire) => {
            let span = tracing::info_span!("service.command", command_id = %wire.command_id, correlation_id = %wire.correlation_id);
            strata_store::trace::follow(&span, wire.traceparent.as_deref());
            let work = services.execute(wire.command_id, wire.correlation_id, &wire.command).instrument(span);
            let Some(deadline) = request.deadline else { return respond(request, work.await).await };
            let left = deadline.duration_since(std::time::SystemTime::now()).unwrap_or_default() + past_deadline;
            match tokio::time::timeout(left, work).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    tracing::debug!(command_id = %wire.command_id, "abandoning a command whose requester stopped waiting long ago");
                    return;
                }
            }
        }
        Err(error) => Outcome::Refused(format!("malformed command request: {error}")),
    };
    respond(request, outcome).await;
}

async fn respond(request: IncomingRequest, outcome: Outcome) {
    if outcome == Outcome::NoAnswer {
        return;
    }
    let answer = serde_json::to_vec(&outcome).expect("an outcome serializes");
    if let Err(error) = request.reply(answer).await {
        tracing::warn!(error = %strata_store::chain(&error), "answering a command failed (the saga will send it again)");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::SystemTime;

    use futures_util::stream::BoxStream;
    use strata_store::bus::BusError;

    use super::*;

    /// Hands out the given requests once, then nothing.
    struct Queued(Mutex<Vec<IncomingRequest>>);

    #[async_trait]
    impl Responder for Queued {
        async fn serve(&self, _service: &str) -> Result<BoxStream<'static, IncomingRequest>, BusError> {
            let requests = std::mem::take(&mut *self.0.lock().unwrap());
            Ok(futures_util::stream::iter(requests).chain(futures_util::stream::pending()).boxed())
        }
    }

    /// Records the commands it executes.
    #[derive(Default)]
    struct Recording(Mutex<Vec<String>>);

    #[async_trait]
    impl Services<String> for Recording {
        async fn execute(&self, _command_id: Uuid, _correlation_id: Uuid, command: &String) -> Outcome {
            self.0.lock().unwrap().push(command.clone());
            Outcome::Done
        }
    }

    fn request(command: &str, deadline: SystemTime) -> IncomingRequest {
        let wire = WireCommand { command_id: Uuid::new_v4(), correlation_id: Uuid::new_v4(), command, traceparent: None };
        IncomingRequest::without_reply(serde_json::to_vec(&wire).unwrap(), Some(deadline))
    }

    /// Under overload the queue holds requests whose saga already sent them
    /// again; working on those would only delay the copies behind them.
    #[tokio::test]
    async fn a_request_whose_saga_stopped_waiting_is_skipped() {
        let now = SystemTime::now();
        let queued =
            Queued(Mutex::new(vec![request("stale", now - Duration::from_secs(1)), request("awaited", now + Duration::from_secs(600))]));
        let services = Arc::new(Recording::default());
        let (stop, stopped) = watch::channel(false);
        let served = tokio::spawn({
            let services = services.clone();
            async move { serve::<String>(Arc::new(queued), "stock", services, 1, stopped).await }
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while services.0.lock().unwrap().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "the awaited request was not served");
            tokio::task::yield_now().await;
        }
        stop.send(true).unwrap();
        served.await.unwrap().unwrap();
        assert_eq!(*services.0.lock().unwrap(), vec!["awaited".to_owned()], "the stale request was skipped, the awaited one served");
    }

    /// Waits on a gate for every command (a stream whose turn never comes).
    struct Blocked(tokio::sync::Semaphore);

    #[async_trait]
    impl Services<String> for Blocked {
        async fn execute(&self, _command_id: Uuid, _correlation_id: Uuid, _command: &String) -> Outcome {
            let _turn = self.0.acquire().await.expect("never closed");
            Outcome::Done
        }
    }

    /// A command stuck behind others is abandoned once its requester
    /// stopped waiting, instead of holding its place for ever; one whose
    /// turn comes in time is applied.
    #[tokio::test]
    async fn a_command_unfinished_at_its_deadline_is_abandoned() {
        let blocked = Blocked(tokio::sync::Semaphore::new(0));
        let soon = request("late", SystemTime::now() + Duration::from_millis(50));
        let abandoned = tokio::time::timeout(Duration::from_secs(30), answer::<String>(soon, &blocked, WORK_PAST_DEADLINE)).await;
        assert!(abandoned.is_ok(), "the answer still waited 30 s after its deadline");
        let awaited = request("awaited", SystemTime::now() + Duration::from_secs(600));
        let services = Recording::default();
        tokio::time::timeout(Duration::from_secs(30), answer::<String>(awaited, &services, WORK_PAST_DEADLINE)).await.unwrap();
        assert_eq!(*services.0.lock().unwrap(), vec!["awaited".to_owned()]);
    }
}
