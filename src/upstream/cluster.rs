//! A Redis Cluster behind respite: the slot map, a node handle per master, and each
//! session's [`Flight`], which carries its requests to the node owning each one's slot and
//! puts the replies back in order, so that a tenant sees one plain Redis.
//!
//! - **Slot map** ([`Topology`]): `CLUSTER SLOTS` from a known node (the masters of the last
//!   map first, then the seeds), read at start, every [`REFRESH_EVERY`] and at once after a
//!   MOVED, a failed connection or a CLUSTERDOWN, at most once per [`REFRESH_GAP`]. A new map
//!   replaces the old whole ([`SlotMap`] behind an `Arc`): a session reading it never waits.
//! - **Nodes** ([`Node`]): one per address, kept across refreshes, each with its own
//!   [`Connector`] (login, backoff, counters) and its own shared connections.
//! - **Flights** ([`Flight`]): in cluster mode a session sends its batch through its flight,
//!   with the target of each request (its slot, a replica, a node, or any master). The
//!   flight passes each run of requests for one node to that node's shared connection in one
//!   piece (the session's reply inbox, tagged with the node) and puts the replies back in
//!   the session's order, whichever node answers first, in the session's own task: a slow
//!   node holds up only the replies that come after its own in the same session, and a
//!   request crosses no task but the shared connection's, as with one Redis.
//! - **Redirects** never reach a client: MOVED updates the slot and sends the request again
//!   to the node named; ASK sends `ASKING` and the request to the node named, the map
//!   unchanged; TRYAGAIN (keys of a slot being migrated) sends it again after
//!   [`TRYAGAIN_WAIT`], until `command_timeout_ms`. After [`MAX_REDIRECTS`] redirects the
//!   request fails with `-ERR upstream unavailable`. A redirect is followed only for the
//!   request's own slot and to a node the cluster named ([`Topology::known`]), and never from
//!   a tenant's script, whose error replies are its own words.
//! - **No address reaches a client**: errors speak of "a node of the cluster"; respite's log
//!   has the addresses.
//! - **Split requests**: a request the session split by slot (MGET, DEL, MSET, ...) comes as
//!   several parts with one [`Merge`]; their replies are joined into one.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use redis_protocol::resp3::types::RangeFrame;
use tokio::sync::Notify;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;

use super::inbox::Reply;
use super::inbox::Sink;
use super::shared::Shared;
use super::Connector;
use crate::config::UpstreamAddr;
use crate::error::UpstreamError;
use crate::wire::{encode_request, next_frame, Frame, SLOTS};

/// The slot map is read again this often even when nothing suggests it changed.
pub const REFRESH_EVERY: Duration = Duration::from_secs(2);
/// At most one refresh per this, however many redirects and failures ask for one.
pub const REFRESH_GAP: Duration = Duration::from_millis(100);
/// Redirects one request may follow.
pub const MAX_REDIRECTS: u8 = 5;
/// Before a TRYAGAIN is tried again.
pub const TRYAGAIN_WAIT: Duration = Duration::from_millis(20);

/// Where one request goes.
#[derive(Clone)]
pub enum Target {
    /// Any master (a command with no key).
    Any,
    /// The master of this slot.
    Slot(u16),
    /// A replica of this slot's master that answers, else the master (a read of a tenant
    /// with `read_from_replicas`).
    Replica(u16),
    /// This node (a tenant-wide walk, one master at a time).
    Node(Arc<Node>),
}

/// How the replies of a split request become one reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Merge {
    /// Arrays, concatenated (MGET); with an order, element `i` of the reply is element
    /// `order[i]` of the concatenation (keys of one slot were sent together).
    Concat(Option<Arc<[u32]>>),
    /// Integers, summed (DEL, UNLINK, EXISTS, TOUCH).
    Sum,
    /// `+OK` from every part is `+OK` (MSET).
    AllOk,
}

/// One request of a batch: its encoded length, where it goes, and, on the first part of a
/// split request, how its parts' replies are joined and how many parts there are.
pub struct Part {
    pub len: usize,
    pub target: Target,
    pub join: Option<(Merge, usize)>,
    /// A tenant's script (or a login around one): its error replies are the tenant's own
    /// words, so a redirect in them is never followed (see `State::redirect`).
    pub script: bool,
}

/// Requests, errors and redirects of one node, for /metrics.
#[derive(Debug, Default)]
pub struct NodeCounters {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub redirects: AtomicU64,
}

