//! Leader election on etcd, for the components of which only one may act at a time (the
//! function master, the function scheduler).
//!
//! Each candidate holds a lease ([`LEASE_TTL`], kept alive every [`KEEP_ALIVE`]) and tries to
//! create the election's key with a transaction that succeeds only if the key does not exist;
//! the key carries the lease, so it disappears when its holder stops keeping the lease alive.
//! The key's value is the leader's advertised address, which is how `yr status` names the
//! active master. A candidate that loses watches the key and tries again when it is deleted.
//!
//! Why 6 s and 2 s: a dead leader is replaced within one TTL of its last keep-alive (then the
//! candidates, which watch the key, win at once), and the target is TTL + 3 s. Three
//! keep-alives per TTL let one or two be lost (a busy etcd, a member restarting) without a
//! needless failover; openYuanrong's 10 s / 2 s trades a slower failover for more slack.
//!
//! Invariants:
//! - A leader stops acting before its lease can have expired in etcd: [`Leadership::lost`] is
//!   set once no keep-alive has been acknowledged for `LEASE_TTL - SAFETY` counted from when the
//!   last acknowledged one was *sent* (etcd renewed it no earlier than that), or at once when
//!   etcd says the lease is gone. Components exit non-zero when it is set (a supervisor restarts
//!   them as candidates), so two leaders never act at once while clocks advance at one rate.
//! - The lease is revoked on a graceful stop, so a successor wins at once.

use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, WatchOptions};

use crate::error::{Error, Result};
use crate::etcd::Meta;
use crate::Shutdown;

/// The lease's time to live, in seconds.
pub const LEASE_TTL: i64 = 6;
/// How often the lease is kept alive.
pub const KEEP_ALIVE: Duration = Duration::from_secs(2);
/// How long one campaign transaction may take before it is tried again.
const TRY_WITHIN: Duration = Duration::from_secs(1);
/// How long before the lease could expire a leader gives up.
const SAFETY: Duration = Duration::from_millis(1000);

/// The election of the active function master (value: its gRPC address).
pub const MASTER: &str = "/yr/election/master";
/// The election of the function scheduler that scales pools.
pub const SCHEDULER: &str = "/yr/election/scheduler";

/// Until when a candidate's lease is surely alive, readable without waiting: a leader checks it
/// before serving each call, so that a process that was paused (or starved) past its lease does
/// not serve calls that arrived meanwhile before its keep-alive task notices.
#[derive(Clone, Default)]
pub struct LeaseClock {
    /// Milliseconds after [`epoch`] (negative: before it) until which the lease holds; 0 (the
    /// epoch itself) until first renewed.
    until_ms: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

/// The process's reference instant for [`LeaseClock`].
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl LeaseClock {
    fn renewed(&self, sent: Instant, budget: Duration) {
        let e = epoch();
        let sent_ms = match sent.checked_duration_since(e) {
            Some(after) => after.as_millis() as i64,
            None => -(e.duration_since(sent).as_millis() as i64),
        };
        self.until_ms.store(
            sent_ms + budget.as_millis() as i64,
            std::sync::atomic::Ordering::Release,
        );
    }

    /// Whether the lease surely holds now.
    pub fn holds(&self) -> bool {
        let now = epoch().elapsed().as_millis() as i64;
        now < self.until_ms.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// A lease kept alive in the background, to campaign with and to register under.
pub struct Candidate {
    meta: Meta,
    lease: i64,
    clock: LeaseClock,
    /// Set when the lease is (or may be) gone.
    lost: Shutdown,
    /// Stops the keep-alive task (on drop of the candidate).
    stop: Shutdown,
}

impl Candidate {
    /// Grants a lease and starts keeping it alive.
    pub async fn new(meta: &Meta) -> Result<Candidate> {
        let granted_at = Instant::now();
        let lease = meta
            .client()
            .lease_grant(LEASE_TTL, None)
            .await
            .map_err(|e| Error::etcd("grant the election lease", e))?
            .id();
        let lost = Shutdown::new();
        let stop = Shutdown::new();
        let clock = LeaseClock::default();
        clock.renewed(granted_at, budget());
        tokio::spawn(keep_alive(
            meta.clone(),
            lease,
            clock.clone(),
            lost.clone(),
            stop.clone(),
        ));
        Ok(Candidate {
            meta: meta.clone(),
            lease,
            clock,
            lost,
            stop,
        })
    }

    /// The lease's ID (keys put with it vanish with the candidate).
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// Until when the lease surely holds (see [`LeaseClock`]).
    pub fn clock(&self) -> LeaseClock {
        self.clock.clone()
    }

    /// Set once the lease is lost: a leader must stop acting at once.
    pub fn lost(&self) -> Shutdown {
        self.lost.clone()
    }

    /// Tries to win `election` once, with `value`: true if this candidate holds it now.
    pub async fn try_win(&self, election: &str, value: &str) -> Result<(bool, i64)> {
        let txn = Txn::new()
            .when([Compare::create_revision(election, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                election,
                value,
                Some(PutOptions::new().with_lease(self.lease)),
            )])
            .or_else([TxnOp::get(election, None)]);
        // Bounded well below etcd's own request timeout (~7 s): a proposal made just as the
        // etcd leader died is dropped and only times out there, while a retry reaches the new
        // leader. A try abandoned here and applied later is found as this candidate's own key.
        let r = tokio::time::timeout(TRY_WITHIN, self.meta.client().txn(txn))
            .await
            .map_err(|_| {
                Error::Unavailable(format!("etcd did not answer the campaign for {election}"))
            })?
            .map_err(|e| Error::etcd(format!("campaign for {election}"), e))?;
        let rev = r.header().map(|h| h.revision()).unwrap_or(0);
        if r.succeeded() {
            return Ok((true, rev));
        }
        // A retry after a reply that was lost finds this candidate's own key.
        let mine = r.op_responses().into_iter().any(|op| match op {
            etcd_client::TxnOpResponse::Get(g) => g.kvs().iter().any(|kv| kv.lease() == self.lease),
            _ => false,
        });
        Ok((mine, rev))
    }

    /// Campaigns until this candidate wins `election` (true), or `shutdown` is set or the
    /// lease is lost (false). `on_standby` runs once if the first try loses.
    pub async fn campaign(
        &self,
        election: &str,
        value: &str,
        shutdown: &Shutdown,
        on_standby: impl FnOnce(),
    ) -> Result<bool> {
        let mut on_standby = Some(on_standby);
        loop {
            if shutdown.is_set() || self.lost.is_set() {
                return Ok(false);
            }
            let (won, rev) = match self.try_win(election, value).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("{e}; trying again");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        _ = shutdown.wait() => return Ok(false),
                        _ = self.lost.wait() => return Ok(false),
                    }
                    continue;
                }
            };
            if won {
                tracing::info!(election, value, "won the election");
                return Ok(true);
            }
            if let Some(f) = on_standby.take() {
                tracing::info!(election, "standing by: another candidate leads");
                f();
            }
            // Wait for the leader's key to go (or a while, in case the watch misses it).
            tokio::select! {
                _ = self.deleted(election, rev) => {}
                _ = tokio::time::sleep(KEEP_ALIVE) => {}
                _ = shutdown.wait() => return Ok(false),
                _ = self.lost.wait() => return Ok(false),
            }
        }
    }

