//! Shared market data: keys under `[shared] prefixes` (`shared:market:...`) have the same name
//! for every tenant, are never namespaced, and are read-only except to a `publisher` tenant
//! (the policy and rewrite stages see to that). GET of a shared key is answered from here:
//!
//! ```text
//! GET shared:market:BTC-USD:price
//!   L1 (moka, bounded by l1_max_bytes)  ── hit ──▶ reply
//!   miss: single flight per key (moka's try_get_with): the first caller fetches, the others
//!         wait for its value or its error
//!     Redis: GET + PTTL over respite's own pool
//!     Redis miss, [shared.origin] set: HTTP GET of the origin URL; 200 → the value, stored
//!         in Redis with its TTL tier; 404 → nil; a timeout or other status → an error
//!         naming the origin (not cached)
//! ```
//!
//! An L1 entry lives at most `max_stale_ms` (1 s), never past the key's TTL in Redis, never
//! past its tier: so a value another respite instance (or a publisher writing around
//! respite) has overwritten is served here for at most that long. A publisher's write
//! through this instance drops the entry at once. A key read within the last tenth of its
//! tier is fetched again from the origin in the background (refresh ahead), so a hot key
//! never misses in Redis and never stampedes.
//!
//! Other reads of shared keys (MGET, HGETALL, TTL, ...) go to Redis like any command.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::rate::Bucket;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use deadpool_redis::redis;

use crate::config::SharedConfig;
use crate::error::{Error, UpstreamError};
use crate::upstream::OwnPool;
use crate::wire::Resp;

/// A session's last shared read: the key, its entry, and the cache generation then.
pub type Memo = Option<(Bytes, Arc<Entry>, u64)>;

/// What the shared cache counts, for INFO and metrics.
#[derive(Debug, Default)]
pub struct Counters {
    /// GETs of shared keys answered from L1 (reads = hits + misses: one count per read).
    pub l1_hits: AtomicU64,
    pub l1_misses: AtomicU64,
    /// Fetches from Redis (one per flight).
    pub redis_fetches: AtomicU64,
    /// Fetches from the origin, refreshes ahead included.
    pub origin_fetches: AtomicU64,
    /// Readers that missed L1 and were answered by another reader's fetch.
    pub waiters: AtomicU64,
}

/// A shared key's value as L1 holds it.
#[derive(Debug)]
pub struct Entry {
    /// The value, encoded as a RESP bulk string; `None` when the key has none.
    value: Option<Bytes>,
    /// When the key expires in Redis, if it has a TTL.
    redis_expires: Option<Instant>,
    /// Until when L1 serves it: `max_stale_ms` after it was fetched, or its expiry in
    /// Redis if sooner.
    fresh_until: Instant,
    tier: Duration,
}

impl Entry {
    /// Is its TTL in Redis within the last tenth of its tier?
    fn refresh_due(&self) -> bool {
        self.redis_expires
            .is_some_and(|at| at.saturating_duration_since(Instant::now()) <= self.tier / 10)
    }

    /// Whether the key has a value (a hit, for the metrics).
    pub fn found(&self) -> bool {
        self.value.is_some()
    }

    /// GET's reply in the client's protocol.
    pub fn reply(&self, protocol: u8) -> Bytes {
        match &self.value {
            Some(v) => v.clone(),
            None => Resp(protocol).null(),
        }
    }
}

struct Origin {
    url: String,
    timeout: Duration,
    client: reqwest::Client,
}

/// TTL tiers: the first pattern a key matches gives its TTL, else the default.
struct Tiers {
    patterns: Vec<(Vec<u8>, Duration)>,
    default: Duration,
}

impl Tiers {
    fn of(shared: &SharedConfig) -> Tiers {
        Tiers {
            patterns: shared
                .ttl
                .iter()
                .map(|t| {
                    (
                        t.pattern.as_bytes().to_vec(),
                        Duration::from_secs(t.seconds),
                    )
                })
                .collect(),
            default: Duration::from_secs(shared.default_ttl_seconds),
        }
    }
}

