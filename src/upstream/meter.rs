//! Output bounds, like Redis' `client-output-buffer-limit`: the reply bytes a client has
//! asked for and not yet read, counted from the moment they arrive from Redis.
//!
//! A shared connection hands each reply to its session's inbox whether or not the session
//! is reading (it must not hold up the other sessions' replies behind it), so a client that
//! pipelines large GETs and never reads would have respite hold every reply. The meter counts
//! those bytes where they arrive (the shared connection's task) and where they wait (the
//! session's output buffer); past the client's limit, or past its tenant's total
//! (`output_limit_bytes`), the client is closed, as Redis closes one past its limit, and its
//! inbox (with what it held) goes with it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::clients::Switch;

/// Unread reply bytes summed over a tenant's clients, and its bound.
#[derive(Debug)]
pub struct OutputTotal {
    bytes: AtomicUsize,
    /// A reload may set it anew (the total goes on).
    limit: AtomicUsize,
}

impl OutputTotal {
    pub fn new(limit: usize) -> OutputTotal {
        OutputTotal {
            bytes: AtomicUsize::new(0),
            limit: AtomicUsize::new(limit),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// One client's unread reply bytes.
#[derive(Debug)]
pub struct OutputMeter {
    /// Replies handed to the session's inbox and not yet taken from it.
    queued: AtomicUsize,
    /// The session's output buffer, as it last said.
    buffered: AtomicUsize,
    /// 0: no bound.
    limit: usize,
    tenant: Option<Arc<OutputTotal>>,
    /// Cancelled (with `exceeded` set) when a bound is passed: the session ends.
    close: Switch,
    exceeded: AtomicBool,
}

impl OutputMeter {
    pub fn new(limit: usize, tenant: Option<Arc<OutputTotal>>, close: Switch) -> OutputMeter {
        OutputMeter {
            queued: AtomicUsize::new(0),
            buffered: AtomicUsize::new(0),
            limit,
            tenant,
            close,
            exceeded: AtomicBool::new(false),
        }
    }

    /// A reply of `n` bytes is in the session's inbox.
    pub fn arrived(&self, n: usize) {
        let queued = self.queued.fetch_add(n, Ordering::Relaxed) + n;
        let tenant = self
            .tenant
            .as_ref()
            .map(|t| t.bytes.fetch_add(n, Ordering::Relaxed) + n);
        self.check(queued + self.buffered.load(Ordering::Relaxed), tenant);
    }

    /// The session took a reply of `n` bytes from its inbox.
    pub fn taken(&self, n: usize) {
        sub(&self.queued, n);
        if let Some(t) = &self.tenant {
            sub(&t.bytes, n);
        }
    }

    /// Once per pass of the session: it took `taken` bytes of replies from its inbox since
    /// it last said, and its output buffer holds `buffered` bytes now. The tenant's total
    /// moves once, by the difference: one atomic write per pass rather than two per reply.
    pub fn settle(&self, taken: usize, buffered: usize) {
        let old = self.buffered.swap(buffered, Ordering::Relaxed);
        if taken == 0 && old == buffered {
            return;
        }
        let queued = match taken {
            0 => self.queued.load(Ordering::Relaxed),
            _ => sub(&self.queued, taken),
        };
        let (grew, shrank) = (
            buffered.saturating_sub(old),
            old.saturating_sub(buffered) + taken,
        );
        let tenant = self.tenant.as_ref().map(|t| match grew.cmp(&shrank) {
            std::cmp::Ordering::Greater => {
                t.bytes.fetch_add(grew - shrank, Ordering::Relaxed) + (grew - shrank)
            }
            std::cmp::Ordering::Less => sub(&t.bytes, shrank - grew),
            std::cmp::Ordering::Equal => t.bytes.load(Ordering::Relaxed),
        });
        if buffered > old {
            self.check(buffered + queued, tenant);
        }
    }

    fn check(&self, mine: usize, tenant: Option<usize>) {
        let over_mine = self.limit > 0 && mine > self.limit;
        let over_tenant = match (&self.tenant, tenant) {
            (Some(t), Some(total)) => t.limit() > 0 && total > t.limit(),
            _ => false,
        };
        if (over_mine || over_tenant) && !self.exceeded.swap(true, Ordering::Relaxed) {
            self.close.cancel();
        }
    }

    /// Did the client pass a bound (and is it being closed for it)?
    pub fn exceeded(&self) -> bool {
        self.exceeded.load(Ordering::Relaxed)
    }

    /// Reply bytes in the session's inbox, not taken yet.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// The client's unread bytes now.
    pub fn unread(&self) -> usize {
        self.queued.load(Ordering::Relaxed) + self.buffered.load(Ordering::Relaxed)
    }
}

impl Drop for OutputMeter {
    /// What the client still held no longer counts against its tenant.
    fn drop(&mut self) {
        if let Some(t) = &self.tenant {
            sub(&t.bytes, self.unread());
        }
    }
}

/// Subtracts without going below zero (a reply counted on a meter the session has since
/// replaced is taken from the new one), and returns the new value.
fn sub(a: &AtomicUsize, n: usize) -> usize {
    let old = a
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(n))
        })
        .unwrap_or(0);
    old.saturating_sub(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_past_its_bound_or_its_tenants_is_closed() {
        let total = Arc::new(OutputTotal::new(1000));
        let close = Switch::new();
        let a = OutputMeter::new(600, Some(total.clone()), close.clone());
        a.arrived(500);
        a.settle(0, 100);
        assert!(!a.exceeded() && !close.is_cancelled());
        a.taken(500);
        a.settle(0, 550);
        assert_eq!((a.unread(), total.bytes()), (550, 550));
        a.arrived(51);
        assert!(a.exceeded() && close.is_cancelled());

        let other = Switch::new();
        let b = OutputMeter::new(600, Some(total.clone()), other.clone());
        b.arrived(300);
        assert!(!other.is_cancelled(), "{}", total.bytes());
        b.arrived(100);
        assert!(other.is_cancelled(), "the tenant's total is past 1000");
        drop(a);
        drop(b);
        assert_eq!(total.bytes(), 0);
    }

    #[test]
    fn a_pass_settled_at_once_counts_as_its_replies_one_by_one() {
        let total = Arc::new(OutputTotal::new(0));
        let close = Switch::new();
        let a = OutputMeter::new(1000, Some(total.clone()), close.clone());
        a.arrived(300);
        a.settle(200, 150);
        assert_eq!((a.queued(), a.unread(), total.bytes()), (100, 250, 250));
        a.settle(100, 20);
        assert_eq!((a.queued(), a.unread(), total.bytes()), (0, 20, 20));
        a.arrived(500);
        a.settle(0, 300);
        assert_eq!((a.unread(), total.bytes()), (800, 800));
        assert!(!close.is_cancelled());
        // Its buffer grows past the bound in a pass that also took replies.
        a.settle(400, 990);
        assert_eq!((a.unread(), total.bytes()), (1090, 1090));
        assert!(a.exceeded() && close.is_cancelled());
        drop(a);
        assert_eq!(total.bytes(), 0);
    }
}
