//! A tenant as the rest of the pipeline sees it: its id, the key prefix every one of its keys
//! and channels lives under, and what it may do.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::config::{Config, RateSettings, ScriptRights, TenantConfig};
use crate::metrics::TenantStats;
use crate::quota::Ledger;

#[derive(Debug)]
pub struct Tenant {
    pub id: String,
    /// `tenant:<id>:`, the namespace of the tenant's channels and of its keys in database
    /// 0 (see [`Tenant::db_prefix`] for the others).
    pub prefix: Bytes,
    /// The databases its connections may SELECT (0 to `databases - 1`).
    pub databases: u32,
    /// What its scripts may do: run at all, run unconfined, for how long.
    pub scripts: ScriptRights,
    /// Its byte usage and quota, when quotas are on.
    pub ledger: Option<Arc<Ledger>>,
    /// Key prefixes every tenant shares (`[shared] prefixes`): never namespaced, read-only
    /// unless `publisher`.
    pub shared: Arc<[Bytes]>,
    /// May write shared keys.
    pub publisher: bool,
    /// `role = "admin"`: may also run the server-wide commands `policy` keeps for
    /// operators; its keys stay in its namespace. Set from its `[[tenants]]` entry only.
    pub admin: bool,
    /// Its commands, hits, bytes and latencies on this instance.
    pub stats: Arc<TenantStats>,
    /// Connections it may hold at once on this instance; `None`: no cap.
    pub max_clients: Option<usize>,
    /// Its share of the pinned pool (`pinned_max`); `None`: the pool's bound only.
    pub pinned: Option<Arc<crate::upstream::Share>>,
    /// Its clients' unread replies and their bound (`output_limit_bytes`).
    pub output: Option<Arc<crate::upstream::OutputTotal>>,
    /// Its request and byte rates on this instance (`ops_per_second`, `bytes_per_second`).
    pub rates: Option<Arc<crate::rate::Rates>>,
    rate_settings: RateSettings,
    /// `rate_limit = "refuse"`: past a rate (its own, or the origin's fetch rate) it gets an
    /// error rather than a delay or a nil.
    pub refuse_past_rates: bool,
    /// Its caps on commands of unbounded cost (`max_subscriptions`, `max_random_count`).
    pub caps: crate::config::Caps,
    /// Cluster mode: its reads may go to a replica of the key's master.
    pub reads_replicas: bool,
    /// The `[plans.<name>]` its settings come from, if any.
    pub plan: Option<String>,
    /// What it gathers while respite runs, kept when a reload changes its settings.
    pub live: Arc<Live>,
}

