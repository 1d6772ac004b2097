//! A write admitted and charged ([`Written`]) and a session's dealings with its tenant's
//! ledger ([`Account`]), settled a batch of replies at a time.

use super::*;

/// A write admitted and charged, until its reply is in (or it is given up on): then its
/// session's [`Account`] takes it in, its keys to be measured and its charge settled.
#[derive(Debug)]
pub struct Written {
    pub keys: Keys,
    pub(super) charged: u64,
    /// The TTL it sets; counted from its reply, which comes after Redis started it.
    pub(super) ttl: Option<Duration>,
    /// What a transaction or another database than 0 adds. Boxed: most writes have
    /// neither, and every write waits in its session's queue until its reply is in.
    pub(super) rare: Option<Box<Rare>>,
}

#[derive(Debug, Default)]
pub(super) struct Rare {
    /// A transaction's queued writes' TTLs, and their keys.
    pub(super) expiring: Vec<(Duration, Vec<Bytes>)>,
    /// The prefix of its keys' database when not database 0's (the ledger's); empty when
    /// they are named in full already (a transaction's writes in several databases).
    pub(super) db: Option<Bytes>,
}

impl Written {
    /// The bytes charged for it so far.
    pub fn charged(&self) -> u64 {
        self.charged
    }

    /// A write no quota charges.
    pub fn uncharged(cost: WriteCost) -> Written {
        Written::new(cost, 0)
    }

    pub(super) fn new(cost: WriteCost, charged: u64) -> Written {
        Written {
            keys: cost.keys,
            charged,
            ttl: cost.expires_in,
            rare: cost.db.map(|db| {
                Box::new(Rare {
                    expiring: Vec::new(),
                    db: Some(db),
                })
            }),
        }
    }

    fn db(&self) -> Option<&Bytes> {
        self.rare.as_ref().and_then(|r| r.db.as_ref())
    }

    fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Default::default)
    }

    /// A transaction's queued writes' TTLs and keys, taken out.
    pub(super) fn take_expiring(&mut self) -> Vec<(Duration, Vec<Bytes>)> {
        self.rare
            .as_mut()
            .map(|r| std::mem::take(&mut r.expiring))
            .unwrap_or_default()
    }

    /// Its keys by their names in Redis (`base` is database 0's prefix), so that writes
    /// of other databases can join it.
    fn name_keys(&mut self, base: &Bytes) {
        let rare = self.rare();
        let prefix = rare
            .db
            .replace(Bytes::new())
            .unwrap_or_else(|| base.clone());
        if prefix.is_empty() {
            return;
        }
        let named = |keys: &[Bytes]| keys.iter().map(|k| namespaced(&prefix, k)).collect();
        for (_, keys) in &mut rare.expiring {
            *keys = named(keys);
        }
        self.keys = Keys::Many(named(&self.keys.to_vec()));
    }

    /// Takes `other` (keys already copied out of its request) in: a transaction's writes
    /// settle together, when EXEC's reply is in. `base` is the tenant's database 0 prefix,
    /// for writes of several databases (a SELECT inside the transaction).
    pub fn absorb(&mut self, other: &mut Written, base: &Bytes) {
        if self.db() != other.db() {
            self.name_keys(base);
            other.name_keys(base);
        }
        let mut expiring = other.take_expiring();
        if let Some(ttl) = other.ttl.take() {
            expiring.insert(0, (ttl, other.keys.to_vec()));
        }
        if !expiring.is_empty() {
            self.rare().expiring.append(&mut expiring);
        }
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
    pub(super) allowance: u64,
    pub(super) charged: u64,
    pub(super) keys: Vec<Bytes>,
    pub(super) expiring: Vec<(Duration, Vec<Bytes>)>,
    /// Keys of other databases than 0, and their TTLs, by their names in Redis.
    pub(super) named: Vec<Bytes>,
    pub(super) expiring_named: Vec<(Duration, Vec<Bytes>)>,
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
        let charged = match ledger.limits() {
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
        if let Some(prefix) = w.rare.as_mut().and_then(|r| r.db.take()) {
            // Another database's keys: named in full now (rare enough to copy).
            let named = |keys: Vec<Bytes>| -> Vec<Bytes> {
                keys.iter().map(|k| namespaced(&prefix, k)).collect()
            };
            if let Some(ttl) = w.ttl.take() {
                self.expiring_named.push((ttl, named(w.keys.to_vec())));
            }
            for (ttl, keys) in w.take_expiring() {
                self.expiring_named.push((ttl, named(keys)));
            }
            self.named
                .extend(named(std::mem::take(&mut w.keys).to_vec()));
            return;
        }
        if let Some(ttl) = w.ttl.take() {
            self.expiring.push((ttl, w.keys.to_vec()));
        }
        self.expiring.append(&mut w.take_expiring());
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
            && self.named.is_empty()
            && self.expiring_named.is_empty()
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
            self.named.clear();
            self.expiring_named.clear();
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
        if !self.expiring_named.is_empty() {
            let now = Instant::now();
            for (ttl, keys) in self.expiring_named.drain(..) {
                l.expire_later(keys, now + ttl + EXPIRY_GRACE);
            }
        }
        if !self.named.is_empty() {
            l.settle(b"", self.named.drain(..), 0);
        }
        l.settle(
            &ledger.prefix,
            self.keys.drain(..),
            std::mem::take(&mut self.charged),
        );
        drop(l);
        ledger.wake();
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
