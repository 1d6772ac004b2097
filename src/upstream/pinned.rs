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
    permit: OwnedSemaphorePermit,
    share: Option<OwnedSemaphorePermit>,
}

/// A tenant's share of the pool (`pinned_max` per tenant): at most this many of its
/// connections are pinned at once, so one tenant cannot hold the whole pool.
#[derive(Debug)]
pub struct Share {
    permits: Arc<Semaphore>,
    max: usize,
}

impl Share {
    pub fn new(max: usize) -> Share {
        Share {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

pub struct Pool {
    connector: Arc<Connector>,
    max: usize,
    permits: Arc<Semaphore>,
    /// Clean connections by protocol (index 0: RESP2, 1: RESP3).
    idle: Arc<Mutex<[Vec<Conn>; 2]>>,
}

impl Pool {
    pub fn new(connector: Arc<Connector>, max: usize) -> Pool {
        Pool {
            connector,
            max,
            permits: Arc::new(Semaphore::new(max)),
            idle: Arc::new(Mutex::new([Vec::new(), Vec::new()])),
        }
    }

    /// Pinned connections open now (in use, being reset, or idle).
    pub fn open(&self) -> usize {
        self.max - self.permits.available_permits()
    }

    pub async fn acquire(
        &self,
        protocol: u8,
        share: Option<&Share>,
    ) -> Result<Pinned, UpstreamError> {
        let wait = self.connector.command_timeout;
        // The tenant's share first: a tenant at its own limit waits on itself, not on the pool.
        let share = match share {
            None => None,
            Some(s) => Some(place(&s.permits, wait, UpstreamError::ShareExhausted(s.max)).await?),
        };
        let permit = place(
            &self.permits,
            wait,
            UpstreamError::PinnedExhausted(self.max),
        )
        .await?;
        let p = usize::from(protocol == 3);
        let reused = {
            let mut idle = self.idle.lock().unwrap();
            let conn = idle[p].pop();
            if conn.is_none() && self.open() + idle[1 - p].len() > self.max {
                // A new connection would pass the bound: close an idle one of the other
                // protocol to make room.
                drop(idle[1 - p].pop());
            }
            conn
        };
        let conn = match reused {
            Some(conn) => conn,
            None => self.connector.connect(protocol).await?,
        };
        Ok(Pinned {
            conn,
            permit,
            share,
        })
    }

    /// Takes back a connection with nothing in flight: reset in the background, then idle
    /// (before its permit is freed, so that a waiter woken by the permit finds it).
    pub fn release(&self, pinned: Pinned) {
        let connector = self.connector.clone();
        let idle = self.idle.clone();
        let permits = self.permits.clone();
        let max = self.max;
        tokio::spawn(async move {
            let Pinned {
                mut conn,
                permit,
                share,
            } = pinned;
            // The tenant may pin another connection while this one is reset.
            drop(share);
            if connector.reset(&mut conn).await.is_ok() {
                let mut idle = idle.lock().unwrap();
                let in_use = max - permits.available_permits();
                if in_use + idle[0].len() + idle[1].len() <= max {
                    idle[usize::from(conn.protocol == 3)].push(conn);
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
    /// Closes the connection (Redis drops whatever state it held) and frees its place.
    pub fn close(self) {
        drop(self.permit);
    }
}
