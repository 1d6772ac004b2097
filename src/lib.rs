//! respite: a multi-tenant caching proxy that speaks the Redis protocol.
//!
//! Each client connection authenticates to a tenant; every key and channel it touches is
//! rewritten into `tenant:<id>:` on the way to Redis and back out of the replies, so tenants
//! sharing one Redis can never see, change or enumerate each other's data. A tenant's
//! database n (SELECT) is `tenant:<id>@<n>:` for its keys (`Tenant::db_prefix`); channels
//! have no databases.
//!
//! ```text
//! client ──TCP──▶ server.rs          accept, max_clients, TLS handshake (transport.rs)
//!                   └─▶ session/      one task per connection
//!                         mod.rs        the loop: read, handle, write, in order
//!                         decide.rs     the stages, in order:
//!                           wire/         parse the request (limits, inline commands)
//!                           auth.rs       AUTH / HELLO / JWT / default tenant → tenant.rs;
//!                                         tenants from tokens on their plans; a reload
//!                                         swaps the book of tenants
//!                           local.rs      commands respite answers itself (AUTH, CLIENT, ...)
//!                           keyspace.rs   tenant-wide DBSIZE, KEYS, RANDOMKEY, FLUSHDB, INFO
//!                           command/      the table from Redis' key specs → a KeyMap, once
//!                           policy.rs     what a tenant may not run (-NOPERM); what an
//!                                         admin tenant may run besides (audited)
//!                           market.rs     GET of shared:market:* from the in-proxy cache
//!                           namespace/    keys, channels, patterns → tenant:<id>:...; guard
//!                           quota/        charge writes, refuse past the limit (-OOM)
//!                         scripting.rs  EVAL, FCALL, SCRIPT, FUNCTION → script/ (preludes, ACL user)
//!                         outbound.rs   requests to Redis over upstream/ (shared or pinned)
//!                         routing.rs    cluster mode: each request's slot, MULTI on one
//!                                       node, MGET/DEL/MSET split by slot, blocked commands
//!                                       sent on when their slot moves
//!                         inbound.rs    replies back: namespace/reply.rs strips the prefix
//! background: quota/ flusher (awake tenants only) and reconciler, billing.rs roll-ups,
//!             admin.rs (/metrics, /readyz via upstream/health.rs, POST /reload),
//!             audit.rs (the audit trail: refused logins, reloads, server-wide commands,
//!             shared reads per tenant and key each minute, on a writer thread),
//!             reload.rs (SIGHUP, POST /reload: the file again, applied live),
//!             upstream/facts.rs (Redis' settings),
//!             script/ warden (kills tenants' runaway scripts), upstream/cluster.rs (the
//!             slot map of a Redis Cluster, refreshed in the background; each session's
//!             Flight carries its requests to their nodes, follows redirects and keeps its
//!             replies in order)
//! ```
//!
//! The layers, each importing only from those below it (no import circle):
//!
//! | layer | modules |
//! |---|---|
//! | bytes | [`wire`] and [`transport`] (TCP or TLS; import nothing of the crate), `command`, `config`, `clients`, `info` |
//! | errors and figures | `error`, `metrics`, `audit` (the audit trail's JSON lines, its writer thread) |
//! | Redis | [`upstream`] (shared and pinned connections, the outboxes sessions queue requests in and the inboxes their replies wait in, cluster routing, respite's own pool, health, facts, output meters) |
//! | data | `market` (the shared-key cache), `quota`, `rate` (token buckets), [`tenant`] |
//! | stages | [`namespace`], `auth`, [`policy`], `script` (tenants' Lua: prelude, ACL users) |
//! | composition | `context` (what sessions share) |
//! | connections | `session` (child modules of one type), `reload`, `admin`, [`billing`], `server` |
//!
//! `error` maps every error to its RESP reply, in one place; [`config`] is the TOML file.
//!
//! Threads: the binary runs all of this on one thread by default (`server.threads = 1`,
//! tokio's current-thread scheduler), so a request, the shared upstream task that writes it
//! and its reply never cross threads. With `threads = N`, sessions run on N worker threads
//! of the same kind (`server::Workers`), each accepted socket handed to one of them once,
//! each worker with its own shared upstream connections (`upstream::Upstream::shared`):
//! still no request or reply crosses threads. State shared between sessions (tenants'
//! ledgers and figures, the shared cache, the pinned pool) is `Send + Sync`.

// Public: what the binary, the integration tests (the differential test drives the stages
// directly) and the benches use. Everything else is private to the crate.
pub mod admin;
mod audit;
mod auth;
pub mod billing;
mod clients;
pub mod command;
pub mod config;
mod context;
mod error;
mod info;
mod market;
mod metrics;
pub mod namespace;
pub mod policy;
mod quota;
mod rate;
mod reload;
pub mod script;
mod server;
mod session;
pub mod tenant;
pub mod transport;
pub mod upstream;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use config::Config;
use context::Context;

