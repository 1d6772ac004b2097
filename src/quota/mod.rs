//! Quotas: the bytes each tenant's keys occupy in Redis, and refusing (`-OOM`) the writes that
//! would take a tenant past `quota_bytes + overage_bytes`.
//!
//! Usage lives in Redis, so that several respite instances in front of one Redis enforce one
//! figure per tenant (the hash tag keeps a tenant's bookkeeping in one cluster slot):
//!
//! ```text
//! respite:quota:{<id>}:used       sum of `sizes` and `sizes@`: the tenant's usage
//! respite:quota:{<id>}:sizes      hash: key (without tenant:<id>:) → its MEMORY USAGE when
//!                                 last measured
//! respite:quota:{<id>}:sizes@     the same for its other databases' keys (without
//!                                 tenant:<id>@, so `<db>:<key>`)
//! respite:quota:{<id>}:leases     hash: instance → "<bytes>:<expiry ms>", allowance an instance
//!                                 has reserved for writes not measured yet
//! respite:quota:reconcile         lock: one instance reconciles every tenant per interval
//! ```
//!
//! A write's way through:
//!
//! 1. **admit** ([`Quotas::admit`]): [`cost`] bounds what the write can add from its arguments
//!    (key and value lengths plus Redis' per-key and per-element overheads, the reach of
//!    SETRANGE/SETBIT/BITFIELD offsets, the sizes of the sources a COPY or *STORE copies). The
//!    bound is charged against the instance's lease without a round trip, and mostly without
//!    a lock: a session takes a small allowance along with a write, for the rest of its
//!    pipeline ([`Account`]). When the lease runs short, one script call reserves more, in
//!    chunks of 1/16 of the room left, so chunks shrink near the limit. If `used + every
//!    instance's lease + this write` would pass the limit, the write is refused before Redis
//!    sees it. So the sum of what all instances let through never passes the limit, as long
//!    as the bounds hold.
//! 2. **settle** ([`Written`], when Redis has answered, or never will): the session's
//!    [`Account`] makes the written keys dirty, a batch of replies at a time.
//! 3. **flush** (every `flush_interval_ms`): one script measures each dirty key with MEMORY
//!    USAGE, replaces its entry in `sizes`, moves `used` by the difference and hands the lease
//!    back. So the figure follows overwrites, APPEND, collections, DEL, RENAME, MULTI/EXEC as
//!    Redis itself measures them. Measuring is idempotent: a retried flush does no harm.
//! 4. **reconcile** (every `reconcile_interval_ms`, paced): HSCAN each tenant's `sizes`, and
//!    one SCAN `tenant:*` for every tenant at once (each key measured for its tenant), the
//!    same way. It catches what no command told respite about: keys that expired or were
//!    evicted, and keys written around respite. One walk of the keyspace per interval,
//!    whatever the number of tenants.
//!
//! Reads and deletes are never refused. respite's own commands go through a deadpool-redis
//! pool, not the clients' connections.

mod account;
mod cost;
mod ledger;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use deadpool_redis::redis::{self, Script};
use tokio_util::sync::CancellationToken;

use crate::command::{Command, KeyMap, CMD_DENYOOM, CMD_WRITE, KS_RO};
use crate::config::{Config, QuotaConfig, QuotaLimits};
use crate::error::{Error, UpstreamError};
use crate::upstream::{OwnPool, PoolError};
use crate::wire::{namespaced, Marks};

pub use account::{Account, Status, Written};
use cost::*;
pub use cost::{cost, Keys, WriteCost};
pub use ledger::Ledger;
use ledger::*;

/// What Redis adds to each string it stores beyond its allocation (an sds of the string's
/// length plus at most 10 bytes of header): a dict entry (24 bytes) for a key or a hash
/// field, an object header (16) for a value, a node for a list or sorted-set element. With a
/// margin: the estimate must not be below what Redis measures.
const OVERHEAD: u64 = 48;
/// A stream's first entry allocates a whole node (4736 bytes measured for one small entry).
const STREAM_NODE: u64 = 4_800;
/// A HyperLogLog can turn dense (12 KiB) on any PFADD or PFMERGE.
const DENSE_HLL: u64 = 12_400;
/// Keys measured per script call.
const MEASURE_BATCH: usize = 256;

