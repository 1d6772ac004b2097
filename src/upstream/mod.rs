//! The upstream boundary: how sessions reach Redis.
//!
//! Two kinds of connection (shared/DESIGN.md, "Upstream"):
//!
//! - **shared** ([`shared`]): a few connections per protocol (RESP2 and RESP3), each driven by
//!   one task that takes the requests of many sessions, writes whatever is queued in one
//!   write, and routes the replies back in order. Commands without connection state go here:
//!   this is what beats a 1:1 proxy when clients send one command at a time, and it bounds
//!   the connections Redis sees whatever the client count.
//! - **pinned** ([`pinned`]): a connection from a bounded pool that one session holds while
//!   connection state lives (MULTI, WATCH, blocking commands, subscriptions, tracking), then
//!   returns clean (RESET and the login again) or closes.
//!
//! In cluster mode ([`cluster`]) every master has its own shared connections, and each
//! session sends each request to its slot's node and puts the replies back in its order
//! ([`cluster::Flight`]).
//!
//! Every connection logs in with the URL's credentials, selects the URL's database and speaks
//! its protocol ([`Connector`]). After a failed attempt, attempts are spaced out (exponential
//! backoff, capped), so a dead Redis costs each command one fast error and the first attempt
//! after the window finds a Redis that is back.

pub mod cluster;
mod facts;
mod health;
pub mod inbox;
mod meter;
mod outbox;
mod own;
pub mod pinned;
pub mod shared;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

use crate::config::UpstreamAddr;
use crate::error::UpstreamError;
use crate::transport::Stream;
use crate::wire::encode_request;
use crate::wire::{next_frame, Frame};

pub use facts::Facts;
pub use health::Readiness;
pub use meter::{OutputMeter, OutputTotal};
pub use own::{OwnConn, OwnPool, PoolError};
pub use pinned::{Pinned, Share};

pub use inbox::{Replies, Reply, Sink};

