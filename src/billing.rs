//! Billing figures: every `[billing] interval_ms`, each tenant's daily roll-up in Redis,
//! `respite:metrics:<tenant>:<YYYY-MM-DD>` (UTC), a hash any Redis client can read:
//!
//! ```text
//! requests, hits, misses, bytes_served, latency_us_sum   added by every instance: what it
//!                                                        served since its last roll-up
//! byte_seconds                                           added by one instance per interval:
//!                                                        quota usage x the interval
//! hit_rate, mean_latency_us                              recomputed from the sums
//! ```
//!
//! Each instance adds only what happened since its own last roll-up, so a restart starts from
//! zero and counts nothing twice; a roll-up that fails is retried with the next one. The
//! byte-seconds of an interval are added by whichever instance takes the interval's lock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_redis::redis::{self, Script};
use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::metrics::Totals;
use crate::upstream::PoolError;

/// Adds the deltas and recomputes the derived fields, atomically.
const ROLL_UP: &str = r#"
local k = KEYS[1]
redis.call('HINCRBY', k, 'requests', ARGV[1])
redis.call('HINCRBY', k, 'hits', ARGV[2])
redis.call('HINCRBY', k, 'misses', ARGV[3])
redis.call('HINCRBY', k, 'bytes_served', ARGV[4])
redis.call('HINCRBY', k, 'latency_us_sum', ARGV[5])
if tonumber(ARGV[6]) > 0 then
  redis.call('HINCRBY', k, 'byte_seconds', ARGV[6])
end
local f = redis.call('HMGET', k, 'requests', 'hits', 'misses', 'latency_us_sum')
local req, hits, misses, lat = tonumber(f[1]), tonumber(f[2]), tonumber(f[3]), tonumber(f[4])
local rate = 0
if hits + misses > 0 then rate = hits / (hits + misses) end
local mean = 0
if req > 0 then mean = lat / req end
redis.call('HSET', k, 'hit_rate', string.format('%.4f', rate), 'mean_latency_us', string.format('%.1f', mean))
redis.call('EXPIRE', k, 400 * 86400)
return 1
"#;

/// What was last rolled up, per tenant.
#[derive(Default, Clone, Copy)]
struct Sent {
    requests: u64,
    hits: u64,
    misses: u64,
    bytes_out: u64,
    latency_us: u64,
}

impl Sent {
    fn of(t: &Totals) -> Sent {
        Sent {
            requests: t.requests(),
            hits: t.hits,
            misses: t.misses,
            bytes_out: t.bytes_out,
            latency_us: t.latency_sum_us,
        }
    }
}

/// `YYYY-MM-DD` (UTC) of a Unix time.
pub fn day(unix_secs: u64) -> String {
    crate::audit::date(unix_secs)
}

/// Rolls up every `interval` until `stop`, and once more then.
pub async fn run(ctx: Arc<Context>, interval: Duration, stop: CancellationToken) {
    let script = Script::new(ROLL_UP);
    let mut sent: HashMap<String, Sent> = HashMap::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.cancelled() => true,
        };
        if let Err(e) = roll_up(&ctx, &script, &mut sent, interval).await {
            tracing::warn!(error = %e, "billing roll-up failed; retried with the next one");
        }
        if last {
            return;
        }
    }
}

async fn roll_up(
    ctx: &Context,
    script: &Script,
    sent: &mut HashMap<String, Sent>,
    interval: Duration,
) -> Result<(), PoolError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let today = day(now.as_secs());
    let slot = now.as_millis() as u64 / interval.as_millis().max(1) as u64;
    let usage: HashMap<String, i64> = match &ctx.quotas {
        Some(q) => q
            .statuses(q.ledgers())
            .await
            .into_iter()
            .map(|(l, s)| (l.tenant.clone(), s.used.max(0)))
            .collect(),
        None => HashMap::new(),
    };
    for t in ctx.auth.tenants() {
        let now_sent = Sent::of(&t.stats.snapshot());
        let before = sent.get(&t.id).copied().unwrap_or_default();
        let delta = [
            now_sent.requests - before.requests,
            now_sent.hits - before.hits,
            now_sent.misses - before.misses,
            now_sent.bytes_out - before.bytes_out,
            now_sent.latency_us - before.latency_us,
        ];
        let used = usage.get(&t.id).copied().unwrap_or(0) as u64;
        if used == 0 && delta.iter().all(|&d| d == 0) {
            // Nothing served and nothing held: no round trip.
            continue;
        }
        let key = format!("respite:metrics:{}:{today}", t.id);
        let lock = format!("respite:metrics:{{{}}}:held:{slot}", t.id);
        let interval_ms = interval.as_millis() as u64;
        ctx.own
            .run(async |c| {
                // One instance adds the interval's byte-seconds: whoever takes its lock.
                let mut byte_seconds = 0;
                if used > 0 {
                    let won: Option<String> = redis::cmd("SET")
                        .arg(&lock)
                        .arg(1)
                        .arg("NX")
                        .arg("PX")
                        .arg(interval_ms * 2)
                        .query_async(c)
                        .await?;
                    if won.is_some() {
                        byte_seconds = used * interval_ms / 1000;
                    }
                }
                if delta.iter().any(|&d| d > 0) || byte_seconds > 0 {
                    let _: i64 = script
                        .key(&key)
                        .arg(&delta[..])
                        .arg(byte_seconds)
                        .invoke_async(c)
                        .await?;
                }
                Ok(())
            })
            .await?;
        sent.insert(t.id.clone(), now_sent);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::day;

    #[test]
    fn unix_days_become_dates() {
        assert_eq!(day(0), "1970-01-01");
        assert_eq!(day(951_782_400), "2000-02-29");
        assert_eq!(day(1_795_305_600), "2026-11-22");
    }
}