/// Tenants flushed over one connection from the pool before it goes back (standalone).
const FLUSH_BATCH: usize = 128;
/// A lease an instance stops renewing (it died) stops counting after this long.
const LEASE_TTL_MS: u64 = 10_000;
/// The most a session takes from the lease beyond the write at hand, for its next writes
/// (a pipeline's), so that they take no lock; at most a sixteenth of what is left, so that
/// many sessions do not empty the lease between them.
const SESSION_SPARE: u64 = 8 * 1024;
/// The largest lease reserved at once (never more than 1/16 of the room left). At full
/// speed a busy instance charges tens of MB/s; each time its lease runs out, its writers
/// wait for a round trip to Redis.
const MAX_CHUNK: u64 = 8 << 20;
/// Keys with a TTL waiting to be measured again when it ends, per tenant and instance.
const MAX_EXPIRING: usize = 1_000_000;
/// Measured this long after their TTL, so that Redis has expired them.
const EXPIRY_GRACE: Duration = Duration::from_millis(5);
/// A tenant without a quota is still measured (its usage is billed), never refused.
const UNLIMITED: u64 = 1 << 50;

/// Atomically: reserve `need` (or a bigger chunk) for an instance, unless `used` plus every
/// live lease plus `need` passes the limit. Expired leases (dead instances) are dropped.
const RESERVE: &str = include_str!("scripts/reserve.lua");

/// Atomically: measure each key (KEYS[4..]; in a cluster, sizes measured by [`SIZE`] come as
/// arguments), replace its entry in `sizes`, move `used` by the difference, and take
/// `release` off the instance's lease (renewing what is left).
const MEASURE: &str = concat!(
    include_str!("scripts/usage.lua"),
    include_str!("scripts/measure.lua")
);

/// The size of one key, measured as [`MEASURE`] measures it: in a cluster, on the key's own
/// node (a script reaches the keys of one slot; the ledger's keys are in another).
const SIZE: &str = concat!(
    include_str!("scripts/usage.lua"),
    include_str!("scripts/size.lua")
);

/// The lock one instance holds while it reconciles every tenant, for an interval.
const RECONCILE_LOCK: &str = "respite:quota:reconcile";

/// EVALSHA of `script`, its keys and arguments to be added. Built as one command rather than
/// through `Script::key`, which copies every key into an allocation of its own: with a
/// batch of 256 keys, that would be most of a flush's cost in respite.
fn evalsha(script: &Script, keys: usize) -> redis::Cmd {
    let mut call = redis::cmd("EVALSHA");
    call.arg(script.get_hash()).arg(keys);
    call
}

/// Runs an [`evalsha`] call, loading the script first when Redis does not have it (it
/// restarted, or SCRIPT FLUSH).
async fn invoke<T: redis::FromRedisValue>(
    c: &mut crate::upstream::OwnConn,
    script: &Script,
    call: &redis::Cmd,
) -> redis::RedisResult<T> {
    match call.query_async(c).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            script.load_async(c).await?;
            call.query_async(c).await
        }
        other => other,
    }
}

/// Every tenant's ledger on this instance, by the tenant's prefix. Tenants come and go
/// while respite runs (a token for an unlisted tenant, a reload): a removed tenant's ledger
/// is retired, and the next flush hands its lease back.
#[derive(Debug, Default)]
pub struct Ledgers {
    by_prefix: std::sync::RwLock<std::collections::HashMap<Bytes, Arc<Ledger>>>,
    retired: Mutex<Vec<Arc<Ledger>>>,
    /// Prefixes of ledgers that woke up (see [`Ledger::wake`]) since the flusher last looked.
    wakeups: Arc<Mutex<Vec<Bytes>>>,
}

