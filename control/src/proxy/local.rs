//! This node's connected instances, as the proxy holds them: each one's permits (its
//! concurrency), its queue of waiting calls and its calls in flight, and delivering one call to
//! one of them.
//!
//! Invariants: a call runs only while it holds one of its instance's permits, so an instance has
//! at most `concurrency` calls in flight — a call that timed out keeps its permit until the
//! process answers it (see [`super::cancel`]), so calls given up on cannot pile up in the
//! process either; every call delivered here ends with a reply (the result, the function's
//! error, a timeout, or the instance's exit), never by waiting forever. A recycled instance gets
//! no call after the decision to recycle it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify, Semaphore, SemaphorePermit};
use yr_proto::frame;
use yr_proto::*;

use super::cancel::{self, Late};
use super::route;
use super::MAX_MESSAGE;
use crate::error::Error;
use crate::etcd;

/// One function process connected to this proxy's instance socket.
pub(super) struct LocalInstance {
    pub(super) id: String,
    pub(super) function: String,
    /// Encoded frames for the instance's socket.
    pub(super) tx: mpsc::Sender<Vec<u8>>,
    /// Calls sent and not yet answered, by call ID.
    pub(super) pending: std::sync::Mutex<HashMap<u64, Waiter>>,
    /// A stateful instance (its timed-out calls recycle it unless cancelled before starting).
    pub(super) stateful: bool,
    /// The process's runtime handles `CancelCall` (it said so in its hello); older ones are
    /// sent none (they would take it for the end of the connection).
    pub(super) cancels: bool,
    /// Set once when the instance is recycled: nothing is delivered to it after.
    recycled: AtomicBool,
    /// Woken once when the instance is recycled, for its connection's task to unregister it
    /// (and end its process if it lingers).
    pub(super) recycling: Notify,
    pub(super) permits: Semaphore,
    pub(super) concurrency: u32,
    /// Calls waiting for one of this instance's permits.
    pub(super) waiting: AtomicUsize,
    /// When its last call ended (ms since the epoch); its start time until then.
    pub(super) last_done: AtomicU64,
    /// The function's waiting calls, for stateless instances.
    pub(super) pool: Option<Arc<Pool>>,
    /// The next call's ID (unique per instance: the instance answers on its own connection).
    next_call: AtomicU64,
}

/// A call sent to the instance and not yet answered.
pub(super) enum Waiter {
    /// Its caller waits for the outcome; dropping the sender fails the call.
    Caller(oneshot::Sender<CallResult>),
    /// Its caller was told it timed out; its outcome only gives its permit back. Dropping the
    /// sender (on the outcome, or when the instance closes) ends the call's recycle timer.
    Abandoned(oneshot::Sender<()>),
}

/// Stateless calls of one function waiting on this node for any local instance to free up.
#[derive(Default)]
pub(super) struct Pool {
    /// Signalled when a call ends on one of the function's local instances or one connects.
    pub(super) freed: tokio::sync::Notify,
    pub(super) waiting: AtomicUsize,
}

/// Ends a call's occupancy of an instance (dropped after its permit): stamps the instance's
/// last activity and lets one waiting call of the function look again.
struct Busy<'a>(&'a LocalInstance);

/// A stateless call the process has, whose caller may go away before the answer: its request
/// cancelled by the driver (`yr.cancel`) or its connection dropped, which drops the call's
/// future. Dropped while armed, it cancels the call in the process and keeps the call's permit
/// until the process answers (as a timed-out call does), so the instance never holds more than
/// its concurrency in calls, given up or not.
struct GoneCaller<'a> {
    instance: &'a Arc<LocalInstance>,
    call_id: u64,
    deadline: tokio::time::Instant,
    permit: Option<SemaphorePermit<'a>>,
    armed: bool,
}

