//! A shared upstream connection: one task that carries the stateless requests of many
//! sessions over one Redis connection.
//!
//! Sessions append their batches (the encoded requests, and the [`Sink`] their replies go
//! to) to the connection's outbox (`super::outbox`), which wakes the task only when it is
//! idle. The task takes everything queued straight into its write buffer, so the requests
//! of many sessions reach Redis in one write (and Redis reads them in one read), then hands
//! each session's run of replies, in order, to its inbox (`super::inbox`). Replies are FIFO
//! per connection, so a queue of (sink, count) routes is all the bookkeeping needed. One
//! poll of the task does all that is ready (take, write, read, route): no `select!`, no
//! future made per wakeup.
//!
//! If Redis closes the connection, sends garbage, or leaves the oldest request unanswered
//! for `command_timeout`, every request in flight on this connection fails with that error
//! (each session gets one error per request, in order), and the next batch reconnects
//! (through the connector's backoff). Nothing else is affected.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::time::Sleep;

use super::inbox::{Reply, Sink};
use super::outbox::{Outbox, Route};
use super::{Conn, Connector};
use crate::error::UpstreamError;

/// The handle sessions use; the connection itself lives in its task.
pub struct Shared {
    outbox: Arc<Outbox>,
}

impl Shared {
    pub fn spawn(connector: Arc<Connector>, protocol: u8) -> Shared {
        let outbox = Arc::new(Outbox::default());
        tokio::spawn(run(connector, protocol, Closing(outbox.clone())));
        Shared { outbox }
    }