    /// Resolves when `key` is deleted after revision `rev` (or the watch fails).
    async fn deleted(&self, key: &str, rev: i64) {
        let opts = WatchOptions::new().with_start_revision(rev + 1);
        let Ok(mut stream) = self.meta.client().watch(key, Some(opts)).await else {
            return;
        };
        while let Ok(Some(resp)) = stream.message().await {
            if resp.canceled()
                || resp
                    .events()
                    .iter()
                    .any(|e| e.event_type() == EventType::Delete)
            {
                return;
            }
        }
    }

    /// Revokes the lease: the election and every key put with it go at once.
    pub async fn resign(self) {
        self.stop.trigger();
        if let Err(e) = self.meta.client().lease_revoke(self.lease).await {
            tracing::debug!("cannot revoke the election lease: {e}");
        }
    }
}

impl Drop for Candidate {
    fn drop(&mut self) {
        self.stop.trigger();
    }
}

/// Keeps `lease` alive until `stop`; sets `lost` when it is gone or may be.
/// How long after a renewal was sent the lease surely holds.
fn budget() -> Duration {
    Duration::from_secs(LEASE_TTL as u64) - SAFETY
}

async fn keep_alive(meta: Meta, lease: i64, clock: LeaseClock, lost: Shutdown, stop: Shutdown) {
    let budget = budget();
    // When the last acknowledged keep-alive was sent: etcd renewed the lease after that.
    let mut renewed = Instant::now();
    let mut stream = None;
    loop {
        if stop.is_set() {
            return;
        }
        if renewed.elapsed() >= budget {
            tracing::error!(
                lease,
                "the election lease could not be kept alive: giving it up"
            );
            lost.trigger();
            return;
        }
        if stream.is_none() {
            match meta.client().lease_keep_alive(lease).await {
                Ok(s) => stream = Some(s),
                Err(e) => tracing::warn!("cannot keep the election lease alive: {e}"),
            }
        }
        let sent = Instant::now();
        if let Some((keeper, responses)) = stream.as_mut() {
            let answer = async {
                keeper.keep_alive().await?;
                responses.message().await
            };
            let left = budget.saturating_sub(renewed.elapsed());
            match tokio::time::timeout(left.min(KEEP_ALIVE), answer).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {
                    renewed = sent;
                    clock.renewed(sent, budget);
                }
                Ok(Ok(Some(_))) => {
                    tracing::error!(lease, "etcd says the election lease expired");
                    lost.trigger();
                    return;
                }
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                    tracing::warn!(lease, "the lease keep-alive stream broke; reopening it");
                    stream = None;
                }
            }
        }
        let next = if stream.is_some() {
            KEEP_ALIVE.saturating_sub(sent.elapsed())
        } else {
            Duration::from_millis(300)
        };
        tokio::select! {
            _ = tokio::time::sleep(next) => {}
            _ = stop.wait() => return,
        }
    }
}

/// The value of `election`'s key (the leader's address), if anyone leads.
pub async fn leader(meta: &Meta, election: &str) -> Result<Option<String>> {
    meta.get_raw(election).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_holds_for_the_budget_counted_from_when_its_renewal_was_sent() {
        let clock = LeaseClock::default();
        assert!(!clock.holds(), "never renewed");
        clock.renewed(Instant::now(), Duration::from_secs(5));
        assert!(clock.holds());
        // A renewal sent long ago (the process was paused) holds no more.
        let long_ago = Instant::now()
            .checked_sub(Duration::from_secs(10))
            .unwrap_or_else(Instant::now);
        let old = LeaseClock::default();
        old.renewed(long_ago, Duration::from_secs(5));
        assert!(!old.holds());
        assert!(budget() < Duration::from_secs(LEASE_TTL as u64));
        assert!(KEEP_ALIVE * 2 < budget(), "two keep-alives may be lost");
    }
}