pub struct SharedCache {
    /// A reload sets them anew: values cached from then on take the new TTLs.
    tiers: std::sync::RwLock<Tiers>,
    max_stale: Duration,
    origin: Option<Origin>,
    /// `fetches_per_second_per_tenant`: each tenant's bucket, made on its first miss.
    origin_per_tenant: Option<u64>,
    tenant_fetches: DashMap<String, Bucket>,
    /// `fetches_per_second`: every fetch's.
    all_fetches: Option<Bucket>,
    l1: moka::future::Cache<Bytes, Arc<Entry>, foldhash::fast::RandomState>,
    own: OwnPool,
    /// Keys being refreshed ahead, so that each is refreshed once.
    refreshing: DashMap<Bytes, ()>,
    /// Bumped whenever an entry is dropped or replaced early, so that a session's [`Memo`]
    /// of it, and [`SharedCache::front`]'s, are dropped too.
    generation: AtomicU64,
    /// The entries read lately, each with the generation it was read at: a read of one that
    /// is still fresh takes one hash lookup here instead of moka's lookup, read log and
    /// housekeeping (about 1,800 instructions per read, callgrind). Emptied when its
    /// entries' weights pass `front_budget`.
    front: DashMap<Bytes, Fresh, foldhash::fast::RandomState>,
    front_bytes: std::sync::atomic::AtomicUsize,
    front_budget: usize,
    pub counters: Counters,
}

/// An entry in [`SharedCache::front`], and the cache generation it was read at.
struct Fresh {
    entry: Arc<Entry>,
    generation: u64,
}

/// What an entry weighs, for L1's bound and the front's.
fn weight(key: &[u8], e: &Entry) -> usize {
    key.len() + e.value.as_ref().map_or(0, |v| v.len()) + 96
}

/// The front's share of `l1_max_bytes` (an eighth, at most 16 MiB): it holds entries L1
/// may have evicted, for at most their `max_stale_ms`.
fn front_budget(l1_max_bytes: u64) -> usize {
    usize::try_from(l1_max_bytes / 8)
        .unwrap_or(usize::MAX)
        .min(16 << 20)
}

/// L1 expiry per entry: its own `fresh_until`, whenever it is inserted.
struct ByEntry;

impl moka::Expiry<Bytes, Arc<Entry>> for ByEntry {
    fn expire_after_create(&self, _: &Bytes, e: &Arc<Entry>, at: Instant) -> Option<Duration> {
        Some(e.fresh_until.saturating_duration_since(at))
    }

    fn expire_after_update(
        &self,
        _: &Bytes,
        e: &Arc<Entry>,
        at: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(e.fresh_until.saturating_duration_since(at))
    }
}

impl SharedCache {
    pub fn new(shared: &SharedConfig, own: OwnPool) -> anyhow::Result<SharedCache> {
        let origin = shared
            .origin
            .as_ref()
            .map(|o| -> anyhow::Result<Origin> {
                let timeout = Duration::from_millis(o.timeout_ms);
                Ok(Origin {
                    url: o.url.clone(),
                    timeout,
                    client: reqwest::Client::builder().timeout(timeout).build()?,
                })
            })
            .transpose()?;
        Ok(SharedCache {
            tiers: std::sync::RwLock::new(Tiers::of(shared)),
            max_stale: Duration::from_millis(shared.max_stale_ms),
            origin_per_tenant: shared
                .origin
                .as_ref()
                .and_then(|o| o.fetches_per_second_per_tenant),
            tenant_fetches: DashMap::new(),
            all_fetches: shared
                .origin
                .as_ref()
                .and_then(|o| o.fetches_per_second)
                .map(Bucket::new),
            origin,
            l1: moka::future::Cache::builder()
                .max_capacity(shared.l1_max_bytes)
                .weigher(|k: &Bytes, e: &Arc<Entry>| {
                    u32::try_from(weight(k, e)).unwrap_or(u32::MAX)
                })
                .expire_after(ByEntry)
                .build_with_hasher(foldhash::fast::RandomState::default()),
            own,
            refreshing: DashMap::new(),
            generation: AtomicU64::new(0),
            front: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            front_bytes: Default::default(),
            front_budget: front_budget(shared.l1_max_bytes),
            counters: Counters::default(),
        })
    }

