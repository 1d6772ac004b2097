//! The connected clients of this respite instance, so that CLIENT ID / LIST / INFO / KILL /
//! UNBLOCK and PUBSUB NUMPAT can answer for the caller's own tenant (Redis' own answers would
//! show every tenant's connections).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use dashmap::DashMap;
use tokio_util::sync::{
    CancellationToken, WaitForCancellationFuture, WaitForCancellationFutureOwned,
};

/// A switch thrown once (a connection killed, the server stopping): a cancellation token
/// to wait on, and a flag beside it to look at. A session looks on every pass of its loop,
/// and the token's own `is_cancelled` takes a lock (two tokens, twice a pass: about 400
/// instructions per request at pipeline 1, callgrind).
#[derive(Clone, Default, Debug)]
pub struct Switch {
    token: CancellationToken,
    thrown: Arc<AtomicBool>,
}

impl Switch {
    pub fn new() -> Switch {
        Switch::default()
    }

    /// Throws it: the flag first, so that whoever the token wakes sees it.
    pub fn cancel(&self) {
        self.thrown.store(true, Ordering::Release);
        self.token.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.thrown.load(Ordering::Acquire)
    }

    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    pub fn cancelled_owned(self) -> WaitForCancellationFutureOwned {
        self.token.cancelled_owned()
    }
}

/// What CLIENT LIST shows of a connection, updated by its session.
#[derive(Debug, Default, Clone)]
pub struct ClientState {
    pub tenant: Option<String>,
    pub name: Option<Bytes>,
    pub lib_name: Option<Bytes>,
    pub lib_ver: Option<Bytes>,
    pub protocol: u8,
    /// (command, subcommand) of the last request, from the command table.
    pub last_command: Option<(&'static [u8], Option<&'static [u8]>)>,
    pub last_active: Option<Instant>,
    pub sub: usize,
    pub psub: usize,
    pub ssub: usize,
    /// Commands queued in MULTI, or -1 outside one.
    pub multi: i64,
    /// Cluster mode: the node (`host`, `port`) of its pinned connection, whose `upstream_id`
    /// CLIENT UNBLOCK names.
    pub upstream_node: Option<(String, u16)>,
    /// It logged in with a token: a reload that changes the token settings closes it.
    pub by_token: bool,
    /// It never logged in and acts as `server.default_tenant`: a reload that changes the
    /// default closes it.
    pub by_default: bool,
    /// The database it has selected.
    pub db: u32,
}

/// One client connection.
pub struct Client {
    /// This instance's number for the connection (the registry's key, logs).
    pub id: u64,
    /// The number its tenant sees (CLIENT ID, LIST, KILL ID, UNBLOCK): counted per tenant,
    /// so that it tells nothing of other tenants' connections.
    pub shown_id: AtomicU64,
    pub addr: SocketAddr,
    pub laddr: SocketAddr,
    pub created: Instant,
    pub state: Mutex<ClientState>,
    /// Thrown by CLIENT KILL (and output limits, reloads, an expired login).
    pub kill: Switch,
    /// Redis' id of the session's upstream connection, 0 while it has none.
    pub upstream_id: AtomicI64,
    /// Its upstream connection takes redirected invalidations (`__redis__:invalidate`).
    pub invalidations: std::sync::atomic::AtomicBool,
    /// Its buffers, for CLIENT LIST.
    pub buffers: Buffers,
}

impl ClientState {
    /// Does the connection hold a subscription (pub/sub mode)?
    pub fn subscribed(&self) -> bool {
        self.sub + self.psub + self.ssub > 0
    }
}

impl Client {
    pub fn shown_id(&self) -> u64 {
        self.shown_id.load(Ordering::Relaxed)
    }

    pub fn tenant_is(&self, tenant: &str) -> bool {
        self.state.lock().unwrap().tenant.as_deref() == Some(tenant)
    }

    /// Redis' client type: what CLIENT LIST TYPE and CLIENT KILL TYPE select by. respite's
    /// clients are never masters or replicas.
    pub fn client_type(&self) -> ClientType {
        match self.state.lock().unwrap().subscribed() {
            true => ClientType::Pubsub,
            false => ClientType::Normal,
        }
    }

    /// One CLIENT LIST line: the fields of `version` (Redis' own for that version, in its
    /// order), with this connection's figures.
    pub fn info_line(&self, now: Instant, version: Version) -> String {
        let state = self.state.lock().unwrap();
        let line = Line {
            client: self,
            state: &state,
            now,
        };
        let mut out = String::with_capacity(400);
        for field in FIELDS.iter().filter(|f| f.since <= version) {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(field.name);
            out.push('=');
            (field.put)(&line, &mut out);
        }
        out
    }
}

