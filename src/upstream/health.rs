//! Whether Redis answers: respite PINGs it over its own pool every 250 ms, for `/readyz`. In
//! cluster mode, ready while every slot has a master in the slot map and every master
//! answers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use super::cluster::Topology;
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

    /// PINGs Redis (every master of a cluster) over respite's own pool and records whether
    /// it answered.
    pub async fn watch(
        &self,
        own: OwnPool,
        cluster: Option<Arc<Topology>>,
        stop: CancellationToken,
    ) {
        loop {
            let masters: Vec<Option<(String, u16)>> = match &cluster {
                None => vec![None],
                Some(t) => {
                    let map = t.map();
                    match map.served() == crate::wire::SLOTS as usize {
                        true => map
                            .masters()
                            .iter()
                            .map(|n| Some((n.host.clone(), n.port)))
                            .collect(),
                        // A slot without a master: not ready, whoever answers.
                        false => Vec::new(),
                    }
                }
            };
            let ping = own.run(async |c| {
                let cmd = deadpool_redis::redis::cmd("PING");
                for m in &masters {
                    let node = m.as_ref().map(|(h, p)| (h.as_str(), *p));
                    c.on_node::<String>(&cmd, node).await?;
                }
                Ok(())
            });
            let answered = matches!(tokio::time::timeout(PING_TIMEOUT, ping).await, Ok(Ok(_)));
            let up = answered && !masters.is_empty();
            self.0.store(up, Ordering::Relaxed);
            tokio::select! {
                _ = tokio::time::sleep(PING_EVERY) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}
