//! txlab's TCP proxy: every link of the local lab (load → order, service →
//! service, service → PostgreSQL, service → broker) passes through it, so
//! network chaos can be switched on and off while a cell runs, and bytes
//! per link are counted.
//!
//! One listener per destination component, as a Kubernetes Service has one
//! address; the sender of each connection is found from the process that
//! holds its socket ([`peer`]). Faults are Chaos Mesh network faults
//! ([`crate::chaos`]); [`shaping`] says how each one maps onto a byte stream.

mod peer;
mod shaping;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

pub use crate::chaos::fault::Component;
use crate::chaos::fault::{NetworkEffect, NetworkFault};
pub use shaping::RETRANSMISSION_TIMEOUT;
use shaping::{ActiveRule, Hold};

/// Bytes that crossed one link in one direction since the proxy started.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinkTraffic {
    /// `None` when the sending process could not be told.
    pub sender: Option<Component>,
    pub receiver: Option<Component>,
    pub bytes: u64,
}

type LinkKey = (Option<Component>, Option<Component>);
type SenderList = dyn Fn() -> Vec<(u32, Component)> + Send + Sync;

/// What the listeners and connections share.
struct Shared {
    /// Switched-on network faults; replaced whole on every change.
    rules: RwLock<Arc<Vec<Arc<ActiveRule>>>>,
    /// Bumped on every change of `rules`, to wake held streams.
    generation: watch::Sender<u64>,
    routes: Mutex<BTreeMap<Component, Route>>,
    /// Lists the process ids of the components that open connections.
    senders: RwLock<Arc<SenderList>>,
    traffic: Mutex<BTreeMap<LinkKey, Arc<AtomicU64>>>,
    /// Turns at looking a sender up in /proc.
    lookups: tokio::sync::Semaphore,
}

#[derive(Default)]
struct Route {
    upstreams: Vec<SocketAddr>,
    /// Round-robin over the upstreams, one connection at a time.
    next: Arc<AtomicUsize>,
}

/// The running proxy, on threads of its own (so its CPU is told apart
/// from the driver's). Dropping it stops its listeners and connections.
pub struct Proxy {
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Not a blocking shutdown: it may be dropped inside async code.
            rt.shutdown_background();
        }
    }
}