/// What a tenant gathers while respite runs. A reload builds the tenant anew from the new
/// settings; this part (and its figures, its ledger, and its rates, pinned share and
/// output total where their settings stay) carries over.
#[derive(Debug, Default)]
pub struct Live {
    /// The last connection number given out (CLIENT ID counts per tenant).
    pub clients_numbered: AtomicU64,
    /// What its limits did on this instance.
    pub limited: Limited,
    /// One walk of its namespace at a time (DBSIZE, KEYS, RANDOMKEY, FLUSHDB, INFO's
    /// keyspace), whichever of its connections asks; the last DBSIZE (when its walk began,
    /// of which database, the count), for callers who asked before that.
    pub walks: tokio::sync::Mutex<Option<(std::time::Instant, u32, u64)>>,
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
pub struct Seat(Arc<Live>);

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
            databases: crate::config::DEFAULT_DATABASES,
            scripts,
            ledger: None,
            shared: Arc::new([]),
            publisher: false,
            admin: false,
            stats: Arc::default(),
            max_clients: None,
            pinned: None,
            output: None,
            rates: None,
            rate_settings: RateSettings::default(),
            refuse_past_rates: false,
            caps: crate::config::Caps::default(),
            reads_replicas: false,
            plan: None,
            live: Arc::default(),
        }
    }

    /// Tenant `t` as `config` sets it up (its own settings, else its plan's, else
    /// `[defaults]`), with a ledger when `quotas` are kept. `was` is the same tenant before
    /// a reload: what it gathered carries over (its ledger takes the new limits).
    pub fn from_config(
        config: &Config,
        t: &TenantConfig,
        shared: &Arc<[Bytes]>,
        quotas: bool,
        was: Option<&Tenant>,
    ) -> Tenant {
        let id = t.id.get_ref();
        let mut tenant = Tenant::new(id, config.tenant_scripts(t));
        if let Some(was) = was {
            tenant.stats = was.stats.clone();
            tenant.live = was.live.clone();
        }
        tenant.max_clients = config.tenant_max_clients(t);
        tenant.databases = config.tenant_databases(t);
        // The same share and output total across rebuilds, resized: a rebuild (a reload,
        // a token's new plan) must not hand the tenant a fresh budget beside the one its
        // connections hold.
        tenant.pinned =
            config
                .tenant_pinned_max(t)
                .map(|max| match was.and_then(|w| w.pinned.as_ref()) {
                    Some(share) => {
                        share.resize(max);
                        share.clone()
                    }
                    None => Arc::new(crate::upstream::Share::new(max)),
                });
        tenant.caps = config.tenant_caps(t);
        tenant.reads_replicas = config.tenant_reads_replicas(t);
        let rates = config.tenant_rates(t);
        tenant.refuse_past_rates = rates.refuse;
        tenant.rate_settings = rates;
        tenant.rates = match was {
            Some(w) if w.rate_settings == rates => w.rates.clone(),
            _ => crate::rate::Rates::new(
                rates.ops_per_second,
                rates.bytes_per_second,
                match rates.refuse {
                    true => crate::rate::Past::Refuse,
                    false => crate::rate::Past::Delay,
                },
            )
            .map(Arc::new),
        };
        tenant.output =
            config
                .tenant_output_limit(t)
                .map(|limit| match was.and_then(|w| w.output.as_ref()) {
                    Some(total) => {
                        total.set_limit(limit);
                        total.clone()
                    }
                    None => Arc::new(crate::upstream::OutputTotal::new(limit)),
                });
        tenant.shared = shared.clone();
        tenant.publisher = t.role.get_ref() == "publisher";
        tenant.admin = t.role.get_ref() == "admin";
        tenant.plan = t.plan.as_ref().map(|p| p.get_ref().clone());
        if quotas {
            let limits = config.limits(t);
            tenant.ledger = Some(match was.and_then(|w| w.ledger.as_ref()) {
                Some(ledger) => {
                    ledger.set_limits(limits);
                    ledger.clone()
                }
                None => Arc::new(Ledger::new(id, limits)),
            });
        }
        tenant
    }

    /// A place for one more connection, unless the tenant holds `max_clients` already.
    pub fn seat(self: &Arc<Self>) -> Option<Seat> {
        let max = self.max_clients.unwrap_or(usize::MAX);
        self.live
            .seated
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Seat(self.live.clone()))
    }

    /// Connections it holds now on this instance.
    pub fn connections(&self) -> usize {
        self.live.seated.load(Ordering::Relaxed)
    }

    /// The number of the tenant's next connection, as CLIENT ID shows it.
    pub fn number_client(&self) -> u64 {
        self.live.clients_numbered.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Its role, as its `[[tenants]]` entry names it (INFO's `# Tenant`).
    pub fn role(&self) -> &'static str {
        match (self.admin, self.publisher) {
            (true, _) => "admin",
            (_, true) => "publisher",
            _ => "tenant",
        }
    }

    /// The namespace of the tenant's keys in database `db`: `tenant:<id>:` for database 0
    /// (where its keys were before it had others), `tenant:<id>@<db>:` beyond. An id has
    /// no `@` and no `:`, so no database's prefix begins another's, or another tenant's
    /// (`namespace::own_prefix` reads them back).
    pub fn db_prefix(&self, db: u32) -> Bytes {
        match db {
            0 => self.prefix.clone(),
            n => Bytes::from(format!("tenant:{}@{n}:", self.id)),
        }
    }

    /// Is `key` (as the tenant wrote it) a shared key?
    pub fn is_shared(&self, key: &[u8]) -> bool {
        self.shared.iter().any(|p| key.starts_with(p))
    }
}
