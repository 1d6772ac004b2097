//! The admin HTTP listener (`[admin] listen`), for operators and their tools:
//!
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 while Redis answers respite's PING (every 250 ms, over respite's own
//!   pool), 503 otherwise, so a load balancer stops sending clients within about a second.
//! - `GET /metrics`: Prometheus text format, made by the `prometheus-client` crate from the
//!   figures the other stages keep: connections per tenant, quota usage and decisions per
//!   tenant, the shared cache's counters, Redis' reachability.
//! - `POST /reload` with `Authorization: Bearer <admin.token>`: reads the config file again
//!   (see `reload`); 200 and what changed, 400 and every error of an invalid file (nothing
//!   changes), 401 without the token, 403 when no `admin.token` is set.
//!
//! The read-only endpoints need no token: probes and scrapers hold none. `probe` is their
//! client for `respite healthcheck`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::tenant::Tenant;

pub mod probe;

/// Serves the admin endpoints on `listener` until `shutdown`.
pub async fn run(listener: TcpListener, ctx: Arc<Context>, shutdown: CancellationToken) {
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get({
                let ctx = ctx.clone();
                move || async move {
                    if ctx.readiness.ready() {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "Redis does not answer\n")
                    }
                }
            }),
        )
        .route(
            "/reload",
            post({
                let ctx = ctx.clone();
                move |ConnectInfo(peer): ConnectInfo<SocketAddr>, headers: HeaderMap| {
                    let ctx = ctx.clone();
                    async move { reload(&ctx, peer, &headers).await }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let ctx = ctx.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics(&ctx).await,
                    )
                        .into_response()
                }
            }),
        );
    // Who asked for a reload is in the audit trail: the handlers see the peer.
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "admin listener failed");
    }
}

/// `POST /reload` from `peer`, for the holder of `admin.token`.
async fn reload(
    ctx: &Arc<Context>,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> axum::response::Response {
    let config = ctx.auth.config();
    let Some(token) = config
        .admin
        .as_ref()
        .and_then(|a| a.get_ref().token.clone())
    else {
        return (
            StatusCode::FORBIDDEN,
            "no admin.token is set: reload with SIGHUP, or set one\n",
        )
            .into_response();
    };
    // The scheme is case-insensitive (RFC 9110); no token given never matches.
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, t)| scheme.eq_ignore_ascii_case("bearer") && !t.is_empty())
        .map_or("", |(_, t)| t);
    let digest = |t: &str| crate::config::sha256(t.as_bytes());
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        &digest(given)[..],
        &digest(token.expose())[..],
    )) {
        tracing::warn!(%peer, "POST /reload refused: missing or wrong admin token");
        ctx.audit.auth_failed(crate::audit::AuthFailed {
            via: "POST /reload",
            tenant: None,
            peer,
            reason: match given {
                "" => "no_admin_token",
                _ => "wrong_admin_token",
            },
            detail: None,
        });
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "admin token required\n",
        )
            .into_response();
    }
    let json = [(header::CONTENT_TYPE, "application/json")];
    match crate::reload::reload(ctx, "POST /reload", Some(peer)).await {
        Ok(report) => (
            StatusCode::OK,
            json,
            serde_json::to_string(&report).unwrap_or_default(),
        )
            .into_response(),
        Err(crate::reload::ReloadError::Invalid(errors)) => {
            let list: Vec<String> = errors.0.iter().map(|e| e.to_string()).collect();
            let body = serde_json::json!({ "errors": list });
            (StatusCode::BAD_REQUEST, json, body.to_string()).into_response()
        }
        Err(e) => {
            let body = serde_json::json!({ "errors": [e.to_string()] });
            (StatusCode::CONFLICT, json, body.to_string()).into_response()
        }
    }
}

type ByTenant = Vec<(String, String)>;

fn tenant(id: &str) -> ByTenant {
    vec![("tenant".into(), id.into())]
}

/// The tenants /metrics names: those with a connection, or whose figures moved within
/// `admin.tenant_window_seconds`. With ten thousand configured tenants the label count
/// follows the active ones; the rest are counted in `respite_tenants{state="quiet"}`.
fn reported(ctx: &Context, registry: &mut Registry) -> Vec<Arc<Tenant>> {
    let window = ctx
        .auth
        .config()
        .admin
        .as_ref()
        .map_or(300, |a| a.get_ref().tenant_window_seconds);
    let since = Instant::now()
        .checked_sub(Duration::from_secs(window))
        .unwrap_or_else(Instant::now);
    let all = ctx.auth.tenants();
    let known = all.len();
    let active: Vec<_> = all
        .into_iter()
        .filter(|t| t.connections() > 0 || t.stats.active_since(since))
        .collect();
    let tenants = Family::<Vec<(String, String)>, Gauge>::default();
    for (state, n) in [("active", active.len()), ("quiet", known - active.len())] {
        tenants
            .get_or_create(&vec![("state".into(), state.into())])
            .set(n as i64);
    }
    registry.register(
        "tenants",
        "Tenants known (listed, or made from tokens): active ones are named in the per-tenant figures",
        tenants,
    );
    active
}

