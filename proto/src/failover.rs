//! A gRPC channel to "the master" of a cluster with several (one active, the others standing
//! by): [`FailoverChannel`] knows every master's address and sends each call to the one it
//! believes active.
//!
//! It relies on one rule of the masters: a standby does not accept connections on its master
//! port until it is elected. So a call that fails at the transport (connection refused, reset)
//! or comes back `UNAVAILABLE` means the master it went to is gone or deposed; the channel then
//! probes the addresses (a TCP connect each, the current one last) and moves to the first that
//! accepts. That call's error still reaches the caller (its request may have been sent, and only
//! the caller knows whether it may be repeated); the next call goes to the new master.
//!
//! The address list can change while the channel is in use ([`FailoverChannel::set_addresses`]);
//! [`FailoverChannel::follow`] keeps it current from the masters the active one lists.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::body::Body;
use tonic::transport::Channel;

/// How long a probe waits for a master's port to accept (masters are on the cluster's network;
/// a refused port answers at once).
const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);

/// The `grpc-status` of `UNAVAILABLE`.
const UNAVAILABLE: &str = "14";

/// A channel over every master's address; cheap to clone (clones share the state).
#[derive(Clone)]
pub struct FailoverChannel {
    inner: Arc<Inner>,
}

struct Inner {
    /// Every master and the one calls go to. A std lock: held only to read or change them,
    /// never across an await.
    masters: RwLock<Masters>,
    /// Makes a (lazy) channel to one address.
    connect: fn(&str) -> Result<Channel, String>,
    /// Set by a failed call, cleared by a successful one: while set, each call first checks
    /// that the current master accepts connections (and moves on if not), so that the first
    /// call after a failover does not fail on the old master when a new one is serving.
    suspect: AtomicBool,
    /// Whether a probe asks the master (`Info`) after its port accepted: a master that is
    /// paused or deposed still has its port open but does not answer. Off only in tests of
    /// the channel against bare sockets.
    ask: bool,
}

/// The list and the current master, under one lock: the list is re-sorted when it changes,
/// so a position means something only together with the list it was taken from. A move is
/// decided by address ("from the one that failed to this one") and applied under the lock.
struct Masters {
    /// Every master, with a lazy channel to each; never empty.
    list: Vec<(String, Channel)>,
    /// Index into `list` of the one calls go to.
    current: usize,
}

impl Masters {
    fn current(&self) -> (String, Channel) {
        let (a, c) = &self.list[self.current % self.list.len()];
        (a.clone(), c.clone())
    }
}

impl FailoverChannel {
    /// A channel over `addresses` (host:port each; at least one), made with `connect`.
    pub fn new(
        addresses: &[String],
        connect: fn(&str) -> Result<Channel, String>,
    ) -> Result<FailoverChannel, String> {
        let list = open(addresses, connect, &[])?;
        Ok(FailoverChannel {
            inner: Arc::new(Inner {
                masters: RwLock::new(Masters { list, current: 0 }),
                connect,
                suspect: AtomicBool::new(false),
                ask: true,
            }),
        })
    }

    /// The addresses it knows, in order.
    pub fn addresses(&self) -> Vec<String> {
        self.inner.addresses()
    }

    /// The address calls go to now.
    pub fn current(&self) -> String {
        self.inner.read().current().0
    }

    /// Replaces the address list, sorted (keeping the channels of addresses already known, and
    /// the current master if it is still listed). An empty list is ignored.
    pub fn set_addresses(&self, addresses: &[String]) {
        if addresses.is_empty() {
            return;
        }
        // In one order whatever the source, so that equal lists compare equal.
        let mut sorted = addresses.to_vec();
        sorted.sort();
        sorted.dedup();
        let addresses = &sorted[..];
        let Ok(mut m) = self.inner.masters.write() else {
            return;
        };
        if m.list.iter().map(|(a, _)| a).eq(addresses.iter()) {
            return;
        }
        let current = m.current().0;
        match open(addresses, self.inner.connect, &m.list) {
            Ok(next) => {
                tracing::debug!(masters = %addresses.join(","), "the masters are now known");
                m.current = next.iter().position(|(a, _)| *a == current).unwrap_or(0);
                m.list = next;
            }
            Err(e) => tracing::warn!("ignoring a bad list of master addresses: {e}"),
        }
    }

    /// Moves to a master that accepts connections if the current one does not (for a client
    /// about to make its first call); whether the master it settled on answered.
    pub async fn settle(&self) -> bool {
        let (address, channel) = self.inner.read().current();
        if self.inner.answers(&address, channel).await {
            return true;
        }
        FailoverChannel::fail_over(Arc::clone(&self.inner), &address).await
    }

