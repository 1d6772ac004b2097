//! The accept loop: one task per client connection, at most `max_clients` at once.
//!
//! [`run`] takes already-bound [`Listeners`] (tests bind port 0), plain and TLS, and a
//! shutdown token. On shutdown it stops accepting, tells every session to finish what is in
//! flight, and waits up to the grace period for them. A TLS connection's handshake runs in
//! its own task, within `auth_timeout_ms`, so a slow one never holds up the accept loop, and
//! counts among the connections not logged in yet (`max_unauthenticated`).
//!
//! With `server.threads = N` (N > 1), sessions run on N [`Workers`]: threads with a
//! current-thread runtime each. An accepted socket is handed to one of them, once, and the
//! session lives there, with the shared upstream connections that worker's runtime carries
//! (`upstream::Upstream::shared`): a request and its reply never cross threads. The accept
//! loop and the background work (quotas, billing, admin) stay on the main runtime.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clients::Switch;
use crate::context::Context;
use crate::session;
use crate::transport::ClientStream;

/// Where clients connect: a plain listener, a TLS one (`server.tls_listen`), or both.
pub struct Listeners {
    pub plain: Option<TcpListener>,
    pub tls: Option<TcpListener>,
}

/// The next connection on `listener`; never, without one.
async fn accept(
    listener: &Option<TcpListener>,
) -> std::io::Result<(TcpStream, std::net::SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// The connection as the session reads it: with `tls`, after the TLS handshake, which must
/// end within the time a client has to log in. A failed handshake (a certificate the
/// client CA did not sign, a client that does not speak TLS) is logged and closes it.
///
/// Until its handshake ends the connection is one of those not logged in yet, with a place
/// among them (`max_unauthenticated`: the oldest is closed past it), as an idle plain
/// socket is: otherwise sockets that never say a word to the TLS listener would hold every
/// place of `max_clients` for `auth_timeout_ms`. A shutdown closes it, as it closes a
/// plain connection with nothing in flight.
async fn open(
    ctx: &Arc<Context>,
    tcp: TcpStream,
    tls: bool,
    shutdown: &Switch,
) -> Option<ClientStream> {
    let Some(server_tls) = ctx.tls.as_ref().filter(|_| tls) else {
        return Some(ClientStream::Plain(tcp));
    };
    let peer = tcp.peer_addr().ok();
    let within = ctx.unauthenticated.timeout;
    let evicted = Switch::new();
    let _place = ctx.waiting(evicted.clone());
    let handshake = tokio::select! {
        r = tokio::time::timeout(within, server_tls.accept(tcp)) => r,
        _ = evicted.cancelled() => {
            tracing::debug!(?peer, "TLS handshake unfinished; closed to make room");
            return None;
        }
        _ = shutdown.cancelled() => return None,
    };
    match handshake {
        Ok(Ok(client)) => Some(client),
        // Closed before saying anything: a port probe (a load balancer's, a TCP liveness
        // check), not worth a warning each time.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            tracing::debug!(?peer, "connection closed before a TLS handshake");
            None
        }
        Ok(Err(e)) => {
            tracing::warn!(?peer, error = %e, "TLS handshake failed; connection closed");
            // A client certificate refused (or none given) is a refused login.
            let detail = e.to_string();
            if let (Some(peer), true) = (peer, crate::transport::certificate_refused(&e)) {
                ctx.audit.auth_failed(crate::audit::AuthFailed {
                    via: "TLS",
                    tenant: None,
                    peer,
                    reason: "bad_certificate",
                    detail: Some(&detail),
                });
            }
            None
        }
        Err(_) => {
            tracing::warn!(
                ?peer,
                within_ms = within.as_millis() as u64,
                "TLS handshake not finished in time; connection closed"
            );
            None
        }
    }
}

/// The worker threads `server.threads` asks for: none for one thread (everything on the
/// main runtime, which is then a current-thread one).
pub fn workers(threads: usize) -> usize {
    match threads {
        0 | 1 => 0,
        n => n,
    }
}

/// Worker threads, each running a current-thread runtime until dropped.
pub struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    next: AtomicUsize,
    stop: CancellationToken,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// `n` workers (none for 0).
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let stop = CancellationToken::new();
        let mut workers = Workers {
            handles: Vec::with_capacity(n),
            next: AtomicUsize::new(0),
            stop: stop.clone(),
            threads: Vec::with_capacity(n),
        };
        for i in 1..=n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            workers.handles.push(runtime.handle().clone());
            let stop = stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("respite-worker-{i}"))
                .spawn(move || {
                    crate::upstream::set_worker(i);
                    runtime.block_on(stop.cancelled());
                })?;
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    /// The worker the next session goes to, in turn; `None` without workers.
    fn pick(&self) -> Option<&tokio::runtime::Handle> {
        let n = self.handles.len();
        (n > 0).then(|| &self.handles[self.next.fetch_add(1, Ordering::Relaxed) % n])
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

pub async fn run(
    listeners: Listeners,
    ctx: Arc<Context>,
    workers: &Workers,
    max_clients: usize,
    grace: Duration,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(max_clients));
    let mut sessions = JoinSet::new();
    // What the sessions look at on every pass: thrown once the loop below has seen
    // `shutdown` (and only then, so a session woken by it finds it thrown).
    let stopping = Switch::new();
    let mut backoff = Duration::from_millis(5);
    loop {
        let (accepted, tls) = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = accept(&listeners.plain) => (a, false),
            a = accept(&listeners.tls) => (a, true),
            // Reap finished sessions so the set does not grow with every connection.
            Some(_) = sessions.join_next(), if !sessions.is_empty() => continue,
        };
        let (mut stream, peer) = match accepted {
            Ok(a) => {
                backoff = Duration::from_millis(5);
                a
            }
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "max_clients reached; refusing connection");
            if tls {
                // Redis' answer would need a handshake first: closed without one.
                continue;
            }
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let msg = crate::error::Error::MaxClients.to_resp();
                let _ = stream.write_all(&msg).await;
            });
            continue;
        };
        let ctx = ctx.clone();
        let shutdown = stopping.clone();
        let Some(worker) = workers.pick() else {
            sessions.spawn(async move {
                if let Some(client) = open(&ctx, stream, tls, &shutdown).await {
                    session::serve(ctx, client, shutdown).await;
                }
                drop(permit);
            });
            continue;
        };
        // Off the main runtime's reactor, onto the worker's: its readiness wakes the
        // session on the worker's own thread.
        let Ok(socket) = stream.into_std() else {
            continue;
        };
        sessions.spawn_on(
            async move {
                if let Ok(stream) = TcpStream::from_std(socket) {
                    if let Some(client) = open(&ctx, stream, tls, &shutdown).await {
                        session::serve(ctx, client, shutdown).await;
                    }
                }
                drop(permit);
            },
            worker,
        );
    }
    stopping.cancel();
    tracing::info!(
        open = sessions.len(),
        "shutting down: finishing in-flight commands"
    );
    let drained = tokio::time::timeout(grace, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = sessions.len(),
            "grace period over; closing remaining connections"
        );
        sessions.shutdown().await;
    }
}