    /// The TTL tier of `key`: the first pattern it matches, else the default.
    pub fn tier(&self, key: &[u8]) -> Duration {
        let tiers = self.tiers.read().unwrap();
        tiers
            .patterns
            .iter()
            .find(|(p, _)| glob_match(p, key))
            .map_or(tiers.default, |(_, t)| *t)
    }

    /// New TTL tiers (a reload); values already cached keep theirs until they expire.
    pub fn set_tiers(&self, shared: &SharedConfig) {
        *self.tiers.write().unwrap() = Tiers::of(shared);
    }

    /// The value of a shared key that [`SharedCache::get_now`] did not have at hand: from
    /// L1, or fetched once however many ask at once; an origin fetch is charged to `tenant`,
    /// whose miss started it. The session's `memo` keeps it for its next read.
    pub async fn get_late(
        self: &Arc<Self>,
        memo: &mut Memo,
        key: &Bytes,
        tenant: &str,
    ) -> Result<Arc<Entry>, Error> {
        // Read before L1 is, and bumped only once a drop is done (`invalidate`): an entry
        // read here that is dropped meanwhile is kept under the generation before the drop.
        let generation = self.generation.load(Ordering::Acquire);
        if let Some(e) = self.l1.get(key).await {
            self.counters.l1_hits.fetch_add(1, Ordering::Relaxed);
            self.refresh_if_due(key, &e);
            self.to_front(key, &e, generation);
            *memo = Some((key.clone(), e.clone(), generation));
            return Ok(e);
        }
        self.counters.l1_misses.fetch_add(1, Ordering::Relaxed);
        let led = std::sync::atomic::AtomicBool::new(false);
        let result = self
            .l1
            .try_get_with(key.clone(), async {
                led.store(true, Ordering::Relaxed);
                self.load(key, tenant).await
            })
            .await;
        if !led.load(Ordering::Relaxed) {
            self.counters.waiters.fetch_add(1, Ordering::Relaxed);
        }
        let e = result.map_err(|e| (*e).clone())?;
        self.refresh_if_due(key, &e);
        *memo = Some((key.clone(), e.clone(), generation));
        Ok(e)
    }

    /// The front's entry for `key`, if it was read at `generation` and is still fresh.
    fn in_front(&self, key: &[u8], generation: u64) -> Option<Arc<Entry>> {
        let f = self.front.get(key)?;
        let fresh = f.generation == generation && Instant::now() < f.entry.fresh_until;
        fresh.then(|| f.entry.clone())
    }

