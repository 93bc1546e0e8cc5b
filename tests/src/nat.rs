//! A NAT on loopback, for tests of clients whose public address changes mid-call.
//!
//! The server advertises the NAT's outside address as its ICE candidate (`public_ip`), so
//! clients send there. Like a home router or a pocket Wi-Fi's carrier-grade NAT, the NAT
//! gives each client address a mapping of its own: a socket on an ephemeral port from which
//! the client's datagrams go on to the server, and on which the server's answers come back.
//! [`LoopbackNat::rebind`] replaces every mapping with a fresh port and closes the old
//! one, as a NAT does when a mapping expires or the router's mobile link reconnects: the
//! server sees the same clients arrive from new addresses, and whatever it still sends to
//! the old ones is lost. [`LoopbackNat::set_blackhole`] drops everything both ways, a dead
//! link.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// Largest datagram relayed.
const MAX_DATAGRAM: usize = 2048;

/// One client's mapping: the inside socket toward the server and the task relaying its
/// answers back.
struct Mapping {
    socket: Arc<UdpSocket>,
    answers: JoinHandle<()>,
}

struct Shared {
    outside: Arc<UdpSocket>,
    server: SocketAddr,
    inside_ip: IpAddr,
    mappings: Mutex<HashMap<SocketAddr, Mapping>>,
    blackhole: AtomicBool,
}

/// A running NAT between clients and one server's media port.
pub struct LoopbackNat {
    shared: Arc<Shared>,
    clients: JoinHandle<()>,
}

impl LoopbackNat {
    /// Listens on `outside` for clients and relays to `server` from ports on `inside_ip`.
    pub async fn start(
        outside: SocketAddr,
        server: SocketAddr,
        inside_ip: IpAddr,
    ) -> anyhow::Result<LoopbackNat> {
        let socket = UdpSocket::bind(outside)
            .await
            .with_context(|| format!("binding the NAT's outside address {outside}"))?;
        let shared = Arc::new(Shared {
            outside: Arc::new(socket),
            server,
            inside_ip,
            mappings: Mutex::new(HashMap::new()),
            blackhole: AtomicBool::new(false),
        });
        let clients = tokio::spawn(relay_clients(shared.clone()));
        Ok(LoopbackNat { shared, clients })
    }

    /// Gives every client a new port toward the server and closes the old ones. Returns
    /// the (old, new) inside addresses.
    pub async fn rebind(&self) -> anyhow::Result<Vec<(SocketAddr, SocketAddr)>> {
        let clients: Vec<SocketAddr> = self.lock().keys().copied().collect();
        let mut moved = Vec::new();
        for client in clients {
            let fresh = new_mapping(&self.shared, client).await?;
            let new_addr = fresh.socket.local_addr()?;
            if let Some(old) = self.lock().insert(client, fresh) {
                moved.push((old.socket.local_addr()?, new_addr));
                old.answers.abort();
            }
        }
        Ok(moved)
    }

    /// Drops every datagram in both directions while `on`.
    pub fn set_blackhole(&self, on: bool) {
        self.shared.blackhole.store(on, Ordering::SeqCst);
    }

    /// Number of clients mapped so far.
    pub fn client_count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Mapping>> {
        self.shared
            .mappings
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for LoopbackNat {
    fn drop(&mut self) {
        self.clients.abort();
        for (_, m) in self.lock().drain() {
            m.answers.abort();
        }
    }
}

/// Opens a mapping for `client`: a fresh inside port and the task relaying what the server
/// sends to it.
async fn new_mapping(shared: &Arc<Shared>, client: SocketAddr) -> anyhow::Result<Mapping> {
    let socket = Arc::new(UdpSocket::bind(SocketAddr::new(shared.inside_ip, 0)).await?);
    let answers = tokio::spawn(relay_answers(shared.clone(), socket.clone(), client));
    Ok(Mapping { socket, answers })
}

/// Client → server: each client's datagrams leave through its current mapping.
async fn relay_clients(shared: Arc<Shared>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let Ok((len, client)) = shared.outside.recv_from(&mut buf).await else {
            return;
        };
        if shared.blackhole.load(Ordering::SeqCst) {
            continue;
        }
        let existing = shared
            .mappings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&client)
            .map(|m| m.socket.clone());
        let socket = match existing {
            Some(s) => s,
            None => {
                let Ok(m) = new_mapping(&shared, client).await else {
                    continue;
                };
                let s = m.socket.clone();
                shared
                    .mappings
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(client, m);
                s
            }
        };
        let _ = socket.send_to(&buf[..len], shared.server).await;
    }
}

/// Server → client: answers arriving on one mapping go back to its client, from the
/// outside address.
async fn relay_answers(shared: Arc<Shared>, socket: Arc<UdpSocket>, client: SocketAddr) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let Ok((len, from)) = socket.recv_from(&mut buf).await else {
            return;
        };
        if from != shared.server || shared.blackhole.load(Ordering::SeqCst) {
            continue;
        }
        let _ = shared.outside.send_to(&buf[..len], client).await;
    }
}
