//! A tenant's usage as this instance knows it: the lease it holds from the shared figure in
//! Redis, what its sessions charged against it, and the keys waiting to be measured.

use super::*;

/// One tenant's usage as this instance knows it, and its limits.
#[derive(Debug)]
pub struct Ledger {
    pub tenant: String,
    /// `tenant:<id>:`.
    pub(super) prefix: Bytes,
    /// `tenant:<id>@`, before the keys of its databases beyond 0.
    pub(super) db_stem: Bytes,
    /// Its quota (`u64::MAX`: unlimited, measured and never refused) and overage; a reload
    /// sets them anew while writes go on.
    quota: AtomicU64,
    overage: AtomicU64,
    pub(super) names: Names,
    pub(super) local: Mutex<LeaseState>,
    /// `used` as the last script call saw it.
    pub(super) used: AtomicI64,
    /// Every instance's leases as the last script call saw them.
    pub(super) leased: AtomicI64,
    /// One reservation at a time: the sessions that find the lease short wait for it rather
    /// than each asking Redis.
    pub(super) reserving: tokio::sync::Mutex<()>,
    /// One flush at a time, so that a refusal can wait for the one in progress (which may be
    /// measuring the delete that makes room).
    pub(super) flushing: tokio::sync::Mutex<()>,
    /// Writes refused by this instance.
    pub refusals: AtomicU64,
    /// Writes this instance let through past `quota_bytes` (within the overage).
    pub overage_writes: AtomicU64,
    /// Reconciliation passes this instance completed.
    pub reconciled: AtomicU64,
    /// It holds something for the flusher (a lease, keys to measure, keys to expire): the
    /// flusher looks at awake ledgers only, so a thousand idle tenants cost it nothing.
    pub(super) awake: std::sync::atomic::AtomicBool,
    /// Where it says it woke up (set when [`Ledgers`] takes it in).
    pub(super) wakeups: std::sync::OnceLock<Arc<Mutex<Vec<Bytes>>>>,
}

#[derive(Debug)]
pub(super) struct Names {
    pub(super) used: String,
    pub(super) sizes: String,
    /// `sizes` of the keys of the tenant's other databases, by their names after
    /// `tenant:<id>@` (`<db>:<key>`): a field of `sizes` could be any name of database 0.
    pub(super) db_sizes: String,
    pub(super) leases: String,
}

/// This instance's lease: `granted` reserved in Redis, of which `charged` is spoken for by
/// writes not measured yet, of which `settled` have their reply (their keys are `dirty`).
/// Dirty keys that make a tenant's flush due at once, whatever their age: a tenant writing
/// many keys is measured in full batches, and its dirty set stays small.
pub(super) const MEASURE_SOON: usize = 64;

/// How long a lease is kept without writes before it goes back to Redis.
pub(super) const IDLE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// A lease kept is renewed (by a flush) this long after it was last: well before Redis lets
/// it expire (`LEASE_TTL_MS`, 10 s), so that no other instance counts it gone while held.
pub(super) const RENEW_AFTER: std::time::Duration = std::time::Duration::from_secs(4);

#[derive(Debug, Default)]
pub(super) struct LeaseState {
    pub(super) granted: u64,
    pub(super) charged: u64,
    pub(super) settled: u64,
    /// foldhash, randomly seeded: fast on the write path, and a tenant cannot pick keys
    /// that collide.
    pub(super) dirty: HashSet<Bytes, foldhash::fast::RandomState>,
    /// When `dirty` last went from empty to not: its keys are measured once the oldest
    /// has waited `measure_delay`, or sooner when there are many.
    pub(super) dirty_since: Option<Instant>,
    /// The key last made dirty (and still in `dirty`): a pipeline writing one key again and
    /// again skips the hash lookup. A copy, not a clone: cloning a freshly built key
    /// allocates (`Bytes` makes its buffer shareable on the first clone).
    pub(super) last_dirty: Vec<u8>,
    /// When Redis last refused a reservation, and for how many bytes.
    pub(super) full: Option<(Instant, u64)>,
    /// The last reservation's size, and whether writes were charged since the last flush.
    pub(super) last_grant: u64,
    pub(super) busy: bool,
    /// Lease given up when the limits changed (a reload), handed back by the next flush.
    pub(super) dropped: u64,
    /// When a write was last charged, and when the lease was last reserved or renewed in
    /// Redis (every flush renews it): a lease is kept through [`IDLE_GRACE`] without writes,
    /// so that a tenant writing now and then does not pay a reservation (a round trip on its
    /// request's way) for each write.
    pub(super) last_charge: Option<Instant>,
    pub(super) renewed: Option<Instant>,
    /// Keys to measure again when their TTL runs out.
    pub(super) expiring: BTreeMap<Instant, Vec<Bytes>>,
    pub(super) expiring_keys: usize,
}

