//! Whether Redis answers: respite PINGs it over its own pool every 250 ms, for `/readyz`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::OwnPool;

const PING_EVERY: Duration = Duration::from_millis(250);
const PING_TIMEOUT: Duration = Duration::from_millis(500);

/// Whether Redis answered respite's last PING.
#[derive(Debug, Default)]
pub struct Readiness(AtomicBool);

impl Readiness {
    pub fn ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// PINGs Redis over respite's own pool and records whether it answered.
    pub async fn watch(&self, own: OwnPool, stop: CancellationToken) {
        loop {
            let ping = own.run(async |c| {
                deadpool_redis::redis::cmd("PING")
                    .query_async::<String>(c)
                    .await
            });
            let up = matches!(tokio::time::timeout(PING_TIMEOUT, ping).await, Ok(Ok(_)));
            self.0.store(up, Ordering::Relaxed);
            tokio::select! {
                _ = tokio::time::sleep(PING_EVERY) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}