    /// Keeps an entry read from L1 at `generation` in the front. One that would take more
    /// than a sixty-fourth of its budget is not kept; past the budget, the front is emptied.
    fn to_front(&self, key: &[u8], e: &Arc<Entry>, generation: u64) {
        let w = weight(key, e);
        if w > self.front_budget / 64 {
            return;
        }
        if self.front_bytes.fetch_add(w, Ordering::Relaxed) + w > self.front_budget {
            self.front.clear();
            self.front_bytes.store(w, Ordering::Relaxed);
        }
        let fresh = Fresh {
            entry: e.clone(),
            generation,
        };
        // A copy: the key may be a slice of a client's read buffer, which it would keep.
        if let Some(old) = self.front.insert(Bytes::copy_from_slice(key), fresh) {
            let w = weight(key, &old.entry);
            let less = |b: usize| Some(b.saturating_sub(w));
            let _ = self
                .front_bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, less);
        }
    }

    /// Drops the L1 entry (a publisher wrote the key through this instance).
    pub async fn invalidate(&self, key: &Bytes) {
        // Dropped, then the generation bumped: a reader that sees the new generation can no
        // longer find the old entry in L1 and keep it (in the front, or its memo) under it.
        self.l1.invalidate(key).await;
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The entry when it is at hand without a wait: the session's memo of the last shared
    /// key it read (a session polling one key gets it without a cache lookup, for as long as
    /// the L1 entry would live and no entry has been dropped or replaced since), or the
    /// front. Most reads of a hot key end here, so that a caller can keep the (large) future
    /// of [`SharedCache::get_late`] for the rest.
    pub fn get_now(self: &Arc<Self>, memo: &mut Memo, key: &Bytes) -> Option<Arc<Entry>> {
        if let Some((k, e, generation)) = memo {
            if k == key
                && *generation == self.generation.load(Ordering::Acquire)
                && Instant::now() < e.fresh_until
            {
                self.counters.l1_hits.fetch_add(1, Ordering::Relaxed);
                self.refresh_if_due(key, e);
                return Some(e.clone());
            }
        }
        // Read before the front is, as in `get`.
        let generation = self.generation.load(Ordering::Acquire);
        let e = self.in_front(key, generation)?;
        self.counters.l1_hits.fetch_add(1, Ordering::Relaxed);
        self.refresh_if_due(key, &e);
        *memo = Some((key.clone(), e.clone(), generation));
        Some(e)
    }

    /// The flight's fetch: Redis, then the origin on a miss.
    async fn load(&self, key: &Bytes, tenant: &str) -> Result<Arc<Entry>, Error> {
        self.counters.redis_fetches.fetch_add(1, Ordering::Relaxed);
        // Expiry is counted from before the PTTL is asked, so L1 never outlives the key in
        // Redis however late the reply arrives.
        let asked = Instant::now();
        // Two requests, not a pipeline: a single command's error (WRONGTYPE) comes back as
        // Redis wrote it.
        let (value, pttl): (Option<Vec<u8>>, i64) = self
            .with_conn(async |c| {
                let value: Option<Vec<u8>> = redis::cmd("GET").arg(&key[..]).query_async(c).await?;
                let pttl = match value {
                    Some(_) => redis::cmd("PTTL").arg(&key[..]).query_async(c).await?,
                    None => -2,
                };
                Ok((value, pttl))
            })
            .await?;
        let tier = self.tier(key);
        match value {
            Some(v) => {
                let expires = (pttl > 0).then(|| asked + Duration::from_millis(pttl as u64));
                Ok(self.entry(Some(&v), expires, tier))
            }
            None => match &self.origin {
                Some(origin) => Ok(match self.fetch_for(tenant, origin, key, tier).await? {
                    Some((v, expires)) => self.entry(Some(&v), Some(expires), tier),
                    None => self.entry(None, None, tier),
                }),
                None => Ok(self.entry(None, None, tier)),
            },
        }
    }

    /// An L1 entry for a value whose key expires in Redis at `redis_expires`.
    fn entry(
        &self,
        value: Option<&[u8]>,
        redis_expires: Option<Instant>,
        tier: Duration,
    ) -> Arc<Entry> {
        let now = Instant::now();
        let mut fresh_until = now + self.max_stale.min(tier);
        if let Some(at) = redis_expires {
            fresh_until = fresh_until.min(at);
        }
        Arc::new(Entry {
            value: value.map(Resp::bulk),
            redis_expires,
            fresh_until,
            tier,
        })
    }

    /// [`SharedCache::fetch_origin`] within the origin's rates: `tenant`'s and everyone's.
    /// Past either, the miss is not fetched, and not cached (`Error::OriginLimited`).
    async fn fetch_for(
        &self,
        tenant: &str,
        origin: &Origin,
        key: &[u8],
        tier: Duration,
    ) -> Result<Option<(Vec<u8>, Instant)>, Error> {
        let now = Instant::now();
        if let Some(per_second) = self.origin_per_tenant {
            let mine = match self.tenant_fetches.get(tenant) {
                Some(b) => b.take(now),
                None => {
                    let b = Bucket::new(per_second);
                    let took = b.take(now);
                    self.tenant_fetches.insert(tenant.to_string(), b);
                    took
                }
            };
            if mine.is_err() {
                return Err(Error::OriginLimited(format!(
                    "rate limit exceeded: tenant '{tenant}' may cause {per_second} origin \
                     fetches per second on this instance"
                )));
            }
        }
        if let Some(all) = &self.all_fetches {
            if all.take(now).is_err() {
                return Err(Error::OriginLimited(format!(
                    "rate limit exceeded: at most {} origin fetches per second on this \
                     instance",
                    all.per_second
                )));
            }
        }
        self.fetch_origin(origin, key, tier).await
    }

    /// GETs the origin URL for `key`: 200 stores the body in Redis with the key's tier and
    /// returns it with the latest time the key can expire there; 404 is no value; anything
    /// else an error naming the origin.
    async fn fetch_origin(
        &self,
        origin: &Origin,
        key: &[u8],
        tier: Duration,
    ) -> Result<Option<(Vec<u8>, Instant)>, Error> {
        self.counters.origin_fetches.fetch_add(1, Ordering::Relaxed);
        let url = origin.url.replace("{key}", &percent_encode(key));
        let failed = |why: String| Error::Origin {
            url: url.clone(),
            why,
        };
        let response = origin.client.get(&url).send().await.map_err(|e| {
            failed(if e.is_timeout() {
                format!("no answer within {} ms", origin.timeout.as_millis())
            } else {
                format!("unreachable ({e})")
            })
        })?;
        match response.status().as_u16() {
            200 => {}
            404 => return Ok(None),
            status => return Err(failed(format!("answered HTTP {status}"))),
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| failed(format!("body not read ({e})")))?
            .to_vec();
        let expires = Instant::now() + tier;
        let stored: Result<(), _> = self
            .with_conn(async |c| {
                redis::cmd("SET")
                    .arg(key)
                    .arg(&body[..])
                    .arg("PX")
                    .arg(tier.as_millis() as u64)
                    .query_async(c)
                    .await
            })
            .await;
        if let Err(e) = stored {
            // The value is still good for this reader; the next miss fetches it again.
            tracing::warn!(key = %String::from_utf8_lossy(key), error = %e, "origin value not stored in Redis");
        }
        Ok(Some((body, expires)))
    }

    /// Refresh ahead: a key read within the last tenth of its tier is fetched again from
    /// the origin in the background, once.
    fn refresh_if_due(self: &Arc<Self>, key: &Bytes, e: &Entry) {
        if self.origin.is_none() || !e.refresh_due() {
            return;
        }
        if self.refreshing.insert(key.clone(), ()).is_some() {
            return;
        }
        let me = self.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let origin = me.origin.as_ref().expect("checked");
            let tier = me.tier(&key);
            // A reader holding the entry from before the last refresh must not start another.
            let current = me.l1.get(&key).await;
            let over = me
                .all_fetches
                .as_ref()
                .is_some_and(|all| all.take(Instant::now()).is_err());
            if over || current.is_some_and(|e| !e.refresh_due()) {
                me.refreshing.remove(&key);
                return;
            }
            match me.fetch_origin(origin, &key, tier).await {
                Ok(Some((v, expires))) => {
                    let e = me.entry(Some(&v), Some(expires), tier);
                    me.l1.insert(key.clone(), e).await;
                    me.generation.fetch_add(1, Ordering::Release);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "refresh ahead failed"),
            }
            me.refreshing.remove(&key);
        });
    }

    /// Runs `f` on respite's own pool. Redis' own error (e.g. WRONGTYPE) becomes the
    /// reply, as if Redis had answered the client.
    async fn with_conn<T, F>(&self, f: F) -> Result<T, Error>
    where
        F: AsyncFnOnce(&mut crate::upstream::OwnConn) -> redis::RedisResult<T>,
    {
        self.own
            .run(f)
            .await
            .map_err(|e| e.for_client(UpstreamError::SharedFetch))
    }

    /// INFO's `# Shared` section: this instance's counters.
    pub fn info(&self) -> String {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let hits = get(&c.l1_hits);
        let reads = hits + get(&c.l1_misses);
        format!(
            "# Shared\r\nshared_reads:{reads}\r\nshared_l1_hits:{hits}\r\n\
             shared_l1_hit_rate:{:.4}\r\nshared_redis_fetches:{}\r\nshared_origin_fetches:{}\r\n\
             shared_flight_waiters:{}\r\nshared_l1_entries:{}\r\n",
            if reads == 0 {
                0.0
            } else {
                hits as f64 / reads as f64
            },
            get(&c.redis_fetches),
            get(&c.origin_fetches),
            get(&c.waiters),
            self.l1.entry_count(),
        )
    }
}

