//! A tenant as the rest of the pipeline sees it: its id, the key prefix every one of its keys
//! and channels lives under, and what it may do.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::config::ScriptRights;
use crate::metrics::TenantStats;
use crate::quota::Ledger;

#[derive(Debug)]
pub struct Tenant {
    pub id: String,
    /// `tenant:<id>:`, the namespace of the tenant's keys and channels in Redis.
    pub prefix: Bytes,
    /// What its scripts may do: run at all, run unconfined, for how long.
    pub scripts: ScriptRights,
    /// Its byte usage and quota, when quotas are on.
    pub ledger: Option<Arc<Ledger>>,
    /// Key prefixes every tenant shares (`[shared] prefixes`): never namespaced, read-only
    /// unless `publisher`.
    pub shared: Arc<[Bytes]>,
    /// May write shared keys.
    pub publisher: bool,
    /// Its commands, hits, bytes and latencies on this instance.
    pub stats: Arc<TenantStats>,
    /// The last connection number given out (CLIENT ID counts per tenant).
    pub clients_numbered: AtomicU64,
    /// Connections it may hold at once on this instance; `None`: no cap.
    pub max_clients: Option<usize>,
    /// Its share of the pinned pool (`pinned_max`); `None`: the pool's bound only.
    pub pinned: Option<crate::upstream::Share>,
    /// Its clients' unread replies and their bound (`output_limit_bytes`).
    pub output: Option<Arc<crate::upstream::OutputTotal>>,
    /// What its limits did on this instance.
    pub limited: Limited,
    /// Its request and byte rates on this instance (`ops_per_second`, `bytes_per_second`).
    pub rates: Option<crate::rate::Rates>,
    /// `rate_limit = "refuse"`: past a rate (its own, or the origin's fetch rate) it gets an
    /// error rather than a delay or a nil.
    pub refuse_past_rates: bool,
    /// Its caps on commands of unbounded cost (`max_subscriptions`, `max_random_count`).
    pub caps: crate::config::Caps,
    /// Cluster mode: its reads may go to a replica of the key's master.
    pub reads_replicas: bool,
    /// One walk of its namespace at a time (DBSIZE, KEYS, RANDOMKEY, FLUSHDB, INFO's
    /// keyspace), whichever of its connections asks; the last DBSIZE and when its walk
    /// began, for callers who asked before that.
    pub walks: tokio::sync::Mutex<Option<(std::time::Instant, u64)>>,
    /// Connections it holds now (each one's [`Seat`]).
    seated: AtomicUsize,
}

/// What a tenant's limits did on this instance, for /metrics.
#[derive(Debug, Default)]
pub struct Limited {
    /// Clients closed for passing `client_output_limit_bytes` or `output_limit_bytes`.
    pub closed_for_output: AtomicU64,
    /// Misses of shared keys not fetched from the origin for its fetch rates.
    pub origin_limited: AtomicU64,
}

/// A connection's place among its tenant's `max_clients`, given back when dropped.
#[derive(Debug)]
pub struct Seat(Arc<Tenant>);

impl Drop for Seat {
    fn drop(&mut self) {
        self.0.seated.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Tenant {
    pub fn new(id: &str, scripts: ScriptRights) -> Tenant {
        Tenant {
            id: id.to_string(),
            prefix: Bytes::from(format!("tenant:{id}:")),
            scripts,
            ledger: None,
            shared: Arc::new([]),
            publisher: false,
            stats: Arc::default(),
            clients_numbered: AtomicU64::new(0),
            max_clients: None,
            pinned: None,
            output: None,
            limited: Limited::default(),
            rates: None,
            refuse_past_rates: false,
            caps: crate::config::Caps::default(),
            reads_replicas: false,
            walks: tokio::sync::Mutex::new(None),
            seated: AtomicUsize::new(0),
        }
    }

    /// A place for one more connection, unless the tenant holds `max_clients` already.
    pub fn seat(self: &Arc<Self>) -> Option<Seat> {
        let max = self.max_clients.unwrap_or(usize::MAX);
        self.seated
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Seat(self.clone()))
    }

    /// Connections it holds now on this instance.
    pub fn connections(&self) -> usize {
        self.seated.load(Ordering::Relaxed)
    }

    /// The number of the tenant's next connection, as CLIENT ID shows it.
    pub fn number_client(&self) -> u64 {
        self.clients_numbered.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Is `key` (as the tenant wrote it) a shared key?
    pub fn is_shared(&self, key: &[u8]) -> bool {
        self.shared.iter().any(|p| key.starts_with(p))
    }
}
