//! Where a session's replies from the shared connections wait for it.
//!
//! A shared connection's task reads a batch of replies from Redis and hands each run of
//! replies for one session over under one lock ([`Inbox::send_all`]); the session takes
//! everything waiting under one lock too ([`Replies`]). The session's task is woken once per
//! batch, by the first reply after it last found its inbox empty, not once per reply: with
//! a channel, every reply paid for its own hand-over and wakeup (about 5% of respite's time
//! at pipeline 16, perf).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::error::UpstreamError;
use crate::wire::Frame;

/// Where replies for a session go, tagged with the session's generation: after a session
/// gives up on a request (its own timeout), it moves to a new generation and ignores late
/// replies to the old one.
#[derive(Clone)]
pub struct Sink {
    pub inbox: Arc<Inbox>,
    pub generation: u64,
    /// Counts each reply handed over: a client whose unread replies pass its bound is
    /// closed, however far behind its session is (`meter`).
    pub meter: Arc<super::OutputMeter>,
    /// Copied into each reply: in cluster mode, the node whose connection answered (0 for
    /// one Redis).
    pub tag: u64,
}

/// One reply (or the error that replaces it) for a session.
pub struct Reply {
    pub generation: u64,
    /// The sink's tag (see [`super::Sink::tag`]).
    pub tag: u64,
    pub result: Result<Frame, UpstreamError>,
}

/// The shared connections' side: they put replies in.
#[derive(Default)]
pub struct Inbox {
    state: Mutex<State>,
    /// How many replies `state` holds, written under its lock: the session looks far more
    /// often than replies come (every pass of its loop), and finds none without the lock.
    queued: AtomicUsize,
}

#[derive(Default)]
struct State {
    replies: VecDeque<Reply>,
    /// The session's task, once it has waited on an empty inbox.
    waker: Option<Waker>,
    /// The waker has been woken since the session last found the inbox empty: later
    /// replies need not wake it again.
    woken: bool,
}

impl Inbox {
    /// Queues `replies`, in order, and wakes the session if it waits.
    pub fn send_all(&self, replies: impl Iterator<Item = Reply>) {
        let mut st = self.state.lock().unwrap();
        st.replies.extend(replies);
        self.queued.store(st.replies.len(), Ordering::Release);
        if !st.woken && !st.replies.is_empty() {
            st.woken = true;
            if let Some(w) = &st.waker {
                w.wake_by_ref();
            }
        }
    }
}

/// The session's side: its inbox, and the replies already taken from it under one lock.
pub struct Replies {
    inbox: Arc<Inbox>,
    taken: VecDeque<Reply>,
}

impl Replies {
    pub fn new() -> Replies {
        Replies {
            inbox: Arc::new(Inbox::default()),
            taken: VecDeque::new(),
        }
    }

    /// Where the shared connections put this session's replies.
    pub fn inbox(&self) -> Arc<Inbox> {
        self.inbox.clone()
    }

    /// The next reply, if one is there.
    pub fn try_recv(&mut self) -> Option<Reply> {
        if self.taken.is_empty() {
            self.take(None);
        }
        self.taken.pop_front()
    }