/// One Redis node: its address, its connector and its shared connections.
pub struct Node {
    id: u64,
    /// `host:port`.
    pub addr: String,
    pub host: String,
    pub port: u16,
    pub connector: Arc<Connector>,
    pub counters: NodeCounters,
    per_protocol: usize,
    shared: [OnceLock<Vec<Shared>>; 2],
}

impl Node {
    /// The node's shared connection for `protocol` that a session (`lane`, its id) uses:
    /// always the same one, so that the requests a session sends a node are answered in
    /// order.
    fn shared(&self, protocol: u8, lane: usize) -> &Shared {
        let conns = self.shared[usize::from(protocol == 3)].get_or_init(|| {
            (0..self.per_protocol)
                .map(|_| Shared::spawn(self.connector.clone(), protocol))
                .collect()
        });
        &conns[lane % conns.len()]
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.addr)
    }
}

/// Which master serves each slot, as one node last said.
pub struct SlotMap {
    /// Index into `masters` per slot; `NONE` where no master serves it.
    owner: Vec<u16>,
    masters: Vec<Arc<Node>>,
    /// The replicas of each master, by the master's index.
    replicas: Vec<Vec<Arc<Node>>>,
}

const NONE: u16 = u16::MAX;

impl SlotMap {
    fn empty() -> SlotMap {
        SlotMap {
            owner: vec![NONE; SLOTS as usize],
            masters: Vec::new(),
            replicas: Vec::new(),
        }
    }

    /// A replica of `slot`'s master that is not backing off after a failure (by `pick`,
    /// to spread sessions), else the master.
    pub fn reader(&self, slot: u16, pick: u64) -> Option<&Arc<Node>> {
        let at = *self.owner.get(slot as usize)? as usize;
        let replicas = self.replicas.get(at).map_or(&[][..], |r| &r[..]);
        let healthy: Vec<&Arc<Node>> = replicas.iter().filter(|r| r.connector.healthy()).collect();
        match healthy.is_empty() {
            true => self.masters.get(at),
            false => Some(healthy[(pick % healthy.len() as u64) as usize]),
        }
    }

    pub fn master(&self, slot: u16) -> Option<&Arc<Node>> {
        self.masters.get(*self.owner.get(slot as usize)? as usize)
    }

    /// The masters that serve at least one slot.
    pub fn masters(&self) -> &[Arc<Node>] {
        &self.masters
    }

    /// How many slots have a master.
    pub fn served(&self) -> usize {
        self.owner.iter().filter(|&&o| o != NONE).count()
    }
}

/// The slot map, the nodes, and what keeps the map current.
pub struct Topology {
    map: RwLock<Arc<SlotMap>>,
    nodes: Mutex<HashMap<String, Arc<Node>>>,
    seeds: Vec<UpstreamAddr>,
    /// `rediss://` seeds: every node is reached over TLS, trusting this.
    tls: Option<Arc<rustls::ClientConfig>>,
    connect_timeout: Duration,
    command_timeout: Duration,
    per_protocol: usize,
    wake: Notify,
    next_id: AtomicU64,
    /// Slot maps read, and attempts that failed.
    pub refreshes: AtomicU64,
    pub refresh_errors: AtomicU64,
    last_error: Mutex<String>,
}

impl Topology {
    /// `seeds` carry the credentials every node is logged in with; `per_protocol` shared
    /// connections per node and protocol.
    pub fn new(
        seeds: Vec<UpstreamAddr>,
        tls: Option<Arc<rustls::ClientConfig>>,
        connect_timeout: Duration,
        command_timeout: Duration,
        per_protocol: usize,
    ) -> Topology {
        Topology {
            map: RwLock::new(Arc::new(SlotMap::empty())),
            nodes: Mutex::new(HashMap::new()),
            seeds,
            tls,
            connect_timeout,
            command_timeout,
            per_protocol: per_protocol.max(1),
            wake: Notify::new(),
            next_id: AtomicU64::new(1),
            refreshes: AtomicU64::new(0),
            refresh_errors: AtomicU64::new(0),
            last_error: Mutex::new("the slot map has not been read yet".into()),
        }
    }

    /// The slot map now.
    pub fn map(&self) -> Arc<SlotMap> {
        self.map.read().unwrap().clone()
    }

    /// Every node met so far, masters or not, by address.
    pub fn nodes(&self) -> Vec<Arc<Node>> {
        let mut nodes: Vec<_> = self.nodes.lock().unwrap().values().cloned().collect();
        nodes.sort_by(|a, b| a.addr.cmp(&b.addr));
        nodes
    }

