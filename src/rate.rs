//! A tenant's rates: `ops_per_second` and `bytes_per_second` (request and reply bytes), each
//! a token bucket kept as GCRA (the theoretical arrival time of the next unit, one atomic),
//! shared by the tenant's connections on this instance.
//!
//! Reply bytes are only known once Redis has answered, and a reply is never withheld: they
//! are charged after the fact and may put the bucket in debt, which the tenant's next
//! requests wait out (or are refused for). That is why this is not `governor`, whose
//! `check_n` can only refuse.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One token bucket.
#[derive(Debug)]
pub struct Bucket {
    /// When (ns after `origin`) the bucket would next be empty again.
    tat: AtomicU64,
    /// ns per unit.
    interval: u64,
    /// How far ahead of now `tat` may run: the burst, in ns.
    tolerance: u64,
    origin: Instant,
    pub per_second: u64,
}

impl Bucket {
    /// `per_second` units a second, with a burst of a tenth of a second's worth.
    pub fn new(per_second: u64) -> Bucket {
        let per_second = per_second.max(1);
        let interval = 1_000_000_000 / per_second;
        Bucket {
            tat: AtomicU64::new(0),
            interval: interval.max(1),
            tolerance: (interval * (per_second / 10).max(1)).max(1_000_000),
            origin: Instant::now(),
            per_second,
        }
    }

    fn now(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_nanos() as u64
    }

    /// Takes one unit if the bucket has it; otherwise how long until it will.
    pub fn take(&self, at: Instant) -> Result<(), Duration> {
        self.take_n(1, at)
    }

    /// Takes `n` units if the bucket has them all; otherwise how long until it will.
    pub fn take_n(&self, n: u64, at: Instant) -> Result<(), Duration> {
        let now = self.now(at);
        let cost = n * self.interval;
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let from = tat.max(now);
            // The last of the n units must fit within the burst.
            let last = from + cost - self.interval;
            if last - now > self.tolerance {
                return Err(Duration::from_nanos(last - now - self.tolerance));
            }
            match self.tat.compare_exchange_weak(
                tat,
                from + cost,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => tat = actual,
            }
        }
    }

    /// Charges `n` units whether or not the bucket has them (reply bytes, request bytes
    /// already read).
    pub fn charge(&self, n: u64, at: Instant) {
        let now = self.now(at);
        let cost = n.saturating_mul(self.interval);
        let _ = self
            .tat
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                Some(tat.max(now).saturating_add(cost))
            });
    }

    /// How long until the bucket has a unit again (zero: now).
    pub fn wait(&self, at: Instant) -> Duration {
        let now = self.now(at);
        let tat = self.tat.load(Ordering::Relaxed);
        Duration::from_nanos(tat.saturating_sub(now).saturating_sub(self.tolerance))
    }
}

/// What happens past a rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Past {
    /// Stop reading the tenant's connections until the bucket refills (the client sees
    /// latency, never an error).
    Delay,
    /// `-ERR rate limit exceeded ...` at once.
    Refuse,
}

/// A tenant's rates on this instance.
#[derive(Debug)]
pub struct Rates {
    pub ops: Option<Bucket>,
    pub bytes: Option<Bucket>,
    pub past: Past,
    /// Time its connections were held back, in µs, and requests refused.
    pub throttled_us: AtomicU64,
    pub refused: AtomicU64,
}

impl Rates {
    pub fn new(ops: Option<u64>, bytes: Option<u64>, past: Past) -> Option<Rates> {
        (ops.is_some() || bytes.is_some()).then(|| Rates {
            ops: ops.map(Bucket::new),
            bytes: bytes.map(Bucket::new),
            past,
            throttled_us: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// May one more request go now? `Ok` is how many requests a connection may send
    /// before asking again (it takes up to `want` at once, so that a pipeline pays one
    /// atomic update per `want` requests, not one each); `Err` how long until one may.
    /// `credit` is what the connection holds from earlier: spent first.
    pub fn admit(&self, at: Instant, credit: &mut u32, want: u32) -> Result<(), Duration> {
        if let Some(b) = &self.bytes {
            let wait = b.wait(at);
            if !wait.is_zero() {
                return Err(wait);
            }
        }
        let Some(o) = &self.ops else {
            return Ok(());
        };
        if *credit > 0 {
            *credit -= 1;
            return Ok(());
        }
        if want > 1 && o.take_n(u64::from(want), at).is_ok() {
            *credit = want - 1;
            return Ok(());
        }
        o.take(at)
    }

    /// Bytes read from or written to one of the tenant's clients.
    pub fn bytes(&self, n: usize, at: Instant) {
        if let Some(b) = &self.bytes {
            b.charge(n as u64, at);
        }
    }

    /// The refusal, in the words shared/DESIGN.md gives.
    pub fn refusal(&self, tenant: &str) -> String {
        let mut limits = Vec::new();
        if let Some(o) = &self.ops {
            limits.push(format!("{} ops", o.per_second));
        }
        if let Some(b) = &self.bytes {
            limits.push(format!("{} bytes", b.per_second));
        }
        format!(
            "rate limit exceeded: tenant '{tenant}' may send {} per second on this instance",
            limits.join(" and ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_lets_its_rate_through_with_a_tenth_of_a_second_of_burst() {
        let b = Bucket::new(1000);
        let t0 = Instant::now();
        let mut taken = 0;
        while b.take(t0).is_ok() {
            taken += 1;
        }
        // The burst: a tenth of a second's worth, and the unit now.
        assert_eq!(taken, 101);
        let wait = b.take(t0).unwrap_err();
        assert!(wait <= Duration::from_millis(1), "{wait:?}");
        // Asked twice as fast as the rate for a second: the rate, and a burst's worth.
        let t1 = t0 + Duration::from_secs(1);
        let more = (0..2000)
            .filter(|i| b.take(t1 + Duration::from_micros(500 * i)).is_ok())
            .count();
        assert!((1000..=1102).contains(&more), "{more}");
    }

    #[test]
    fn charged_bytes_are_waited_out() {
        let r = Rates::new(None, Some(1000), Past::Delay).unwrap();
        let t0 = Instant::now();
        let mut credit = 0;
        assert!(r.admit(t0, &mut credit, 1).is_ok());
        r.bytes(2000, t0);
        let wait = r.admit(t0, &mut credit, 1).unwrap_err();
        assert!(
            wait > Duration::from_millis(1800) && wait <= Duration::from_secs(2),
            "{wait:?}"
        );
        assert!(r.admit(t0 + Duration::from_secs(2), &mut credit, 1).is_ok());
    }
}

#[cfg(test)]
mod credit_tests {
    use super::*;

    #[test]
    fn a_pipeline_takes_its_units_sixteen_at_a_time_and_never_more_than_the_bucket() {
        let r = Rates::new(Some(1000), None, Past::Delay).unwrap();
        let t0 = Instant::now();
        let mut credit = 0;
        let mut went = 0;
        while r.admit(t0, &mut credit, 16).is_ok() {
            went += 1;
        }
        // The burst of 101, taken in sixteens and then one by one.
        assert_eq!(went, 101);
    }
}
