//! The accept loop: one task per client connection, at most `max_clients` at once.
//!
//! [`run`] takes an already-bound listener (tests bind port 0) and a shutdown token. On
//! shutdown it stops accepting, tells every session to finish what is in flight, and waits
//! up to the grace period for them.
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

use crate::context::Context;
use crate::session;

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
    listener: TcpListener,
    ctx: Arc<Context>,
    workers: &Workers,
    max_clients: usize,
    grace: Duration,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(max_clients));
    let mut sessions = JoinSet::new();
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
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
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let msg = crate::error::Error::MaxClients.to_resp();
                let _ = stream.write_all(&msg).await;
            });
            continue;
        };
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        let Some(worker) = workers.pick() else {
            sessions.spawn(async move {
                session::serve(ctx, stream, shutdown).await;
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
                    session::serve(ctx, stream, shutdown).await;
                }
                drop(permit);
            },
            worker,
        );
    }
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