/// Builds the shared state of a running proxy from a validated config.
pub fn context(config: Config, source: Option<config::Source>) -> anyhow::Result<Arc<Context>> {
    let ledgers = config
        .quotas_enabled()
        .then(|| Arc::new(quota::Ledgers::default()));
    let auth = auth::Authenticator::from_config(config, ledgers.clone())?;
    // From here on the config without its tenants: each lives on as its `Tenant`.
    let config = auth.config();
    let shortest_script_timeout = auth
        .tenants()
        .iter()
        .map(|t| t.scripts.timeout_ms)
        .min()
        .unwrap_or(config::DEFAULT_SCRIPT_TIMEOUT_MS);
    let config = &*config;
    let own = upstream::OwnPool::from_config(config)?;
    let shared = config
        .shared
        .as_ref()
        .map(|s| market::SharedCache::new(s.get_ref(), own.clone()))
        .transpose()?
        .map(Arc::new);
    let (connect_timeout, command_timeout) = (
        Duration::from_millis(config.upstream.connect_timeout_ms),
        Duration::from_millis(config.upstream.command_timeout_ms),
    );
    let upstream_tls = config.upstream_tls()?;
    let tls = config.server_tls()?.map(Arc::new);
    let cluster = config.cluster().then(|| {
        Arc::new(upstream::cluster::Topology::new(
            config.seed_addrs(),
            upstream_tls.clone(),
            connect_timeout,
            command_timeout,
            config.upstream.connections,
        ))
    });
    let upstream = upstream::Upstream::new(
        upstream::Connector::new(
            config.upstream_addr(),
            upstream_tls,
            connect_timeout,
            command_timeout,
        ),
        config.upstream.connections,
        config.upstream.pinned_max,
        cluster.clone(),
        server::workers(config.server.threads),
    );
    let quotas = ledgers
        .map(|ledgers| quota::Quotas::new(config, ledgers, own.clone(), cluster))
        .map(Arc::new);
    let audit = audit::Trail::start(config.audit.as_ref().map(|a| a.get_ref()))?;
    Ok(Arc::new(Context {
        tls,
        quotas,
        market: shared,
        own: own.clone(),
        readiness: upstream::Readiness::default(),
        facts: upstream::Facts::default(),
        metrics: config.server.metrics,
        client_output_limit: config.server.client_output_limit_bytes,
        unauthenticated: context::Unauthenticated::new(
            config.server.max_unauthenticated,
            Duration::from_millis(config.server.auth_timeout_ms),
        ),
        limits: wire::Limits {
            max_bulk_bytes: config.server.max_bulk_bytes,
            max_array_len: config.server.max_array_len,
        },
        auth,
        source,
        reloads: context::Reloads::default(),
        scripts: script::Scripts::new(
            config,
            shortest_script_timeout,
            own,
            upstream.connector.clone(),
            upstream.cluster.clone(),
        ),
        upstream,
        clients: clients::Registry::default(),
        audit: Arc::new(audit),
    }))
}

/// Runs the proxy until `shutdown` is cancelled: clients on `listener` (none for a TLS-only
/// proxy), and on `server.tls_listen`, which this binds.
pub async fn run(
    config: Config,
    source: Option<config::Source>,
    listener: Option<TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let ctx = context(config, source)?;
    let config = ctx.auth.config();
    reload::give_back_freed_memory();
    if let Some(topology) = &ctx.upstream.cluster {
        // The slot map before the first client; a cluster not reachable yet is retried by
        // the watcher, and requests meanwhile fail fast with why.
        if let Err(e) = topology.refresh().await {
            tracing::warn!(error = %e, "cannot read the cluster's slot map yet");
        }
    }
    // What Redis allows decides what respite forwards: known before the first client.
    ctx.facts.refresh(&ctx.own).await;
    ctx.scripts.probe().await;
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
    tokio::spawn({
        let (ctx, stop) = (ctx.clone(), bookkeeping.clone());
        async move { ctx.scripts.watch(stop).await }
    });
    if let Some(topology) = ctx.upstream.cluster.clone() {
        tokio::spawn(topology.watch(bookkeeping.clone()));
    }
    if ctx.source.is_some() {
        tokio::spawn(reload::on_hangup(ctx.clone(), bookkeeping.clone()));
    }
    if let Some(admin) = &config.admin {
        let addr = admin.get_ref().listen.as_str();
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("admin.listen {addr}: {e}"))?;
        tokio::spawn({
            let (ctx, stop) = (ctx.clone(), bookkeeping.clone());
            async move {
                let cluster = ctx.upstream.cluster.clone();
                ctx.readiness.watch(ctx.own.clone(), cluster, stop).await
            }
        });
        tokio::spawn(admin::run(listener, ctx.clone(), bookkeeping.clone()));
    }
    let tls = match config.tls_listen_addr() {
        Some(addr) => {
            let tls = TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("server.tls_listen {addr}: {e}"))?;
            tracing::info!(%addr, "respite listening for TLS");
            Some(tls)
        }
        None => None,
    };
    let listeners = server::Listeners {
        plain: listener,
        tls,
    };
    if !ctx.audit.on() && ctx.auth.tenants().iter().any(|t| t.admin) {
        tracing::warn!(
            "admin tenants run server-wide commands and no [audit] section records them"
        );
    }
    let trail = ctx.audit.clone();
    let workers = server::Workers::start(server::workers(config.server.threads))?;
    server::run(
        listeners,
        ctx,
        &workers,
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
    // The sessions have handed their shared reads over: the last minute's, written.
    let _ = tokio::task::spawn_blocking(move || trail.finish(Duration::from_secs(5))).await;
    Ok(())
}
