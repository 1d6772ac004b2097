//! The pinned pool: connections a session holds while Redis keeps state for it (MULTI,
//! WATCH, a blocking command, subscriptions, tracking, NO-EVICT).
//!
//! At most `pinned_max` connections exist at once, in use or idle: a permit is held while a
//! connection is in use (or being reset), and an idle one is kept only while in-use plus
//! idle stays within the bound. Taking one waits up to `command_timeout`, then fails. A connection comes back
//! through [`Pool::release`] only with nothing in flight; it is RESET and logged in again in
//! the background before anyone else gets it, so nothing one tenant set on it (a
//! subscription, tracking, a WATCH, a name, NO-EVICT) is visible to the next. A connection
//! that failed, or whose session ended mid-request, is closed instead.

use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Conn, Connector};
use crate::error::UpstreamError;

/// A pinned connection and its place in the pool (and in its tenant's share of it).
pub struct Pinned {
    pub conn: Conn,
    /// The node it is connected to (cluster mode: one per node).
    connector: Arc<Connector>,
    permit: OwnedSemaphorePermit,
    share: Option<OwnedSemaphorePermit>,
}

/// A tenant's share of the pool (`pinned_max` per tenant): at most this many of its
/// connections are pinned at once, so one tenant cannot hold the whole pool.
#[derive(Debug)]
pub struct Share {
    permits: Arc<Semaphore>,
    /// A reload (or a token's new plan) may resize it: the connections pinned meanwhile
    /// keep their permits, so that no rebuild hands the tenant a fresh budget.
    max: std::sync::atomic::AtomicUsize,
}

impl Share {
    pub fn new(max: usize) -> Share {
        Share {
            permits: Arc::new(Semaphore::new(max)),
            max: max.into(),
        }
    }

    pub fn max(&self) -> usize {
        self.max.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Makes it `max` permits: more at once; fewer as soon as the permits to take away
    /// are free (those held now go when their connections are let go).
    pub fn resize(&self, max: usize) {
        let was = self.max.swap(max, std::sync::atomic::Ordering::AcqRel);
        if max > was {
            self.permits.add_permits(max - was);
        } else if max < was {
            let owed = (was - max) - self.permits.forget_permits(was - max);
            if owed > 0 {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    let permits = self.permits.clone();
                    rt.spawn(async move {
                        if let Ok(p) = permits.acquire_many_owned(owed as u32).await {
                            p.forget();
                        }
                    });
                }
            }
        }
    }
}

/// A clean connection and the node it is on.
type Idle = (Arc<Connector>, Conn);

pub struct Pool {
    connector: Arc<Connector>,
    max: usize,
    permits: Arc<Semaphore>,
    /// Clean connections, with the node each is connected to.
    idle: Arc<Mutex<Vec<Idle>>>,
}

impl Pool {
    pub fn new(connector: Arc<Connector>, max: usize) -> Pool {
        Pool {
            connector,
            max,
            permits: Arc::new(Semaphore::new(max)),
            idle: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Pinned connections open now (in use, being reset, or idle).
    pub fn open(&self) -> usize {
        self.max - self.permits.available_permits()
    }

    /// A connection to `node` (cluster mode; else the one Redis) in `protocol`, clean.
    pub async fn acquire(
        &self,
        node: Option<&Arc<Connector>>,
        protocol: u8,
        share: Option<&Share>,
    ) -> Result<Pinned, UpstreamError> {
        let connector = node.unwrap_or(&self.connector).clone();
        let wait = self.connector.command_timeout;
        // The tenant's share first: a tenant at its own limit waits on itself, not on the pool.
        let share = match share {
            None => None,
            Some(s) => Some(place(&s.permits, wait, UpstreamError::ShareExhausted(s.max())).await?),
        };
        let permit = place(
            &self.permits,
            wait,
            UpstreamError::PinnedExhausted(self.max),
        )
        .await?;
        let reused = {
            let mut idle = self.idle.lock().unwrap();
            let fits = |(c, conn): &Idle| Arc::ptr_eq(c, &connector) && conn.protocol == protocol;
            // An idle connection Redis closed meanwhile (a restart, its timeout) is dropped
            // here, not handed to a session whose first command would fail on it.
            let mut found = None;
            while let Some(i) = idle.iter().rposition(fits) {
                let (_, mut conn) = idle.swap_remove(i);
                if conn.stream.open() {
                    found = Some(conn);
                    break;
                }
            }
            match found {
                Some(conn) => Some(conn),
                None => {
                    if self.open() + idle.len() > self.max {
                        // A new connection would pass the bound: close an idle one (of the
                        // other protocol, or another node) to make room.
                        idle.pop();
                    }
                    None
                }
            }
        };
        let conn = match reused {
            Some(conn) => conn,
            None => connector.connect(protocol).await?,
        };
        Ok(Pinned {
            conn,
            connector,
            permit,
            share,
        })
    }

    /// Takes back a connection with nothing in flight: reset in the background, then idle
    /// (before its permit is freed, so that a waiter woken by the permit finds it).
    pub fn release(&self, pinned: Pinned) {
        let idle = self.idle.clone();
        let permits = self.permits.clone();
        let max = self.max;
        tokio::spawn(async move {
            let Pinned {
                mut conn,
                connector,
                permit,
                share,
            } = pinned;
            // The tenant may pin another connection while this one is reset.
            drop(share);
            if connector.reset(&mut conn).await.is_ok() {
                let mut idle = idle.lock().unwrap();
                let in_use = max - permits.available_permits();
                if in_use + idle.len() <= max {
                    idle.push((connector, conn));
                }
            }
            // Otherwise the connection is dropped, which closes it.
            drop(permit);
        });
    }
}

/// A permit of `permits`, waiting up to `wait` for one; `full` when none came.
async fn place(
    permits: &Arc<Semaphore>,
    wait: std::time::Duration,
    full: UpstreamError,
) -> Result<OwnedSemaphorePermit, UpstreamError> {
    if let Ok(permit) = permits.clone().try_acquire_owned() {
        return Ok(permit);
    }
    tokio::time::timeout(wait, permits.clone().acquire_owned())
        .await
        .map_err(|_| full)?
        .map_err(|_| UpstreamError::Closed)
}

impl Pinned {
    /// The node this connection is on.
    pub fn connector(&self) -> &Arc<Connector> {
        &self.connector
    }

    /// Closes the connection (Redis drops whatever state it held) and frees its place.
    pub fn close(self) {
        drop(self.permit);
    }
}
