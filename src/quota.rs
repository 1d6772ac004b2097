//! Quotas: the bytes each tenant's keys occupy in Redis, and refusing (`-OOM`) the writes that
//! would take a tenant past `quota_bytes + overage_bytes`.
//!
//! Usage lives in Redis, so that several respite instances in front of one Redis enforce one
//! figure per tenant (the hash tag keeps a tenant's bookkeeping in one cluster slot):
//!
//! ```text
//! respite:quota:{<id>}:used       sum of `sizes`: the tenant's usage
//! respite:quota:{<id>}:sizes      hash: key (without tenant:<id>:) → its MEMORY USAGE when
//!                                 last measured
//! respite:quota:{<id>}:leases     hash: instance → "<bytes>:<expiry ms>", allowance an instance
//!                                 has reserved for writes not measured yet
//! respite:quota:{<id>}:reconcile  lock: one instance walks the tenant's keys per interval
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
//! 4. **reconcile** (every `reconcile_interval_ms`, paced): HSCAN `sizes` and SCAN
//!    `tenant:<id>:*`, measured the same way. It catches what no command told respite about:
//!    keys that expired or were evicted, and keys written around respite.
//!
//! Reads and deletes are never refused. respite's own commands go through a deadpool-redis
//! pool, not the clients' connections.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use deadpool_redis::redis::{self, Script};
use tokio_util::sync::CancellationToken;

use crate::command::{Command, KeyMap, CMD_DENYOOM, CMD_WRITE, KS_RO};
use crate::config::{Config, QuotaConfig, QuotaLimits};
use crate::error::{Error, UpstreamError};
use crate::rewrite::{namespaced, Marks};
use crate::upstream::{Own, OwnError};

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

/// The keys a write touches, as the tenant names them (without `tenant:<id>:`). A single key
/// (the common case) is taken out of the request once it has been encoded for Redis: no
/// copy, no allocation.
#[derive(Debug, Default, PartialEq, Eq)]
pub enum Keys {
    #[default]
    None,
    /// The request's argument at this index, not taken yet.
    Arg(usize),
    One(Bytes),
    Many(Vec<Bytes>),
}

impl Keys {
    fn add(&mut self, args: &[Bytes], i: usize) {
        *self = match std::mem::take(self) {
            Keys::None => Keys::Arg(i),
            Keys::Arg(j) => Keys::Many(vec![args[j].clone(), args[i].clone()]),
            Keys::One(k) => Keys::Many(vec![k, args[i].clone()]),
            Keys::Many(mut v) => {
                v.push(args[i].clone());
                Keys::Many(v)
            }
        }
    }

    /// Takes the key out of the request (sent, about to be dropped).
    pub fn take_from(&mut self, args: &mut [Bytes]) {
        if let Keys::Arg(i) = *self {
            *self = Keys::One(std::mem::take(&mut args[i]));
        }
    }

    /// Copies the key out of the request (which is still to be sent).
    pub fn clone_from(&mut self, args: &[Bytes]) {
        if let Keys::Arg(i) = *self {
            *self = Keys::One(args[i].clone());
        }
    }

    fn append(&mut self, other: Keys) {
        let mut all = match std::mem::take(self) {
            Keys::One(k) => vec![k],
            Keys::Many(v) => v,
            Keys::None | Keys::Arg(_) => Vec::new(),
        };
        match other {
            Keys::One(k) => all.push(k),
            Keys::Many(v) => all.extend(v),
            Keys::None | Keys::Arg(_) => {}
        }
        *self = Keys::Many(all);
    }

    fn to_vec(&self) -> Vec<Bytes> {
        match self {
            Keys::One(k) => vec![k.clone()],
            Keys::Many(v) => v.clone(),
            Keys::None | Keys::Arg(_) => Vec::new(),
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, Keys::None)
    }
}

/// What a write may do to the tenant's bytes, as far as the request tells.
#[derive(Debug, PartialEq, Eq)]
pub struct WriteCost {
    /// The keys it writes.
    keys: Keys,
    growth: Growth,
    /// The TTL it sets: the keys are measured again when it runs out.
    expires_in: Option<Duration>,
}

#[derive(Debug, PartialEq, Eq)]
enum Growth {
    /// Cannot grow anything (DEL, EXPIRE, LPOP, ...): measured afterwards, never refused.
    None,
    /// At most this many bytes.
    Bytes(u64),
    /// Copies these keys (COPY, SUNIONSTORE, ...): at most their size, plus this.
    CopyOf(Vec<Source>, u64),
}

impl WriteCost {
    /// `bytes` more for a write already admitted, whose keys its first charge names: what
    /// Redis measured beyond the estimate (RESTORE's payload is compressed).
    pub fn more(bytes: u64) -> WriteCost {
        WriteCost {
            keys: Keys::None,
            growth: Growth::Bytes(bytes),
            expires_in: None,
        }
    }
}

/// A key a write copies from: the tenant's own (`mine`, named in Redis behind its prefix)
/// or a shared key.
#[derive(Debug, PartialEq, Eq)]
struct Source {
    name: Bytes,
    mine: bool,
}

/// The cost of a request respite is about to forward: `args` as the tenant wrote them, the
/// `prefixed` ones its keys (which Redis names with a prefix of `prefix_len` bytes). `None`
/// when it writes none of the tenant's keys. (A publisher's writes to shared keys, which are
/// not prefixed, are not the tenant's usage.)
pub fn cost(
    cmd: &Command,
    args: &[Bytes],
    keys: &KeyMap,
    prefixed: &Marks,
    prefix_len: usize,
) -> Option<WriteCost> {
    let name = cmd.spec.name;
    let top = cmd.parent.is_none();
    let script = top && matches!(name, b"eval" | b"evalsha" | b"fcall");
    if !cmd.has(CMD_WRITE) && !script {
        return None;
    }
    let prefix_len = prefix_len as u64;
    match keys {
        KeyMap::Lone(flags) if !script => lone_key_cost(cmd, args, prefixed, prefix_len, *flags),
        _ => keyed_cost(cmd, args, keys, prefixed, prefix_len, script),
    }
}

