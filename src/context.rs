//! What every session shares, built once from the config by `lib::context` and handed to
//! the server, the sessions, the admin endpoints and the background tasks.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::auth::Authenticator;
use crate::clients::{Registry, Switch};
use crate::market::SharedCache;
use crate::quota::Quotas;
use crate::script::Scripts;
use crate::upstream::{Facts, OwnPool, Readiness, Upstream};
use crate::wire::Limits;

/// What every session shares.
pub struct Context {
    pub limits: Limits,
    /// The tenants and how they log in; a reload swaps them.
    pub auth: Authenticator,
    /// Where a reload reads the config from (none: the config was given, not read).
    pub source: Option<crate::config::Source>,
    /// Reloads applied and refused, and the last one's outcome.
    pub reloads: Reloads,
    pub upstream: Upstream,
    pub clients: Registry,
    /// Quota bookkeeping, when any tenant has a quota.
    pub quotas: Option<Arc<Quotas>>,
    /// The shared-key cache, when `[shared]` is configured.
    pub market: Option<Arc<SharedCache>>,
    /// respite's own connections to Redis (quota bookkeeping, shared fills, health).
    pub own: OwnPool,
    /// Whether Redis answers (for /readyz).
    pub readiness: Readiness,
    /// Redis' settings that bound what may be forwarded (RESTORE, argument sizes).
    pub facts: Facts,
    /// Per-tenant command figures are kept (`server.metrics`).
    pub metrics: bool,
    /// Tenant scripts: the prelude, their names, the tenants' ACL users, runaway kills.
    pub scripts: Scripts,
    /// Connections not yet authenticated, and at most how many, for how long.
    pub unauthenticated: Unauthenticated,
    /// The TLS listener's certificates (`[server.tls]`), replaced on reload.
    pub tls: Option<Arc<crate::transport::ServerTls>>,
    /// `server.client_output_limit_bytes` (0: no bound).
    pub client_output_limit: usize,
    /// The audit trail (`[audit]`): logins refused, reloads, server-wide commands, shared
    /// reads.
    pub audit: Arc<crate::audit::Trail>,
}

/// Config reloads (see `reload`).
#[derive(Debug, Default)]
pub struct Reloads {
    pub applied: AtomicU64,
    pub invalid: AtomicU64,
    pub last_failed: std::sync::atomic::AtomicBool,
    /// One reload at a time.
    pub applying: tokio::sync::Mutex<()>,
}

/// The connections that have not authenticated yet (`server.max_unauthenticated`,
/// `server.auth_timeout_ms`). Past the cap the oldest of them is closed to make room: a flood
/// of idle sockets can hold the places only until a real client comes, which gets one and
/// has the timeout's length to log in.
#[derive(Debug)]
pub struct Unauthenticated {
    pub max: usize,
    pub timeout: std::time::Duration,
    /// Each waiting connection's kill switch, oldest first.
    waiting: Mutex<BTreeMap<u64, Switch>>,
    next: AtomicU64,
    /// Connections closed to make room.
    pub evicted: AtomicU64,
}

impl Unauthenticated {
    pub fn new(max: usize, timeout: std::time::Duration) -> Unauthenticated {
        Unauthenticated {
            max,
            timeout,
            waiting: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        }
    }

    /// Connections waiting to log in now.
    pub fn count(&self) -> usize {
        self.waiting.lock().unwrap().len()
    }
}

/// One connection's place among those not yet authenticated, given back when dropped (it
/// authenticated, or closed).
pub struct Waiting(Arc<Context>, u64);

impl Context {
    /// A place for one more unauthenticated connection (`kill` closes it); the oldest
    /// waiting one is closed if there is no room.
    pub fn waiting(self: &Arc<Self>, kill: Switch) -> Waiting {
        let u = &self.unauthenticated;
        let id = u.next.fetch_add(1, Ordering::Relaxed);
        let mut waiting = u.waiting.lock().unwrap();
        waiting.insert(id, kill);
        while waiting.len() > u.max.max(1) {
            if let Some((_, oldest)) = waiting.pop_first() {
                oldest.cancel();
                u.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        Waiting(self.clone(), id)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0
            .unauthenticated
            .waiting
            .lock()
            .unwrap()
            .remove(&self.1);
    }
}

/// The longest tenant prefix, `tenant:` + 64 + `:`.
const MAX_PREFIX: usize = 72;

impl Context {
    /// The request limits: `[server]`'s, and never so long that a key with its prefix would
    /// pass Redis' `proto-max-bulk-len` (Redis would close a connection other tenants share).
    pub fn request_limits(&self) -> Limits {
        Limits {
            max_bulk_bytes: self
                .limits
                .max_bulk_bytes
                .min(self.facts.max_bulk().saturating_sub(MAX_PREFIX)),
            ..self.limits
        }
    }
}