/// A Redis version (`redis_version`): the fields of CLIENT LIST and the filters of CLIENT
/// KILL depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u16, pub u16, pub u16);

impl Version {
    /// Assumed until Redis has said its version: the Redis respite's command table is from.
    pub const ASSUMED: Version = Version(7, 0, 15);

    /// `7.2.4` → 7.2.4; a missing part is 0.
    pub fn parse(text: &str) -> Option<Version> {
        let mut parts = text.trim().split('.').map(|p| p.parse::<u16>());
        let major = parts.next()?.ok()?;
        let minor = parts.next().unwrap_or(Ok(0)).ok()?;
        let patch = parts.next().unwrap_or(Ok(0)).ok()?;
        Some(Version(major, minor, patch))
    }
}

/// Redis' client types (`getClientTypeByName`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientType {
    Normal,
    Replica,
    Pubsub,
    Master,
}

impl ClientType {
    pub fn parse(name: &[u8]) -> Option<ClientType> {
        Some(match name.to_ascii_lowercase().as_slice() {
            b"normal" => ClientType::Normal,
            b"slave" | b"replica" => ClientType::Replica,
            b"pubsub" => ClientType::Pubsub,
            b"master" => ClientType::Master,
            _ => return None,
        })
    }
}

/// Which of a tenant's connections CLIENT KILL closes (its filters, as Redis'
/// `clientKillCommand` reads them: the last of a kind counts). USER needs no field: the
/// only user a tenant may name is its own, which all its connections have.
#[derive(Debug)]
pub struct KillFilter {
    pub id: Option<u64>,
    pub addr: Option<String>,
    pub laddr: Option<String>,
    pub kind: Option<ClientType>,
    /// Only connections older than this many seconds (MAXAGE, Redis 7.4).
    pub max_age: Option<u64>,
    pub skip_me: bool,
}

impl KillFilter {
    /// Before any filter is given: every connection, the caller as `skip_me` says.
    pub fn new(skip_me: bool) -> KillFilter {
        KillFilter {
            id: None,
            addr: None,
            laddr: None,
            kind: None,
            max_age: None,
            skip_me,
        }
    }

    /// Does `c` pass every filter given? (SKIPME is the caller's to apply.)
    pub fn matches(&self, c: &Client, now: Instant) -> bool {
        self.id.is_none_or(|id| c.shown_id() == id)
            && self.addr.as_ref().is_none_or(|a| c.addr.to_string() == *a)
            && self
                .laddr
                .as_ref()
                .is_none_or(|a| c.laddr.to_string() == *a)
            && self.kind.is_none_or(|k| c.client_type() == k)
            && self
                .max_age
                .is_none_or(|age| now.duration_since(c.created).as_secs() > age)
    }
}

/// What a connection's buffers hold, as its session last published it (once per pass of its
/// loop, and again before it answers CLIENT INFO / LIST itself).
#[derive(Debug, Default)]
pub struct Buffers {
    /// Bytes read from the client and not parsed yet (`qbuf`), and the room after them
    /// before the input buffer must grow (`qbuf-free`).
    pub unparsed: AtomicUsize,
    pub unparsed_room: AtomicUsize,
    /// The arguments of the command being run, in bytes (`argv-mem`).
    pub argv: AtomicUsize,
    /// The output buffer: its size (`rbs`), its peak use over the last few seconds (`rbp`),
    /// and its bytes not yet written to the client (`obl`).
    pub out_size: AtomicUsize,
    pub out_peak: AtomicUsize,
    pub out_len: AtomicUsize,
    /// Replies from Redis waiting for the session, not in the output buffer yet: how many
    /// (`oll`) and their bytes (`omem`), like Redis' reply list beyond its buffer.
    pub waiting: AtomicUsize,
    pub waiting_bytes: AtomicUsize,
    /// What the connection holds in memory, estimated (`tot-mem`).
    pub total: AtomicUsize,
    /// Whether respite reads from the client now, and has output for it (`events`).
    pub reading: AtomicBool,
    pub writing: AtomicBool,
}

/// What one CLIENT LIST line is made from.
struct Line<'a> {
    client: &'a Client,
    state: &'a ClientState,
    now: Instant,
}

impl Line<'_> {
    fn figure(&self, of: impl Fn(&Buffers) -> &AtomicUsize) -> usize {
        of(&self.client.buffers).load(Ordering::Relaxed)
    }
}

/// One field of a CLIENT LIST line: its name, the Redis version that added it, and how its
/// value is written.
struct Field {
    name: &'static str,
    since: Version,
    put: fn(&Line, &mut String),
}

/// Fields older than Redis 7.0, the oldest respite fronts.
const OLD: Version = Version(0, 0, 0);