/// Commands, hits, bytes, auth failures and latency percentiles, per tenant.
fn tenant_figures(tenants: &[Arc<Tenant>], registry: &mut Registry) {
    let commands = Family::<ByTenant, Counter>::default();
    let hits = Family::<ByTenant, Counter>::default();
    let misses = Family::<ByTenant, Counter>::default();
    let hit_ratio = Family::<ByTenant, Gauge<f64, AtomicU64>>::default();
    let bytes_read = Family::<ByTenant, Counter>::default();
    let bytes_written = Family::<ByTenant, Counter>::default();
    let auth_failures = Family::<ByTenant, Counter>::default();
    let latency = Family::<ByTenant, Gauge>::default();
    for t in tenants {
        let s = t.stats.snapshot();
        let id = tenant(&t.id);
        for ((name, outcome), n) in &s.commands {
            let mut l = id.clone();
            l.push(("command".into(), String::from_utf8_lossy(name).into_owned()));
            l.push(("outcome".into(), outcome.as_str().into()));
            commands.get_or_create(&l).inc_by(*n);
        }
        hits.get_or_create(&id).inc_by(s.hits);
        misses.get_or_create(&id).inc_by(s.misses);
        hit_ratio.get_or_create(&id).set(s.hit_rate());
        bytes_read.get_or_create(&id).inc_by(s.bytes_in);
        bytes_written.get_or_create(&id).inc_by(s.bytes_out);
        auth_failures.get_or_create(&id).inc_by(s.auth_failures);
        for family in s.latency.keys() {
            let Some(p) = s.percentiles(Some(family)) else {
                continue;
            };
            for (q, v) in ["0.5", "0.9", "0.99", "0.999"].into_iter().zip(p) {
                let mut l = id.clone();
                l.push(("family".into(), (*family).into()));
                l.push(("quantile".into(), q.into()));
                latency.get_or_create(&l).set(v as i64);
            }
        }
    }
    registry.register(
        "commands",
        "Commands by tenant, command and outcome (ok, error, refused)",
        commands,
    );
    registry.register("cache_hits", "Reads that found their key", hits);
    registry.register(
        "cache_misses",
        "Reads that found nothing (nil or empty)",
        misses,
    );
    registry.register("cache_hit_ratio", "Hits over reads", hit_ratio);
    registry.register("bytes_read", "Request bytes read from clients", bytes_read);
    registry.register(
        "bytes_written",
        "Reply bytes written to clients",
        bytes_written,
    );
    registry.register(
        "auth_failures",
        "Failed logins naming the tenant",
        auth_failures,
    );
    registry.register(
        "latency_microseconds",
        "Command latency from request read to reply ready, by family (hdrhistogram)",
        latency,
    );
}

/// What each tenant's limits did, and where it stands against them.
fn tenant_limits(tenants: &[Arc<Tenant>], registry: &mut Registry) {
    let closed = Family::<ByTenant, Counter>::default();
    let connections = Family::<ByTenant, Gauge>::default();
    let max_clients = Family::<ByTenant, Gauge>::default();
    let unread = Family::<ByTenant, Gauge>::default();
    let throttled = Family::<ByTenant, Gauge<f64, AtomicU64>>::default();
    let rate_refusals = Family::<ByTenant, Counter>::default();
    let origin_limited = Family::<ByTenant, Counter>::default();
    for t in tenants {
        let id = tenant(&t.id);
        origin_limited
            .get_or_create(&id)
            .inc_by(t.live.limited.origin_limited.load(Ordering::Relaxed));
        if let Some(r) = &t.rates {
            let us = r.throttled_us.load(Ordering::Relaxed);
            throttled.get_or_create(&id).set(us as f64 / 1e6);
            rate_refusals
                .get_or_create(&id)
                .inc_by(r.refused.load(Ordering::Relaxed));
        }
        closed
            .get_or_create(&id)
            .inc_by(t.live.limited.closed_for_output.load(Ordering::Relaxed));
        connections.get_or_create(&id).set(t.connections() as i64);
        if let Some(max) = t.max_clients {
            max_clients.get_or_create(&id).set(max as i64);
        }
        if let Some(total) = &t.output {
            unread.get_or_create(&id).set(total.bytes() as i64);
        }
    }
    registry.register(
        "clients_closed_output",
        "Clients closed for unread replies past client_output_limit_bytes or the tenant's output_limit_bytes",
        closed,
    );
    registry.register(
        "tenant_connections",
        "The tenant's connections on this instance",
        connections,
    );
    registry.register(
        "tenant_max_clients",
        "The tenant's max_clients, where set",
        max_clients,
    );
    registry.register(
        "rate_throttled_seconds",
        "Time the tenant's connections were held back for its rates (rate_limit = delay)",
        throttled,
    );
    registry.register(
        "rate_refusals",
        "Requests refused for the tenant's rates (rate_limit = refuse)",
        rate_refusals,
    );
    registry.register(
        "shared_origin_limited",
        "Misses of shared keys not fetched from the origin for its fetch rates",
        origin_limited,
    );
    registry.register(
        "tenant_output_unread_bytes",
        "Reply bytes the tenant's clients have asked for and not read, where output_limit_bytes is set",
        unread,
    );
}