    /// [`FailoverChannel::settle`] again until a master answers, for at most `limit` (right
    /// after a failover the new master may not serve yet, or be slow to answer on a loaded
    /// host); whether one answered.
    pub async fn settle_within(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.settle().await {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Treats the current master as failed (a caller gave up waiting for it: a call dropped
    /// before it ends does not tell the channel) and moves to one that answers.
    pub async fn fail_current(&self) {
        let failed = self.current();
        self.inner.suspect.store(true, Ordering::Release);
        FailoverChannel::fail_over(Arc::clone(&self.inner), &failed).await;
    }

    /// Starts asking the master for the list of masters every `every` (adding those it names
    /// to the ones given), for as long as any clone of this channel is in use. A failed ask
    /// moves the channel on like any failed call, so an idle client follows a failover too.
    /// Does nothing outside a tokio runtime.
    pub fn follow(&self, every: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        let given = self.addresses();
        runtime.spawn(async move {
            // At once: a channel whose first address is a standby moves before its first call.
            if let Some(inner) = weak.upgrade() {
                FailoverChannel { inner }.settle().await;
            }
            let mut first = true;
            loop {
                if !first {
                    tokio::time::sleep(every).await;
                }
                first = false;
                let Some(inner) = weak.upgrade() else { return };
                let channel = FailoverChannel { inner };
                let mut client = crate::master_client::MasterClient::new(channel.clone());
                let Ok(Ok(info)) = tokio::time::timeout(every, client.info(crate::Empty {})).await
                else {
                    continue;
                };
                let mut list = given.clone();
                for a in info.into_inner().master_addresses {
                    if !a.is_empty() && !list.contains(&a) {
                        list.push(a);
                    }
                }
                channel.set_addresses(&list);
            }
        });
    }

    /// After a failed call to the master at `failed`: finds one that answers, trying the
    /// others first (in list order after it) and `failed` last, and makes it current unless
    /// another caller already moved away from `failed`; whether one answered.
    async fn fail_over(inner: Arc<Inner>, failed: &str) -> bool {
        let list: Vec<(String, Channel)> = inner.read().list.clone();
        let n = list.len();
        let at = list.iter().position(|(a, _)| a == failed).unwrap_or(0);
        for k in 1..=n {
            let (address, channel) = &list[(at + k) % n];
            if !inner.answers(address, channel.clone()).await {
                continue;
            }
            let Ok(mut m) = inner.masters.write() else {
                return true;
            };
            if m.current().0 == failed {
                if let Some(i) = m.list.iter().position(|(a, _)| a == address) {
                    if address != failed {
                        tracing::info!(from = %failed, to = %address, "following the master");
                    }
                    m.current = i;
                }
            }
            return true;
        }
        false
    }
}

impl Inner {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Masters> {
        // A panic while holding this lock cannot leave the state half-written (the list is
        // swapped whole, the index stored after it), so a poisoned lock is still good to read.
        self.masters
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn addresses(&self) -> Vec<String> {
        self.read().list.iter().map(|(a, _)| a.clone()).collect()
    }

    /// Whether the master at `address` serves now: its port accepts, and (unless `ask` is
    /// off) it answers `Info` within [`PROBE_TIMEOUT`].
    async fn answers(&self, address: &str, channel: Channel) -> bool {
        if !accepts(address).await {
            return false;
        }
        if !self.ask {
            return true;
        }
        let mut client = crate::master_client::MasterClient::new(channel);
        matches!(
            tokio::time::timeout(PROBE_TIMEOUT, client.info(crate::Empty {})).await,
            Ok(Ok(_))
        )
    }
}

/// Whether `address` accepts a TCP connection now.
async fn accepts(address: &str) -> bool {
    tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(address))
        .await
        .is_ok_and(|c| c.is_ok())
}

/// Channels for `addresses`, reusing those of `known`.
fn open(
    addresses: &[String],
    connect: fn(&str) -> Result<Channel, String>,
    known: &[(String, Channel)],
) -> Result<Vec<(String, Channel)>, String> {
    if addresses.is_empty() {
        return Err("no master address".into());
    }
    addresses
        .iter()
        .map(|a| {
            let ch = match known.iter().find(|(k, _)| k == a) {
                Some((_, c)) => c.clone(),
                None => connect(a)?,
            };
            Ok((a.clone(), ch))
        })
        .collect()
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower_service::Service<http::Request<Body>> for FailoverChannel {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is the chosen channel's, awaited inside the call: which one is chosen is
        // only known then.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            if this.inner.suspect.load(Ordering::Acquire) {
                this.settle().await;
            }
            let (address, mut ch) = this.inner.read().current();
            let inner = Arc::clone(&this.inner);
            if let Err(e) = std::future::poll_fn(|cx| ch.poll_ready(cx)).await {
                inner.suspect.store(true, Ordering::Release);
                FailoverChannel::fail_over(inner, &address).await;
                return Err(e);
            }
            let r = tower_service::Service::call(&mut ch, req).await;
            let failed = match &r {
                Err(_) => true,
                Ok(resp) => resp
                    .headers()
                    .get("grpc-status")
                    .is_some_and(|s| s.as_bytes() == UNAVAILABLE.as_bytes()),
            };
            inner.suspect.store(failed, Ordering::Release);
            if failed {
                FailoverChannel::fail_over(inner, &address).await;
            }
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lazy(a: &str) -> Result<Channel, String> {
        Ok(
            tonic::transport::Endpoint::from_shared(format!("http://{a}"))
                .map_err(|e| e.to_string())?
                .connect_lazy(),
        )
    }

    #[tokio::test]
    async fn a_failed_master_is_left_for_the_one_that_accepts() {
        // A port that accepts (the "active" master) and one that refuses (a standby).
        let active = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let refused = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let refused_addr = refused.local_addr().expect("addr").to_string();
        drop(refused);
        let active_addr = active.local_addr().expect("addr").to_string();
        let mut c = FailoverChannel::new(&[refused_addr.clone(), active_addr.clone()], lazy)
            .expect("channel");
        // Bare sockets answer no RPC: probe the ports only.
        if let Some(inner) = Arc::get_mut(&mut c.inner) {
            inner.ask = false;
        }
        assert_eq!(c.current(), refused_addr);
        assert!(FailoverChannel::fail_over(Arc::clone(&c.inner), &refused_addr).await);
        assert_eq!(c.current(), active_addr);
        // A new list keeps the current master when it is still listed.
        c.set_addresses(&[active_addr.clone(), refused_addr.clone()]);
        assert_eq!(c.current(), active_addr);
        let mut both = [active_addr.clone(), refused_addr];
        both.sort();
        assert_eq!(c.addresses(), both);
        c.set_addresses(&[]);
        assert_eq!(c.addresses().len(), 2);
        assert!(FailoverChannel::new(&[], lazy).is_err());
    }

    /// `n` ports that refuse connections (bound, then closed).
    async fn refused_ports(n: usize) -> Vec<String> {
        let mut refused = Vec::new();
        for _ in 0..n {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            refused.push(l.local_addr().expect("addr").to_string());
        }
        refused
    }

    /// A port that accepts (kept open by the listener returned) and two that refuse.
    async fn three() -> (tokio::net::TcpListener, String, Vec<String>) {
        let refused = refused_ports(2).await;
        let active = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let a = active.local_addr().expect("addr").to_string();
        (active, a, refused)
    }

    #[tokio::test]
    async fn a_late_fail_over_after_the_list_was_reordered_keeps_the_master_that_answers() {
        let (_active, active_addr, refused) = three().await;
        let first = vec![refused[0].clone(), active_addr.clone(), refused[1].clone()];
        let mut c = FailoverChannel::new(&first, lazy).expect("channel");
        if let Some(inner) = Arc::get_mut(&mut c.inner) {
            inner.ask = false;
        }
        assert!(c.settle().await, "the accepting port is found");
        assert_eq!(c.current(), active_addr);
        // The list comes back sorted in another order (as from `follow`) ...
        let mut other = first.clone();
        other.reverse();
        other.push(refused[0].clone());
        c.set_addresses(&other);
        assert_eq!(c.current(), active_addr);
        // ... and a caller that saw the first master fail only now moves "away" from it: the
        // channel has already left it, so it stays on the one that answers, whatever the
        // positions in the new list.
        for failed in &refused {
            assert!(FailoverChannel::fail_over(Arc::clone(&c.inner), failed).await);
            assert_eq!(c.current(), active_addr, "after a late failure of {failed}");
        }
    }

    #[tokio::test]
    async fn settling_where_nothing_answers_says_so_within_its_limit() {
        let refused = refused_ports(2).await;
        let mut c = FailoverChannel::new(&refused, lazy).expect("channel");
        if let Some(inner) = Arc::get_mut(&mut c.inner) {
            inner.ask = false;
        }
        assert!(!c.settle().await);
        assert!(!c.settle_within(Duration::from_millis(300)).await);
        assert_eq!(
            c.current(),
            refused[0],
            "no move without a master that answers"
        );
    }
}