impl Ledgers {
    /// Keeps `ledger` (a tenant's, new or carried over a reload).
    pub fn insert(&self, ledger: &Arc<Ledger>) {
        let _ = ledger.wakeups.set(self.wakeups.clone());
        if ledger.awake.load(Ordering::Acquire) {
            self.wakeups.lock().unwrap().push(ledger.prefix.clone());
        }
        self.by_prefix
            .write()
            .unwrap()
            .insert(ledger.prefix.clone(), ledger.clone());
    }

    /// The tenant with this prefix is gone: its ledger's lease goes back at the next flush.
    pub fn retire(&self, prefix: &[u8]) {
        if let Some(l) = self.by_prefix.write().unwrap().remove(prefix) {
            self.retired.lock().unwrap().push(l);
        }
    }

    fn get(&self, prefix: &[u8]) -> Option<Arc<Ledger>> {
        self.by_prefix.read().unwrap().get(prefix).cloned()
    }

    /// Every ledger now, in no order.
    fn all(&self) -> Vec<Arc<Ledger>> {
        self.by_prefix.read().unwrap().values().cloned().collect()
    }
}

/// The quota bookkeeping of one respite instance: every tenant's ledger and the pool to Redis.
pub struct Quotas {
    own: OwnPool,
    /// This instance's name in the lease hashes.
    instance: String,
    settings: QuotaSettings,
    ledgers: Arc<Ledgers>,
    reserve: Script,
    measure: Script,
    size: Script,
    /// Cluster mode: the masters, to walk each one's keys.
    cluster: Option<Arc<crate::upstream::cluster::Topology>>,
}

#[derive(Debug, Clone, Copy)]
struct QuotaSettings {
    flush_interval: Duration,
    measure_delay: Duration,
    reconcile_interval: Duration,
    keys_per_second: u64,
}

impl From<&QuotaConfig> for QuotaSettings {
    fn from(q: &QuotaConfig) -> Self {
        QuotaSettings {
            flush_interval: Duration::from_millis(q.flush_interval_ms),
            measure_delay: Duration::from_millis(q.measure_delay_ms),
            reconcile_interval: Duration::from_millis(q.reconcile_interval_ms),
            keys_per_second: q.reconcile_keys_per_second,
        }
    }
}

/// A name for this instance's leases no other instance has: its pid and a random number
/// (std's hasher keys are seeded randomly per process).
fn instance_name() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    format!("{}-{:016x}", std::process::id(), h.finish())
}

impl Quotas {
    /// The bookkeeping of `ledgers`' tenants (made when a tenant or plan has a quota).
    pub fn new(
        config: &Config,
        ledgers: Arc<Ledgers>,
        own: OwnPool,
        cluster: Option<Arc<crate::upstream::cluster::Topology>>,
    ) -> Quotas {
        Quotas {
            own,
            instance: instance_name(),
            settings: (&config.quota).into(),
            ledgers,
            reserve: Script::new(RESERVE),
            measure: Script::new(MEASURE),
            size: Script::new(SIZE),
            cluster,
        }
    }

    /// How long a refusal from Redis stands without asking again.
    pub fn recent(&self) -> Duration {
        self.settings.flush_interval
    }

    /// Runs `f` on respite's own pool; failures are the bookkeeping's.
    async fn with_conn<T, F>(&self, f: F) -> Result<T, UpstreamError>
    where
        F: AsyncFnOnce(&mut crate::upstream::OwnConn) -> redis::RedisResult<T>,
    {
        self.own.run(f).await.map_err(|e| match e {
            PoolError::Timeout(ms) => UpstreamError::Timeout(ms),
            other => UpstreamError::Bookkeeping(other.to_string()),
        })
    }

