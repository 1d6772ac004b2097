//! The accept loop: one task per client connection, at most `max_clients` at once.
//!
//! [`run`] takes an already-bound listener (tests bind port 0) and a shutdown token. On
//! shutdown it stops accepting, tells every session to finish what is in flight, and waits
//! up to the grace period for them.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::session;

pub async fn run(
    listener: TcpListener,
    ctx: Arc<Context>,
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
        sessions.spawn(async move {
            session::serve(ctx, stream, shutdown).await;
            drop(permit);
        });
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