/// The registry, filled with this moment's figures, in the text format.
async fn metrics(ctx: &Context) -> String {
    let mut registry = <Registry>::with_prefix("respite");
    register_connections(ctx, &mut registry);
    register_reloads(ctx, &mut registry);
    let tenants = reported(ctx, &mut registry);
    tenant_figures(&tenants, &mut registry);
    tenant_limits(&tenants, &mut registry);
    register_upstream(ctx, &mut registry);
    if let Some(quotas) = &ctx.quotas {
        let ledgers = tenants.iter().filter_map(|t| t.ledger.clone()).collect();
        register_quotas(quotas, ledgers, &mut registry).await;
    }
    if let Some(shared) = &ctx.market {
        register_shared(shared, &mut registry);
    }
    let mut out = String::new();
    if let Err(e) = encode(&mut out, &registry) {
        tracing::warn!(error = %e, "metrics not encoded");
    }
    out
}

/// A counter holding an atomic's value now.
fn counter(value: &AtomicU64) -> Counter {
    let m = Counter::<u64>::default();
    m.inc_by(value.load(Ordering::Relaxed));
    m
}

/// Open connections, by tenant.
fn register_connections(ctx: &Context, registry: &mut Registry) {
    let connections = Family::<ByTenant, Gauge>::default();
    for (id, n) in ctx.clients.per_tenant() {
        connections.get_or_create(&tenant(&id)).set(n as i64);
    }
    registry.register(
        "connections",
        "Open client connections, by tenant",
        connections,
    );
    let waiting = Gauge::<i64>::default();
    waiting.set(ctx.unauthenticated.count() as i64);
    registry.register(
        "unauthenticated",
        "Connections that have not logged in yet",
        waiting,
    );
    registry.register(
        "unauthenticated_evicted",
        "Connections closed before logging in to make room for newer ones (max_unauthenticated)",
        counter(&ctx.unauthenticated.evicted),
    );
}

/// Redis' reachability, the upstream connections' failures, and the namespace guard.
fn register_upstream(ctx: &Context, registry: &mut Registry) {
    let up = Gauge::<i64>::default();
    up.set(ctx.readiness.ready() as i64);
    registry.register("redis_up", "Whether Redis answers respite's PING", up);
    let c = &ctx.upstream.connector.counters;
    for (name, help, value) in [
        (
            "upstream_connect_errors",
            "Failed attempts to connect to Redis",
            &c.connect_errors,
        ),
        (
            "upstream_reconnects",
            "Connections made to Redis after a failed attempt",
            &c.reconnects,
        ),
        (
            "upstream_timeouts",
            "Times a connection or a client gave up waiting for Redis (command_timeout_ms)",
            &c.timeouts,
        ),
        (
            "isolation_guard_refusals",
            "Requests refused because a key would have left the tenant's namespace (a respite bug)",
            &crate::namespace::GUARD_REFUSALS,
        ),
    ] {
        registry.register(name, help, counter(value));
    }
    if let Some(topology) = &ctx.upstream.cluster {
        register_cluster(topology, registry);
    }
}