impl LeaseState {
    /// Redis has answered writes of `keys` (named in Redis `prefix` + key): they are to be
    /// measured, and their `charged` bytes are settled.
    pub(super) fn settle(
        &mut self,
        prefix: &[u8],
        keys: impl IntoIterator<Item = Bytes>,
        charged: u64,
    ) {
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
                self.dirty_since.get_or_insert_with(Instant::now);
                // Maybe a delete: the next write asks Redis again.
                self.full = None;
            }
        }
    }

    /// Measures `keys` again at `at` (their TTL ends), unless too many wait already; then
    /// the reconciliation pass finds them gone.
    pub(super) fn expire_later(&mut self, keys: Vec<Bytes>, at: Instant) {
        if self.expiring_keys + keys.len() <= MAX_EXPIRING {
            self.expiring_keys += keys.len();
            self.expiring.entry(at).or_default().extend(keys);
        }
    }
}

pub(super) enum Charge {
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
            db_stem: Bytes::from(format!("tenant:{tenant}@")),
            // Unlimited until `with_limits`, which sets them.
            quota: AtomicU64::new(u64::MAX),
            overage: AtomicU64::new(0),
            names: Names {
                used: name("used"),
                sizes: name("sizes"),
                db_sizes: name("sizes@"),
                leases: name("leases"),
            },
            local: Mutex::new(LeaseState::default()),
            reserving: tokio::sync::Mutex::new(()),
            flushing: tokio::sync::Mutex::new(()),
            used: AtomicI64::new(0),
            leased: AtomicI64::new(0),
            refusals: AtomicU64::new(0),
            overage_writes: AtomicU64::new(0),
            reconciled: AtomicU64::new(0),
            awake: Default::default(),
            wakeups: Default::default(),
        }
        .with_limits(limits)
    }

    /// It now holds something the flusher must see to.
    pub(super) fn wake(&self) {
        if !self.awake.load(Ordering::Relaxed) && !self.awake.swap(true, Ordering::AcqRel) {
            if let Some(w) = self.wakeups.get() {
                w.lock().unwrap().push(self.prefix.clone());
            }
        }
    }

    /// Holds nothing the flusher must see to: no lease, no write in flight, nothing to
    /// measure or to expire.
    pub(super) fn quiet(&self) -> bool {
        let l = self.local.lock().unwrap();
        l.granted == 0
            && l.charged == 0
            && l.settled == 0
            && l.dropped == 0
            && l.dirty.is_empty()
            && l.expiring.is_empty()
    }

    fn with_limits(self, limits: Option<QuotaLimits>) -> Ledger {
        self.set_limits(limits);
        self
    }

    /// `None`: unlimited (measured, never refused).
    pub fn limits(&self) -> Option<QuotaLimits> {
        match self.quota.load(Ordering::Relaxed) {
            u64::MAX => None,
            quota => Some(QuotaLimits {
                quota,
                overage: self.overage.load(Ordering::Relaxed),
            }),
        }
    }

    /// New limits (a reload): the next write is admitted against them.
    pub fn set_limits(&self, limits: Option<QuotaLimits>) {
        if self.limits() == limits {
            return;
        }
        let (quota, overage) = limits.map_or((u64::MAX, 0), |l| (l.quota, l.overage));
        self.overage.store(overage, Ordering::Relaxed);
        self.quota.store(quota, Ordering::Relaxed);
        // A refusal remembered under the old limits says nothing of the new ones, and a
        // lease reserved under them may not fit the new: the next write reserves anew.
        let mut l = self.local.lock().unwrap();
        l.full = None;
        let unused = l.granted - l.charged;
        l.granted = l.charged;
        l.dropped += unused;
        l.last_grant = 0;
        drop(l);
        if unused > 0 {
            self.wake();
        }
    }

    pub(super) fn limit(&self) -> u64 {
        self.limits().map_or(UNLIMITED, |l| l.quota + l.overage)
    }

    /// Takes `bytes` from the lease, if it has them. With a session's `allowance`, that is
    /// handed back first, and refilled with up to `SESSION_SPARE` more for the session's
    /// next writes. `Full` when Redis said within
    /// `recent` that no write this big fits and no key has been written or deleted here
    /// since: the refusal needs no round trip, so a tenant hammering at its limit does not
    /// hammer Redis.
    pub(super) fn try_charge(
        &self,
        bytes: u64,
        recent: Duration,
        mut allowance: Option<&mut u64>,
    ) -> Charge {
        let mut l = self.local.lock().unwrap();
        if let Some(a) = allowance.as_deref_mut() {
            l.charged -= std::mem::take(a);
        }
        let left = l.granted - l.charged;
        if left >= bytes {
            l.charged += bytes;
            l.busy = true;
            l.last_charge = Some(Instant::now());
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

    pub(super) fn mark_full(&self, need: u64) {
        self.local.lock().unwrap().full = Some((Instant::now(), need));
    }

    /// Keys (as Redis names them) to measure, e.g. what a FLUSHDB deleted.
    pub fn settle(&self, keys: impl IntoIterator<Item = Bytes>, charged: u64) {
        self.local.lock().unwrap().settle(b"", keys, charged);
        self.wake();
    }

    /// The dirty keys and the lease to hand back (all of it but what in-flight writes hold).
    pub(super) fn take_flush(&self, keep: bool) -> Flush {
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
        let recent = l.last_charge.is_some_and(|t| t.elapsed() < IDLE_GRACE);
        let keep = if keep && (l.busy || recent) {
            unused.min(l.last_grant)
        } else {
            0
        };
        l.renewed = Some(now);
        l.busy = false;
        let dropped = std::mem::take(&mut l.dropped);
        let release = l.settled + unused - keep + dropped;
        let settled = std::mem::take(&mut l.settled);
        l.charged -= settled;
        l.granted = l.charged + keep;
        l.last_dirty.clear();
        l.dirty_since = None;
        Flush {
            keys: l.dirty.drain().collect(),
            release,
            dropped,
            settled,
        }
    }

    /// A flush that failed: everything goes back to be tried again.
    pub(super) fn undo_flush(&self, f: Flush) {
        let mut l = self.local.lock().unwrap();
        l.dirty.extend(f.keys);
        if !l.dirty.is_empty() {
            l.dirty_since.get_or_insert_with(Instant::now);
        }
        l.settled += f.settled;
        l.charged += f.settled;
        // What a change of limits gave up stays given up: it goes back at the next try.
        l.granted += f.release - f.dropped;
        l.dropped += f.dropped;
        // Not renewed after all.
        l.renewed = None;
    }

    /// Does the next flush have anything to do? Keys written `measure_delay` ago (or many
    /// keys), keys whose TTL ran out; or a lease to hand back (no write for
    /// [`IDLE_GRACE`]; a new quota) or to renew before Redis lets it expire. A tenant that
    /// wrote nothing lately costs no round trip, and one that writes now and then a round
    /// trip per `measure_delay` at most: its writes are covered by its lease meanwhile, so
    /// the limit holds; only the usage figure waits.
    pub(super) fn has_work(&self, measure_delay: Duration) -> bool {
        let l = self.local.lock().unwrap();
        let now = Instant::now();
        let idle = l.last_charge.is_none_or(|t| now - t >= IDLE_GRACE);
        let stale = l.renewed.is_none_or(|t| now - t >= RENEW_AFTER);
        let measure = l.dirty.len() >= MEASURE_SOON
            || l.dirty_since.is_some_and(|t| now - t >= measure_delay);
        measure
            || l.dropped > 0
            || (l.granted > 0 && (idle || stale))
            || l.expiring
                .first_key_value()
                .is_some_and(|(at, _)| *at <= now)
    }

    pub(super) fn status(&self, used: i64) -> Status {
        Status {
            used,
            limits: self.limits(),
            refusals: self.refusals.load(Ordering::Relaxed),
            overage_writes: self.overage_writes.load(Ordering::Relaxed),
            reconciled: self.reconciled.load(Ordering::Relaxed),
        }
    }

    pub(super) fn count_overage(&self, limits: QuotaLimits) {
        if self.used_with_leases() as u64 > limits.quota {
            self.overage_writes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Usage counting every instance's outstanding leases, as last seen.
    pub fn used_with_leases(&self) -> i64 {
        self.used.load(Ordering::Relaxed) + self.leased.load(Ordering::Relaxed)
    }

    pub(super) fn saw(&self, used: i64, leased: i64) {
        self.used.store(used, Ordering::Relaxed);
        self.leased.store(leased, Ordering::Relaxed);
    }
}

pub(super) struct Flush {
    pub(super) keys: Vec<Bytes>,
    pub(super) release: u64,
    /// Of `release`, the lease given up by a change of limits.
    pub(super) dropped: u64,
    pub(super) settled: u64,
}