impl Proxy {
    pub fn new() -> anyhow::Result<Proxy> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(crate::metrics::resources::PROXY_THREADS)
            .enable_all()
            .build()
            .context("starting the proxy's threads")?;
        Ok(Proxy {
            runtime: Some(runtime),
            shared: Arc::new(Shared {
                rules: RwLock::new(Arc::new(Vec::new())),
                generation: watch::Sender::new(0),
                routes: Mutex::new(BTreeMap::new()),
                senders: RwLock::new(Arc::new(Vec::new)),
                traffic: Mutex::new(BTreeMap::new()),
                lookups: tokio::sync::Semaphore::new(2),
            }),
        })
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime
            .as_ref()
            .expect("the runtime lives as long as the proxy")
    }

    /// Listens on a free loopback port for connections to `destination`
    /// and returns the port. Connections made before [`Proxy::route`] names
    /// an upstream are closed at once, as a Service without endpoints does.
    pub fn listen(&self, destination: Component) -> anyhow::Result<u16> {
        self.listen_for(destination, None)
    }

    /// Like [`Proxy::listen`], for connections known to come from
    /// `sender`: they need no look-up of their owner in /proc, which costs
    /// more the more sockets the owner holds (the load driver holds
    /// thousands under overload, and looking them up was what saturated
    /// the proxy).
    pub fn listen_from(&self, destination: Component, sender: Component) -> anyhow::Result<u16> {
        self.listen_for(destination, Some(sender))
    }

    fn listen_for(&self, destination: Component, sender: Option<Component>) -> anyhow::Result<u16> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")
            .with_context(|| format!("binding the proxy's port for {destination}"))?;
        std_listener.set_nonblocking(true)?;
        let port = std_listener.local_addr()?.port();
        let _inside = self.runtime().enter();
        let listener = TcpListener::from_std(std_listener)?;
        self.runtime()
            .spawn(accept_loop(listener, destination, sender, self.shared.clone()));
        Ok(port)
    }

    /// Where connections to `destination` go (several: load-balanced).
    pub fn route(&self, destination: Component, upstreams: Vec<SocketAddr>) {
        let mut routes = lock(&self.shared.routes);
        routes.entry(destination).or_default().upstreams = upstreams;
    }

    /// How to list the processes whose connections are told apart (asked
    /// at each new connection, so restarted processes are known).
    pub fn identify_senders(&self, list: impl Fn() -> Vec<(u32, Component)> + Send + Sync + 'static) {
        *self.shared.senders.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(list);
    }

    /// Switches a network fault on (replacing one of the same name).
    pub fn apply(&self, name: &str, fault: NetworkFault) {
        self.edit_rules(|rules| {
            rules.retain(|r| r.name != name);
            rules.push(Arc::new(ActiveRule::new(name.to_string(), fault)));
        });
    }

    /// Switches a fault off; false when none had that name.
    pub fn remove(&self, name: &str) -> bool {
        let mut found = false;
        self.edit_rules(|rules| {
            let before = rules.len();
            rules.retain(|r| r.name != name);
            found = rules.len() != before;
        });
        found
    }

    /// Switches every fault off.
    pub fn clear(&self) {
        self.edit_rules(Vec::clear);
    }

    /// Names of the faults switched on.
    pub fn active(&self) -> Vec<String> {
        current_rules(&self.shared)
            .iter()
            .map(|r| r.name.clone())
            .collect()
    }

    /// Bytes per link and direction so far.
    pub fn traffic(&self) -> Vec<LinkTraffic> {
        lock(&self.shared.traffic)
            .iter()
            .map(|(&(sender, receiver), bytes)| LinkTraffic {
                sender,
                receiver,
                bytes: bytes.load(Ordering::Relaxed),
            })
            .collect()
    }

    fn edit_rules(&self, edit: impl FnOnce(&mut Vec<Arc<ActiveRule>>)) {
        let mut guard = self.shared.rules.write().unwrap_or_else(|p| p.into_inner());
        let mut rules: Vec<Arc<ActiveRule>> = guard.as_ref().clone();
        edit(&mut rules);
        *guard = Arc::new(rules);
        drop(guard);
        self.shared.generation.send_modify(|g| *g += 1);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn current_rules(shared: &Shared) -> Arc<Vec<Arc<ActiveRule>>> {
    shared.rules.read().unwrap_or_else(|p| p.into_inner()).clone()
}

async fn accept_loop(
    listener: TcpListener,
    destination: Component,
    sender: Option<Component>,
    shared: Arc<Shared>,
) {
    let server = match listener.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    loop {
        let (client, client_addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, say: wait rather than spin on the error.
                tracing::warn!(%destination, error = %e, "the proxy could not accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let known = sender;
        tokio::spawn(connect(
            client,
            client_addr,
            server,
            destination,
            known,
            shared.clone(),
        ));
    }
}

/// One connection: tell its sender, wait out a partition, pick an
/// upstream, then pump both directions.
async fn connect(
    client: TcpStream,
    client_addr: SocketAddr,
    server: SocketAddr,
    destination: Component,
    known: Option<Component>,
    shared: Arc<Shared>,
) {
    let sender = match known {
        Some(sender) => Some(sender),
        None => identify(&shared, client_addr, server).await,
    };
    let receiver = Some(destination);
    // A partitioned link accepts but does not connect on: the caller waits
    // as it would for a SYN that never gets an answer.
    wait_open(&shared, sender, receiver).await;
    // The replicas in turn, starting from the next one; one that refuses
    // (killed, not restarted yet) is passed over, as a Service leaves out
    // an endpoint that is not ready.
    let candidates: Vec<SocketAddr> = {
        let routes = lock(&shared.routes);
        match routes.get(&destination) {
            Some(r) if !r.upstreams.is_empty() => {
                let first = r.next.fetch_add(1, Ordering::Relaxed);
                (0..r.upstreams.len())
                    .map(|k| r.upstreams[(first + k) % r.upstreams.len()])
                    .collect()
            }
            _ => Vec::new(),
        }
    };
    let mut upstream = None;
    for candidate in candidates {
        if let Ok(stream) = TcpStream::connect(candidate).await {
            upstream = Some(stream);
            break;
        }
    }
    let Some(upstream) = upstream else { return };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    tokio::spawn(pump(
        client_read,
        upstream_write,
        sender,
        receiver,
        shared.clone(),
    ));
    tokio::spawn(pump(upstream_read, client_write, receiver, sender, shared));
}

/// The component that owns the client end of a connection, from /proc.
/// A few look-ups at a time: each reads the descriptors of every process
/// listed, and hundreds at once (a burst of new connections) thrashed the
/// blocking pool without finishing any sooner.
async fn identify(shared: &Shared, client_addr: SocketAddr, server: SocketAddr) -> Option<Component> {
    let _turn = shared.lookups.acquire().await.ok()?;
    let list = shared.senders.read().unwrap_or_else(|p| p.into_inner()).clone();
    tokio::task::spawn_blocking(move || {
        let inode = peer::client_socket_inode(client_addr, server)?;
        peer::owner(inode, &list())
    })
    .await
    .ok()
    .flatten()
}

fn counter(shared: &Shared, key: LinkKey) -> Arc<AtomicU64> {
    lock(&shared.traffic).entry(key).or_default().clone()
}

/// Returns once no partition matches `sender → receiver`.
async fn wait_open(shared: &Shared, sender: Option<Component>, receiver: Option<Component>) {
    let blocked = || {
        current_rules(shared)
            .iter()
            .any(|r| r.is_partition() && matches(&r.fault, sender, receiver))
    };
    // Every chunk passes here: only a blocked stream pays for a subscription.
    if !blocked() {
        return;
    }
    // Subscribed before checking again, so a change in between is not missed.
    let mut changes = shared.generation.subscribe();
    while blocked() {
        if changes.changed().await.is_err() {
            return;
        }
    }
}

fn matches(fault: &NetworkFault, sender: Option<Component>, receiver: Option<Component>) -> bool {
    match (sender, receiver) {
        (Some(s), Some(r)) => fault.matches(s, r),
        // An unknown end matches no selector: faults only what they name.
        _ => false,
    }
}

/// Whether a fault switched on now acts on `sender → receiver`.
fn faulted(shared: &Shared, sender: Option<Component>, receiver: Option<Component>) -> bool {
    current_rules(shared)
        .iter()
        .any(|r| matches(&r.fault, sender, receiver))
}

/// Copies one direction of a connection. While no fault acts on its link
/// it copies straight through (a read, a write); once one does, it holds
/// each chunk as the faults say, for the rest of the connection.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    sender: Option<Component>,
    receiver: Option<Component>,
    shared: Arc<Shared>,
) {
    let flow = Flow {
        bytes: counter(&shared, (sender, receiver)),
        sender,
        receiver,
        shared,
    };
    let mut buf = vec![0u8; 16 * 1024];
    // Straight through: without a queue and a second task per chunk, the
    // proxy costs a fraction of the CPU (it was as busy as PostgreSQL).
    let first = loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        flow.bytes.fetch_add(n as u64, Ordering::Relaxed);
        if faulted(&flow.shared, sender, receiver) {
            break n; // read as a fault came on: it is held like the rest
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    };
    shaped(from, to, flow, buf, first).await
}

/// One direction of a proxied connection: who sends to whom, counted where.
struct Flow {
    sender: Option<Component>,
    receiver: Option<Component>,
    shared: Arc<Shared>,
    bytes: Arc<AtomicU64>,
}

/// The rest of a connection under faults: a reader and a writer, so a delay
/// holds chunks without holding back the ones behind them (pipelined
/// requests keep flowing). `first` bytes of `buf` were read already.
async fn shaped(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, flow: Flow, mut buf: Vec<u8>, first: usize) {
    let Flow {
        sender,
        receiver,
        shared,
        bytes,
    } = flow;
    let (queue, mut queued) = mpsc::channel::<(Option<Instant>, Vec<u8>)>(64);
    let writer = tokio::spawn(async move {
        while let Some((at, chunk)) = queued.recv().await {
            if let Some(at) = at {
                tokio::time::sleep_until(at).await;
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut last: Option<Instant> = None;
    let mut pending = Some(first);
    loop {
        let n = match pending.take() {
            Some(n) => n,
            None => {
                wait_open(&shared, sender, receiver).await;
                match from.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        bytes.fetch_add(n as u64, Ordering::Relaxed);
                        n
                    }
                }
            }
        };
        // A chunk read just as a partition began is held with the rest.
        wait_open(&shared, sender, receiver).await;
        let hold = hold_for(&shared, sender, receiver, n);
        // In order: a chunk never overtakes the one before it.
        let at = match (hold.until, last) {
            (Some(u), Some(l)) => Some(u.max(l)),
            (u, l) => u.or(l),
        };
        last = at;
        if queue.send((at, buf[..n].to_vec())).await.is_err() {
            break;
        }
        if let Some(after) = hold.read_after {
            tokio::time::sleep_until(after).await;
        }
    }
    drop(queue);
    let _ = writer.await;
}

/// The combined hold of every fault matching `sender → receiver`.
fn hold_for(shared: &Shared, sender: Option<Component>, receiver: Option<Component>, n: usize) -> Hold {
    let rules = current_rules(shared);
    let now = Instant::now();
    let mut hold = Hold::default();
    for rule in rules.iter().filter(|r| matches(&r.fault, sender, receiver)) {
        let h = rule.hold(n, now, hold.until.unwrap_or(now));
        hold.until = h.until.or(hold.until);
        hold.read_after = hold.read_after.max(h.read_after);
    }
    hold
}

/// What switching `fault` on locally cannot show, for the user to see.
pub fn caveats(fault: &NetworkFault) -> Option<&'static str> {
    match fault.effect {
        NetworkEffect::Shape { duplicate: Some(_), .. } => Some(
            "duplicate: TCP's receiver discards duplicated segments, so the local proxy shows no effect for it",
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