thread_local! {
    /// The worker thread this is (1 to `server.threads`), 0 on any other thread.
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the calling thread as worker `n` (see [`Upstream::shared`]).
pub fn set_worker(n: usize) {
    WORKER.with(|w| w.set(n));
}

/// The worker thread this is, 0 on a thread that is none.
pub fn worker() -> usize {
    WORKER.with(|w| w.get())
}

const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

#[derive(Default)]
struct Gate {
    failures: u32,
    retry_at: Option<Instant>,
    last_error: String,
}

/// What happened between respite and Redis, for /metrics.
#[derive(Debug, Default)]
pub struct UpstreamCounters {
    /// Connection attempts that failed.
    pub connect_errors: std::sync::atomic::AtomicU64,
    /// Connections made after a failed attempt.
    pub reconnects: std::sync::atomic::AtomicU64,
    /// Requests given up on after `command_timeout_ms`.
    pub timeouts: std::sync::atomic::AtomicU64,
}

/// Opens (and re-initialises) connections to Redis.
pub struct Connector {
    pub counters: UpstreamCounters,
    addr: UpstreamAddr,
    connect_timeout: Duration,
    /// How long a command may wait for its reply before its session gives up on Redis.
    pub command_timeout: Duration,
    gate: Mutex<Gate>,
    version: Mutex<Option<String>>,
    /// Cluster mode: each connection says READONLY, so that a replica serves reads of its
    /// master's slots (a master ignores it).
    readonly: bool,
    /// `rediss://`: what the TLS handshake trusts.
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// One connection to Redis.
pub struct Conn {
    pub stream: Stream,
    /// Bytes read from Redis, not yet framed.
    pub rbuf: BytesMut,
    /// 2 or 3.
    pub protocol: u8,
    /// Redis' CLIENT ID of this connection.
    pub client_id: i64,
}

impl Connector {
    /// `tls`: the TLS config for a `rediss://` address (ignored for `redis://`).
    pub fn new(
        addr: UpstreamAddr,
        tls: Option<Arc<rustls::ClientConfig>>,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Self {
        Connector {
            tls: tls.filter(|_| addr.tls),
            addr,
            connect_timeout,
            command_timeout,
            counters: UpstreamCounters::default(),
            gate: Mutex::new(Gate::default()),
            version: Mutex::new(None),
            readonly: false,
        }
    }

    /// A connector for a cluster node: its connections say READONLY.
    pub fn cluster_node(
        addr: UpstreamAddr,
        tls: Option<Arc<rustls::ClientConfig>>,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Self {
        Connector {
            readonly: true,
            ..Connector::new(addr, tls, connect_timeout, command_timeout)
        }
    }

    /// Not backing off after a failed connection attempt.
    pub fn healthy(&self) -> bool {
        let gate = self.gate.lock().unwrap();
        gate.retry_at.is_none_or(|t| Instant::now() >= t)
    }

    /// The host this connector connects to.
    pub fn host(&self) -> &str {
        &self.addr.host
    }

    /// The port this connector connects to.
    pub fn port(&self) -> u16 {
        self.addr.port
    }

    /// `redis_version` of the upstream, once any connection has been made.
    pub fn redis_version(&self) -> Option<String> {
        self.version.lock().unwrap().clone()
    }

    pub fn command_timeout_ms(&self) -> u64 {
        self.command_timeout.as_millis() as u64
    }

    pub async fn connect(&self, protocol: u8) -> Result<Conn, UpstreamError> {
        {
            let gate = self.gate.lock().unwrap();
            if gate.retry_at.is_some_and(|t| Instant::now() < t) {
                return Err(UpstreamError::Backoff(gate.last_error.clone()));
            }
        }
        let result = self.try_connect(protocol).await;
        let mut gate = self.gate.lock().unwrap();
        let count = |c: &std::sync::atomic::AtomicU64| {
            c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        };
        match &result {
            Ok(_) => {
                if gate.failures > 0 {
                    count(&self.counters.reconnects);
                }
                *gate = Gate::default();
            }
            Err(e) => {
                count(&self.counters.connect_errors);
                gate.failures = gate.failures.saturating_add(1);
                let wait = BACKOFF_FIRST
                    .saturating_mul(1 << gate.failures.min(10))
                    .min(BACKOFF_MAX);
                gate.retry_at = Some(Instant::now() + wait);
                gate.last_error = e.to_string();
                let addr = format!("{}:{}", self.addr.host, self.addr.port);
                tracing::warn!(%addr, error = %e, retry_in_ms = wait.as_millis() as u64, "upstream connect failed");
            }
        }
        result
    }

    async fn try_connect(&self, protocol: u8) -> Result<Conn, UpstreamError> {
        let a = &self.addr;
        let addr = format!("{}:{}", a.host, a.port);
        let connect_err = |reason: String| UpstreamError::Connect {
            addr: addr.clone(),
            reason,
        };
        // The TLS handshake is part of connecting: one timeout for both.
        let stream = tokio::time::timeout(self.connect_timeout, async {
            let tcp = TcpStream::connect((a.host.as_str(), a.port))
                .await
                .map_err(|e| connect_err(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            match &self.tls {
                None => Ok(Stream::plain(tcp)),
                Some(config) => Stream::tls(tcp, config.clone(), &a.host)
                    .await
                    .map_err(|e| connect_err(format!("TLS handshake failed: {e}"))),
            }
        })
        .await
        .map_err(|_| connect_err(format!("timed out after {:?}", self.connect_timeout)))??;
        let mut conn = Conn {
            stream,
            rbuf: BytesMut::with_capacity(16 * 1024),
            protocol,
            client_id: 0,
        };
        self.handshake(&mut conn, false).await?;
        Ok(conn)
    }

    /// Puts a used connection back into the state of a new one: RESET (which drops MULTI,
    /// WATCH, subscriptions, tracking, NO-EVICT, the protocol and the login), then the login.
    pub async fn reset(&self, conn: &mut Conn) -> Result<(), UpstreamError> {
        self.handshake(conn, true).await
    }

    /// The handshake, pipelined: [RESET], [AUTH], [SELECT], HELLO (protocol, id, version).
    async fn handshake(&self, conn: &mut Conn, reset: bool) -> Result<(), UpstreamError> {
        let a = &self.addr;
        let mut out = BytesMut::new();
        if reset {
            encode_request(&mut out, [&b"RESET"[..]].into_iter());
        }
        let mut steps = 0;
        if let Some(pass) = &a.password {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(user) = &a.username {
                args.push(user.as_bytes());
            }
            args.push(pass.expose().as_bytes());
            encode_request(&mut out, args.into_iter());
            steps += 1;
        }
        if a.db != 0 {
            let db = a.db.to_string();
            encode_request(&mut out, [&b"SELECT"[..], db.as_bytes()].into_iter());
            steps += 1;
        }
        if self.readonly {
            encode_request(&mut out, [&b"READONLY"[..]].into_iter());
        }
        let proto = conn.protocol.to_string();
        encode_request(&mut out, [&b"HELLO"[..], proto.as_bytes()].into_iter());
        let login_err =
            |f: &Frame| UpstreamError::Login(String::from_utf8_lossy(&f.raw).trim().to_string());
        let work = async {
            conn.write_all(&out).await?;
            if reset {
                // Whatever the last holder left in flight (late pushes) ends at +RESET.
                loop {
                    let f = conn.read_frame_any().await?;
                    if &f[..] == b"+RESET\r\n" {
                        break;
                    }
                }
            }
            // AUTH and SELECT answer +OK or -ERR, the same bytes in RESP2 and RESP3; HELLO
            // answers in the protocol it asks for, which `conn.protocol` already is.
            for _ in 0..steps {
                let f = conn.read_frame().await?;
                if f.is_error() {
                    return Err(login_err(&f));
                }
            }
            if self.readonly {
                // Refused only by a node busy with a script (-BUSY): the connection is
                // still good for SCRIPT KILL, and a replica without it redirects reads to
                // its master.
                conn.read_frame().await?;
            }
            let hello = conn.read_frame().await?;
            if hello.is_error() {
                return Err(login_err(&hello));
            }
            Ok(hello)
        };
        let hello = tokio::time::timeout(self.command_timeout, work)
            .await
            .map_err(|_| UpstreamError::Timeout(self.command_timeout_ms()))??;
        for (k, v) in pairs(&hello) {
            match k.as_slice() {
                b"id" => conn.client_id = v.parse().unwrap_or(0),
                b"version" => *self.version.lock().unwrap() = Some(v),
                _ => {}
            }
        }
        Ok(())
    }
}

/// The fields of a HELLO reply (a RESP3 map or a RESP2 flat array) as strings.
fn pairs(frame: &Frame) -> Vec<(Vec<u8>, String)> {
    use redis_protocol::resp3::types::RangeFrame;
    let text = |f: &RangeFrame| match f {
        RangeFrame::Number { data, .. } => Some(data.to_string()),
        other => frame
            .str_at(other)
            .map(|b| String::from_utf8_lossy(b).into_owned()),
    };
    let tree = frame.tree();
    let flat: Vec<&RangeFrame> = match &*tree {
        RangeFrame::Map { data, .. } => data.iter().flat_map(|(k, v)| [k, v]).collect(),
        RangeFrame::Array { data, .. } => data.iter().collect(),
        _ => Vec::new(),
    };
    flat.chunks(2)
        .filter_map(|kv| match kv {
            [k, v] => Some((frame.str_at(k)?.to_vec(), text(v)?)),
            _ => None,
        })
        .collect()
}

impl Conn {
    /// Reads more bytes from Redis into `rbuf`. Cancel-safe: nothing is lost if dropped.
    /// `Ok(0)` means Redis closed the connection.
    pub async fn read_more(&mut self) -> std::io::Result<usize> {
        if self.rbuf.capacity() - self.rbuf.len() < 4096 {
            self.rbuf.reserve(16 * 1024);
        }
        self.stream.read_buf(&mut self.rbuf).await
    }

    pub fn next_frame(&mut self) -> Result<Option<Frame>, UpstreamError> {
        next_frame(&mut self.rbuf, self.protocol).map_err(UpstreamError::Protocol)
    }

    /// Writes all of `data`, and whatever TLS still holds.
    pub async fn write_all(&mut self, data: &[u8]) -> Result<(), UpstreamError> {
        self.stream
            .write_all(data)
            .await
            .map_err(|_| UpstreamError::Closed)?;
        if self.stream.unsent() {
            self.stream
                .flush()
                .await
                .map_err(|_| UpstreamError::Closed)?;
        }
        Ok(())
    }

    /// Waits for one whole frame.
    pub async fn read_frame(&mut self) -> Result<Frame, UpstreamError> {
        loop {
            if let Some(f) = self.next_frame()? {
                return Ok(f);
            }
            if self.read_more().await.map_err(|_| UpstreamError::Closed)? == 0 {
                return Err(UpstreamError::Closed);
            }
        }
    }

    /// Waits for one whole frame in whichever protocol it comes (while RESET switches a
    /// RESP3 connection back to RESP2, replies of both kinds can be in flight).
    async fn read_frame_any(&mut self) -> Result<Bytes, UpstreamError> {
        loop {
            let p = if self.rbuf.first().is_some_and(|&b| b == b'*' || b == b'$') {
                2
            } else {
                3
            };
            if let Some(f) = next_frame(&mut self.rbuf, p).map_err(UpstreamError::Protocol)? {
                return Ok(f.raw);
            }
            if self.read_more().await.map_err(|_| UpstreamError::Closed)? == 0 {
                return Err(UpstreamError::Closed);
            }
        }
    }
}

/// Everything behind the boundary: the shared connections of each protocol and the pinned
/// pool, both opened through one [`Connector`]; in cluster mode, the cluster's
/// [`cluster::Topology`], whose nodes have shared connections of their own (sessions reach
/// them through a [`cluster::Flight`]).
pub struct Upstream {
    pub connector: Arc<Connector>,
    shared_per_protocol: usize,
    /// Per worker thread (index 0: the main runtime), per protocol: a worker's sessions
    /// use the shared connections its own runtime carries, so that a request and its reply
    /// never cross threads.
    shared: Vec<[OnceLock<Vec<shared::Shared>>; 2]>,
    pub cluster: Option<Arc<cluster::Topology>>,
    pub pinned: pinned::Pool,
}

impl Upstream {
    /// `connections` shared connections per protocol (per node in a cluster), split over
    /// the `workers` threads (at least one each), at most `pinned_max` pinned ones.
    pub fn new(
        connector: Connector,
        connections: usize,
        pinned_max: usize,
        cluster: Option<Arc<cluster::Topology>>,
        workers: usize,
    ) -> Upstream {
        let connector = Arc::new(connector);
        Upstream {
            pinned: pinned::Pool::new(connector.clone(), pinned_max),
            connector,
            shared_per_protocol: connections.div_ceil(workers.max(1)).max(1),
            shared: (0..=workers)
                .map(|_| [OnceLock::new(), OnceLock::new()])
                .collect(),
            cluster,
        }
    }

    /// The shared connection a session (by its id) uses for `protocol` (one Redis), among
    /// its worker thread's (made on that worker's runtime when first asked for). Sticky, so
    /// that a session's commands keep their order.
    pub fn shared(&self, protocol: u8, session: u64) -> &shared::Shared {
        let worker = self.shared.get(worker()).unwrap_or(&self.shared[0]);
        let conns = worker[usize::from(protocol == 3)].get_or_init(|| {
            (0..self.shared_per_protocol)
                .map(|_| shared::Shared::spawn(self.connector.clone(), protocol))
                .collect()
        });
        &conns[(session % conns.len() as u64) as usize]
    }

    pub fn command_timeout(&self) -> Duration {
        self.connector.command_timeout
    }

    pub fn command_timeout_ms(&self) -> u64 {
        self.connector.command_timeout_ms()
    }

    /// The error of a request Redis did not answer within `command_timeout_ms`.
    pub fn timed_out(&self) -> UpstreamError {
        UpstreamError::Timeout(self.command_timeout_ms())
    }

    pub fn redis_version(&self) -> Option<String> {
        self.connector.redis_version()
    }
}