    /// The node at `host:port`, made on first use: only for addresses the cluster itself
    /// gives (CLUSTER SLOTS, a node's CLUSTER NODES, the seeds), never a reply's text.
    pub fn node(&self, host: &str, port: u16) -> Arc<Node> {
        let addr = format!("{host}:{port}");
        let mut nodes = self.nodes.lock().unwrap();
        if let Some(n) = nodes.get(&addr) {
            return n.clone();
        }
        let seed = &self.seeds[0];
        let node = Arc::new(Node {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            addr: addr.clone(),
            host: host.to_string(),
            port,
            connector: Arc::new(Connector::cluster_node(
                UpstreamAddr {
                    host: host.to_string(),
                    port,
                    username: seed.username.clone(),
                    password: seed.password.clone(),
                    db: 0,
                    tls: seed.tls,
                },
                self.tls.clone(),
                self.connect_timeout,
                self.command_timeout,
            )),
            counters: NodeCounters::default(),
            per_protocol: self.per_protocol,
            shared: [OnceLock::new(), OnceLock::new()],
        });
        nodes.insert(addr, node.clone());
        node
    }

    /// The node at `host:port` if the cluster named it (in CLUSTER SLOTS, or as a seed):
    /// a redirect is followed only there, never to an address a reply merely spells.
    pub fn known(&self, host: &str, port: u16) -> Option<Arc<Node>> {
        self.nodes
            .lock()
            .unwrap()
            .get(&format!("{host}:{port}"))
            .cloned()
    }

    /// Asks for the slot map to be read again soon (rate-limited by the watcher).
    pub fn refresh_soon(&self) {
        self.wake.notify_one();
    }

    /// Why the slot map is not known, while it is not.
    pub fn last_error(&self) -> String {
        self.last_error.lock().unwrap().clone()
    }

    /// A MOVED: `slot` is served by `node` now. The map is updated at once (a copy with
    /// that slot changed) and read again soon, as other slots may have moved with it.
    fn moved(&self, slot: u16, node: &Arc<Node>) {
        let mut map = self.map.write().unwrap();
        if map.master(slot).is_some_and(|m| Arc::ptr_eq(m, node)) {
            return;
        }
        let mut owner = map.owner.clone();
        let mut masters = map.masters.clone();
        let mut replicas = map.replicas.clone();
        let at = match masters.iter().position(|m| Arc::ptr_eq(m, node)) {
            Some(i) => i,
            None => {
                masters.push(node.clone());
                replicas.push(Vec::new());
                masters.len() - 1
            }
        };
        owner[slot as usize] = at as u16;
        *map = Arc::new(SlotMap {
            owner,
            masters,
            replicas,
        });
        drop(map);
        self.refresh_soon();
    }

    /// The node a MOVED or ASK error (`-MOVED <slot> <host>:<port>`, from the node `from`
    /// connects to) sends a request to, and whether it is an ASK; a MOVED updates the map.
    /// `None` for anything else, and for a node the cluster never named.
    pub fn follow(&self, error: &[u8], from: &Connector) -> Option<(Arc<Node>, bool)> {
        let text = error.strip_prefix(b"-")?.strip_suffix(b"\r\n")?;
        let asking = text.starts_with(b"ASK ");
        if !asking && !text.starts_with(b"MOVED ") {
            return None;
        }
        let (slot, host, port) = parse_redirect(text, from.host())?;
        let node = self.known(&host, port)?;
        if !asking {
            self.moved(slot, &node);
        }
        Some((node, asking))
    }