impl Drop for GoneCaller<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.instance.send_cancel(self.call_id);
        // Recycled only if it still runs as long past its deadline as a timed-out call may.
        let recycle_after = self
            .deadline
            .saturating_duration_since(tokio::time::Instant::now())
            + cancel::wait_after_deadline(false);
        self.instance
            .abandon(self.call_id, &mut self.permit, recycle_after);
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.last_done.store(etcd::now_ms(), Ordering::Relaxed);
        if let Some(pool) = &self.0.pool {
            pool.freed.notify_one();
        }
    }
}

impl LocalInstance {
    pub(super) fn new(
        id: String,
        function: String,
        tx: mpsc::Sender<Vec<u8>>,
        concurrency: u32,
        pool: Option<Arc<Pool>>,
        cancels: bool,
    ) -> LocalInstance {
        LocalInstance {
            id,
            function,
            tx,
            pending: std::sync::Mutex::new(HashMap::new()),
            stateful: pool.is_none(),
            cancels,
            recycled: AtomicBool::new(false),
            recycling: Notify::new(),
            permits: Semaphore::new(concurrency as usize),
            concurrency,
            waiting: AtomicUsize::new(0),
            last_done: AtomicU64::new(etcd::now_ms()),
            pool,
            next_call: AtomicU64::new(1),
        }
    }