/// CLIENT LIST's fields in Redis' order (`catClientInfoString` in networking.c), each from
/// the version that added it: `ssub` 7.0.3, `lib-name` and `lib-ver` 7.2, `watch` 7.4,
/// `io-thread` 8.0.
const FIELDS: &[Field] = &[
    field("id", OLD, |l, o| put(o, l.client.shown_id())),
    field("addr", OLD, |l, o| put(o, l.client.addr)),
    field("laddr", OLD, |l, o| put(o, l.client.laddr)),
    // Redis' number for the socket; respite's own socket numbers would mean nothing to a
    // tenant, and -1 is what Redis shows for a connection without a socket.
    field("fd", OLD, |_, o| o.push_str("-1")),
    field("name", OLD, |l, o| text(o, &l.state.name)),
    field("age", OLD, |l, o| {
        put(o, l.now.duration_since(l.client.created).as_secs())
    }),
    field("idle", OLD, |l, o| {
        let idle = l.state.last_active.map(|t| l.now.duration_since(t));
        put(o, idle.unwrap_or_default().as_secs())
    }),
    field("flags", OLD, |l, o| flags(l.state, o)),
    field("db", OLD, |l, o| put(o, l.state.db)),
    field("sub", OLD, |l, o| put(o, l.state.sub)),
    field("psub", OLD, |l, o| put(o, l.state.psub)),
    field("ssub", Version(7, 0, 3), |l, o| put(o, l.state.ssub)),
    field("multi", OLD, |l, o| put(o, l.state.multi)),
    // The keys watched are held by Redis, on the connection respite pins; respite does not
    // count them.
    field("watch", Version(7, 4, 0), |_, o| o.push('0')),
    field("qbuf", OLD, |l, o| put(o, l.figure(|b| &b.unparsed))),
    field("qbuf-free", OLD, |l, o| {
        put(o, l.figure(|b| &b.unparsed_room))
    }),
    field("argv-mem", OLD, |l, o| put(o, l.figure(|b| &b.argv))),
    // Commands queued in MULTI go on to Redis as they come: respite holds none of them.
    field("multi-mem", OLD, |_, o| o.push('0')),
    field("rbs", OLD, |l, o| put(o, l.figure(|b| &b.out_size))),
    field("rbp", OLD, |l, o| put(o, l.figure(|b| &b.out_peak))),
    field("obl", OLD, |l, o| put(o, l.figure(|b| &b.out_len))),
    field("oll", OLD, |l, o| put(o, l.figure(|b| &b.waiting))),
    field("omem", OLD, |l, o| put(o, l.figure(|b| &b.waiting_bytes))),
    field("tot-mem", OLD, |l, o| put(o, l.figure(|b| &b.total))),
    field("events", OLD, |l, o| {
        let b = &l.client.buffers;
        if b.reading.load(Ordering::Relaxed) {
            o.push('r');
        }
        if b.writing.load(Ordering::Relaxed) {
            o.push('w');
        }
    }),
    field("cmd", OLD, |l, o| match l.state.last_command {
        None => o.push_str("NULL"),
        Some((c, sub)) => {
            o.push_str(&String::from_utf8_lossy(c));
            if let Some(sub) = sub {
                o.push('|');
                o.push_str(&String::from_utf8_lossy(sub));
            }
        }
    }),
    // The tenant is the user its connections act as.
    field("user", OLD, |l, o| {
        o.push_str(l.state.tenant.as_deref().unwrap_or("default"))
    }),
    field("redir", OLD, |_, o| o.push_str("-1")),
    field("resp", OLD, |l, o| put(o, l.state.protocol.max(2))),
    field("lib-name", Version(7, 2, 0), |l, o| {
        text(o, &l.state.lib_name)
    }),
    field("lib-ver", Version(7, 2, 0), |l, o| {
        text(o, &l.state.lib_ver)
    }),
    // respite serves its clients without Redis' I/O threads: the main thread's number.
    field("io-thread", Version(8, 0, 0), |_, o| o.push('0')),
];

const fn field(name: &'static str, since: Version, put: fn(&Line, &mut String)) -> Field {
    Field { name, since, put }
}

fn put(out: &mut String, value: impl std::fmt::Display) {
    use std::fmt::Write;
    let _ = write!(out, "{value}");
}

fn text(out: &mut String, value: &Option<Bytes>) {
    if let Some(b) = value {
        out.push_str(&String::from_utf8_lossy(b));
    }
}

/// Redis' flags as far as respite's connections have them: pub/sub, MULTI, or none.
fn flags(s: &ClientState, out: &mut String) {
    let start = out.len();
    if s.subscribed() {
        out.push('P');
    }
    if s.multi >= 0 {
        out.push('x');
    }
    if out.len() == start {
        out.push('N');
    }
}