    /// Reads the slot map from the first node that answers: the masters of the current
    /// map, then the seeds.
    pub async fn refresh(&self) -> Result<(), String> {
        let mut candidates: Vec<Arc<Node>> = self.map().masters.clone();
        for s in &self.seeds {
            let n = self.node(&s.host, s.port);
            if !candidates.iter().any(|c| Arc::ptr_eq(c, &n)) {
                candidates.push(n);
            }
        }
        let mut why = String::new();
        for node in candidates {
            match self.read_slots(&node).await {
                Ok(map) => {
                    *self.map.write().unwrap() = Arc::new(map);
                    self.refreshes.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err(e) => why = format!("{}: {e}", node.addr),
            }
        }
        self.refresh_errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap() = why.clone();
        Err(why)
    }

    async fn read_slots(&self, node: &Arc<Node>) -> Result<SlotMap, String> {
        let mut conn = node.connector.connect(2).await.map_err(|e| e.to_string())?;
        let mut out = BytesMut::new();
        encode_request(&mut out, [&b"CLUSTER"[..], b"SLOTS"].into_iter());
        let frame = tokio::time::timeout(self.command_timeout, async {
            conn.write_all(&out).await?;
            conn.read_frame().await
        })
        .await
        .map_err(|_| "CLUSTER SLOTS: no reply".to_string())?
        .map_err(|e| e.to_string())?;
        if frame.is_error() {
            return Err(String::from_utf8_lossy(&frame.raw).trim().to_string());
        }
        let asked_host = node.connector.host().to_string();
        let mut map = SlotMap::empty();
        for range in frame.elements().unwrap_or_default() {
            let Some(f) = crate::wire::elements(range) else {
                continue;
            };
            let (Some(start), Some(end), Some(master)) =
                (number(f.first()), number(f.get(1)), f.get(2))
            else {
                continue;
            };
            let Some((host, port)) = endpoint(&frame, master, &asked_host) else {
                continue;
            };
            let master = self.node(&host, port);
            let at = match map.masters.iter().position(|m| Arc::ptr_eq(m, &master)) {
                Some(i) => i,
                None => {
                    map.masters.push(master);
                    map.replicas.push(Vec::new());
                    map.masters.len() - 1
                }
            };
            for replica in &f[3.min(f.len())..] {
                if let Some((host, port)) = endpoint(&frame, replica, &asked_host) {
                    let node = self.node(&host, port);
                    if !map.replicas[at].iter().any(|r| Arc::ptr_eq(r, &node)) {
                        map.replicas[at].push(node);
                    }
                }
            }
            let (start, end) = (start.clamp(0, 16383) as usize, end.clamp(0, 16383) as usize);
            for o in &mut map.owner[start..=end] {
                *o = at as u16;
            }
        }
        if map.masters.is_empty() {
            return Err("CLUSTER SLOTS named no master".into());
        }
        Ok(map)
    }

    /// Keeps the slot map current until `stop`: every [`REFRESH_EVERY`], and soon after
    /// anyone asks ([`Topology::refresh_soon`]), at most once per [`REFRESH_GAP`].
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(REFRESH_EVERY) => {}
            }
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "cannot read the cluster's slot map");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(REFRESH_GAP) => {}
            }
        }
    }
}

/// A node of a `CLUSTER SLOTS` range, `[host, port, id, ...]`: its host (empty or `?`: the
/// host respite asked) and port.
fn endpoint(frame: &Frame, node: &RangeFrame, asked_host: &str) -> Option<(String, u16)> {
    let fields = crate::wire::elements(node)?;
    let host = fields
        .first()
        .and_then(|h| frame.str_at(h))
        .map(|h| String::from_utf8_lossy(h).into_owned())
        .filter(|h| !h.is_empty() && h != "?")
        .unwrap_or_else(|| asked_host.to_string());
    let port = number(fields.get(1)).and_then(|p| u16::try_from(p).ok())?;
    Some((host, port))
}

/// A replica's refusal to serve yet (`-LOADING`, `-MASTERDOWN`): its master may.
fn unready(frame: &Frame) -> bool {
    frame.raw.starts_with(b"-LOADING") || frame.raw.starts_with(b"-MASTERDOWN")
}

fn number(f: Option<&RangeFrame>) -> Option<i64> {
    match f? {
        RangeFrame::Number { data, .. } => Some(*data),
        _ => None,
    }
}

/// One request waiting for its reply.
struct Entry {
    seq: u64,
    bytes: Bytes,
    target: Target,
    redirects: u8,
    started: Instant,
    join: Option<(Merge, usize)>,
    /// The first part of a split request: how many of its parts are not answered yet.
    left: usize,
    /// A later part of a split request: its first part's seq.
    head: Option<u64>,
    script: bool,
    done: Option<Result<Frame, UpstreamError>>,
}

/// What went to a node, in order: its replies come back in the same order.
enum Sent {
    /// Sent by respite itself (the `ASKING` before an ASK-redirected request): its reply is
    /// dropped.
    Skip,
    Request {
        seq: u64,
    },
}

