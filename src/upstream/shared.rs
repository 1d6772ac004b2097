//! A shared upstream connection: one task that carries the stateless requests of many
//! sessions over one Redis connection.
//!
//! Sessions hand it batches ([`Submit`]: the encoded requests and the [`Sink`] their replies
//! go to). The task appends everything queued to one write buffer, so the requests of many
//! sessions reach Redis in one write (and Redis reads them in one read), then hands each
//! session's run of replies, in order, to its inbox (`super::inbox`). Replies are FIFO per
//! connection, so a queue of (sink, count) routes is all the bookkeeping needed.
//!
//! If Redis closes the connection, sends garbage, or leaves the oldest request unanswered
//! for `command_timeout`, every request in flight on this connection fails with that error
//! (each session gets one error per request, in order), and the next batch reconnects
//! (through the connector's backoff). Nothing else is affected.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use tokio::sync::mpsc;

use super::inbox::{Inbox, Reply};
use super::{Conn, Connector};
use crate::error::UpstreamError;
use crate::transport::Io;

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

/// A batch of requests from one session.
pub struct Submit {
    /// RESP-encoded requests, back to back.
    pub data: Bytes,
    /// How many requests `data` holds (= replies expected).
    pub count: usize,
    pub to: Sink,
}

/// The handle sessions use; the connection itself lives in its task.
pub struct Shared {
    tx: mpsc::UnboundedSender<Submit>,
}

impl Shared {
    pub fn spawn(connector: Arc<Connector>, protocol: u8) -> Shared {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(connector, protocol, rx));
        Shared { tx }
    }

    /// Queues a batch. The channel is unbounded because each session bounds its own
    /// requests in flight (`MAX_IN_FLIGHT`).
    pub fn submit(&self, batch: Submit) {
        if let Err(mpsc::error::SendError(batch)) = self.tx.send(batch) {
            // The task is gone (runtime shutting down): answer rather than hang.
            fail(&batch.to, batch.count, &UpstreamError::Closed);
        }
    }
}

fn fail(to: &Sink, count: usize, e: &UpstreamError) {
    to.inbox.send_all((0..count).map(|_| Reply {
        generation: to.generation,
        tag: to.tag,
        result: Err(e.clone()),
    }));
}

struct Route {
    to: Sink,
    left: usize,
}

struct State {
    conn: Option<Conn>,
    out: BytesMut,
    routes: VecDeque<Route>,
    /// The replies read for the oldest route, handed over together (`Inbox::send_all`).
    batch: Vec<Reply>,
    /// When Redis last answered, or the first request after idle was queued.
    progress: Instant,
}

impl State {
    fn queue(&mut self, b: Submit) {
        if self.routes.is_empty() {
            self.progress = Instant::now();
        }
        self.out.extend_from_slice(&b.data);
        self.routes.push_back(Route {
            to: b.to,
            left: b.count,
        });
    }

    /// Every request in flight fails with `e`; the connection is dropped.
    fn fail_all(&mut self, e: UpstreamError) {
        if !self.routes.is_empty() {
            tracing::warn!(error = %e, in_flight = self.routes.iter().map(|r| r.left).sum::<usize>(), "shared upstream connection failed");
        }
        self.conn = None;
        self.out.clear();
        for r in self.routes.drain(..) {
            fail(&r.to, r.left, &e);
        }
    }