/// [`cost`] from the key map, for any command.
fn keyed_cost(
    cmd: &Command,
    args: &[Bytes],
    keys_found: &KeyMap,
    prefixed: &Marks,
    prefix_len: u64,
    script: bool,
) -> Option<WriteCost> {
    let name = cmd.spec.name;
    let mut keys = Keys::None;
    let mut sources = Vec::new();
    // Written keys' names are stored; source keys' names are not.
    let (mut key_bytes, mut key_weight) = (0, 0);
    let mut take = |i: usize, written: bool| {
        let a = &args[i];
        key_weight += stored(a.len() as u64);
        let mine = prefixed.has(i);
        if written && mine {
            key_bytes += stored(prefix_len + a.len() as u64);
            keys.add(args, i);
        } else if !written {
            sources.push(Source {
                name: a.clone(),
                mine,
            });
        }
    };
    // A script may write any key it declares.
    let all_written = script || cmd.writes_read_keys();
    for (i, flags) in keys_found.iter() {
        take(i, flags & KS_RO == 0 || all_written);
    }
    if keys.is_empty() {
        // e.g. GEORADIUS without STORE.
        return None;
    }
    let growth = if !cmd.has(CMD_DENYOOM) && !script && !cmd.grows_without_denyoom() {
        Growth::None
    } else if !sources.is_empty() && name != b"pfmerge" {
        Growth::CopyOf(sources, key_bytes)
    } else {
        let values = args[1..]
            .iter()
            .map(|a| stored(a.len() as u64))
            .sum::<u64>()
            - key_weight;
        Growth::Bytes(key_bytes + estimate(name, args, values))
    };
    Some(WriteCost {
        keys,
        growth,
        expires_in: ttl(name, args),
    })
}

/// [`cost`] of a command whose one key is argument 1 (SET, HSET, LPUSH, APPEND, ...): the
/// common write, without a list of keys.
fn lone_key_cost(
    cmd: &Command,
    args: &[Bytes],
    prefixed: &Marks,
    prefix_len: u64,
    flags: u16,
) -> Option<WriteCost> {
    if flags & KS_RO != 0 || !prefixed.has(1) {
        return None;
    }
    let name = cmd.spec.name;
    let growth = if cmd.has(CMD_DENYOOM) {
        let values = args[2..].iter().map(|a| stored(a.len() as u64)).sum();
        Growth::Bytes(stored(prefix_len + args[1].len() as u64) + estimate(name, args, values))
    } else {
        Growth::None
    };
    Some(WriteCost {
        keys: Keys::Arg(1),
        growth,
        expires_in: ttl(name, args),
    })
}

