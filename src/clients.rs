//! The connected clients of this respite instance, so that CLIENT ID / LIST / INFO / KILL /
//! UNBLOCK and PUBSUB NUMPAT can answer for the caller's own tenant (Redis' own answers would
//! show every tenant's connections).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

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
    /// Cancelled by CLIENT KILL.
    pub kill: CancellationToken,
    /// Redis' id of the session's upstream connection, 0 while it has none.
    pub upstream_id: AtomicI64,
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

    /// One CLIENT LIST line, in Redis' field order.
    pub fn info_line(&self, now: Instant) -> String {
        let s = self.state.lock().unwrap();
        let text = |b: &Option<Bytes>| {
            b.as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        let idle = s.last_active.map_or(0, |t| now.duration_since(t).as_secs());
        let flags = if s.subscribed() {
            "P"
        } else if s.multi >= 0 {
            "x"
        } else {
            "N"
        };
        format!(
            "id={} addr={} laddr={} fd=-1 name={} age={} idle={} flags={} db=0 sub={} psub={} \
             ssub={} multi={} cmd={} user={} redir=-1 resp={} lib-name={} lib-ver={}",
            self.shown_id(),
            self.addr,
            self.laddr,
            text(&s.name),
            now.duration_since(self.created).as_secs(),
            idle,
            flags,
            s.sub,
            s.psub,
            s.ssub,
            s.multi,
            match s.last_command {
                None => "NULL".to_string(),
                Some((c, None)) => String::from_utf8_lossy(c).into_owned(),
                Some((c, Some(sub))) => format!(
                    "{}|{}",
                    String::from_utf8_lossy(c),
                    String::from_utf8_lossy(sub)
                ),
            },
            s.tenant.as_deref().unwrap_or("default"),
            s.protocol.max(2),
            text(&s.lib_name),
            text(&s.lib_ver),
        )
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
            kill: CancellationToken::new(),
            upstream_id: AtomicI64::new(0),
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
