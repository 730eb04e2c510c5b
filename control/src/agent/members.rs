//! Telling this node's data worker who the cluster's data workers are.
//!
//! A data worker pulls objects from, and sends deletes to, only the transfer addresses it was
//! told belong to the cluster (an object ID naming any other address is refused without
//! connecting; see `yr_datastore::transfer`). The members are the `data_transfer_address`es of
//! the node records in etcd, which every agent keeps under its lease; this task follows them
//! (an etcd watch) and sends the list over the data worker's local socket whenever it changes,
//! and again every [`REPUSH_EVERY`] so that a data worker restarted by the node supervisor, which
//! starts with an empty list, is told again within that time (the client reconnects to the new
//! start on its own; a pull meanwhile waits for the list, see `check_member`).

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::time::Duration;

use yr_datastore::client::Client;
use yr_proto::NodeRecord;

use crate::etcd::{self, Meta, Mirror};
use crate::Shutdown;

/// How often the list is sent even if unchanged.
/// Short: a message on a local socket costs microseconds, and it bounds how long a restarted
/// data worker refuses pulls.
const REPUSH_EVERY: Duration = Duration::from_secs(1);
/// How soon a failed send (the data worker not up yet) is tried again.
const RETRY: Duration = Duration::from_millis(200);

/// The transfer addresses in `records`, sorted, without duplicates; records without a
/// (well-formed) address are left out.
pub fn member_addresses<'a>(
    records: impl IntoIterator<Item = &'a NodeRecord>,
) -> Vec<SocketAddrV4> {
    let mut addrs: Vec<SocketAddrV4> = records
        .into_iter()
        .filter_map(|n| n.data_transfer_address.parse().ok())
        .collect();
    addrs.sort();
    addrs.dedup();
    addrs
}

/// Sends `addrs` over `conn` (connecting to `socket` first if needed); the connection is kept
/// for next time only if the send worked.
fn send(conn: &mut Option<Client>, socket: &std::path::Path, addrs: &[SocketAddrV4]) -> bool {
    if conn.is_none() {
        *conn = Client::connect_named(socket, "yr-agent-members").ok();
    }
    let ok = conn.as_ref().is_some_and(|c| c.set_peers(addrs).is_ok());
    if !ok {
        *conn = None;
    }
    ok
}

/// Keeps the data worker at `socket` told the cluster's members until `shutdown`.
pub async fn push(meta: Meta, socket: PathBuf, shutdown: Shutdown) {
    let mut nodes = loop {
        match Mirror::<NodeRecord>::start(meta.clone(), etcd::NODES).await {
            Ok(m) => break m,
            Err(e) => {
                tracing::warn!("cannot follow the node records for the data worker: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.wait() => return,
                }
            }
        }
    };
    let mut conn: Option<Client> = None;
    let mut sent: Option<Vec<SocketAddrV4>> = None;
    let mut due = true;
    loop {
        let addrs = member_addresses(nodes.snapshot().values());
        if due || sent.as_ref() != Some(&addrs) {
            let sock = socket.clone();
            let list = addrs.clone();
            let mut c = conn.take();
            let r = tokio::task::spawn_blocking(move || {
                let ok = send(&mut c, &sock, &list);
                (ok, c)
            })
            .await;
            (sent, conn) = match r {
                Ok((true, c)) => (Some(addrs), c),
                _ => (None, None),
            };
        }
        let wait = if sent.is_some() { REPUSH_EVERY } else { RETRY };
        tokio::select! {
            _ = nodes.changed() => due = false,
            _ = tokio::time::sleep(wait) => due = true,
            _ = shutdown.wait() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_the_well_formed_transfer_addresses() {
        let rec = |a: &str| NodeRecord {
            data_transfer_address: a.into(),
            ..Default::default()
        };
        let recs = [
            rec("127.0.0.1:9002"),
            rec("127.0.0.1:9001"),
            rec(""),
            rec("not an address"),
            rec("127.0.0.1:9001"),
        ];
        assert_eq!(
            member_addresses(&recs),
            vec![
                "127.0.0.1:9001".parse::<SocketAddrV4>().expect("addr"),
                "127.0.0.1:9002".parse().expect("addr"),
            ]
        );
    }
}