/// One session's requests in flight in a cluster: each goes straight to its node's shared
/// connection (the session's sink tagged with the node), and the replies, which come back
/// in each node's order, are put back in the session's own order here, in the session's
/// task: a request and its reply cross no other task than the shared connection's.
pub struct Flight {
    topology: Arc<Topology>,
    /// The session: its replies' inbox and generation, and its id (which master takes
    /// its requests without keys, which of each node's shared connections it uses).
    sink: Sink,
    session: u64,
    protocol: u8,
    timeout: Duration,
    entries: VecDeque<Entry>,
    /// What went to each node (by its id), in order: a handful of nodes, looked up in turn.
    sent: Vec<(u64, Arc<Node>, VecDeque<Sent>)>,
    retries: Vec<(Instant, u64)>,
    next_seq: u64,
    /// Replies in the session's order, ready to be taken.
    ready: Vec<Result<Frame, UpstreamError>>,
}

impl Flight {
    /// A session's flight: `sink` is where its replies come, `session` its id.
    pub fn new(topology: Arc<Topology>, sink: Sink, session: u64) -> Flight {
        let timeout = topology.command_timeout;
        Flight {
            topology,
            sink,
            session,
            protocol: 2,
            timeout,
            entries: VecDeque::new(),
            sent: Vec::new(),
            retries: Vec::new(),
            next_seq: 0,
            ready: Vec::new(),
        }
    }

    /// Sends a batch (`data`, requests back to back; `plan` says where each goes), each run
    /// of requests for one node to it in one piece. `sink` is the session's now (after it
    /// gave up on a request, a new generation).
    pub fn send(&mut self, data: Bytes, plan: Vec<Part>, sink: &Sink, protocol: u8) {
        if self.sink.generation != sink.generation || !Arc::ptr_eq(&self.sink.meter, &sink.meter) {
            self.sink = sink.clone();
        }
        self.protocol = protocol;
        let map = self.topology.map();
        let now = Instant::now();
        let mut at = 0;
        // Runs of consecutive requests for one node: (node, their seqs, their bytes).
        let mut runs: Vec<(Arc<Node>, Vec<u64>, std::ops::Range<usize>)> = Vec::new();
        let mut failed = Vec::new();
        let mut broken = false;
        let mut head: Option<(u64, usize)> = None;
        for part in plan {
            let seq = self.next_seq;
            self.next_seq += 1;
            let node = resolve(&map, &part.target, self.session);
            let span = at..at + part.len;
            let (left, of) = match (&part.join, head) {
                (Some((_, n)), _) => {
                    head = Some((seq, n - 1));
                    (*n, None)
                }
                (None, Some((h, more))) if more > 0 => {
                    head = Some((h, more - 1));
                    (0, Some(h))
                }
                _ => (0, None),
            };
            self.entries.push_back(Entry {
                seq,
                bytes: data.slice(span.clone()),
                target: part.target,
                redirects: 0,
                started: now,
                join: part.join,
                left,
                head: of,
                script: part.script,
                done: None,
            });
            match (node, runs.last_mut()) {
                (None, _) => {
                    failed.push(seq);
                    broken = true;
                }
                (Some(node), Some((n, seqs, bytes))) if !broken && Arc::ptr_eq(n, &node) => {
                    seqs.push(seq);
                    bytes.end = span.end;
                }
                (Some(node), _) => {
                    runs.push((node, vec![seq], span));
                    broken = false;
                }
            }
            at += part.len;
        }
        for (node, seqs, bytes) in runs {
            send(self, &node, &seqs, data.slice(bytes), Resend::No);
        }
        if !failed.is_empty() {
            let e = self.no_master();
            for seq in failed {
                self.finish(seq, Err(e.clone()));
            }
            self.deliver();
        }
    }

    /// Takes a reply from a node's shared connection (its tag names the node): the answer to
    /// the oldest request sent there, unless it is a redirect, which sends the request on.
    /// The replies now next in the session's order are then [`Flight::take_ready`]'s.
    pub fn take(&mut self, r: Reply) {
        self.answer(r);
        self.deliver();
    }

    /// The replies ready, in the session's order (hand the emptied list back with
    /// [`Flight::give_back`], so that it is not allocated again per reply).
    pub fn take_ready(&mut self) -> Vec<Result<Frame, UpstreamError>> {
        std::mem::take(&mut self.ready)
    }

    pub fn give_back(&mut self, mut ready: Vec<Result<Frame, UpstreamError>>) {
        if self.ready.is_empty() {
            ready.clear();
            self.ready = ready;
        }
    }

    /// Requests in flight (answered or not, not yet taken).
    pub fn in_flight(&self) -> usize {
        self.entries.len()
    }

    /// When the next TRYAGAIN (or a redirect to a node not in the map yet) is due again.
    pub fn next_retry(&self) -> Option<Instant> {
        self.retries.iter().map(|r| r.0).min()
    }

