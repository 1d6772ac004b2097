//! respite: a multi-tenant caching proxy that speaks the Redis protocol.
//!
//! Each client connection authenticates to a tenant; every key and channel it touches is
//! rewritten into `tenant:<id>:` on the way to Redis and back out of the replies, so tenants
//! sharing one Redis can never see, change or enumerate each other's data.
//!
//! ```text
//! client ──TCP──▶ server (accept, max_clients)
//!                   └─▶ session (one task per connection; the loop)
//!                         protocol   decode RESP / inline requests, limits
//!                         auth       AUTH / HELLO / JWT / default tenant → Tenant
//!                         command    table generated from Redis' own key specs; grammar:
//!                                    keys of SORT/GEORADIUS/XREAD as the commands parse them
//!                         local      commands respite answers itself (AUTH, CLIENT, SELECT, ...)
//!                         keyspace   tenant-wide DBSIZE, KEYS, RANDOMKEY, FLUSHDB, INFO
//!                         policy     what a tenant may not run (-NOPERM)
//!                         rewrite    keys, channels, patterns → tenant:<id>:...; a last
//!                                    guard: no key leaves outside the namespace
//!                         quota      byte quotas: charge writes, refuse past the limit (-OOM)
//!                         shared     GET of shared:market:* from an in-proxy cache (L1,
//!                                    single flight, Redis, HTTP origin)
//!                         upstream   connection to Redis (raw RESP frames, in order)
//!                         reply      framing replies, pub/sub pushes, prefixes stripped back
//!                         metrics    per-tenant outcome, hit/miss, latency (tallied per pass)
//!                         error      every error → its RESP reply, in one place
//! background: quota flusher/reconciler, billing roll-ups, admin HTTP (/metrics, /readyz)
//! ```
//!
//! Modules, in the order a request meets them: [`server`], [`session`], [`protocol`],
//! [`auth`] (with [`tenant`]), [`command`], [`local`], [`keyspace`], [`policy`], [`rewrite`],
//! [`quota`], [`shared`], [`upstream`], [`reply`], [`error`]; [`config`] is the TOML file,
//! [`clients`] the registry of connections behind CLIENT LIST/KILL, [`info`] INFO scoped to
//! the tenant, [`metrics`] the per-tenant figures (rolled up daily into Redis by
//! [`billing`]), [`admin`] the HTTP endpoints for operators (/healthz, /readyz, /metrics).
//! `upstream::Facts` holds the Redis settings that bound what may be forwarded.
//!
//! Threads: the binary runs all of this on one thread by default (`server.threads = 1`,
//! tokio's current-thread scheduler), so a request, the shared upstream task that writes it
//! and its reply never cross threads; state shared between sessions (tenants' ledgers and
//! figures, the shared cache) is still `Send + Sync`, so `threads = N` runs the same code
//! on N worker threads.

pub mod admin;
pub mod auth;
pub mod billing;
pub mod clients;
pub mod command;
pub mod config;
pub mod context;
pub mod error;
pub mod info;
pub mod metrics;
pub mod namespace;
pub mod policy;
pub mod quota;
pub mod server;
pub mod session;
pub mod shared;
pub mod tenant;
pub mod upstream;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use config::Config;
use context::Context;

/// Builds the shared state of a running proxy from a validated config.
pub fn context(config: &Config) -> anyhow::Result<Arc<Context>> {
    let auth = auth::Authenticator::from_config(config)?;
    let default_tenant = config
        .server
        .default_tenant
        .as_ref()
        .map(|d| auth.tenant(d.get_ref()).expect("validated"));
    let ledgers = auth.tenants().filter_map(|t| t.ledger.clone()).collect();
    let own = upstream::Own::from_config(config)?;
    let quotas = quota::Quotas::from_config(config, ledgers, own.clone()).map(Arc::new);
    let shared = config
        .shared
        .as_ref()
        .map(|s| shared::SharedCache::new(s.get_ref(), own.clone()))
        .transpose()?
        .map(Arc::new);
    Ok(Arc::new(Context {
        quotas,
        shared,
        own,
        readiness: upstream::Readiness::default(),
        facts: upstream::Facts::default(),
        metrics: config.server.metrics,
        limits: wire::Limits {
            max_bulk_bytes: config.server.max_bulk_bytes,
            max_array_len: config.server.max_array_len,
        },
        default_tenant,
        auth,
        upstream: upstream::Upstream::new(
            upstream::Connector::new(
                config.upstream_addr(),
                Duration::from_millis(config.upstream.connect_timeout_ms),
                Duration::from_millis(config.upstream.command_timeout_ms),
            ),
            config.upstream.connections,
            config.upstream.pinned_max,
        ),
        clients: clients::Registry::default(),
    }))
}

/// Runs the proxy on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: &Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let ctx = context(config)?;
    // What Redis allows decides what respite forwards: known before the first client.
    ctx.facts.refresh(&ctx.own).await;
    // Quota bookkeeping outlives the sessions: its last flush hands the leases back.
    let bookkeeping = CancellationToken::new();
    let quotas = ctx
        .quotas
        .clone()
        .map(|q| tokio::spawn(q.run(bookkeeping.clone())));
    let billing = config.server.metrics.then(|| {
        tokio::spawn(billing::run(
            ctx.clone(),
            Duration::from_millis(config.billing.interval_ms),
            bookkeeping.clone(),
        ))
    });
    tokio::spawn({
        let ctx = ctx.clone();
        let stop = bookkeeping.clone();
        async move { ctx.facts.watch(ctx.own.clone(), stop).await }
    });
    if let Some(admin) = &config.admin {
        let addr = admin.get_ref().listen.as_str();
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("admin.listen {addr}: {e}"))?;
        tokio::spawn({
            let (ctx, stop) = (ctx.clone(), bookkeeping.clone());
            async move { ctx.readiness.watch(ctx.own.clone(), stop).await }
        });
        tokio::spawn(admin::run(listener, ctx.clone(), bookkeeping.clone()));
    }
    server::run(
        listener,
        ctx,
        config.server.max_clients,
        Duration::from_millis(config.server.shutdown_grace_ms),
        shutdown,
    )
    .await;
    bookkeeping.cancel();
    if let Some(q) = quotas {
        let _ = q.await;
    }
    if let Some(b) = billing {
        // The last roll-up: what this instance served since the previous one.
        let _ = b.await;
    }
    Ok(())
}