    /// Delivers a call to this instance, waiting in its queue for a permit up to `timeout`.
    pub(super) async fn deliver(
        self: &Arc<Self>,
        function: &FunctionSpec,
        req: &InvokeRequest,
        timeout: Duration,
        node_id: &str,
    ) -> Result<InvokeReply, Error> {
        if !route::admits(self.waiting.load(Ordering::Relaxed), 1) {
            return Err(Error::Busy(format!(
                "instance {} of {} has {} calls queued; try again later",
                self.id,
                self.function,
                route::QUEUE_BOUND
            )));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let permit = tokio::time::timeout_at(deadline, self.permits.acquire()).await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        let permit = match permit {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(Error::InstanceFatal(format!("instance {} exited", self.id))),
            Err(_) => {
                return Err(Error::Timeout(format!(
                    "{} timed out after {timeout:?} waiting for a free instance",
                    function.name
                )))
            }
        };
        self.run_call(permit, function, req, deadline, node_id)
            .await
    }

    /// Sends one call to this instance, whose permit the caller holds, and waits for its end.
    /// A function's own error is a reply (it names the instance), not an `Err`.
    pub(super) async fn run_call(
        self: &Arc<Self>,
        permit: SemaphorePermit<'_>,
        function: &FunctionSpec,
        req: &InvokeRequest,
        deadline: tokio::time::Instant,
        node_id: &str,
    ) -> Result<InvokeReply, Error> {
        let _busy = Busy(self);
        let timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
        let call_id = self.next_call.fetch_add(1, Ordering::Relaxed);
        // The permit is dropped at the end of the call, or kept past it by a call that timed
        // out (see `timed_out`) or whose caller went away (see `GoneCaller`).
        let mut guard = GoneCaller {
            instance: self,
            call_id,
            deadline,
            permit: Some(permit),
            armed: false,
        };
        if req.payload.len() > MAX_MESSAGE {
            return Err(Error::Internal(format!(
                "a call of {} bytes to {} is over the {MAX_MESSAGE}-byte limit; put large data \
                 in the data worker and pass its ID",
                req.payload.len(),
                function.name
            )));
        }
        let call = ProxyMessage {
            msg: Some(proxy_message::Msg::Call(Call {
                call_id,
                handler: function.handler.clone(),
                payload: req.payload.clone(),
                timeout_ms: timeout.as_millis() as u32,
                method: req.method.clone(),
            })),
        };
        let call = frame::to_frame(&call)
            .map_err(|e| Error::Internal(format!("{}: {e}", function.name)))?;
        let (tx, mut rx) = oneshot::channel();
        if let Ok(mut p) = self.pending.lock() {
            p.insert(call_id, Waiter::Caller(tx));
        }
        // Bounded by the deadline too: a process that stopped reading its socket fills the
        // queue to it, and the call must still end.
        let sent = tokio::time::timeout_at(deadline, self.tx.send(call)).await;
        if !matches!(sent, Ok(Ok(()))) {
            self.forget(call_id);
            return Err(match sent {
                Err(_) => Error::Timeout(format!(
                    "instance {} of {} did not take the call within {timeout:?}",
                    self.id, function.name
                )),
                _ => Error::InstanceFatal(format!("instance {} exited", self.id)),
            });
        }
        // From here the process has the call: a caller that goes away cancels it there.
        guard.armed = !self.stateful;
        let outcome = tokio::time::timeout_at(deadline, &mut rx).await;
        guard.armed = false;
        match outcome {
            Ok(Ok(r)) if r.error.is_empty() => Ok(InvokeReply {
                payload: r.payload,
                instance_id: self.id.clone(),
                node_id: node_id.to_string(),
                ..Default::default()
            }),
            Ok(Ok(r)) => Ok(InvokeReply {
                // A function process may only say that its call failed, or that an argument's
                // object is lost; kinds that make callers retry (busy, ...) are the platform's.
                error_kind: match ErrorKind::try_from(r.error_kind) {
                    Ok(ErrorKind::ErrorObjectLost) => ErrorKind::ErrorObjectLost as i32,
                    _ => ErrorKind::ErrorFunction as i32,
                },
                error: r.error,
                instance_id: self.id.clone(),
                node_id: node_id.to_string(),
                ..Default::default()
            }),
            Ok(Err(_)) => Err(Error::InstanceFatal(format!(
                "instance {} of {} exited during the call",
                self.id, self.function
            ))),
            Err(_) => Err(self
                .timed_out(call_id, rx, &mut guard.permit, &function.name, timeout)
                .await),
        }
    }

    /// A call sent to this instance passed its deadline: cancels it where it runs and decides
    /// (see [`cancel`]) whether the instance serves on or is recycled. For a stateless call,
    /// the permit is kept past the call until the process answers it; for a stateful one the
    /// caller is answered only once the call's effect is known never to show.
    async fn timed_out(
        self: &Arc<Self>,
        call_id: u64,
        rx: oneshot::Receiver<CallResult>,
        permit: &mut Option<SemaphorePermit<'_>>,
        function: &str,
        timeout: Duration,
    ) -> Error {
        self.send_cancel(call_id);
        let after = cancel::wait_after_deadline(self.stateful);
        if !cancel::caller_waits(self.stateful) {
            self.abandon(call_id, permit, after);
            return Error::Timeout(format!("{function} did not answer within {timeout:?}"));
        }
        // A runtime that knows no cancels cannot say the call never started: only an outcome
        // already in is waited for.
        let wait = if self.cancels { after } else { Duration::ZERO };
        let late = match tokio::time::timeout(wait, rx).await {
            Ok(Ok(r)) if r.cancelled => Late::Cancelled,
            Ok(Ok(_)) => Late::Finished,
            Ok(Err(_)) => Late::Gone,
            Err(_) => Late::NoAnswer,
        };
        self.forget(call_id);
        match cancel::after_deadline(true, late) {
            cancel::Then::Keep if late == Late::Cancelled => Error::Timeout(format!(
                "{function} did not answer within {timeout:?}; the call was cancelled before \
                 it started, so it had no effect"
            )),
            cancel::Then::Keep => Error::Timeout(format!(
                "{function} did not answer within {timeout:?}; instance {} ended, so the \
                 call's effect never shows (the instance restarts)",
                self.id
            )),
            cancel::Then::Recycle => {
                self.recycle(format!(
                    "call {call_id} to stateful instance {} timed out and could not be \
                     cancelled ({late:?})",
                    self.id
                ));
                Error::Timeout(format!(
                    "{function} did not answer within {timeout:?}; instance {} is restarted so \
                     that the call's effect never shows",
                    self.id
                ))
            }
        }
    }

    /// Stops delivering to this instance and ends its process (once): its calls waiting or in
    /// flight fail as on an exit, the process is told to end, and its connection's task
    /// unregisters it. The agent reports the exit and the master restarts the instance.
    pub(super) fn recycle(&self, why: String) {
        if self.recycled.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::warn!(instance = %self.id, function = %self.function, "recycling: {why}");
        self.close();
        let msg = ProxyMessage {
            msg: Some(proxy_message::Msg::Recycle(why)),
        };
        if let Ok(f) = frame::to_frame(&msg) {
            let _ = self.tx.try_send(f);
        }
        self.recycling.notify_one();
    }

    /// Tells the process to cancel call `call_id` (a runtime too old to know cancels is told
    /// nothing). A full queue means the process is not reading: it cannot answer anyway.
    fn send_cancel(&self, call_id: u64) {
        let cancel = ProxyMessage {
            msg: Some(proxy_message::Msg::Cancel(CancelCall { call_id })),
        };
        if let (true, Ok(f)) = (self.cancels, frame::to_frame(&cancel)) {
            let _ = self.tx.try_send(f);
        }
    }

    /// Gives up waiting for the stateless call `call_id` (it timed out, or its caller went
    /// away) while the process may still run it: the call keeps its slot until the process
    /// answers (`answer` gives it back), and the instance is recycled if no answer came
    /// within `recycle_after`. Nothing to do for a call already answered.
    fn abandon(
        self: &Arc<Self>,
        call_id: u64,
        permit: &mut Option<SemaphorePermit<'_>>,
        recycle_after: Duration,
    ) {
        let (answered_tx, answered) = oneshot::channel();
        let abandoned = match self.pending.lock() {
            Ok(mut p) => match p.get_mut(&call_id) {
                Some(w) => {
                    *w = Waiter::Abandoned(answered_tx);
                    true
                }
                None => false,
            },
            Err(_) => false,
        };
        if !abandoned {
            return;
        }
        if let Some(p) = permit.take() {
            p.forget();
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let me = Arc::downgrade(self);
        rt.spawn(async move {
            tokio::select! {
                _ = answered => return,
                _ = tokio::time::sleep(recycle_after) => {}
            }
            let Some(me) = me.upgrade() else { return };
            let still = me
                .pending
                .lock()
                .is_ok_and(|p| matches!(p.get(&call_id), Some(Waiter::Abandoned(_))));
            if still && cancel::after_deadline(false, Late::NoAnswer) == cancel::Then::Recycle {
                me.recycle(format!(
                    "call {call_id} was still running {recycle_after:?} after it was given up"
                ));
            }
        });
    }

    fn forget(&self, call_id: u64) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&call_id);
        }
    }

    /// Hands a result from the instance to the call waiting for it; for a call that timed out
    /// and was answered already, gives its permit back.
    pub(super) fn answer(&self, r: CallResult) {
        let waiter = self
            .pending
            .lock()
            .ok()
            .and_then(|mut p| p.remove(&r.call_id));
        match waiter {
            Some(Waiter::Caller(w)) => {
                let _ = w.send(r);
            }
            Some(Waiter::Abandoned(_timer)) => {
                self.permits.add_permits(1);
                drop(Busy(self));
            }
            None => {}
        }
    }

    /// Ends the instance's calls after its connection closed: its waiting calls fail (the
    /// permits close) and so do its calls in flight (their senders drop).
    pub(super) fn close(&self) {
        self.permits.close();
        if let Ok(mut p) = self.pending.lock() {
            p.clear();
        }
    }

    /// What the instance reports to the scheduler through `Load`, at `now` (ms since the epoch).
    pub(super) fn load(&self, now: u64) -> InstanceLoad {
        let inflight = self
            .concurrency
            .saturating_sub(self.permits.available_permits() as u32);
        // A stateless instance counts its function's waiting calls: any of them may be its next.
        let queued = (self.waiting.load(Ordering::Relaxed)
            + self
                .pool
                .as_ref()
                .map_or(0, |p| p.waiting.load(Ordering::Relaxed))) as u32;
        InstanceLoad {
            instance_id: self.id.clone(),
            function: self.function.clone(),
            inflight,
            queued,
            idle_ms: if inflight + queued > 0 {
                0
            } else {
                now.saturating_sub(self.last_done.load(Ordering::Relaxed))
            },
        }
    }
}

