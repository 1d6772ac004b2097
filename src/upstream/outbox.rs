//! Where sessions' requests wait for a shared connection's task: the request half of what
//! `super::inbox` is for replies.
//!
//! A session appends its batch of encoded requests, and where their replies go, to the
//! connection's outbox under one lock ([`Outbox::submit`]). The connection's task takes
//! everything queued under one lock too ([`Outbox::poll_take`]), straight into its write
//! buffer. The task is woken by the first batch after it last found the outbox empty, and
//! not by the batches after it: the sessions that run before the task does add theirs to
//! the same write, as an event loop's iteration gathers them. Before this, each batch was a
//! channel message that the task received, yielded once to let others send theirs, then
//! copied: two polls of the task and a buffer made and dropped per batch.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;

use super::inbox::Sink;

/// A run of requests in a connection's write buffer, and where their replies go.
pub struct Route {
    pub to: Sink,
    /// Replies still expected.
    pub left: usize,
}

/// The sessions' side of a shared connection: they put requests in.
#[derive(Default)]
pub struct Outbox {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    data: BytesMut,
    routes: Vec<Route>,
    /// The task, once it has found the outbox empty.
    waker: Option<Waker>,
    /// The task has been woken since it last found the outbox empty: later batches need
    /// not wake it again.
    woken: bool,
    /// The task is gone: nothing queued now would be sent.
    closed: bool,
    /// The sessions' handle is gone: nothing more will be queued.
    hung_up: bool,
}

impl Outbox {
    /// Queues `count` requests (`data`, encoded back to back) whose replies go to `to`,
    /// and wakes the connection's task if it waits. Hands `to` back if the task is gone,
    /// so that its caller answers them.
    pub fn submit(&self, data: &[u8], count: usize, to: Sink) -> Result<(), Sink> {
        let mut st = self.state.lock().unwrap();
        if st.closed {
            return Err(to);
        }
        st.data.extend_from_slice(data);
        st.routes.push(Route { to, left: count });
        if !st.woken {
            st.woken = true;
            if let Some(w) = &st.waker {
                w.wake_by_ref();
            }
        }
        Ok(())
    }

    /// Moves everything queued to the end of `out` and `routes`: ready with `true`. Pending
    /// when nothing is (then the next batch wakes the task); ready with `false` when nothing
    /// is and nothing more will be ([`Outbox::hang_up`]).
    pub fn poll_take(
        &self,
        cx: &mut Context<'_>,
        out: &mut BytesMut,
        routes: &mut VecDeque<Route>,
    ) -> Poll<bool> {
        let mut st = self.state.lock().unwrap();
        if st.routes.is_empty() {
            if st.hung_up {
                return Poll::Ready(false);
            }
            st.woken = false;
            if !st.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                st.waker = Some(cx.waker().clone());
            }
            return Poll::Pending;
        }
        if out.is_empty() {
            // Nothing of the task's is unwritten: the buffers swap, and nothing is copied.
            std::mem::swap(out, &mut st.data);
        } else {
            out.extend_from_slice(&st.data);
            st.data.clear();
            crate::wire::reuse_emptied(&mut st.data, 0);
        }
        routes.extend(st.routes.drain(..));
        Poll::Ready(true)
    }

    /// The sessions' handle is gone: the task ends once nothing is left to send.
    pub fn hang_up(&self) {
        let mut st = self.state.lock().unwrap();
        st.hung_up = true;
        if !st.woken {
            st.woken = true;
            if let Some(w) = &st.waker {
                w.wake_by_ref();
            }
        }
    }

    /// The task is ending: later batches are refused, and the ones queued are returned
    /// to be answered.
    pub fn close(&self) -> Vec<Route> {
        let mut st = self.state.lock().unwrap();
        st.closed = true;
        st.data.clear();
        std::mem::take(&mut st.routes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::inbox::tests::Count;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn sink(generation: u64) -> Sink {
        Sink {
            inbox: Default::default(),
            generation,
            meter: Arc::new(crate::upstream::OutputMeter::new(
                0,
                None,
                crate::clients::Switch::new(),
            )),
            tag: 0,
        }
    }

    #[test]
    fn batches_are_taken_in_order_and_wake_the_task_once_per_look() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let outbox = Outbox::default();
        let (mut out, mut routes) = (BytesMut::new(), VecDeque::new());
        assert!(outbox
            .poll_take(&mut cx, &mut out, &mut routes)
            .is_pending());
        outbox.submit(b"a", 1, sink(1)).ok().unwrap();
        outbox.submit(b"bc", 2, sink(2)).ok().unwrap();
        // Woken by the first batch only: the task has not looked since.
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert_eq!(
            outbox.poll_take(&mut cx, &mut out, &mut routes),
            Poll::Ready(true)
        );
        // What the task has not written yet stays ahead of what comes.
        outbox.submit(b"d", 1, sink(3)).ok().unwrap();
        outbox.hang_up();
        // Hung up with batches queued: they are still taken, and then the task may end.
        assert_eq!(
            outbox.poll_take(&mut cx, &mut out, &mut routes),
            Poll::Ready(true)
        );
        assert_eq!(
            outbox.poll_take(&mut cx, &mut out, &mut routes),
            Poll::Ready(false)
        );
        assert_eq!(&out[..], b"abcd");
        let taken: Vec<_> = routes.iter().map(|r| (r.to.generation, r.left)).collect();
        assert_eq!(taken, [(1, 1), (2, 2), (3, 1)]);
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        // Found empty: the next batch wakes it again.
        let outbox = Outbox::default();
        assert!(outbox
            .poll_take(&mut cx, &mut out, &mut routes)
            .is_pending());
        outbox.submit(b"e", 1, sink(4)).ok().unwrap();
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
        outbox.hang_up();
        assert_eq!(count.0.load(Ordering::Relaxed), 2, "woken already");
        // Closed: what waits comes back to be answered, and nothing more is taken in.
        let left: Vec<_> = outbox.close().iter().map(|r| r.to.generation).collect();
        assert_eq!(left, [4]);
        assert_eq!(outbox.submit(b"f", 1, sink(5)).err().unwrap().generation, 5);
    }
}