    /// Charges a write against its tenant's quota, or refuses it with `-OOM`.
    pub async fn admit(&self, ledger: &Arc<Ledger>, cost: WriteCost) -> Result<Written, Error> {
        let bytes = match &cost.growth {
            Growth::None => 0,
            Growth::Bytes(b) => *b,
            Growth::CopyOf(sources, extra) => {
                let prefix = cost.db.as_ref().unwrap_or(&ledger.prefix);
                self.sizes(prefix, sources).await? + extra
            }
        };
        let Some(limits) = ledger.limits().filter(|_| bytes > 0) else {
            return Ok(Written::new(cost, 0));
        };
        let mut flushed = false;
        let mut attempts = 0;
        loop {
            let fits = match ledger.try_charge(bytes, self.settings.flush_interval, None) {
                Charge::Done => break,
                Charge::Full => false,
                Charge::Short(_) => {
                    let _one = ledger.reserving.lock().await;
                    // Another session's reservation may have covered this write meanwhile.
                    match ledger.try_charge(bytes, self.settings.flush_interval, None) {
                        Charge::Done => break,
                        Charge::Full => false,
                        Charge::Short(lacking) => {
                            attempts += 1;
                            // Another session may take a fresh grant first: ask again, a
                            // few times.
                            self.reserve(ledger, lacking).await? && attempts < 8
                        }
                    }
                }
            };
            if fits {
                continue;
            }
            if !flushed {
                // Settled writes may have shrunk (overwrites, deletes), and the lease this
                // instance holds counts as used: measure, hand it back, then retry.
                flushed = true;
                self.flush(ledger, false).await?;
                continue;
            }
            ledger.mark_full(bytes);
            ledger.refusals.fetch_add(1, Ordering::Relaxed);
            return Err(Error::Oom {
                tenant: ledger.tenant.clone(),
                used: ledger.used_with_leases().max(0) as u64,
                limit: ledger.limit(),
                quota: limits.quota,
                overage: limits.overage,
                need: bytes,
            });
        }
        ledger.count_overage(limits);
        Ok(Written::new(cost, bytes))
    }

    /// The total MEMORY USAGE of `keys`.
    async fn sizes(&self, prefix: &[u8], keys: &[Source]) -> Result<u64, UpstreamError> {
        self.with_conn(async |c| {
            let calls: Vec<redis::Cmd> = keys
                .iter()
                .map(|k| {
                    let mut usage = redis::cmd("MEMORY");
                    usage.arg("USAGE");
                    if k.mine {
                        usage.arg(&namespaced(prefix, &k.name)[..]);
                    } else {
                        usage.arg(&k.name[..]);
                    }
                    // Every element: a copy costs Redis as much anyway.
                    usage.arg("SAMPLES").arg(0);
                    usage
                })
                .collect();
            let sizes: Vec<Option<u64>> = c.each(&calls).await?;
            Ok(sizes.into_iter().flatten().sum())
        })
        .await
    }

    /// Reserves at least `need` more bytes of lease; false when the limit has no room.
    async fn reserve(&self, ledger: &Ledger, need: u64) -> Result<bool, UpstreamError> {
        let (grant, used, leased): (u64, i64, i64) = self
            .with_conn(async |c| {
                self.reserve
                    .key(&ledger.names.used)
                    .key(&ledger.names.leases)
                    .arg(&self.instance)
                    .arg(need)
                    .arg(MAX_CHUNK)
                    .arg(ledger.limit())
                    .arg(LEASE_TTL_MS)
                    .invoke_async(c)
                    .await
            })
            .await?;
        ledger.saw(used, leased);
        if grant > 0 {
            let mut l = ledger.local.lock().unwrap();
            l.granted += grant;
            l.last_grant = grant;
            l.renewed = Some(Instant::now());
            drop(l);
            ledger.wake();
        }
        Ok(grant > 0)
    }

    /// Measures the tenant's dirty keys and hands back the lease it no longer needs.
    async fn flush(&self, ledger: &Ledger, keep: bool) -> Result<(), UpstreamError> {
        let _one = ledger.flushing.lock().await;
        let f = ledger.take_flush(keep);
        // The lease goes back with the last batch, once every key is measured.
        let batches: Vec<&[Bytes]> = if f.keys.is_empty() {
            vec![&[]]
        } else {
            f.keys.chunks(MEASURE_BATCH).collect()
        };
        let last = batches.len() - 1;
        // One connection for the batches: taking one from the pool costs a PING.
        let result = self
            .with_conn(async |c| {
                for (i, keys) in batches.into_iter().enumerate() {
                    let release = if i == last { f.release } else { 0 };
                    self.measure_on(c, ledger, keys, release).await?;
                }
                Ok(())
            })
            .await;
        if result.is_err() {
            ledger.undo_flush(f);
        }
        result
    }