    /// Waits for the next reply.
    pub async fn recv(&mut self) -> Reply {
        std::future::poll_fn(|cx| {
            if self.taken.is_empty() {
                self.take(Some(cx));
            }
            match self.taken.pop_front() {
                Some(r) => Poll::Ready(r),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// Moves every waiting reply to `taken`; when there is none and `cx` is given, the
    /// session's task is woken by the next one.
    fn take(&mut self, cx: Option<&mut Context<'_>>) {
        // Only a wait needs the lock when there is nothing: it registers the task under it.
        if cx.is_none() && self.inbox.queued.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut st = self.inbox.state.lock().unwrap();
        if st.replies.is_empty() {
            if let Some(cx) = cx {
                st.woken = false;
                if !st.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    st.waker = Some(cx.waker().clone());
                }
            }
            return;
        }
        // `taken` is empty: the two swap, so no reply is copied and both buffers stay.
        std::mem::swap(&mut st.replies, &mut self.taken);
        self.inbox.queued.store(0, Ordering::Release);
    }

    /// Replies waiting, taken from the inbox or not.
    pub fn waiting(&self) -> usize {
        self.taken.len() + self.inbox.queued.load(Ordering::Acquire)
    }
}

impl Default for Replies {
    fn default() -> Replies {
        Replies::new()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    /// A waker that counts its wakeups (the outbox's tests use it too).
    pub(in crate::upstream) struct Count(pub AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn reply(n: u64) -> Reply {
        let raw = bytes::Bytes::from(format!(":{n}\r\n"));
        Reply {
            generation: n,
            tag: 0,
            result: Ok(
                crate::wire::next_frame(&mut bytes::BytesMut::from(&raw[..]), 2)
                    .unwrap()
                    .unwrap(),
            ),
        }
    }

    fn poll(replies: &mut Replies, waker: &Waker) -> Poll<Reply> {
        let mut cx = Context::from_waker(waker);
        let recv = std::pin::pin!(replies.recv());
        std::future::Future::poll(recv, &mut cx)
    }

    #[test]
    fn replies_come_out_in_order_and_wake_the_session_once_per_batch() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut replies = Replies::new();
        let inbox = replies.inbox();
        assert!(poll(&mut replies, &waker).is_pending());
        inbox.send_all((1..=3).map(reply));
        inbox.send_all(std::iter::once(reply(4)));
        // Woken by the first batch only: it has not looked since.
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert_eq!(replies.waiting(), 4);
        let Poll::Ready(first) = poll(&mut replies, &waker) else {
            panic!("a reply is waiting");
        };
        inbox.send_all(std::iter::once(reply(5)));
        let rest: Vec<u64> = std::iter::from_fn(|| replies.try_recv())
            .map(|r| r.generation)
            .collect();
        assert_eq!((first.generation, rest), (1, vec![2, 3, 4, 5]));
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        // Found empty: the next reply wakes it again.
        assert!(poll(&mut replies, &waker).is_pending());
        inbox.send_all(std::iter::once(reply(6)));
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
        let _: Frame = replies.try_recv().unwrap().result.unwrap();
    }

    /// No wakeup is lost and nothing is reordered when shared connections on other
    /// threads hand over runs of replies while the session alternates between a look
    /// without the lock (`try_recv`) and a wait (`recv`), as `deliver` and `wait` do.
    #[test]
    fn no_wakeup_is_lost_nor_reply_reordered_under_concurrent_senders() {
        const SENDERS: u64 = 3;
        const EACH: u64 = 20_000;
        let mut replies = Replies::new();
        let inbox = replies.inbox();
        let threads: Vec<_> = (0..SENDERS)
            .map(|t| {
                let inbox = inbox.clone();
                std::thread::spawn(move || {
                    let mut n = 0;
                    let mut x = t + 1;
                    while n < EACH {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let run = (x % 7).min(EACH - n);
                        // generation: the sender; tag: its sequence.
                        inbox.send_all((n..n + run).map(|i| Reply {
                            generation: t,
                            tag: i,
                            result: Err(UpstreamError::Closed),
                        }));
                        n += run;
                        if x % 3 == 0 {
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut next = [0u64; SENDERS as usize];
            let mut got = 0;
            while got < SENDERS * EACH {
                let r = match replies.try_recv() {
                    Some(r) => r,
                    None => tokio::time::timeout(std::time::Duration::from_secs(5), replies.recv())
                        .await
                        .expect("a wakeup was lost: replies wait in the inbox"),
                };
                let t = r.generation as usize;
                assert_eq!(r.tag, next[t], "sender {t}'s replies out of order");
                next[t] += 1;
                got += 1;
                if got % 97 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            assert_eq!(replies.waiting(), 0);
        });
        for t in threads {
            t.join().unwrap();
        }
    }
}