    /// Queues `count` requests (`data`, encoded back to back) whose replies go to `to`.
    /// Unbounded, because each session bounds its own requests in flight (`MAX_IN_FLIGHT`).
    pub fn submit(&self, data: &[u8], count: usize, to: Sink) {
        if let Err(to) = self.outbox.submit(data, count, to) {
            // The task is gone (runtime shutting down): answer rather than hang.
            fail(&to, count, &UpstreamError::Closed);
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.outbox.hang_up();
    }
}

/// The task's hold on its outbox. However the task ends (a runtime shutting down drops it,
/// polled or not), the outbox then refuses new batches and the ones in it are answered.
struct Closing(Arc<Outbox>);

impl Drop for Closing {
    fn drop(&mut self) {
        for r in self.0.close() {
            fail(&r.to, r.left, &UpstreamError::Closed);
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

struct State {
    conn: Option<Conn>,
    out: BytesMut,
    routes: VecDeque<Route>,
    /// The replies read for the oldest route, handed over together (`Inbox::send_all`).
    batch: Vec<Reply>,
    /// When Redis last answered, or the first request after idle was queued.
    progress: Instant,
    timeout: Duration,
    /// Fires at `progress + timeout` or before: armed once, and armed again only when it
    /// fires early (Redis answered meanwhile), rather than made anew on every wakeup.
    timer: Pin<Box<Sleep>>,
    armed: bool,
}

impl State {
    /// Takes the batches queued in the outbox (as [`Outbox::poll_take`]).
    fn take(&mut self, cx: &mut Context<'_>, outbox: &Outbox) -> Poll<bool> {
        let idle = self.routes.is_empty();
        let taken = ready!(outbox.poll_take(cx, &mut self.out, &mut self.routes));
        if taken && idle {
            self.progress = Instant::now();
        }
        Poll::Ready(taken)
    }

    /// Every request queued or in flight fails with `e`.
    fn fail_routes(&mut self, e: &UpstreamError) {
        self.out.clear();
        for r in self.routes.drain(..) {
            fail(&r.to, r.left, e);
        }
    }

    /// The connection failed: every request in flight fails with `e`, and the connection
    /// is dropped.
    fn fail_all(&mut self, e: UpstreamError) {
        if !self.routes.is_empty() {
            tracing::warn!(error = %e, in_flight = self.routes.iter().map(|r| r.left).sum::<usize>(), "shared upstream connection failed");
        }
        self.conn = None;
        self.fail_routes(&e);
    }

    /// While connected: takes what sessions queue, writes it, reads and routes the
    /// replies, each as soon as it is ready, until the connection fails (ready with why),
    /// or the sessions' handle is gone and nothing is in flight (ready with nothing).
    fn poll_connected(
        &mut self,
        cx: &mut Context<'_>,
        outbox: &Outbox,
    ) -> Poll<Option<UpstreamError>> {
        loop {
            let mut again = false;
            match self.take(cx, outbox) {
                Poll::Ready(true) => again = true,
                Poll::Ready(false) if self.routes.is_empty() => return Poll::Ready(None),
                _ => {}
            }
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(Some(UpstreamError::Closed));
            };
            while !self.out.is_empty() || conn.stream.unsent() {
                match conn.stream.poll_send(cx, &self.out) {
                    Poll::Ready(Ok(n)) => self.out.advance(n),
                    Poll::Ready(Err(_)) => return Poll::Ready(Some(UpstreamError::Closed)),
                    Poll::Pending => break,
                }
            }
            crate::wire::reuse_emptied(&mut self.out, 64 * 1024);
            if conn.rbuf.capacity() - conn.rbuf.len() < 4096 {
                conn.rbuf.reserve(64 * 1024);
            }
            // Read also while idle, so that a connection Redis closed is noticed (and
            // replaced on the next batch) before anyone's request is written to it.
            match tokio_util::io::poll_read_buf(Pin::new(&mut conn.stream), cx, &mut conn.rbuf) {
                Poll::Ready(Ok(n)) if n > 0 => {
                    if let Err(e) = self.dispatch() {
                        return Poll::Ready(Some(e));
                    }
                    again = true;
                }
                Poll::Ready(_) => return Poll::Ready(Some(UpstreamError::Closed)),
                Poll::Pending => {}
            }
            if !again {
                break;
            }
        }
        let ms = self.timeout.as_millis() as u64;
        self.poll_timeout(cx)
            .map(|()| Some(UpstreamError::Timeout(ms)))
    }

    /// Ready when the oldest request in flight has waited `timeout` since Redis last
    /// answered.
    fn poll_timeout(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.routes.is_empty() {
            // Left armed: it fires once for nothing, and is armed anew when next needed.
            return Poll::Pending;
        }
        loop {
            let due = self.progress + self.timeout;
            if !self.armed {
                self.timer.as_mut().reset(due.into());
                self.armed = true;
            }
            ready!(self.timer.as_mut().poll(cx));
            self.armed = false;
            if due <= Instant::now() {
                return Poll::Ready(());
            }
        }
    }

    /// Hands every whole reply in the read buffer to its session: each run of replies for
    /// one session in one piece.
    fn dispatch(&mut self) -> Result<(), UpstreamError> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
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
            return Err(e);
        }
        if any {
            // One clock reading per read from Redis, not per reply.
            self.progress = Instant::now();
        }
        Ok(())
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

async fn run(connector: Arc<Connector>, protocol: u8, outbox: Closing) {
    let outbox = &*outbox.0;
    let timeout = connector.command_timeout;
    let mut st = State {
        conn: None,
        out: BytesMut::with_capacity(64 * 1024),
        routes: VecDeque::new(),
        batch: Vec::new(),
        progress: Instant::now(),
        timeout,
        timer: Box::pin(tokio::time::sleep(timeout)),
        armed: false,
    };
    loop {
        // Not connected: connect for the first batch (through the connector's backoff).
        if !poll_fn(|cx| st.take(cx, outbox)).await {
            return;
        }
        match connector.connect(protocol).await {
            Ok(c) => {
                st.conn = Some(c);
                // The clock starts when the requests can be written.
                st.progress = Instant::now();
            }
            Err(e) => {
                st.fail_routes(&e);
                continue;
            }
        }
        let Some(e) = poll_fn(|cx| st.poll_connected(cx, outbox)).await else {
            return;
        };
        if matches!(e, UpstreamError::Timeout(_)) {
            connector
                .counters
                .timeouts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        st.fail_all(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::inbox::Inbox;
    use crate::upstream::Replies;

    /// Where replies of `generation` go: `inbox`, with no bound on them.
    fn sink_to(inbox: &Arc<Inbox>, generation: u64) -> Sink {
        let meter = super::super::OutputMeter::new(0, None, crate::clients::Switch::new());
        Sink {
            inbox: inbox.clone(),
            generation,
            meter: Arc::new(meter),
            tag: 0,
        }
    }

    /// A Redis that cannot be reached: each batch is answered with the error, in order,
    /// and the task ends once the sessions' handle is gone (as when a server stops).
    #[tokio::test]
    async fn batches_that_cannot_be_sent_are_answered_and_the_task_ends_with_its_handle() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = crate::config::UpstreamAddr::parse(&format!("redis://127.0.0.1:{port}"));
        let second = Duration::from_secs(1);
        let connector = Arc::new(Connector::new(addr.unwrap(), None, second, second));
        let outbox = Arc::new(Outbox::default());
        let task = tokio::spawn(run(connector, 2, Closing(outbox.clone())));
        let shared = Shared { outbox };
        let mut replies = Replies::new();
        let inbox = replies.inbox();
        let sink = |generation| sink_to(&inbox, generation);
        let ping = b"*1\r\n$4\r\nPING\r\n";
        shared.submit(&[&ping[..], ping].concat(), 2, sink(1));
        shared.submit(ping, 1, sink(2));
        for want in [1, 1, 2] {
            let r = tokio::time::timeout(Duration::from_secs(5), replies.recv())
                .await
                .expect("every request is answered");
            assert_eq!(r.generation, want);
            assert!(r.result.is_err());
        }
        drop(shared);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task ends once its handle is gone")
            .unwrap();
    }

    /// A fake Redis whose login (HELLO) is answered after `login`, and whose every read of
    /// requests is answered (+PONG per PING) after `answer`.
    async fn slow_redis(login: Duration, answer: Duration) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(5).any(|w| w == b"HELLO") {
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0);
                buf.extend_from_slice(&chunk[..n]);
            }
            tokio::time::sleep(login).await;
            s.write_all(b"*0\r\n").await.unwrap();
            loop {
                let n = s.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                let pings = chunk[..n].windows(4).filter(|w| w == b"PING").count();
                tokio::time::sleep(answer).await;
                let _ = s.write_all(&b"+PONG\r\n".repeat(pings)).await;
            }
        });
        port
    }