    /// Flushes `ledgers` over one connection: each one's keys measured and its lease
    /// handed back by one call (a ledger with more keys than one call takes flushes
    /// alone). A ledger whose call failed keeps its keys and lease for the next pass.
    async fn flush_together(&self, ledgers: &[&Arc<Ledger>], keep: bool) {
        let mut held = Vec::with_capacity(ledgers.len());
        for l in ledgers {
            let guard = l.flushing.lock().await;
            let f = l.take_flush(keep);
            if f.keys.len() > MEASURE_BATCH {
                drop(guard);
                l.undo_flush(f);
                if let Err(e) = self.flush(l, keep).await {
                    tracing::warn!(tenant = %l.tenant, error = %e, "quota flush failed; will retry");
                }
                continue;
            }
            held.push((*l, guard, f));
        }
        if held.is_empty() {
            return;
        }
        let calls: Vec<(&Ledger, &[Bytes], u64)> = held
            .iter()
            .map(|(l, _, f)| (&***l, &f.keys[..], f.release))
            .collect();
        let outcomes = self.measure_together(&calls).await;
        drop(calls);
        for (i, (l, guard, f)) in held.into_iter().enumerate() {
            let failed = match &outcomes {
                Ok(results) => results[i].as_ref().err().map(|e| e.to_string()),
                Err(e) => Some(e.to_string()),
            };
            if let Some(error) = failed {
                tracing::warn!(tenant = %l.tenant, %error, "quota flush failed; will retry");
                l.undo_flush(f);
            }
            drop(guard);
        }
    }

    async fn measure(
        &self,
        ledger: &Ledger,
        keys: &[Bytes],
        release: u64,
    ) -> Result<(), UpstreamError> {
        self.with_conn(async |c| self.measure_on(c, ledger, keys, release).await)
            .await
    }

    async fn measure_on(
        &self,
        c: &mut crate::upstream::OwnConn,
        ledger: &Ledger,
        keys: &[Bytes],
        release: u64,
    ) -> redis::RedisResult<()> {
        // A cluster: each key measured on its own node first, all in one pipeline (the
        // cluster connection sends each call to its key's node).
        let sizes: Vec<u64> = match (&self.cluster, keys.is_empty()) {
            (Some(_), false) => {
                let calls: Vec<redis::Cmd> = keys
                    .iter()
                    .map(|k| {
                        let mut call = evalsha(&self.size, 1);
                        call.arg(&k[..]);
                        call
                    })
                    .collect();
                match c.each(&calls).await {
                    Err(e)
                        if e.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                    {
                        self.size.load_async(c).await?;
                        c.each(&calls).await?
                    }
                    other => other?,
                }
            }
            _ => Vec::new(),
        };
        for call in self.measure_calls(ledger, keys, release, &sizes) {
            let (used, leased): (i64, i64) = invoke(c, &self.measure, &call).await?;
            ledger.saw(used, leased);
        }
        Ok(())
    }

    /// The measure script's calls for `keys` of `ledger`'s tenant, handing back `release`:
    /// one for database 0's keys (always: it hands the lease back), one for the other
    /// databases' keys if any (their sizes are in a hash of their own). Standalone, the
    /// script measures the keys itself; in a cluster it is given their `sizes`, measured
    /// on their own nodes.
    fn measure_calls(
        &self,
        ledger: &Ledger,
        keys: &[Bytes],
        release: u64,
        sizes: &[u64],
    ) -> Vec<redis::Cmd> {
        let of = |prefix: &[u8]| -> Vec<usize> {
            (0..keys.len())
                .filter(|&i| keys[i].starts_with(prefix))
                .collect()
        };
        let others = of(&ledger.db_stem);
        let mut calls = vec![self.measure_call(
            ledger,
            (&ledger.names.sizes, ledger.prefix.len()),
            keys,
            &of(&ledger.prefix),
            release,
            sizes,
        )];
        if !others.is_empty() {
            calls.push(self.measure_call(
                ledger,
                (&ledger.names.db_sizes, ledger.db_stem.len()),
                keys,
                &others,
                0,
                sizes,
            ));
        }
        calls
    }