/// Cluster mode: the slot map's refreshes, and each node's requests, errors and redirects.
fn register_cluster(topology: &crate::upstream::cluster::Topology, registry: &mut Registry) {
    registry.register(
        "cluster_slot_map_refreshes",
        "Times the cluster's slot map was read (CLUSTER SLOTS)",
        counter(&topology.refreshes),
    );
    registry.register(
        "cluster_slot_map_refresh_errors",
        "Attempts to read the cluster's slot map that no node answered",
        counter(&topology.refresh_errors),
    );
    let slots = Gauge::<i64>::default();
    slots.set(topology.map().served() as i64);
    registry.register(
        "cluster_slots_served",
        "Slots of the cluster with a master in respite's slot map (16384 when whole)",
        slots,
    );
    let families: [(&str, &str, Family<ByTenant, Counter>); 4] = [
        (
            "upstream_node_requests",
            "Requests respite sent to each node (redirects resent included)",
            Family::default(),
        ),
        (
            "upstream_node_errors",
            "Requests that failed on each node's connections (closed, timed out, unreachable)",
            Family::default(),
        ),
        (
            "upstream_node_redirects",
            "MOVED and ASK replies from each node, followed by respite",
            Family::default(),
        ),
        (
            "upstream_node_connect_errors",
            "Failed attempts to connect to each node",
            Family::default(),
        ),
    ];
    for node in topology.nodes() {
        let label = vec![("node".to_string(), node.addr.clone())];
        let c = &node.counters;
        let values = [
            &c.requests,
            &c.errors,
            &c.redirects,
            &node.connector.counters.connect_errors,
        ];
        for ((_, _, family), value) in families.iter().zip(values) {
            family
                .get_or_create(&label)
                .inc_by(value.load(Ordering::Relaxed));
        }
    }
    for (name, help, family) in families {
        registry.register(name, help, family);
    }
}

/// Config reloads applied and refused, and whether the last one was refused.
fn register_reloads(ctx: &Context, registry: &mut Registry) {
    let r = &ctx.reloads;
    let reloads = Family::<Vec<(String, String)>, Counter>::default();
    for (result, n) in [("applied", &r.applied), ("invalid", &r.invalid)] {
        reloads
            .get_or_create(&vec![("result".into(), result.into())])
            .inc_by(n.load(Ordering::Relaxed));
    }
    registry.register(
        "config_reloads",
        "Config reloads (SIGHUP, POST /reload): applied, or refused for an invalid file",
        reloads,
    );
    let failed = Gauge::<i64>::default();
    failed.set(r.last_failed.load(Ordering::Relaxed) as i64);
    registry.register(
        "config_last_reload_failed",
        "1 when the last reload was refused (the running config is older than the file)",
        failed,
    );
}

/// Usage, quota and decisions, for the tenants reported.
async fn register_quotas(
    quotas: &crate::quota::Quotas,
    ledgers: Vec<Arc<crate::quota::Ledger>>,
    registry: &mut Registry,
) {
    let used = Family::<ByTenant, Gauge>::default();
    let quota = Family::<ByTenant, Gauge>::default();
    let overage = Family::<ByTenant, Gauge>::default();
    let refusals = Family::<ByTenant, Counter>::default();
    let overage_writes = Family::<ByTenant, Counter>::default();
    for (ledger, status) in quotas.statuses(ledgers).await {
        let t = tenant(&ledger.tenant);
        used.get_or_create(&t).set(status.used);
        if let Some(l) = status.limits {
            quota.get_or_create(&t).set(l.quota as i64);
            overage.get_or_create(&t).set(l.overage as i64);
        }
        refusals.get_or_create(&t).inc_by(status.refusals);
        overage_writes
            .get_or_create(&t)
            .inc_by(status.overage_writes);
    }
    registry.register(
        "quota_used_bytes",
        "Bytes the tenant's keys hold in Redis (MEMORY USAGE), shared by all instances",
        used,
    );
    registry.register("quota_bytes", "The tenant's quota", quota);
    registry.register(
        "quota_overage_bytes",
        "Bytes allowed past the quota before writes are refused",
        overage,
    );
    registry.register(
        "quota_refusals",
        "Writes this instance refused with -OOM",
        refusals,
    );
    registry.register(
        "quota_overage_writes",
        "Writes this instance let through past the quota, within the overage",
        overage_writes,
    );
}

/// The shared cache's reads, hits and fetches.
fn register_shared(shared: &crate::market::SharedCache, registry: &mut Registry) {
    let c = &shared.counters;
    let reads = Counter::<u64>::default();
    reads.inc_by(c.l1_hits.load(Ordering::Relaxed) + c.l1_misses.load(Ordering::Relaxed));
    registry.register("shared_reads", "GETs of shared keys", reads);
    for (name, help, value) in [
        ("shared_l1_hits", "Shared GETs answered from L1", &c.l1_hits),
        (
            "shared_redis_fetches",
            "Shared keys fetched from Redis (one per flight)",
            &c.redis_fetches,
        ),
        (
            "shared_origin_fetches",
            "Shared keys fetched from the origin, refreshes ahead included",
            &c.origin_fetches,
        ),
        (
            "shared_flight_waiters",
            "Shared GETs answered by another reader's fetch",
            &c.waiters,
        ),
    ] {
        registry.register(name, help, counter(value));
    }
}