    /// Forgets everything in flight: the session gave up on it (a new generation, whose
    /// replies it will not take); `sink` is the session's from now on, so that the old one's
    /// meter is let go (what it counted leaves the tenant's total with it).
    pub fn reset(&mut self, sink: &Sink) {
        self.sink = sink.clone();
        self.entries.clear();
        self.sent.clear();
        self.retries.clear();
        self.ready.clear();
    }

    fn no_master(&self) -> UpstreamError {
        self.topology.refresh_soon();
        tracing::warn!(why = %self.topology.last_error(), "no master known for a slot");
        UpstreamError::Cluster("no master of the cluster serves the key's slot".into())
    }

    fn finish(&mut self, seq: u64, result: Result<Frame, UpstreamError>) {
        let Some(e) = self.entry(seq) else {
            return;
        };
        e.done = Some(result);
        // A split request's part: one fewer for its first part to wait on.
        let head = match (e.head, e.join.is_some()) {
            (Some(h), _) => h,
            (None, true) => seq,
            (None, false) => return,
        };
        if let Some(h) = self.entry(head) {
            h.left = h.left.saturating_sub(1);
        }
    }

    fn entry(&mut self, seq: u64) -> Option<&mut Entry> {
        let i = self.entries.binary_search_by_key(&seq, |e| e.seq).ok()?;
        self.entries.get_mut(i)
    }

    fn answer(&mut self, r: Reply) {
        let Some((_, node, fifo)) = self.sent.iter_mut().find(|s| s.0 == r.tag) else {
            return;
        };
        let node = node.clone();
        let Some(Sent::Request { seq }) = fifo.pop_front() else {
            if let Ok(f) = &r.result {
                self.sink.meter.taken(f.raw.len());
            }
            return;
        };
        let result = match r.result {
            Ok(frame) if unready(&frame) => {
                let len = frame.raw.len();
                let answer = self.read_from_master(seq, Ok(frame));
                if answer.is_none() {
                    // Sent to the master: this reply is not the session's.
                    self.sink.meter.taken(len);
                }
                answer
            }
            Ok(frame) if frame.raw.first() == Some(&b'-') => {
                let len = frame.raw.len();
                let answer = self.redirect(&node, seq, frame);
                if !matches!(answer, Some(Ok(_))) {
                    // Followed, or replaced by respite's own error: not the session's.
                    self.sink.meter.taken(len);
                }
                answer
            }
            Ok(frame) => Some(Ok(frame)),
            Err(e) => {
                node.counters.errors.fetch_add(1, Ordering::Relaxed);
                self.topology.refresh_soon();
                tracing::debug!(node = %node.addr, error = %e, "a request failed on a node");
                self.read_from_master(seq, Err(e))
            }
        };
        if let Some(result) = result {
            self.finish(seq, result);
        }
    }

    /// An error reply: a redirect is followed (`None`: the request is on its way again);
    /// anything else is the answer. A redirect is followed only to a node the cluster named
    /// and only for the request's own slot. A script's errors are the tenant's own words
    /// (`redis.error_reply('MOVED ...')`), so a MOVED or ASK from a script is never followed
    /// (it could point anywhere, or run the script twice): the client is told to try again.
    fn redirect(
        &mut self,
        from: &Arc<Node>,
        seq: u64,
        frame: Frame,
    ) -> Option<Result<Frame, UpstreamError>> {
        let text = &frame.raw[1..frame.raw.len().saturating_sub(2)];
        let word = text.split(|&b| b == b' ').next().unwrap_or_default();
        match word {
            b"MOVED" | b"ASK" | b"TRYAGAIN" => {}
            b"CLUSTERDOWN" => {
                self.topology.refresh_soon();
                return Some(Ok(frame));
            }
            _ => return Some(Ok(frame)),
        }
        let timeout = self.timeout;
        let topology = self.topology.clone();
        let entry = self.entry(seq)?;
        if entry.script {
            if word == b"TRYAGAIN" {
                // Names no node: as Redis said it (or as the script made it).
                return Some(Ok(frame));
            }
            topology.refresh_soon();
            return Some(Err(UpstreamError::Cluster(
                "the script's keys are moving to another node of the cluster; try again".into(),
            )));
        }
        if word == b"TRYAGAIN" {
            if entry.started.elapsed() + TRYAGAIN_WAIT >= timeout {
                return Some(Ok(frame));
            }
            self.retries.push((Instant::now() + TRYAGAIN_WAIT, seq));
            return None;
        }
        from.counters.redirects.fetch_add(1, Ordering::Relaxed);
        entry.redirects += 1;
        let for_this = |slot: u16| match entry.target {
            Target::Slot(s) | Target::Replica(s) => s == slot,
            Target::Any | Target::Node(_) => true,
        };
        let parsed = parse_redirect(text, from.connector.host());
        let Some((slot, host, port)) = parsed.filter(|(slot, ..)| for_this(*slot)) else {
            // Not a redirect of this request's slot: whatever it says, it names a node the
            // client must not see.
            topology.refresh_soon();
            return Some(Err(UpstreamError::Cluster(
                "a node of the cluster answered with a redirect respite cannot follow".into(),
            )));
        };
        if entry.redirects > MAX_REDIRECTS {
            topology.refresh_soon();
            return Some(Err(UpstreamError::Cluster(format!(
                "more than {MAX_REDIRECTS} redirects for slot {slot}"
            ))));
        }
        let asking = word == b"ASK";
        let Some(node) = topology.known(&host, port) else {
            // A node the map does not have yet (just added): sent again by the map once it
            // has been read again.
            topology.refresh_soon();
            self.retries.push((Instant::now() + REFRESH_GAP, seq));
            return None;
        };
        let bytes = entry.bytes.clone();
        if !asking {
            topology.moved(slot, &node);
        }
        send(self, &node, &[seq], bytes, Resend::Yes { asking });
        None
    }