    /// One measure call: the keys at `at`, into the hash `sizes.0` under their names
    /// after `sizes.1` bytes.
    fn measure_call(
        &self,
        ledger: &Ledger,
        (hash, plen): (&str, usize),
        keys: &[Bytes],
        at: &[usize],
        release: u64,
        sizes: &[u64],
    ) -> redis::Cmd {
        let local = if self.cluster.is_some() { 0 } else { at.len() };
        let mut call = evalsha(&self.measure, 3 + local);
        call.arg(&ledger.names.used)
            .arg(hash)
            .arg(&ledger.names.leases);
        for &i in &at[..local] {
            call.arg(&keys[i][..]);
        }
        call.arg(&self.instance)
            .arg(release)
            .arg(LEASE_TTL_MS)
            .arg(plen);
        for &i in at {
            if let Some(size) = sizes.get(i) {
                call.arg(&keys[i][plen..]).arg(size);
            }
        }
        call
    }

    /// Standalone: one measure call per `(ledger, keys, release)`, one after another on
    /// one connection from the pool (taking one costs a PING and an UNWATCH). Not a
    /// pipeline: Redis runs a client's pipelined scripts back to back, and a hundred of
    /// them would hold every tenant's commands for milliseconds; between calls it serves
    /// the others. Each call's outcome, in order; `Err` when no connection was had.
    async fn measure_together(
        &self,
        calls: &[(&Ledger, &[Bytes], u64)],
    ) -> Result<Vec<redis::RedisResult<()>>, UpstreamError> {
        self.with_conn(async |c| {
            let mut outcomes = Vec::with_capacity(calls.len());
            for (ledger, keys, release) in calls {
                let mut outcome = Ok(());
                for call in self.measure_calls(ledger, keys, *release, &[]) {
                    let r: redis::RedisResult<(i64, i64)> = invoke(c, &self.measure, &call).await;
                    match r {
                        Ok((used, leased)) => ledger.saw(used, leased),
                        Err(e) => {
                            outcome = Err(e);
                            break;
                        }
                    }
                }
                outcomes.push(outcome);
            }
            Ok(outcomes)
        })
        .await
    }

    /// One reconciliation pass over every tenant, unless another instance did one within the
    /// interval: each tenant's `sizes` (its own keys, measured before), then ONE walk of every
    /// tenant's keys in Redis (`tenant:*`), each key measured for its tenant. Its cost is the
    /// keyspace's, once per interval, whatever the number of tenants (a walk per tenant cost
    /// the whole keyspace per tenant). Returns whether it ran.
    pub async fn reconcile_all(&self) -> Result<bool, UpstreamError> {
        let interval_ms = self.settings.reconcile_interval.as_millis() as u64;
        let locked: Option<String> = self
            .with_conn(async |c| {
                redis::cmd("SET")
                    .arg(RECONCILE_LOCK)
                    .arg(&self.instance)
                    .arg("NX")
                    .arg("PX")
                    .arg(interval_ms.saturating_sub(100).max(1))
                    .query_async(c)
                    .await
            })
            .await?;
        if locked.is_none() {
            return Ok(false);
        }
        // Keys measured before: the ones that expired or were evicted measure as gone.
        let ledgers = self.ledgers.all();
        for ledger in &ledgers {
            let hashes = [
                (&ledger.names.sizes, &ledger.prefix),
                (&ledger.names.db_sizes, &ledger.db_stem),
            ];
            for (hash, prefix) in hashes {
                self.walk(Some(ledger), "HSCAN", hash, Some(prefix)).await?;
            }
        }
        // Keys in Redis: written around respite, or before it.
        self.walk(None, "SCAN", "tenant:*", None).await?;
        for ledger in &ledgers {
            ledger.reconciled.fetch_add(1, Ordering::Relaxed);
        }
        Ok(true)
    }