/// Redis-style glob with `*` and `?` (enough for TTL tier patterns).
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some(p);
                mark = t;
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some(s) => {
                    p = s + 1;
                    mark += 1;
                    t = mark;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// A key as a URL path segment: unreserved characters and `:` stay, the rest is %XX.
fn percent_encode(key: &[u8]) -> String {
    let mut out = String::with_capacity(key.len());
    for &b in key {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_pick_tiers() {
        assert!(glob_match(
            b"shared:market:*:price",
            b"shared:market:BTC-USD:price"
        ));
        assert!(glob_match(
            b"shared:market:*:1m:ohlcv",
            b"shared:market:ETH:1m:ohlcv"
        ));
        assert!(!glob_match(
            b"shared:market:*:1m:ohlcv",
            b"shared:market:ETH:1d:ohlcv"
        ));
        assert!(glob_match(b"a?c*", b"abcdef"));
        assert!(!glob_match(b"a?c", b"abcd"));
    }

    /// The front keeps what was read at the generation asked about, and no more than its
    /// budget: an eighth of `l1_max_bytes`, here 8 KiB, and nothing over a 64th of that.
    #[tokio::test]
    async fn the_front_keeps_fresh_entries_within_its_budget() {
        let config = crate::config::Config::parse(
            "[upstream]\nurl = \"redis://127.0.0.1:1\"\n[shared]\nprefixes = [\"s:\"]\n\
             l1_max_bytes = 65536\n[[tenants]]\nid = \"a\"\npassword = \"p\"\n",
        )
        .unwrap();
        let own = OwnPool::from_config(&config).unwrap();
        let cache = SharedCache::new(config.shared.as_ref().unwrap().get_ref(), own).unwrap();
        let tier = Duration::from_secs(60);
        let small = cache.entry(Some(b"v"), None, tier);
        let key = |i: usize| format!("s:{i:04}");
        for i in 0..1000 {
            cache.to_front(key(i).as_bytes(), &small, 7);
        }
        let held: usize = (0..1000)
            .filter(|&i| cache.in_front(key(i).as_bytes(), 7).is_some())
            .map(|i| weight(key(i).as_bytes(), &small))
            .sum();
        assert!(held > 0 && held <= 8192, "{held} bytes held");
        assert!(
            cache.in_front(key(999).as_bytes(), 7).is_some(),
            "the last kept"
        );
        assert!(
            cache.in_front(key(999).as_bytes(), 8).is_none(),
            "not at another generation"
        );
        // An entry filed again for its key (after each bump of the generation) replaces its
        // weight rather than adding to it: the front is not emptied for it.
        cache.to_front(b"s:kept", &small, 8);
        for _ in 0..1000 {
            cache.to_front(b"s:again", &small, 8);
        }
        assert!(
            cache.in_front(b"s:kept", 8).is_some(),
            "emptied by one key's refills"
        );
        let big = cache.entry(Some(&[b'x'; 200]), None, tier);
        cache.to_front(b"s:big", &big, 7);
        assert!(
            cache.in_front(b"s:big", 7).is_none(),
            "past a 64th of the budget"
        );
    }

    #[test]
    fn keys_become_url_segments() {
        assert_eq!(
            percent_encode(b"shared:market:BTC-USD:price"),
            "shared:market:BTC-USD:price"
        );
        assert_eq!(percent_encode(b"a b/c"), "a%20b%2Fc");
    }
}