    /// A read a replica failed (its connection broke, it is loading, or it lost its
    /// master): a read is safe to send again, to the slot's master (`None`: on its way);
    /// anything else is answered with `failed`.
    fn read_from_master(
        &mut self,
        seq: u64,
        failed: Result<Frame, UpstreamError>,
    ) -> Option<Result<Frame, UpstreamError>> {
        let map = self.topology.map();
        let entry = self.entry(seq)?;
        let Target::Replica(slot) = entry.target else {
            return Some(failed);
        };
        let Some(master) = map.master(slot).cloned() else {
            return Some(failed);
        };
        entry.target = Target::Slot(slot);
        let bytes = entry.bytes.clone();
        send(self, &master, &[seq], bytes, Resend::Yes { asking: false });
        None
    }

    /// Sends again the requests whose wait is over (TRYAGAIN, or a redirect to a node the
    /// map did not have yet), to their slot's master now.
    pub fn retry_due(&mut self) {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = self.retries.drain(..).partition(|r| r.0 <= now);
        self.retries = later;
        let map = self.topology.map();
        for (_, seq) in due {
            let Some(e) = self.entry(seq) else {
                continue;
            };
            let (bytes, target) = (e.bytes.clone(), e.target.clone());
            match resolve(&map, &target, self.session) {
                Some(node) => send(self, &node, &[seq], bytes, Resend::Yes { asking: false }),
                None => {
                    let e = self.no_master();
                    self.finish(seq, Err(e));
                }
            }
        }
        self.deliver();
    }

    /// Moves every reply that is next in the session's order to `ready`.
    fn deliver(&mut self) {
        let protocol = self.protocol;
        while let Some(first) = self.entries.front() {
            let parts = first.join.as_ref().map_or(1, |(_, n)| *n);
            let ready = match first.join {
                Some(_) => first.left == 0,
                None => first.done.is_some(),
            };
            if !ready || self.entries.len() < parts {
                break;
            }
            let result = match first.join.clone() {
                Some((merge, _)) => {
                    let done: Vec<_> = self.entries.drain(..parts).filter_map(|e| e.done).collect();
                    // The parts' replies become one: counted as it.
                    for f in done.iter().flatten() {
                        self.sink.meter.taken(f.raw.len());
                    }
                    let result = merged(merge, done, protocol);
                    if let Ok(f) = &result {
                        self.sink.meter.arrived(f.raw.len());
                    }
                    result
                }
                None => {
                    let e = self.entries.pop_front().expect("the first entry");
                    e.done.expect("done")
                }
            };
            self.ready.push(result);
        }
    }
}

/// The node a request goes to now, if one is known.
fn resolve(map: &SlotMap, target: &Target, session: u64) -> Option<Arc<Node>> {
    match target {
        Target::Slot(s) => map.master(*s).cloned(),
        Target::Replica(s) => map.reader(*s, session).cloned(),
        Target::Node(n) => Some(n.clone()),
        Target::Any => {
            let m = map.masters();
            (!m.is_empty()).then(|| m[(session % m.len() as u64) as usize].clone())
        }
    }
}