    /// Measures every key a SCAN (`target` is the MATCH pattern) or an HSCAN of `sizes`
    /// (`target` is the hash; its fields are keys without the prefix `fields` names)
    /// yields, paced: for `ledger`, or (a SCAN of every tenant's keys) for the ledger of
    /// each key's tenant.
    async fn walk(
        &self,
        ledger: Option<&Ledger>,
        how: &str,
        target: &str,
        fields: Option<&Bytes>,
    ) -> Result<(), UpstreamError> {
        let pause =
            Duration::from_secs_f64(MEASURE_BATCH as f64 / self.settings.keys_per_second as f64);
        // A SCAN walks one node: in a cluster, every master in turn.
        let nodes: Vec<Option<(String, u16)>> = match (&self.cluster, fields) {
            (Some(t), None) => t
                .map()
                .masters()
                .iter()
                .map(|n| Some((n.host.clone(), n.port)))
                .collect(),
            _ => vec![None],
        };
        for node in nodes {
            let node = node.as_ref().map(|(h, p)| (h.as_str(), *p));
            let mut cursor = 0u64;
            loop {
                let (next, items): (u64, Vec<Vec<u8>>) = self
                    .with_conn(async |c| {
                        let mut cmd = redis::cmd(how);
                        if fields.is_some() {
                            cmd.arg(target).arg(cursor);
                        } else {
                            cmd.arg(cursor).arg("MATCH").arg(target);
                        }
                        cmd.arg("COUNT").arg(MEASURE_BATCH);
                        c.on_node(&cmd, node).await
                    })
                    .await?;
                match ledger {
                    Some(ledger) => {
                        let keys: Vec<Bytes> = match fields {
                            // HSCAN yields field, value, field, value...
                            Some(prefix) => items
                                .chunks(2)
                                .map(|fv| crate::wire::namespaced(prefix, &fv[0]))
                                .collect(),
                            None => items.into_iter().map(Bytes::from).collect(),
                        };
                        if !keys.is_empty() {
                            self.measure(ledger, &keys, 0).await?;
                        }
                    }
                    None => self.measure_by_tenant(items).await?,
                }
                if next == 0 {
                    break;
                }
                cursor = next;
                tokio::time::sleep(pause).await;
            }
        }
        Ok(())
    }

    /// Measures a batch of keys of any tenants (a walk of every tenant's keys), each for its
    /// tenant's ledger; keys of tenants this instance does not know are left alone.
    async fn measure_by_tenant(&self, keys: Vec<Vec<u8>>) -> Result<(), UpstreamError> {
        let mut of: BTreeMap<&[u8], Vec<Bytes>> = BTreeMap::new();
        for key in &keys {
            // Only names respite writes: what else is under `tenant:` no tenant's
            // FLUSHALL or DBSIZE sees either.
            if let Some((id, _, _)) = crate::wire::tenant_of(key) {
                of.entry(id).or_default().push(Bytes::copy_from_slice(key));
            }
        }
        let found: Vec<(Arc<Ledger>, Vec<Bytes>)> = of
            .into_iter()
            .filter_map(|(id, keys)| {
                let prefix = [b"tenant:", id, b":"].concat();
                Some((self.ledgers.get(&prefix)?, keys))
            })
            .collect();
        if self.cluster.is_none() {
            // A batch of a thousand tenants' keys holds a key or two of each: one
            // connection for all of them, not one from the pool per tenant.
            let calls: Vec<(&Ledger, &[Bytes], u64)> =
                found.iter().map(|(l, k)| (&**l, &k[..], 0)).collect();
            for r in self.measure_together(&calls).await? {
                r.map_err(|e| UpstreamError::Bookkeeping(e.to_string()))?;
            }
            return Ok(());
        }
        for (ledger, keys) in found {
            self.measure(&ledger, &keys, 0).await?;
        }
        Ok(())
    }

    /// Every tenant's ledger now.
    pub fn ledgers(&self) -> Vec<Arc<Ledger>> {
        self.ledgers.all()
    }