#[cfg(test)]
mod tests {
    //! How a local instance applies [`cancel`]'s decisions, with the function process played
    //! by a task on the other end of the instance's frame queue.
    use super::*;

    /// The frames sent to the instance, decoded.
    fn decoded(f: &[u8]) -> ProxyMessage {
        frame::decode(f.get(4..).unwrap_or_default()).expect("a frame of ours")
    }

    fn function() -> FunctionSpec {
        FunctionSpec {
            name: "f".into(),
            handler: "h".into(),
            ..Default::default()
        }
    }

    /// An instance (stateful when `pool` is None) and its process's end of the frame queue.
    fn instance(pool: Option<Arc<Pool>>) -> (Arc<LocalInstance>, mpsc::Receiver<Vec<u8>>) {
        let (tx, rx) = mpsc::channel(16);
        let concurrency = 1;
        (
            Arc::new(LocalInstance::new(
                "i".into(),
                "f".into(),
                tx,
                concurrency,
                pool,
                true,
            )),
            rx,
        )
    }

    /// Plays the process: takes the call, waits for its cancel, then answers with `reply`
    /// (`None`: no answer); returns the call's ID and its end of the queue.
    async fn process(
        mut rx: mpsc::Receiver<Vec<u8>>,
        inst: Arc<LocalInstance>,
        reply: Option<CallResult>,
    ) -> (u64, mpsc::Receiver<Vec<u8>>) {
        let call = match rx.recv().await.map(|f| decoded(&f).msg) {
            Some(Some(proxy_message::Msg::Call(c))) => c,
            other => panic!("expected a call, got {other:?}"),
        };
        match rx.recv().await.map(|f| decoded(&f).msg) {
            Some(Some(proxy_message::Msg::Cancel(c))) => assert_eq!(c.call_id, call.call_id),
            other => panic!("expected the call's cancel, got {other:?}"),
        }
        if let Some(mut r) = reply {
            r.call_id = call.call_id;
            inst.answer(r);
        }
        (call.call_id, rx)
    }