    /// The clock of a shared connection starts when its requests can be written, as before
    /// the outbox: the time spent connecting (and logging in) is not charged to them. Here
    /// login takes 600 ms and Redis answers 500 ms after a request is written; the timeout is
    /// 1 s. A second batch, queued 400 ms into the connect, has waited 700 ms when it is
    /// answered, yet the connection gives up on it (and on the first) with `Timeout`.
    #[tokio::test]
    async fn connecting_does_not_count_against_the_command_timeout() {
        let port = slow_redis(Duration::from_millis(600), Duration::from_millis(500)).await;
        let addr = crate::config::UpstreamAddr::parse(&format!("redis://127.0.0.1:{port}"));
        let second = Duration::from_secs(1);
        let connector = Arc::new(Connector::new(addr.unwrap(), None, second, second));
        let shared = Shared::spawn(connector.clone(), 2);
        let mut replies = Replies::new();
        let inbox = replies.inbox();
        let sink = |generation| sink_to(&inbox, generation);
        let ping = b"*1\r\n$4\r\nPING\r\n";
        shared.submit(ping, 1, sink(1));
        tokio::time::sleep(Duration::from_millis(400)).await;
        let queued = Instant::now();
        shared.submit(ping, 1, sink(2));
        for want in [1, 2] {
            let r = tokio::time::timeout(Duration::from_secs(5), replies.recv())
                .await
                .expect("every request is answered");
            assert_eq!(r.generation, want);
            assert!(
                r.result.is_ok(),
                "batch {want} failed with {:?}; batch 2 was queued {:?} before",
                r.result.err(),
                queued.elapsed()
            );
        }
        assert_eq!(
            connector
                .counters
                .timeouts
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }

    /// The connection's timeout after idle: a batch written after a long quiet spell (the
    /// timer armed for an earlier request long since fired) fails `timeout` after it was
    /// queued, neither at once nor never; and after steady answers, `timeout` after the last.
    #[tokio::test]
    async fn the_timeout_counts_from_the_last_answer_or_from_idle() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut chunk = [0u8; 4096];
                    loop {
                        let n = s.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        let got = &chunk[..n];
                        let mut out = Vec::new();
                        if got.windows(5).any(|w| w == b"HELLO") {
                            out.extend_from_slice(b"*0\r\n");
                        }
                        for _ in got.windows(4).filter(|w| w == b"PING") {
                            out.extend_from_slice(b"+PONG\r\n");
                        }
                        // HANG: never answered.
                        s.write_all(&out).await.unwrap();
                    }
                });
            }
        });
        let addr = crate::config::UpstreamAddr::parse(&format!("redis://127.0.0.1:{port}"));
        let timeout = Duration::from_millis(500);
        let connector = Arc::new(Connector::new(addr.unwrap(), None, timeout, timeout));
        let shared = Shared::spawn(connector.clone(), 2);
        let mut replies = Replies::new();
        let inbox = replies.inbox();
        let sink = |generation| sink_to(&inbox, generation);
        let ping = b"*1\r\n$4\r\nPING\r\n";
        let hang = b"*1\r\n$4\r\nHANG\r\n";
        // Answered, then idle past the timeout (the timer fires for nothing meanwhile).
        shared.submit(ping, 1, sink(1));
        assert!(replies.recv().await.result.is_ok());
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let t = Instant::now();
        shared.submit(hang, 1, sink(2));
        let r = tokio::time::timeout(Duration::from_secs(5), replies.recv())
            .await
            .expect("answered");
        let took = t.elapsed();
        assert!(matches!(r.result, Err(UpstreamError::Timeout(500))));
        // Not at once, and not never (a loaded machine may be late by a little).
        assert!(
            took >= Duration::from_millis(490) && took < Duration::from_millis(1500),
            "{took:?}"
        );
        // Steady answers for 3 timeouts' worth, each batch queued while one is in flight:
        // none times out. Then one never answered: `timeout` after the last answer.
        let start = Instant::now();
        let mut g = 10;
        while start.elapsed() < Duration::from_millis(1500) {
            shared.submit(ping, 1, sink(g));
            let r = tokio::time::timeout(Duration::from_secs(5), replies.recv())
                .await
                .expect("answered");
            assert_eq!(r.generation, g);
            assert!(r.result.is_ok(), "{:?}", r.result.err());
            g += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let t = Instant::now();
        shared.submit(hang, 1, sink(1000));
        let r = replies.recv().await;
        let took = t.elapsed();
        assert!(matches!(r.result, Err(UpstreamError::Timeout(500))));
        // Not at once, and not never (a loaded machine may be late by a little).
        assert!(
            took >= Duration::from_millis(490) && took < Duration::from_millis(1500),
            "{took:?}"
        );
        assert_eq!(
            connector
                .counters
                .timeouts
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
        // And the connection after: a new one answers.
        shared.submit(ping, 1, sink(2000));
        let r = tokio::time::timeout(Duration::from_secs(5), replies.recv())
            .await
            .expect("answered");
        assert!(r.result.is_ok() || matches!(r.result, Err(UpstreamError::Backoff(_))));
    }
}