    /// The figures of `ledgers`' tenants, with `used` read from Redis now (one MGET).
    pub async fn statuses(&self, ledgers: Vec<Arc<Ledger>>) -> Vec<(Arc<Ledger>, Status)> {
        if ledgers.is_empty() {
            return Vec::new();
        }
        let names: Vec<&str> = ledgers.iter().map(|l| l.names.used.as_str()).collect();
        let used: Result<Vec<Option<i64>>, _> = self
            .with_conn(async |c| redis::cmd("MGET").arg(&names).query_async(c).await)
            .await;
        ledgers
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                let u = match &used {
                    Ok(v) => v.get(i).copied().flatten().unwrap_or(0),
                    Err(_) => l.used.load(Ordering::Relaxed),
                };
                let status = l.status(u);
                (l, status)
            })
            .collect()
    }

    /// The tenant's figures, with `used` read from Redis now.
    pub async fn status(&self, ledger: &Ledger) -> Status {
        let used: Result<Option<i64>, _> = self
            .with_conn(async |c| {
                redis::cmd("GET")
                    .arg(&ledger.names.used)
                    .query_async(c)
                    .await
            })
            .await;
        let used = match used {
            Ok(u) => u.unwrap_or(0),
            Err(_) => ledger.used.load(Ordering::Relaxed),
        };
        ledger.status(used)
    }

    /// The flusher and the reconciler, until `stop`; a last flush hands the leases back.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let reconciler = tokio::spawn(self.clone().reconcile_forever(stop.clone()));
        let mut tick = tokio::time::interval(self.settings.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut awake = HashMap::new();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => break,
            }
            self.flush_all(&mut awake, true).await;
        }
        // The last flush hands every lease back: this instance is going away.
        self.flush_all(&mut awake, false).await;
        let _ = reconciler.await;
    }

    /// Flushes the ledgers that hold something (`awake`, with those that woke since the
    /// last pass) and the retired ones; a ledger left holding nothing goes to sleep. The
    /// pass costs what the tenants did, not how many there are.
    async fn flush_all(&self, awake: &mut HashMap<Bytes, Arc<Ledger>>, keep: bool) {
        let retired = std::mem::take(&mut *self.ledgers.retired.lock().unwrap());
        for l in &retired {
            awake.remove(&l.prefix);
            if let Err(e) = self.flush(l, false).await {
                tracing::warn!(tenant = %l.tenant, error = %e, "quota hand-back failed");
            }
        }
        let woken = std::mem::take(&mut *self.ledgers.wakeups.lock().unwrap());
        for prefix in woken {
            if let Some(l) = self.ledgers.get(&prefix) {
                awake.insert(prefix, l);
            }
        }
        // At the last flush, everything held goes: keys measured, leases handed back.
        let delay = self.settings.measure_delay;
        let due: Vec<&Arc<Ledger>> = awake
            .values()
            .filter(|l| match keep {
                true => l.has_work(delay),
                false => !l.quiet(),
            })
            .collect();
        // Standalone, the ledgers flush over one connection; a cluster's measure calls go
        // to each tenant's own node, one tenant at a time.
        if self.cluster.is_none() {
            for chunk in due.chunks(FLUSH_BATCH) {
                self.flush_together(chunk, keep).await;
            }
        } else {
            for l in due {
                if let Err(e) = self.flush(l, keep).await {
                    tracing::warn!(tenant = %l.tenant, error = %e, "quota flush failed; will retry");
                }
            }
        }
        awake.retain(|_, l| {
            // Asleep first, then checked: a write from now on wakes it again.
            l.awake.store(false, Ordering::SeqCst);
            if l.quiet() {
                return false;
            }
            l.awake.store(true, Ordering::SeqCst);
            true
        });
    }

    async fn reconcile_forever(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let started = Instant::now();
            let pass = tokio::select! {
                r = self.reconcile_all() => r,
                _ = stop.cancelled() => return,
            };
            if let Err(e) = pass {
                tracing::warn!(error = %e, "quota reconciliation failed");
            }
            let next = started + self.settings.reconcile_interval;
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}