#[derive(Default)]
pub struct Registry {
    clients: DashMap<u64, Arc<Client>>,
    next_id: AtomicU64,
    /// (tenant, pattern) → how many of this instance's connections subscribe to it.
    patterns: DashMap<(String, Bytes), usize>,
}

impl Registry {
    pub fn register(&self, addr: SocketAddr, laddr: SocketAddr) -> Arc<Client> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let client = Arc::new(Client {
            id,
            shown_id: AtomicU64::new(0),
            addr,
            laddr,
            created: Instant::now(),
            state: Mutex::new(ClientState {
                multi: -1,
                upstream_node: None,
                protocol: 2,
                ..ClientState::default()
            }),
            kill: Switch::new(),
            upstream_id: AtomicI64::new(0),
            invalidations: Default::default(),
            buffers: Buffers::default(),
        });
        self.clients.insert(id, client.clone());
        client
    }

    pub fn unregister(&self, id: u64) {
        self.clients.remove(&id);
    }

    /// The tenant's connection that it knows as `shown_id`.
    pub fn get_shown(&self, tenant: &str, shown_id: u64) -> Option<Arc<Client>> {
        self.clients
            .iter()
            .find(|c| c.shown_id() == shown_id && c.tenant_is(tenant))
            .map(|c| c.clone())
    }

    /// How many connections each tenant has open (authenticated ones only).
    pub fn per_tenant(&self) -> Vec<(String, usize)> {
        let mut counts = std::collections::HashMap::<String, usize>::new();
        for c in self.clients.iter() {
            if let Some(t) = c.state.lock().unwrap().tenant.clone() {
                *counts.entry(t).or_default() += 1;
            }
        }
        counts.into_iter().collect()
    }

    /// Closes every connection that `close` picks (by its state): a reload's removed
    /// tenants, changed passwords, changed token settings. Returns how many.
    pub fn kill_where(&self, close: impl Fn(&ClientState) -> bool) -> usize {
        let mut n = 0;
        for c in self.clients.iter() {
            if close(&c.state.lock().unwrap()) {
                c.kill.cancel();
                n += 1;
            }
        }
        n
    }

    /// The tenant's connections, oldest first.
    pub fn of_tenant(&self, tenant: &str) -> Vec<Arc<Client>> {
        let mut v: Vec<_> = self
            .clients
            .iter()
            .filter(|c| c.tenant_is(tenant))
            .map(|c| c.clone())
            .collect();
        v.sort_by_key(|c| c.id);
        v
    }

    pub fn pattern_added(&self, tenant: &str, pattern: Bytes) {
        *self
            .patterns
            .entry((tenant.to_string(), pattern))
            .or_insert(0) += 1;
    }

    pub fn pattern_removed(&self, tenant: &str, pattern: Bytes) {
        let key = (tenant.to_string(), pattern);
        if let Some(mut n) = self.patterns.get_mut(&key) {
            *n -= 1;
            if *n > 0 {
                return;
            }
        }
        self.patterns.remove(&key);
    }

    /// PUBSUB NUMPAT for a tenant: distinct patterns its connections on this instance hold.
    pub fn numpat(&self, tenant: &str) -> usize {
        self.patterns.iter().filter(|e| e.key().0 == tenant).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(version: Version) -> String {
        let registry = Registry::default();
        let addr = "127.0.0.1:1".parse().unwrap();
        let line = registry
            .register(addr, addr)
            .info_line(Instant::now(), version);
        let names: Vec<_> = line
            .split(' ')
            .map(|f| f.split('=').next().unwrap())
            .collect();
        names.join(" ")
    }

    /// Each version's fields, as its `catClientInfoString` writes them.
    #[test]
    fn fields_of_each_redis_version() {
        const V7_0: &str = "id addr laddr fd name age idle flags db sub psub ssub multi qbuf \
                            qbuf-free argv-mem multi-mem rbs rbp obl oll omem tot-mem events \
                            cmd user redir resp";
        assert_eq!(names(Version(7, 0, 2)), V7_0.replace(" ssub", ""));
        assert_eq!(names(Version(7, 0, 15)), V7_0);
        assert_eq!(names(Version(7, 2, 4)), format!("{V7_0} lib-name lib-ver"));
        let v7_4 = format!(
            "{} lib-name lib-ver",
            V7_0.replace("multi ", "multi watch ")
        );
        assert_eq!(names(Version(7, 4, 0)), v7_4);
        assert_eq!(names(Version(8, 0, 2)), format!("{v7_4} io-thread"));
    }

    #[test]
    fn versions_parse() {
        assert_eq!(Version::parse("7.0.15"), Some(Version(7, 0, 15)));
        assert_eq!(Version::parse("8.0"), Some(Version(8, 0, 0)));
        assert_eq!(Version::parse("x"), None);
        assert!(Version(7, 0, 15) < Version(7, 2, 0));
    }
}