/// The TTL a request sets, from SET/GETEX options, SETEX/PSETEX or the EXPIRE family.
fn ttl(name: &[u8], args: &[Bytes]) -> Option<Duration> {
    let number = |i: usize| -> Option<u64> { std::str::from_utf8(args.get(i)?).ok()?.parse().ok() };
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    };
    let ms = |unit: &[u8], value: u64| -> u64 {
        match unit {
            b"ex" | b"expire" | b"setex" => value.saturating_mul(1000),
            b"px" | b"pexpire" | b"psetex" => value,
            b"exat" | b"expireat" => value.saturating_mul(1000).saturating_sub(now_ms()),
            _ => value.saturating_sub(now_ms()),
        }
    };
    let ms = match name {
        b"expire" | b"pexpire" | b"expireat" | b"pexpireat" | b"setex" | b"psetex" => {
            ms(name, number(2)?)
        }
        b"set" | b"getex" => (3..args.len()).find_map(|i| {
            let opt = &args[i - 1];
            if opt.len() > 4 {
                return None;
            }
            let opt = opt.to_ascii_lowercase();
            matches!(opt.as_slice(), b"ex" | b"px" | b"exat" | b"pxat")
                .then(|| number(i).map(|v| ms(&opt, v)))
                .flatten()
        })?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

/// An upper bound of what a write adds, from its arguments.
/// What Redis' allocator (jemalloc) gives for `n` bytes: four size classes per doubling
/// (…, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, …), at least 16 bytes apart.
fn alloc_class(n: u64) -> u64 {
    if n <= 8 {
        return 8;
    }
    let k = 63 - (n - 1).leading_zeros();
    let step = (1u64 << k.saturating_sub(2)).max(16);
    n.div_ceil(step) * step
}

/// An upper bound of what Redis holds for a stored string of `len` bytes.
fn stored(len: u64) -> u64 {
    alloc_class(len + 10) + OVERHEAD
}

/// What a write adds beyond its keys' names and overheads; `values` weighs its other
/// arguments as stored elements.
fn estimate(name: &[u8], args: &[Bytes], values: u64) -> u64 {
    let len = |i: usize| args.get(i).map_or(0, |a| a.len() as u64);
    let number = |i: usize| {
        args.get(i)
            .and_then(|a| std::str::from_utf8(a).ok())
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
    };
    match name {
        // Growth reaches the offset, whatever the value's length.
        b"setrange" => stored(number(2) + len(3)),
        b"setbit" => stored(number(2) / 8 + 1),
        b"bitfield" => bitfield_reach(args) + values,
        b"xadd" => values + STREAM_NODE,
        b"pfadd" | b"pfmerge" => values + DENSE_HLL,
        _ => values,
    }
}

/// The furthest byte a BITFIELD's SET/INCRBY operations can write.
fn bitfield_reach(args: &[Bytes]) -> u64 {
    let mut reach = 0;
    let mut i = 2;
    while i < args.len() {
        let op = args[i].to_ascii_lowercase();
        match op.as_slice() {
            b"get" => i += 3,
            b"overflow" => i += 2,
            b"set" | b"incrby" => {
                let text = |j: usize| {
                    args.get(j)
                        .and_then(|a| std::str::from_utf8(a).ok())
                        .unwrap_or("")
                };
                let bits: u64 = text(i + 1)
                    .get(1..)
                    .and_then(|b| b.parse().ok())
                    .unwrap_or(64);
                let offset = text(i + 2);
                let offset: u64 = match offset.strip_prefix('#') {
                    Some(n) => n.parse::<u64>().unwrap_or(0).saturating_mul(bits),
                    None => offset.parse().unwrap_or(0),
                };
                reach = reach.max(offset.saturating_add(bits) / 8 + 1);
                i += 4;
            }
            _ => break,
        }
    }
    reach
}

/// One tenant's usage as this instance knows it, and its limits.
#[derive(Debug)]
pub struct Ledger {
    pub tenant: String,
    /// `tenant:<id>:`.
    prefix: Bytes,
    /// `None`: unlimited (measured, never refused).
    pub limits: Option<QuotaLimits>,
    names: Names,
    local: Mutex<Local>,
    /// `used` as the last script call saw it.
    used: AtomicI64,
    /// Every instance's leases as the last script call saw them.
    leased: AtomicI64,
    /// One reservation at a time: the sessions that find the lease short wait for it rather
    /// than each asking Redis.
    reserving: tokio::sync::Mutex<()>,
    /// One flush at a time, so that a refusal can wait for the one in progress (which may be
    /// measuring the delete that makes room).
    flushing: tokio::sync::Mutex<()>,
    /// Writes refused by this instance.
    pub refusals: AtomicU64,
    /// Writes this instance let through past `quota_bytes` (within the overage).
    pub overage_writes: AtomicU64,
    /// Reconciliation passes this instance completed.
    pub reconciled: AtomicU64,
}

#[derive(Debug)]
struct Names {
    used: String,
    sizes: String,
    leases: String,
    lock: String,
}

/// This instance's lease: `granted` reserved in Redis, of which `charged` is spoken for by
/// writes not measured yet, of which `settled` have their reply (their keys are `dirty`).
#[derive(Debug, Default)]
struct Local {
    granted: u64,
    charged: u64,
    settled: u64,
    /// foldhash, randomly seeded: fast on the write path, and a tenant cannot pick keys
    /// that collide.
    dirty: HashSet<Bytes, foldhash::fast::RandomState>,
    /// The key last made dirty (and still in `dirty`): a pipeline writing one key again and
    /// again skips the hash lookup. A copy, not a clone: cloning a freshly built key
    /// allocates (`Bytes` makes its buffer shareable on the first clone).
    last_dirty: Vec<u8>,
    /// When Redis last refused a reservation, and for how many bytes.
    full: Option<(Instant, u64)>,
    /// The last reservation's size, and whether writes were charged since the last flush.
    last_grant: u64,
    busy: bool,
    /// Keys to measure again when their TTL runs out.
    expiring: BTreeMap<Instant, Vec<Bytes>>,
    expiring_keys: usize,
}

impl Local {
    /// Redis has answered writes of `keys` (named in Redis `prefix` + key): they are to be
    /// measured, and their `charged` bytes are settled.
    fn settle(&mut self, prefix: &[u8], keys: impl IntoIterator<Item = Bytes>, charged: u64) {
        self.settled += charged;
        for k in keys {
            let last = &self.last_dirty;
            if last.len() == prefix.len() + k.len()
                && last.starts_with(prefix)
                && last[prefix.len()..] == k[..]
            {
                continue;
            }
            // Hot keys are mostly dirty already: look up before copying the name.
            self.last_dirty.clear();
            self.last_dirty.extend_from_slice(prefix);
            self.last_dirty.extend_from_slice(&k);
            if !self.dirty.contains(&self.last_dirty[..]) {
                let name = match prefix {
                    [] => k,
                    _ => Bytes::copy_from_slice(&self.last_dirty),
                };
                self.dirty.insert(name);
                // Maybe a delete: the next write asks Redis again.
                self.full = None;
            }
        }
    }

    /// Measures `keys` again at `at` (their TTL ends), unless too many wait already; then
    /// the reconciliation pass finds them gone.
    fn expire_later(&mut self, keys: Vec<Bytes>, at: Instant) {
        if self.expiring_keys + keys.len() <= MAX_EXPIRING {
            self.expiring_keys += keys.len();
            self.expiring.entry(at).or_default().extend(keys);
        }
    }
}

enum Charge {
    Done,
    /// The lease lacks this many bytes.
    Short(u64),
    Full,
}

impl Ledger {
    pub fn new(tenant: &str, limits: Option<QuotaLimits>) -> Ledger {
        let name = |what: &str| format!("respite:quota:{{{tenant}}}:{what}");
        Ledger {
            tenant: tenant.to_string(),
            prefix: Bytes::from(format!("tenant:{tenant}:")),
            limits,
            names: Names {
                used: name("used"),
                sizes: name("sizes"),
                leases: name("leases"),
                lock: name("reconcile"),
            },
            local: Mutex::new(Local::default()),
            reserving: tokio::sync::Mutex::new(()),
            flushing: tokio::sync::Mutex::new(()),
            used: AtomicI64::new(0),
            leased: AtomicI64::new(0),
            refusals: AtomicU64::new(0),
            overage_writes: AtomicU64::new(0),
            reconciled: AtomicU64::new(0),
        }
    }

    fn limit(&self) -> u64 {
        self.limits.map_or(UNLIMITED, |l| l.quota + l.overage)
    }

    /// Takes `bytes` from the lease, if it has them. With a session's `allowance`, that is
    /// handed back first, and refilled with up to `SESSION_SPARE` more for the session's
    /// next writes. `Full` when Redis said within
    /// `recent` that no write this big fits and no key has been written or deleted here
    /// since: the refusal needs no round trip, so a tenant hammering at its limit does not
    /// hammer Redis.
    fn try_charge(&self, bytes: u64, recent: Duration, mut allowance: Option<&mut u64>) -> Charge {
        let mut l = self.local.lock().unwrap();
        if let Some(a) = allowance.as_deref_mut() {
            l.charged -= std::mem::take(a);
        }
        let left = l.granted - l.charged;
        if left >= bytes {
            l.charged += bytes;
            l.busy = true;
            if let Some(a) = allowance {
                *a = SESSION_SPARE.min((left - bytes) / 16);
                l.charged += *a;
            }
            return Charge::Done;
        }
        match l.full {
            Some((at, need)) if bytes >= need && at.elapsed() < recent => Charge::Full,
            _ => Charge::Short(bytes - left),
        }
    }

    fn mark_full(&self, need: u64) {
        self.local.lock().unwrap().full = Some((Instant::now(), need));
    }

    /// Keys (as Redis names them) to measure, e.g. what a FLUSHDB deleted.
    pub fn settle(&self, keys: impl IntoIterator<Item = Bytes>, charged: u64) {
        self.local.lock().unwrap().settle(b"", keys, charged);
    }

    /// The dirty keys and the lease to hand back (all of it but what in-flight writes hold).
    fn take_flush(&self, keep: bool) -> Flush {
        let mut l = self.local.lock().unwrap();
        let now = Instant::now();
        while l
            .expiring
            .first_key_value()
            .is_some_and(|(at, _)| *at <= now)
        {
            let (_, keys) = l.expiring.pop_first().expect("checked");
            l.expiring_keys -= keys.len();
            l.dirty.extend(keys);
        }
        // While writes keep coming, the instance keeps up to its last grant (which shrinks
        // near the limit) so that they need no reservation; idle, it hands back everything.
        let unused = l.granted - l.charged;
        let keep = if keep && l.busy {
            unused.min(l.last_grant)
        } else {
            0
        };
        l.busy = false;
        let release = l.settled + unused - keep;
        let settled = std::mem::take(&mut l.settled);
        l.charged -= settled;
        l.granted = l.charged + keep;
        l.last_dirty.clear();
        Flush {
            keys: l.dirty.drain().collect(),
            release,
            settled,
        }
    }

    /// A flush that failed: everything goes back to be tried again.
    fn undo_flush(&self, f: Flush) {
        let mut l = self.local.lock().unwrap();
        l.dirty.extend(f.keys);
        l.settled += f.settled;
        l.charged += f.settled;
        l.granted += f.release;
    }

    fn has_work(&self) -> bool {
        let l = self.local.lock().unwrap();
        !l.dirty.is_empty()
            || l.granted > 0
            || l.expiring
                .first_key_value()
                .is_some_and(|(at, _)| *at <= Instant::now())
    }

    fn status(&self, used: i64) -> Status {
        Status {
            used,
            limits: self.limits,
            refusals: self.refusals.load(Ordering::Relaxed),
            overage_writes: self.overage_writes.load(Ordering::Relaxed),
            reconciled: self.reconciled.load(Ordering::Relaxed),
        }
    }

    fn count_overage(&self, limits: QuotaLimits) {
        if self.used_with_leases() as u64 > limits.quota {
            self.overage_writes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Usage counting every instance's outstanding leases, as last seen.
    pub fn used_with_leases(&self) -> i64 {
        self.used.load(Ordering::Relaxed) + self.leased.load(Ordering::Relaxed)
    }

    fn saw(&self, used: i64, leased: i64) {
        self.used.store(used, Ordering::Relaxed);
        self.leased.store(leased, Ordering::Relaxed);
    }
}

struct Flush {
    keys: Vec<Bytes>,
    release: u64,
    settled: u64,
}

/// A write admitted and charged, until its reply is in (or it is given up on): then its
/// session's [`Account`] takes it in, its keys to be measured and its charge settled.
#[derive(Debug)]
pub struct Written {
    pub keys: Keys,
    charged: u64,
    /// The TTL it sets; counted from its reply, which comes after Redis started it.
    ttl: Option<Duration>,
    /// A transaction's queued writes' TTLs, and their keys.
    expiring: Vec<(Duration, Vec<Bytes>)>,
}

impl Written {
    /// The bytes charged for it so far.
    pub fn charged(&self) -> u64 {
        self.charged
    }

    fn new(cost: WriteCost, charged: u64) -> Written {
        Written {
            keys: cost.keys,
            charged,
            ttl: cost.expires_in,
            expiring: Vec::new(),
        }
    }

    /// Takes `other` (keys already copied out of its request) in: a transaction's writes
    /// settle together, when EXEC's reply is in.
    pub fn absorb(&mut self, other: &mut Written) {
        if let Some(ttl) = other.ttl.take() {
            self.expiring.push((ttl, other.keys.to_vec()));
        }
        self.expiring.append(&mut other.expiring);
        self.keys.append(std::mem::take(&mut other.keys));
        self.charged += std::mem::take(&mut other.charged);
    }
}

impl Drop for Written {
    fn drop(&mut self) {
        // A charge dropped unsettled would stay spoken for until the instance restarts.
        debug_assert!(
            self.charged == 0 || std::thread::panicking(),
            "a write's charge was dropped without being settled"
        );
    }
}

/// A session's dealings with its tenant's ledger, so that the common write takes no lock:
///
/// - **allowance**: bytes taken from the instance's lease along with a write that found the
///   allowance short, for the writes after it; handed back at the end of the batch.
/// - **settling**: the writes Redis answered in one batch of replies, settled together.
///   The common write (no TTL) is folded in as it comes: its charge summed, its key listed
///   once when the same key is written again and again.
///
/// [`Account::finish`] does both under one lock, once per pass of the session loop.
#[derive(Debug, Default)]
pub struct Account {
    allowance: u64,
    charged: u64,
    keys: Vec<Bytes>,
    expiring: Vec<(Duration, Vec<Bytes>)>,
}

impl Account {
    /// The common case without a round trip: the write costs nothing, its tenant has no
    /// quota, or the allowance or the lease covers it. Otherwise the cost comes back for
    /// [`Quotas::admit`].
    pub fn admit_now(
        &mut self,
        ledger: &Ledger,
        cost: WriteCost,
        recent: Duration,
    ) -> Result<Written, WriteCost> {
        let bytes = match cost.growth {
            Growth::None => 0,
            Growth::Bytes(b) => b,
            Growth::CopyOf(..) => return Err(cost),
        };
        let charged = match ledger.limits {
            Some(limits) if bytes > 0 => {
                if self.allowance >= bytes {
                    self.allowance -= bytes;
                } else if !matches!(
                    ledger.try_charge(bytes, recent, Some(&mut self.allowance)),
                    Charge::Done
                ) {
                    return Err(cost);
                }
                ledger.count_overage(limits);
                bytes
            }
            _ => 0,
        };
        Ok(Written::new(cost, charged))
    }

    /// A write Redis has answered, or that will never be answered: it is settled with the
    /// batch.
    pub fn add(&mut self, mut w: Written) {
        self.charged += std::mem::take(&mut w.charged);
        if let Some(ttl) = w.ttl.take() {
            self.expiring.push((ttl, w.keys.to_vec()));
        }
        self.expiring.append(&mut w.expiring);
        match std::mem::take(&mut w.keys) {
            Keys::One(k) => {
                if self.keys.last() != Some(&k) {
                    self.keys.push(k);
                }
            }
            Keys::Many(v) => self.keys.extend(v),
            Keys::None | Keys::Arg(_) => {}
        }
    }

    /// Settles the batch's writes and hands the allowance back, under one lock.
    pub fn finish(&mut self, ledger: Option<&Ledger>) {
        if self.allowance == 0
            && self.charged == 0
            && self.keys.is_empty()
            && self.expiring.is_empty()
        {
            return;
        }
        let Some(ledger) = ledger else {
            debug_assert!(
                self.allowance == 0 && self.charged == 0,
                "a charge without a ledger"
            );
            self.keys.clear();
            self.expiring.clear();
            return;
        };
        let mut l = ledger.local.lock().unwrap();
        l.charged -= std::mem::take(&mut self.allowance);
        if !self.expiring.is_empty() {
            let now = Instant::now();
            for (ttl, keys) in self.expiring.drain(..) {
                let keys = keys.iter().map(|k| namespaced(&ledger.prefix, k)).collect();
                l.expire_later(keys, now + ttl + EXPIRY_GRACE);
            }
        }
        l.settle(
            &ledger.prefix,
            self.keys.drain(..),
            std::mem::take(&mut self.charged),
        );
    }
}

/// A tenant's figures for INFO and metrics.
#[derive(Debug, Clone)]
pub struct Status {
    pub used: i64,
    pub limits: Option<QuotaLimits>,
    pub refusals: u64,
    pub overage_writes: u64,
    pub reconciled: u64,
}

/// Atomically: reserve `need` (or a bigger chunk) for an instance, unless `used` plus every
/// live lease plus `need` passes the limit. Expired leases (dead instances) are dropped.
const RESERVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local entries = redis.call('HGETALL', KEYS[2])
local others, mine = 0, 0
for i = 1, #entries, 2 do
  local b, e = string.match(entries[i + 1], '^(%d+):(%d+)$')
  b, e = tonumber(b), tonumber(e)
  if entries[i] == ARGV[1] then
    mine = b or 0
  elseif b == nil or e < now then
    redis.call('HDEL', KEYS[2], entries[i])
  else
    others = others + b
  end
end
local need, limit = tonumber(ARGV[2]), tonumber(ARGV[4])
local room = limit - used - others - mine
if room < need then
  return {0, used, others + mine}
end
local grant = math.min(room, math.max(need, math.min(tonumber(ARGV[3]), math.floor(room / 16))))
redis.call('HSET', KEYS[2], ARGV[1], string.format('%d:%d', mine + grant, now + tonumber(ARGV[5])))
return {grant, used, others + mine + grant}
"#;

/// Atomically: measure each key (KEYS[4..]), replace its entry in `sizes`, move `used` by the
/// difference, and take `release` off the instance's lease (renewing what is left).
const MEASURE: &str = r#"
-- Exact sizes: Redis samples 5 elements of a collection by default, and a skewed one (many
-- small members, a few huge) would be counted at a fraction of what it holds. Every element
-- is measured (about 16 ns each) up to 100,000 of them; a larger collection gets 10,000
-- samples so that one measurement never holds Redis for more than a few milliseconds.
local LEN = {list = 'LLEN', set = 'SCARD', zset = 'ZCARD', hash = 'HLEN', stream = 'XLEN'}
local function usage(key)
  local len = LEN[redis.call('TYPE', key)['ok']]
  local samples = 0
  if len and redis.call(len, key) > 100000 then
    samples = 10000
  end
  return redis.call('MEMORY', 'USAGE', key, 'SAMPLES', samples) or 0
end
local plen = tonumber(ARGV[4])
local delta = 0
-- One EXISTS, HMGET and HSET for the batch rather than a call of each per key: a Lua call
-- costs Redis about as much as the command it runs.
local keys, fields, seen = {}, {}, {}
for i = 4, #KEYS do
  local field = string.sub(KEYS[i], plen + 1)
  -- A SCAN may return a key twice; measured twice, its change would count twice.
  if not seen[field] then
    seen[field] = true
    keys[#keys + 1] = KEYS[i]
    fields[#fields + 1] = field
  end
end
if #fields > 0 then
  local olds = redis.call('HMGET', KEYS[2], unpack(fields))
  -- MEMORY USAGE alone still sees a key whose TTL has passed; EXISTS expires it.
  redis.call('EXISTS', unpack(keys))
  local changed, gone = {}, {}
  for i, field in ipairs(fields) do
    local size = usage(keys[i])
    local old = tonumber(olds[i]) or 0
    -- An overwrite of the same size (the common cache refresh) leaves the hash alone.
    if size ~= old then
      if size > 0 then
        changed[#changed + 1] = field
        changed[#changed + 1] = size
      else
        gone[#gone + 1] = field
      end
      delta = delta + size - old
    end
  end
  if #changed > 0 then
    redis.call('HSET', KEYS[2], unpack(changed))
  end
  if #gone > 0 then
    redis.call('HDEL', KEYS[2], unpack(gone))
  end
end
local used
if delta ~= 0 then
  used = redis.call('INCRBY', KEYS[1], delta)
else
  used = tonumber(redis.call('GET', KEYS[1]) or '0')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local entries = redis.call('HGETALL', KEYS[3])
local leased = 0
for i = 1, #entries, 2 do
  local b, e = string.match(entries[i + 1], '^(%d+):(%d+)$')
  b, e = tonumber(b) or 0, tonumber(e) or 0
  if entries[i] == ARGV[1] then
    b = b - tonumber(ARGV[2])
    if b > 0 then
      redis.call('HSET', KEYS[3], ARGV[1], string.format('%d:%d', b, now + tonumber(ARGV[3])))
      leased = leased + b
    else
      redis.call('HDEL', KEYS[3], ARGV[1])
    end
  elseif e >= now then
    leased = leased + b
  end
end
return {used, leased}
"#;

/// EVALSHA of `script`, its keys and arguments to be added. Built as one command rather than
/// through `Script::key`, which copies every key into an allocation of its own: with a
/// batch of 256 keys, that was most of a flush's cost in respite.
fn evalsha(script: &Script, keys: usize) -> redis::Cmd {
    let mut call = redis::cmd("EVALSHA");
    call.arg(script.get_hash()).arg(keys);
    call
}

/// Runs an [`evalsha`] call, loading the script first when Redis does not have it (it
/// restarted, or SCRIPT FLUSH).
async fn invoke<T: redis::FromRedisValue>(
    c: &mut deadpool_redis::Connection,
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

/// The quota bookkeeping of one respite instance: every tenant's ledger and the pool to Redis.
pub struct Quotas {
    own: Own,
    /// This instance's name in the lease hashes.
    instance: String,
    settings: QuotaSettings,
    ledgers: Vec<Arc<Ledger>>,
    reserve: Script,
    measure: Script,
}

#[derive(Debug, Clone, Copy)]
struct QuotaSettings {
    flush_interval: Duration,
    reconcile_interval: Duration,
    keys_per_second: u64,
}

impl From<&QuotaConfig> for QuotaSettings {
    fn from(q: &QuotaConfig) -> Self {
        QuotaSettings {
            flush_interval: Duration::from_millis(q.flush_interval_ms),
            reconcile_interval: Duration::from_millis(q.reconcile_interval_ms),
            keys_per_second: q.reconcile_keys_per_second,
        }
    }
}

impl Quotas {
    /// `None` when no tenant has a quota (nothing is measured then).
    pub fn from_config(config: &Config, ledgers: Vec<Arc<Ledger>>, own: Own) -> Option<Quotas> {
        config.quotas_enabled().then(|| Quotas {
            own,
            instance: format!(
                "{}-{:016x}",
                std::process::id(),
                crate::keyspace::random_u64()
            ),
            settings: (&config.quota).into(),
            ledgers,
            reserve: Script::new(RESERVE),
            measure: Script::new(MEASURE),
        })
    }

    /// How long a refusal from Redis stands without asking again.
    pub fn recent(&self) -> Duration {
        self.settings.flush_interval
    }

    /// Runs `f` on respite's own pool; failures are the bookkeeping's.
    async fn with_conn<T, F>(&self, f: F) -> Result<T, UpstreamError>
    where
        F: AsyncFnOnce(&mut deadpool_redis::Connection) -> redis::RedisResult<T>,
    {
        self.own.run(f).await.map_err(|e| match e {
            OwnError::Timeout(ms) => UpstreamError::Timeout(ms),
            other => UpstreamError::Bookkeeping(other.to_string()),
        })
    }

    /// Charges a write against its tenant's quota, or refuses it with `-OOM`.
    pub async fn admit(&self, ledger: &Arc<Ledger>, cost: WriteCost) -> Result<Written, Error> {
        let bytes = match &cost.growth {
            Growth::None => 0,
            Growth::Bytes(b) => *b,
            Growth::CopyOf(sources, extra) => self.sizes(&ledger.prefix, sources).await? + extra,
        };
        let Some(limits) = ledger.limits.filter(|_| bytes > 0) else {
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
            let mut pipe = redis::pipe();
            for k in keys {
                let usage = pipe.cmd("MEMORY").arg("USAGE");
                if k.mine {
                    usage.arg(&namespaced(prefix, &k.name)[..]);
                } else {
                    usage.arg(&k.name[..]);
                }
                // Every element: a copy costs Redis as much anyway.
                usage.arg("SAMPLES").arg(0);
            }
            let sizes: Vec<Option<u64>> = pipe.query_async(c).await?;
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
        c: &mut deadpool_redis::Connection,
        ledger: &Ledger,
        keys: &[Bytes],
        release: u64,
    ) -> redis::RedisResult<()> {
        let mut call = evalsha(&self.measure, 3 + keys.len());
        call.arg(&ledger.names.used)
            .arg(&ledger.names.sizes)
            .arg(&ledger.names.leases);
        for k in keys {
            call.arg(&k[..]);
        }
        call.arg(&self.instance)
            .arg(release)
            .arg(LEASE_TTL_MS)
            .arg(ledger.prefix.len());
        let (used, leased): (i64, i64) = invoke(c, &self.measure, &call).await?;
        ledger.saw(used, leased);
        Ok(())
    }

    /// One reconciliation pass over the tenant, unless another instance did one within the
    /// interval. Returns whether it ran.
    pub async fn reconcile(&self, ledger: &Ledger) -> Result<bool, UpstreamError> {
        let interval_ms = self.settings.reconcile_interval.as_millis() as u64;
        let locked: Option<String> = self
            .with_conn(async |c| {
                redis::cmd("SET")
                    .arg(&ledger.names.lock)
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
        self.walk(ledger, "HSCAN", &ledger.names.sizes, true)
            .await?;
        // Keys in Redis: written around respite, or before it.
        let pattern = format!("{}*", String::from_utf8_lossy(&ledger.prefix));
        self.walk(ledger, "SCAN", &pattern, false).await?;
        ledger.reconciled.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// Measures every key a SCAN (`target` is the MATCH pattern) or an HSCAN of `sizes`
    /// (`target` is the hash; its fields are keys without the prefix) yields, paced.
    async fn walk(
        &self,
        ledger: &Ledger,
        how: &str,
        target: &str,
        fields: bool,
    ) -> Result<(), UpstreamError> {
        let mut cursor = 0u64;
        let pause =
            Duration::from_secs_f64(MEASURE_BATCH as f64 / self.settings.keys_per_second as f64);
        loop {
            let (next, items): (u64, Vec<Vec<u8>>) = self
                .with_conn(async |c| {
                    let mut cmd = redis::cmd(how);
                    if fields {
                        cmd.arg(target).arg(cursor);
                    } else {
                        cmd.arg(cursor).arg("MATCH").arg(target);
                    }
                    cmd.arg("COUNT").arg(MEASURE_BATCH).query_async(c).await
                })
                .await?;
            let keys: Vec<Bytes> = if fields {
                // HSCAN yields field, value, field, value...
                items
                    .chunks(2)
                    .map(|fv| crate::rewrite::namespaced(&ledger.prefix, &fv[0]))
                    .collect()
            } else {
                items.into_iter().map(Bytes::from).collect()
            };
            if !keys.is_empty() {
                self.measure(ledger, &keys, 0).await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
            tokio::time::sleep(pause).await;
        }
    }

    /// Every tenant's figures, with `used` read from Redis now (one MGET).
    pub async fn statuses(&self) -> Vec<(Arc<Ledger>, Status)> {
        let names: Vec<&str> = self.ledgers.iter().map(|l| l.names.used.as_str()).collect();
        let used: Result<Vec<Option<i64>>, _> = self
            .with_conn(async |c| redis::cmd("MGET").arg(&names).query_async(c).await)
            .await;
        self.ledgers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let u = match &used {
                    Ok(v) => v.get(i).copied().flatten().unwrap_or(0),
                    Err(_) => l.used.load(Ordering::Relaxed),
                };
                (l.clone(), l.status(u))
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
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => break,
            }
            self.flush_all().await;
        }
        self.flush_all().await;
        let _ = reconciler.await;
    }

    async fn flush_all(&self) {
        for l in &self.ledgers {
            if l.has_work() {
                if let Err(e) = self.flush(l, true).await {
                    tracing::warn!(tenant = %l.tenant, error = %e, "quota flush failed; will retry");
                }
            }
        }
    }

    async fn reconcile_forever(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let started = Instant::now();
            for l in &self.ledgers {
                let pass = tokio::select! {
                    r = self.reconcile(l) => r,
                    _ = stop.cancelled() => return,
                };
                if let Err(e) = pass {
                    tracing::warn!(tenant = %l.tenant, error = %e, "quota reconciliation failed");
                }
            }
            let next = started + self.settings.reconcile_interval;
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request as respite forwards it for tenant `a` (a publisher of `shared:*`), with
    /// its command.
    fn forward(line: &str) -> (Command, KeyMap, crate::rewrite::Forward) {
        let args: Vec<Bytes> = line
            .split(' ')
            .map(|a| Bytes::from(a.to_string()))
            .collect();
        let cmd = crate::command::lookup(&args).unwrap();
        let mut tenant = crate::tenant::Tenant::new("a", true);
        tenant.shared = Arc::new([Bytes::from_static(b"shared:")]);
        tenant.publisher = true;
        let keys = KeyMap::find(&cmd, &args).unwrap();
        let fwd = crate::rewrite::request(&cmd, args, &keys, &tenant).unwrap();
        (cmd, keys, fwd)
    }

    /// Tenant `a`'s ledger, with a quota and a lease of `granted` bytes.
    fn leased(granted: u64) -> Ledger {
        let limits = QuotaLimits {
            quota: 1 << 30,
            overage: 0,
        };
        let l = Ledger::new("a", Some(limits));
        l.local.lock().unwrap().granted = granted;
        l
    }

    fn set_cmd() -> Command {
        crate::command::lookup(&[Bytes::from("SET")]).unwrap()
    }

    fn cost_of(line: &str) -> Option<WriteCost> {
        let (cmd, keys, fwd) = forward(line);
        cost(&cmd, &fwd.args, &keys, &fwd.prefixed, "tenant:a:".len())
    }

    fn bytes(line: &str) -> u64 {
        match cost_of(line).unwrap().growth {
            Growth::Bytes(b) => b,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn reads_cost_nothing_and_deletes_never_grow() {
        assert!(cost_of("GET k").is_none());
        assert!(cost_of("GEORADIUS g 0 0 1 km").is_none());
        assert!(cost_of("SORT k").is_none());
        let del = cost_of("DEL a b").unwrap();
        assert_eq!(del.growth, Growth::None);
        assert_eq!(
            del.keys,
            Keys::Many(vec![Bytes::from("a"), Bytes::from("b")])
        );
    }

    #[test]
    fn the_lone_key_cost_agrees_with_the_general_one() {
        let lines = [
            "SET k v",
            "SET k v EX 10",
            "SET shared:k v",
            "HSET h f v g w",
            "LPUSH l x y z",
            "APPEND k tail",
            "SETRANGE k 100 x",
            "INCR n",
            "EXPIRE k 5",
            "LPOP l",
            "GET k",
            "XADD s * f v",
            "PFADD p a b",
        ];
        for line in lines {
            let (cmd, keys, fwd) = forward(line);
            assert!(matches!(keys, KeyMap::Lone(_)), "{line}");
            let listed = KeyMap::Many(keys.iter().collect());
            let prefix_len = "tenant:a:".len();
            assert_eq!(
                cost(&cmd, &fwd.args, &keys, &fwd.prefixed, prefix_len),
                keyed_cost(
                    &cmd,
                    &fwd.args,
                    &listed,
                    &fwd.prefixed,
                    prefix_len as u64,
                    false
                ),
                "{line}"
            );
        }
        assert!(
            cost_of("SET shared:k v").is_none(),
            "not the tenant's usage"
        );
    }

    #[test]
    fn estimates_bound_what_redis_measures() {
        // MEMORY USAGE of "tenant:a:k" = "v" is 72; of a 100,000-byte value, 114,744.
        assert!(bytes("SET k v") >= 72);
        let big = format!("SET k {}", "x".repeat(100_000));
        assert!(bytes(&big) >= 114_744);
        assert!(bytes("SETRANGE k 1000000 x") > 1_000_000);
        assert!(bytes("SETBIT k 8000000 1") > 1_000_000);
        assert!(bytes("BITFIELD k SET u8 #1000000 1") > 1_000_000);
        assert!(bytes("BITFIELD k GET u8 0") < 1_000);
        assert!(bytes("XADD s * f v") >= 4_736);
    }

    #[test]
    fn ttls_are_read_from_every_command_that_sets_one() {
        let ttl = |line: &str| cost_of(line).unwrap().expires_in;
        assert_eq!(ttl("SET k v EX 10"), Some(Duration::from_secs(10)));
        assert_eq!(ttl("SET k v NX PX 250"), Some(Duration::from_millis(250)));
        assert_eq!(ttl("SETEX k 3 v"), Some(Duration::from_secs(3)));
        assert_eq!(ttl("PEXPIRE k 40 NX"), Some(Duration::from_millis(40)));
        assert_eq!(ttl("EXPIREAT k 1"), Some(Duration::ZERO));
        assert_eq!(ttl("SET k v"), None);
        assert_eq!(ttl("HSET k ex 10"), None);
    }

    #[test]
    fn allocation_classes_are_jemallocs() {
        let classes: Vec<u64> = [1, 9, 17, 33, 49, 65, 100, 129, 200, 257, 200_003]
            .into_iter()
            .map(alloc_class)
            .collect();
        assert_eq!(
            classes,
            [8, 16, 32, 48, 64, 80, 112, 160, 224, 320, 229_376]
        );
    }

    #[test]
    fn copies_are_sized_by_their_sources() {
        let c = cost_of("SUNIONSTORE d a shared:b").unwrap();
        assert_eq!(c.keys, Keys::Arg(1));
        let source = |name: &'static str, mine| Source {
            name: Bytes::from(name),
            mine,
        };
        assert_eq!(
            c.growth,
            Growth::CopyOf(
                vec![source("a", true), source("shared:b", false)],
                stored("tenant:a:d".len() as u64)
            )
        );
        let s = cost_of("SORT src STORE dst").unwrap();
        assert_eq!(s.keys, Keys::Arg(3));
        assert!(matches!(s.growth, Growth::CopyOf(..)));
        // A move takes from one key what it adds to another.
        assert!(matches!(
            cost_of("LMOVE a b LEFT RIGHT").unwrap().growth,
            Growth::Bytes(_)
        ));
    }

    #[test]
    fn the_lease_is_handed_back_on_flush() {
        let l = Ledger::new("a", None);
        l.local.lock().unwrap().granted = 1000;
        let recent = Duration::from_secs(1);
        assert!(matches!(l.try_charge(300, recent, None), Charge::Done));
        assert!(matches!(l.try_charge(300, recent, None), Charge::Done));
        assert!(matches!(
            l.try_charge(500, recent, None),
            Charge::Short(100)
        ));
        l.mark_full(500);
        assert!(matches!(l.try_charge(600, recent, None), Charge::Full));
        assert!(matches!(l.try_charge(450, recent, None), Charge::Short(50)));
        l.settle([Bytes::from("k")], 300);
        assert!(
            matches!(l.try_charge(600, recent, None), Charge::Short(_)),
            "a settle clears it"
        );
        let f = l.take_flush(false);
        // One write settled (300) and 400 unused go back; 300 stay for the write in flight.
        assert_eq!((f.release, f.keys.len()), (700, 1));
        let local = l.local.lock().unwrap();
        assert_eq!((local.granted, local.charged, local.settled), (300, 300, 0));
    }

    #[test]
    fn a_busy_instance_keeps_its_last_grant_until_it_goes_idle() {
        let l = Ledger::new("a", None);
        {
            let mut local = l.local.lock().unwrap();
            (local.granted, local.last_grant) = (1000, 1000);
        }
        assert!(matches!(
            l.try_charge(300, Duration::ZERO, None),
            Charge::Done
        ));
        l.settle([Bytes::from("k")], 300);
        assert_eq!(l.take_flush(true).release, 300);
        assert_eq!(l.local.lock().unwrap().granted, 700);
        assert_eq!(l.take_flush(true).release, 700, "idle: all of it goes back");
        assert_eq!(l.local.lock().unwrap().granted, 0);
    }

    #[test]
    fn a_sessions_allowance_comes_with_a_write_and_goes_back_with_the_batch() {
        let l = leased(100_000);
        let recent = Duration::from_secs(1);
        let mut account = Account::default();
        let (_, keys, set) = forward("SET k v");
        let cost = || {
            cost(
                &set_cmd(),
                &set.args,
                &keys,
                &set.prefixed,
                "tenant:a:".len(),
            )
            .unwrap()
        };
        let need = match cost().growth {
            Growth::Bytes(b) => b,
            other => panic!("{other:?}"),
        };
        // The first write takes a spare sixteenth of what is left, at most SESSION_SPARE;
        // the next ones take no lock.
        let first = account.admit_now(&l, cost(), recent).unwrap();
        let spare = SESSION_SPARE.min((100_000 - need) / 16);
        assert!(spare > need);
        assert_eq!(account.allowance, spare);
        assert_eq!(l.local.lock().unwrap().charged, need + spare);
        let second = account.admit_now(&l, cost(), recent).unwrap();
        assert_eq!(account.allowance, spare - need);
        assert_eq!(l.local.lock().unwrap().charged, need + spare);
        // Answered: both settle, and what is left of the allowance goes back.
        let (mut first, mut second) = (first, second);
        first.keys.take_from(&mut set.args.clone());
        second.keys.clone_from(&set.args);
        account.add(first);
        account.add(second);
        account.finish(Some(&l));
        let local = l.local.lock().unwrap();
        assert_eq!((local.charged, local.settled), (2 * need, 2 * need));
        assert_eq!(account.allowance, 0);
        assert_eq!(local.dirty.len(), 1, "one key, listed once");
        assert!(local.dirty.contains(&b"tenant:a:k"[..]));
    }

    #[test]
    fn a_write_the_allowance_does_not_cover_hands_it_back_before_asking_redis() {
        // A small lease: the spare is a sixteenth of it, under SESSION_SPARE.
        let l = leased(1_000);
        let mut account = Account::default();
        let (_, keys, small) = forward("SET k v");
        let cmd = set_cmd();
        let recent = Duration::from_secs(1);
        let w = account
            .admit_now(
                &l,
                cost(&cmd, &small.args, &keys, &small.prefixed, 9).unwrap(),
                recent,
            )
            .unwrap();
        assert!(account.allowance > 0);
        let (_, keys, big) = forward(&format!("SET k {}", "x".repeat(2_000)));
        let big_cost = cost(&cmd, &big.args, &keys, &big.prefixed, 9).unwrap();
        let refused = account.admit_now(&l, big_cost, recent);
        assert!(refused.is_err(), "the lease is short: Redis is asked");
        assert_eq!(account.allowance, 0);
        assert_eq!(l.local.lock().unwrap().charged, w.charged);
        account.add(w);
        account.finish(Some(&l));
    }
}