/// How a request goes to a node.
enum Resend {
    /// First time, as the session encoded it.
    No,
    /// Again, after a redirect (after an `ASKING` when `asking`) or a failed replica read.
    Yes { asking: bool },
}

/// Sends requests `seqs` (encoded back to back in `data`) to `node`'s shared connection,
/// their replies tagged with the node.
fn send(f: &mut Flight, node: &Arc<Node>, seqs: &[u64], data: Bytes, how: Resend) {
    let at = match f.sent.iter().position(|s| s.0 == node.id) {
        Some(i) => i,
        None => {
            f.sent.push((node.id, node.clone(), VecDeque::new()));
            f.sent.len() - 1
        }
    };
    let fifo = &mut f.sent[at].2;
    let requests = seqs.iter().map(|&seq| Sent::Request { seq });
    let (data, count) = match how {
        Resend::No => {
            fifo.extend(requests);
            (data, seqs.len())
        }
        Resend::Yes { asking } => {
            let mut count = seqs.len();
            let mut b = BytesMut::with_capacity(data.len() + 16);
            if asking {
                fifo.push_back(Sent::Skip);
                b.extend_from_slice(b"*1\r\n$6\r\nASKING\r\n");
                count += 1;
            }
            fifo.extend(requests);
            b.extend_from_slice(&data);
            (b.freeze(), count)
        }
    };
    node.counters
        .requests
        .fetch_add(seqs.len() as u64, Ordering::Relaxed);
    let lane = f.session as usize;
    let to = Sink {
        tag: node.id,
        ..f.sink.clone()
    };
    node.shared(f.protocol, lane).submit(&data, count, to);
}

/// `MOVED <slot> <host>:<port>` or `ASK ...`: the slot and the node named. An endpoint with
/// no host (`:6380`) is on the host of the node that answered.
fn parse_redirect(text: &[u8], from: &str) -> Option<(u16, String, u16)> {
    let text = std::str::from_utf8(text).ok()?;
    let mut words = text.split(' ');
    let _ = words.next()?;
    let slot: u16 = words.next()?.parse().ok()?;
    let endpoint = words.next()?;
    let (host, port) = endpoint.rsplit_once(':')?;
    let host = match host.trim_start_matches('[').trim_end_matches(']') {
        "" | "?" => from.to_string(),
        h => h.to_string(),
    };
    Some((slot, host, port.parse().ok()?))
}

/// The replies of a split request's parts as one: the first error if any part failed.
fn merged(
    merge: Merge,
    parts: Vec<Result<Frame, UpstreamError>>,
    protocol: u8,
) -> Result<Frame, UpstreamError> {
    let mut frames = Vec::with_capacity(parts.len());
    for p in parts {
        let f = p?;
        if f.is_error() {
            return Ok(f);
        }
        frames.push(f);
    }
    let mut out = BytesMut::new();
    match merge {
        Merge::Concat(None) => {
            let mut n = 0;
            let mut body = BytesMut::new();
            for f in &frames {
                n += f.elements().map_or(0, |e| e.len());
                let header = f.raw.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
                body.extend_from_slice(&f.raw[header..]);
            }
            out.extend_from_slice(b"*");
            crate::wire::put_int(&mut out, n as i64);
            out.extend_from_slice(&body);
        }
        Merge::Concat(Some(order)) => {
            // Every element of every part, in the concatenation's order, then as `order`
            // puts them back.
            let mut elements: Vec<&[u8]> = Vec::with_capacity(order.len());
            for f in &frames {
                let spans = crate::wire::element_spans(f, f.elements().unwrap_or_default());
                elements.extend(spans.into_iter().map(|s| &f.raw[s]));
            }
            out.extend_from_slice(b"*");
            crate::wire::put_int(&mut out, order.len() as i64);
            for &i in order.iter() {
                let e = elements.get(i as usize).ok_or_else(|| {
                    UpstreamError::Protocol("a split reply is missing elements".into())
                })?;
                out.extend_from_slice(e);
            }
        }
        Merge::Sum => {
            let sum: i64 = frames
                .iter()
                .map(|f| number(Some(&f.tree())).unwrap_or(0))
                .sum();
            out.extend_from_slice(b":");
            crate::wire::put_int(&mut out, sum);
        }
        Merge::AllOk => out.extend_from_slice(b"+OK\r\n"),
    }
    next_frame(&mut out, protocol)
        .map_err(UpstreamError::Protocol)?
        .ok_or_else(|| UpstreamError::Protocol("a merged reply is incomplete".into()))
}