    /// What else the process was sent, once the caller has heard.
    fn rest(mut rx: mpsc::Receiver<Vec<u8>>) -> Vec<ProxyMessage> {
        rest_now(&mut rx)
    }

    async fn call(inst: &Arc<LocalInstance>) -> Result<InvokeReply, Error> {
        inst.deliver(
            &function(),
            &InvokeRequest::default(),
            Duration::from_millis(50),
            "n",
        )
        .await
    }

    /// What the process was sent since last looked, leaving the queue open.
    fn rest_now(rx: &mut mpsc::Receiver<Vec<u8>>) -> Vec<ProxyMessage> {
        let mut rest = Vec::new();
        while let Ok(f) = rx.try_recv() {
            rest.push(decoded(&f));
        }
        rest
    }

    fn recycled(rest: &[ProxyMessage]) -> bool {
        rest.iter()
            .any(|m| matches!(m.msg, Some(proxy_message::Msg::Recycle(_))))
    }

    #[tokio::test]
    async fn a_timed_out_stateless_call_keeps_its_slot_until_the_process_answers() {
        let (inst, rx) = instance(Some(Arc::default()));
        let player = tokio::spawn(process(rx, Arc::clone(&inst), None));
        let r = call(&inst).await;
        assert!(matches!(r, Err(Error::Timeout(_))), "{r:?}");
        assert_eq!(
            inst.permits.available_permits(),
            0,
            "the process still runs the call: its slot is taken"
        );
        let (id, rx) = player.await.expect("the process");
        let rest = rest(rx);
        assert!(!recycled(&rest), "not recycled: {rest:?}");
        inst.answer(CallResult {
            call_id: id,
            ..Default::default()
        });
        assert_eq!(inst.permits.available_permits(), 1, "the answer frees it");
        assert!(inst.pending.lock().is_ok_and(|p| p.is_empty()));
    }