    /// Hands every whole reply in the read buffer to its session: each run of replies for
    /// one session in one piece.
    fn dispatch(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let mut any = false;
        let mut bytes = 0;
        let failed = loop {
            match conn.next_frame() {
                Ok(Some(frame)) if frame.raw.first() == Some(&b'>') => {
                    // A RESP3 push answers no request: nothing a shared connection carries
                    // subscribes or tracks, so it can only be stray (say, a tracking a
                    // command left on); routed as a reply, it would shift every reply after
                    // it onto the wrong request, of any tenant. Dropped.
                    tracing::warn!("a push on a shared upstream connection; dropped");
                }
                Ok(Some(frame)) => {
                    any = true;
                    let Some(route) = self.routes.front_mut() else {
                        break Some(UpstreamError::Protocol("a reply nobody asked for".into()));
                    };
                    bytes += frame.raw.len();
                    self.batch.push(Reply {
                        generation: route.to.generation,
                        tag: route.to.tag,
                        result: Ok(frame),
                    });
                    route.left -= 1;
                    if route.left == 0 {
                        hand_over(&route.to, &mut self.batch, std::mem::take(&mut bytes));
                        self.routes.pop_front();
                    }
                }
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        if let Some(route) = self.routes.front() {
            hand_over(&route.to, &mut self.batch, bytes);
        }
        if let Some(e) = failed {
            return self.fail_all(e);
        }
        if any {
            // One clock reading per read from Redis, not per reply.
            self.progress = Instant::now();
        }
    }

    /// Writes what the socket takes now, without waiting.
    fn write_now(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        while !self.out.is_empty() {
            match conn.stream.try_write(&self.out) {
                Ok(n) => self.out.advance(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => return self.fail_all(UpstreamError::Closed),
            }
        }
    }
}

/// Hands `batch` (replies of `bytes` in all) to its session.
fn hand_over(to: &Sink, batch: &mut Vec<Reply>, bytes: usize) {
    if batch.is_empty() {
        return;
    }
    to.meter.arrived(bytes);
    to.inbox.send_all(batch.drain(..));
}

enum Event {
    Batch(Option<Submit>),
    Wrote(std::io::Result<usize>),
    Read(std::io::Result<usize>),
    Timeout,
}

async fn run(connector: Arc<Connector>, protocol: u8, mut rx: mpsc::UnboundedReceiver<Submit>) {
    let timeout = connector.command_timeout;
    let mut st = State {
        conn: None,
        out: BytesMut::with_capacity(64 * 1024),
        routes: VecDeque::new(),
        batch: Vec::new(),
        progress: Instant::now(),
    };
    loop {
        let deadline = st.progress + timeout;
        let timed = !st.routes.is_empty();
        let event = match st.conn.as_mut() {
            None => Event::Batch(rx.recv().await),
            Some(c) => {
                if c.rbuf.capacity() - c.rbuf.len() < 4096 {
                    c.rbuf.reserve(64 * 1024);
                }
                // Write and read at once: Redis answers while we are still writing. Read
                // also while idle, so that a connection Redis closed is noticed (and
                // replaced on the next batch) before anyone's request is written to it.
                tokio::select! {
                    b = rx.recv() => Event::Batch(b),
                    io = c.stream.io(&st.out, &mut c.rbuf) => match io {
                        Io::Wrote(n) => Event::Wrote(n),
                        Io::Read(n) => Event::Read(n),
                    },
                    _ = tokio::time::sleep_until(deadline.into()), if timed => Event::Timeout,
                }
            }
        };
        match event {
            Event::Batch(None) => return,
            Event::Batch(Some(first)) => {
                if st.conn.is_none() {
                    match connector.connect(protocol).await {
                        Ok(c) => st.conn = Some(c),
                        Err(e) => {
                            fail(&first.to, first.count, &e);
                            while let Ok(b) = rx.try_recv() {
                                fail(&b.to, b.count, &e);
                            }
                            continue;
                        }
                    }
                }
                // Coalesce: let the sessions that are runnable now hand in their requests too
                // (one trip through the scheduler, as an event loop's iteration), then write
                // everything queued in one write.
                st.queue(first);
                tokio::task::yield_now().await;
                while let Ok(b) = rx.try_recv() {
                    st.queue(b);
                }
                st.write_now();
            }
            // 0: TLS sent what it held.
            Event::Wrote(Ok(n)) => st.out.advance(n),
            Event::Wrote(Err(_)) => st.fail_all(UpstreamError::Closed),
            Event::Read(Ok(n)) if n > 0 => st.dispatch(),
            Event::Read(_) => st.fail_all(UpstreamError::Closed),
            Event::Timeout => {
                if st.progress + timeout <= Instant::now() {
                    connector
                        .counters
                        .timeouts
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    st.fail_all(UpstreamError::Timeout(connector.command_timeout_ms()));
                }
            }
        }
    }
}
