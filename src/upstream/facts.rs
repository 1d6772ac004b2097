//! What respite must know of the Redis it fronts to keep tenants apart, read from Redis
//! itself (`CONFIG GET`) before the first client is served and every few seconds after, so a
//! restarted or reconfigured Redis is seen within one interval.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::OwnPool;

/// How often the settings are read again.
const EVERY: Duration = Duration::from_secs(5);

/// The name respite's own connections carry in Redis' CLIENT LIST.
pub const OWN_NAME: &str = "respite-own";

/// Redis' own defaults of `proto-max-bulk-len` and `client-query-buffer-limit`, assumed
/// until Redis says otherwise.
const DEFAULT_MAX_BULK: usize = 512 * 1024 * 1024;
const DEFAULT_QUERY_BUFFER: usize = 1024 * 1024 * 1024;

const UNKNOWN: u8 = 0;
const NO: u8 = 1;
const YES: u8 = 2;

/// Redis' settings that decide what respite may forward. Owned by the context, refreshed by
/// [`Facts::watch`].
#[derive(Debug)]
pub struct Facts {
    /// `sanitize-dump-payload`: [`UNKNOWN`], [`NO`] or [`YES`] (Redis checks a RESTORE
    /// payload before trusting it). Only yes allows RESTORE.
    dumps: AtomicU8,
    /// `proto-max-bulk-len`: the longest argument Redis accepts. A longer one makes Redis
    /// close the connection, and with it every tenant's requests on a shared connection.
    max_bulk: AtomicUsize,
    /// `client-query-buffer-limit`: what Redis holds of a connection's unread requests before
    /// it closes the connection; an argument may take at most half of it, the rest being the
    /// other tenants' requests read along with it.
    query_buffer: AtomicUsize,
}

impl Default for Facts {
    fn default() -> Facts {
        Facts {
            dumps: AtomicU8::new(UNKNOWN),
            max_bulk: AtomicUsize::new(DEFAULT_MAX_BULK),
            query_buffer: AtomicUsize::new(DEFAULT_QUERY_BUFFER),
        }
    }
}

impl Facts {
    pub fn sanitized_dumps(&self) -> bool {
        self.dumps.load(Ordering::Relaxed) == YES
    }

    /// `proto-max-bulk-len`: also the longest string Redis lets SETRANGE, SETBIT and
    /// BITFIELD make.
    pub fn proto_max_bulk(&self) -> u64 {
        self.max_bulk.load(Ordering::Relaxed) as u64
    }

    /// The longest argument Redis takes without closing the connection it came on.
    pub fn max_bulk(&self) -> usize {
        let bulk = self.max_bulk.load(Ordering::Relaxed);
        bulk.min(self.query_buffer.load(Ordering::Relaxed) / 2)
    }

    /// Reads the settings once; on failure (Redis away, CONFIG renamed) the last ones stand.
    pub async fn refresh(&self, own: &OwnPool) {
        let read = own
            .run(async |c| {
                // Two calls, not a pipeline: a cluster connection routes each on its own
                // (a pipeline of it must stay within one slot).
                // respite's own connection says so in Redis' CLIENT LIST.
                let () = deadpool_redis::redis::cmd("CLIENT")
                    .arg("SETNAME")
                    .arg(OWN_NAME)
                    .query_async(c)
                    .await?;
                let pairs: Vec<String> = deadpool_redis::redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("sanitize-dump-payload")
                    .arg("proto-max-bulk-len")
                    .arg("client-query-buffer-limit")
                    .query_async(c)
                    .await?;
                Ok(pairs)
            })
            .await;
        let pairs = match read {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read Redis' settings");
                return;
            }
        };
        for kv in pairs.chunks(2) {
            match (kv[0].as_str(), kv.get(1)) {
                ("sanitize-dump-payload", Some(v)) => {
                    let now = if v == "yes" { YES } else { NO };
                    if self.dumps.swap(now, Ordering::Relaxed) == now {
                        continue;
                    }
                    if now == YES {
                        tracing::info!("Redis sanitizes DUMP payloads: RESTORE is allowed");
                    } else {
                        tracing::warn!(
                            sanitize_dump_payload = %v,
                            "RESTORE is refused: Redis does not sanitize DUMP payloads (set \
                             sanitize-dump-payload yes on Redis to allow it)"
                        );
                    }
                }
                ("proto-max-bulk-len", Some(v)) => {
                    if let Ok(n) = v.parse() {
                        self.max_bulk.store(n, Ordering::Relaxed);
                    }
                }
                ("client-query-buffer-limit", Some(v)) => {
                    if let Ok(n) = v.parse() {
                        self.query_buffer.store(n, Ordering::Relaxed);
                    }
                }
                _ => {}
            }
        }
    }

    /// Refreshes the settings every few seconds until `stop`.
    pub async fn watch(&self, own: OwnPool, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(EVERY) => {}
                _ = stop.cancelled() => return,
            }
            self.refresh(&own).await;
        }
    }
}