    #[tokio::test]
    async fn a_stateful_call_dropped_before_it_started_leaves_the_instance_serving() {
        let (inst, rx) = instance(None);
        let dropped = CallResult {
            cancelled: true,
            ..Default::default()
        };
        let player = tokio::spawn(process(rx, Arc::clone(&inst), Some(dropped)));
        match call(&inst).await {
            Err(Error::Timeout(m)) => assert!(m.contains("no effect"), "{m}"),
            other => panic!("expected a timeout, got {other:?}"),
        }
        let (_, rx) = player.await.expect("the process");
        let rest = rest(rx);
        assert!(!recycled(&rest), "{rest:?}");
        assert_eq!(inst.permits.available_permits(), 1, "serving on");
    }

    #[tokio::test]
    async fn a_stateful_call_that_ran_recycles_the_instance_before_its_caller_hears() {
        for reply in [
            Some(CallResult::default()), // it finished after its deadline
            None,                        // no answer within the wait
        ] {
            let (inst, rx) = instance(None);
            let player = tokio::spawn(process(rx, Arc::clone(&inst), reply.clone()));
            match call(&inst).await {
                Err(Error::Timeout(m)) => assert!(m.contains("restarted"), "{m}"),
                other => panic!("expected a timeout, got {other:?}"),
            }
            // By the time the caller hears, nothing more can be delivered to the instance.
            assert!(
                inst.permits.try_acquire().is_err(),
                "a recycled instance takes no call"
            );
            let (_, rx) = player.await.expect("the process");
            let rest = rest(rx);
            assert!(
                recycled(&rest),
                "the process is told to end ({reply:?}): {rest:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stateless_call_still_running_long_after_its_deadline_recycles_the_instance() {
        let (inst, rx) = instance(Some(Arc::default()));
        let player = tokio::spawn(process(rx, Arc::clone(&inst), None));
        assert!(matches!(call(&inst).await, Err(Error::Timeout(_))));
        let (_, mut rx) = player.await.expect("the process");
        tokio::time::sleep(cancel::RECYCLE_STATELESS_AFTER - Duration::from_secs(1)).await;
        assert!(!recycled(&rest_now(&mut rx)), "not before its time");
        assert_eq!(
            inst.permits.available_permits(),
            0,
            "its slot is still taken"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(recycled(&rest_now(&mut rx)), "told to end");
        assert!(
            inst.permits.try_acquire().is_err(),
            "no call after the recycle"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stateless_call_answered_late_stops_its_recycle_timer() {
        let (inst, rx) = instance(Some(Arc::default()));
        let player = tokio::spawn(process(rx, Arc::clone(&inst), None));
        assert!(matches!(call(&inst).await, Err(Error::Timeout(_))));
        let (id, rx) = player.await.expect("the process");
        tokio::time::sleep(Duration::from_secs(5)).await;
        inst.answer(CallResult {
            call_id: id,
            ..Default::default()
        });
        tokio::time::sleep(cancel::RECYCLE_STATELESS_AFTER * 2).await;
        assert!(!recycled(&rest(rx)), "an answered call recycles nothing");
        assert_eq!(inst.permits.available_permits(), 1);
    }
}
