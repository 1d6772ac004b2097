//! Reload without restart: SIGHUP, or `POST /reload` on the admin listener, reads the config
//! file again and validates it. An invalid file changes nothing; the errors go to the log,
//! to the HTTP reply and to `respite_config_reloads_total{result="invalid"}`. Every reload,
//! applied or not, is recorded in the audit trail with who asked.
//!
//! A valid file is applied live where it can be: tenants added and removed, passwords,
//! `[auth.jwt]` (keys, claims, `dynamic_tenants`), quotas and overage, `[plans]`,
//! `[defaults]`, per-tenant limits, `server.default_tenant`, `[shared]` TTL tiers,
//! `admin.token`, `[audit]`'s path and cap (the file is opened again at every reload, so a
//! rotated one starts anew), and the TLS listener's certificate, key and client CA
//! (`[server.tls]`, read again on every reload, for the connections accepted after it).
//! Sessions take their tenant's new settings at their next pass and keep their connection
//! state (MULTI, subscriptions, pinned connections); the connections of a removed tenant, of
//! a tenant whose password changed, and (when the token settings changed) those that logged
//! in with a token are closed.
//!
//! Everything else (listen addresses, `tenant_from_cert`, the upstream and its CA, pools,
//! timeouts, the quota and billing intervals, shared prefixes and the cache's size, turning
//! quotas or the audit trail on or off) keeps its running value and is reported as needing
//! a restart, never silently ignored.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::auth::Changes;
use crate::config::{Config, ConfigErrors, OriginConfig};
use crate::context::Context;

/// What a reload did.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub tenants: Changes,
    /// Connections closed (removed tenants, new passwords, new token settings).
    pub closed: usize,
    /// Settings that changed in the file and keep their running value until a restart.
    pub needs_restart: Vec<&'static str>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("respite was not started from a config file: nothing to reload")]
    NoFile,
    #[error("{0}")]
    Invalid(ConfigErrors),
    #[error("{0}")]
    NotApplied(String),
}

/// Reloads on every SIGHUP until `stop`.
pub async fn on_hangup(ctx: Arc<Context>, stop: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: reload by POST /reload only");
            return;
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                got = hangups.recv() => if got.is_none() { return },
            }
            // The outcome is logged, counted and audited by `reload`.
            let _ = reload(&ctx, "SIGHUP", None).await;
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (ctx, stop);
    }
}

/// A reload as the audit trail records it.
#[derive(serde::Serialize)]
struct Audited<'a> {
    by: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer: Option<SocketAddr>,
    /// "applied", "invalid" (the file has errors: how many; their text is in the log, as
    /// a value quoted in one may be a secret) or "failed".
    result: &'static str,
    #[serde(flatten)]
    report: Option<&'a Report>,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Reads the config file again and applies it; `by` says who asked ("SIGHUP", "POST
/// /reload" from `peer`), for the log and the audit trail.
pub async fn reload(
    ctx: &Arc<Context>,
    by: &str,
    peer: Option<SocketAddr>,
) -> Result<Report, ReloadError> {
    let outcome = read_and_apply(ctx).await;
    let (result, errors, error) = match &outcome {
        Ok(_) => ("applied", None, None),
        Err(ReloadError::Invalid(e)) => ("invalid", Some(e.0.len()), None),
        Err(e) => ("failed", None, Some(e.to_string())),
    };
    ctx.audit.record(
        "reload",
        Audited {
            by,
            peer,
            result,
            report: outcome.as_ref().ok(),
            errors,
            error,
        },
    );
    let reloads = &ctx.reloads;
    match &outcome {
        Ok(r) => {
            reloads.applied.fetch_add(1, Ordering::Relaxed);
            reloads.last_failed.store(false, Ordering::Relaxed);
            tracing::info!(
                by,
                added = ?r.tenants.added,
                removed = ?r.tenants.removed,
                new_credentials = ?r.tenants.new_credentials,
                admin_changed = ?r.tenants.admin_changed,
                token_settings_changed = r.tenants.token_settings,
                closed = r.closed,
                needs_restart = ?r.needs_restart,
                "config reloaded"
            );
            if !r.needs_restart.is_empty() {
                tracing::warn!(
                    settings = ?r.needs_restart,
                    "changed settings keep their running values until a restart"
                );
            }
        }
        Err(e) => {
            reloads.invalid.fetch_add(1, Ordering::Relaxed);
            reloads.last_failed.store(true, Ordering::Relaxed);
            tracing::error!(by, error = %e, "config reload refused; nothing changed");
        }
    }
    outcome
}

async fn read_and_apply(ctx: &Arc<Context>) -> Result<Report, ReloadError> {
    let source = ctx.source.clone().ok_or(ReloadError::NoFile)?;
    // Parsing ten thousand tenants takes milliseconds: off the sessions' thread.
    let new = tokio::task::spawn_blocking(move || source.load())
        .await
        .map_err(|e| ReloadError::NotApplied(e.to_string()))?
        .map_err(ReloadError::Invalid)?;
    // One reload at a time: each builds on the tenants the last one left.
    let _one = ctx.reloads.applying.lock().await;
    let running = ctx.auth.config();
    let mut needs_restart = needs_restart(&running, &new);
    if new.quotas_enabled() && ctx.quotas.is_none() {
        needs_restart.push("quotas (no tenant or plan had quota_bytes at start)");
    }
    // The TLS listener's files are read again, changed or not: a renewed certificate under
    // the same name is served to the connections accepted from now on.
    let certificates = match (&ctx.tls, &new.server.tls) {
        (Some(_), Some(tls)) => Some(
            crate::transport::server_config(
                &tls.cert_file,
                &tls.key_file,
                tls.client_ca_file.as_deref(),
            )
            .map_err(|e| ReloadError::NotApplied(format!("[server.tls]: {e}")))?,
        ),
        _ => None,
    };
    // Opened before anything is applied: a path that cannot be written changes nothing.
    let audit = match &new.audit {
        Some(a) => ctx
            .audit
            .prepare(a.get_ref())
            .map_err(|e| ReloadError::NotApplied(e.to_string()))?,
        None => None,
    };
    let tenants = ctx
        .auth
        .replace(in_effect(&running, new))
        .map_err(|e| ReloadError::NotApplied(format!("{e:#}")))?;
    if let (Some(tls), Some(certificates)) = (&ctx.tls, certificates) {
        tls.replace(certificates);
    }
    if let Some(reopening) = audit {
        ctx.audit.reopen(reopening);
    }
    let effective = ctx.auth.config();
    give_back_freed_memory();
    if let (Some(market), Some(shared)) = (&ctx.market, &effective.shared) {
        market.set_tiers(shared.get_ref());
    }
    let closed = ctx.clients.kill_where(|st| {
        st.tenant.as_ref().is_some_and(|t| {
            tenants.removed.contains(t)
                || tenants.new_credentials.contains(t)
                || tenants.admin_changed.contains(t)
                || (tenants.token_settings && st.by_token)
                || (tenants.default_tenant && st.by_default)
        })
    });
    // Scripts' ACL users were set up for the old settings (a publisher's may write shared
    // keys): each is set up again before its tenant's next script.
    ctx.scripts.forget_users();
    Ok(Report {
        tenants,
        closed,
        needs_restart,
    })
}

/// Returns the pages freed by parsing the config to the system. Reading ten thousand
/// tenants builds a TOML document many times the size of what is kept; glibc keeps the
/// freed pages of its heap resident, where they would count as respite's memory for good.
pub fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's own heap.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The settings that differ between the running config and `new` and cannot change live.
fn needs_restart(running: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (&running.server, &new.server);
    let mut out = Vec::new();
    let mut differ = |what: &'static str, same: bool| {
        if !same {
            out.push(what);
        }
    };
    differ("server.listen", a.listen == b.listen);
    differ("server.tls_listen", a.tls_listen == b.tls_listen);
    differ(
        "server.tls.tenant_from_cert",
        a.tls.as_ref().map(|t| t.tenant_from_cert) == b.tls.as_ref().map(|t| t.tenant_from_cert),
    );
    differ("server.threads", a.threads == b.threads);
    differ("server.max_clients", a.max_clients == b.max_clients);
    differ(
        "server (limits, timeouts, metrics)",
        a.max_bulk_bytes == b.max_bulk_bytes
            && a.max_array_len == b.max_array_len
            && a.shutdown_grace_ms == b.shutdown_grace_ms
            && a.auth_timeout_ms == b.auth_timeout_ms
            && a.max_unauthenticated == b.max_unauthenticated
            && a.client_output_limit_bytes == b.client_output_limit_bytes
            && a.metrics == b.metrics,
    );
    differ("upstream", running.upstream == new.upstream);
    differ(
        "admin.listen",
        running.admin.as_ref().map(|a| &a.get_ref().listen)
            == new.admin.as_ref().map(|a| &a.get_ref().listen),
    );
    differ("quota", running.quota == new.quota);
    differ("billing", running.billing == new.billing);
    // Its path and cap change live; the writer is started (or not) once.
    differ(
        "audit (turning the trail on or off)",
        running.audit.is_some() == new.audit.is_some(),
    );
    fn fixed(c: &Config) -> Option<(&Vec<String>, u64, u64, &Option<OriginConfig>)> {
        c.shared.as_ref().map(|s| {
            let s = s.get_ref();
            (&s.prefixes, s.l1_max_bytes, s.max_stale_ms, &s.origin)
        })
    }
    differ(
        "shared (prefixes, l1_max_bytes, max_stale_ms, origin)",
        fixed(running) == fixed(new),
    );
    out
}

/// `new` with the running values of what cannot change live: the config the tenants are
/// built from describes what respite does.
fn in_effect(running: &Config, mut new: Config) -> Config {
    let default_tenant = new.server.default_tenant.take();
    let tls = new.server.tls.take();
    new.server = running.server.clone();
    new.server.default_tenant = default_tenant;
    // The certificate files may change live (a new listener may not).
    if let (Some(running), Some(tls)) = (&mut new.server.tls, tls) {
        *running = crate::config::ServerTlsConfig {
            tenant_from_cert: running.tenant_from_cert,
            ..tls
        };
    }
    new.upstream = running.upstream.clone();
    // Of [admin], only the listener cannot change live.
    let live = new
        .admin
        .as_ref()
        .map(|a| (a.get_ref().token.clone(), a.get_ref().tenant_window_seconds));
    new.admin = running.admin.clone().map(|mut a| {
        if let Some((token, window)) = live {
            a.get_mut().token = token;
            a.get_mut().tenant_window_seconds = window;
        }
        a
    });
    new.quota = running.quota.clone();
    new.billing = running.billing.clone();
    if running.audit.is_some() != new.audit.is_some() {
        new.audit = running.audit.clone();
    }
    let tiers = new
        .shared
        .as_ref()
        .map(|s| (s.get_ref().ttl.clone(), s.get_ref().default_ttl_seconds));
    new.shared = running.shared.clone().map(|mut s| {
        if let Some((ttl, default)) = tiers {
            s.get_mut().ttl = ttl;
            s.get_mut().default_ttl_seconds = default;
        }
        s
    });
    new
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text).unwrap()
    }

    #[test]
    fn what_cannot_change_live_is_named() {
        let a = parse("[server]\nlisten = \"127.0.0.1:7000\"\n[upstream]\nurl = \"redis://a:1\"\n");
        let b = parse("[server]\nlisten = \"127.0.0.1:7001\"\n[upstream]\nurl = \"redis://b:1\"\n");
        assert_eq!(needs_restart(&a, &b), vec!["server.listen", "upstream"]);
        assert!(needs_restart(&a, &a).is_empty());
    }

    #[test]
    fn the_running_values_stay_in_effect() {
        let a = parse("[server]\nlisten = \"127.0.0.1:7000\"\n[shared]\nl1_max_bytes = 100\n");
        let b = parse(
            "[server]\nlisten = \"127.0.0.1:7001\"\n[shared]\nl1_max_bytes = 200\n\
             [[shared.ttl]]\npattern = \"shared:market:*\"\nseconds = 5\n",
        );
        let e = in_effect(&a, b);
        assert_eq!(e.server.listen.get_ref(), "127.0.0.1:7000");
        let shared = e.shared.unwrap().into_inner();
        assert_eq!(shared.l1_max_bytes, 100);
        assert_eq!(shared.ttl.len(), 1);
        assert_eq!(shared.ttl[0].seconds, 5);
    }

    /// Review: `admin.tenant_window_seconds` keeps its running value (in_effect copies the
    /// running [admin] but its token) and is not named in needs_restart.
    #[test]
    fn tenant_window_is_applied_or_named() {
        let a = parse("[admin]\nlisten = \"127.0.0.1:9121\"\ntenant_window_seconds = 300\n");
        let b = parse("[admin]\nlisten = \"127.0.0.1:9121\"\ntenant_window_seconds = 60\n");
        let named = !needs_restart(&a, &b).is_empty();
        let applied = in_effect(&a, b)
            .admin
            .unwrap()
            .get_ref()
            .tenant_window_seconds
            == 60;
        assert!(named || applied, "the change is silently ignored");
    }

    /// The trail's path (and cap) change live; turning it on or off waits for a restart,
    /// and the running config says so.
    #[test]
    fn the_audit_trail_turns_on_or_off_at_a_restart_only() {
        let off = parse("");
        let on = parse("[audit]\npath = \"/tmp/a.jsonl\"\n");
        let moved = parse("[audit]\npath = \"/tmp/b.jsonl\"\nshared_reads_max_pairs = 5\n");
        let named = vec!["audit (turning the trail on or off)"];
        assert_eq!(needs_restart(&off, &on), named);
        assert_eq!(needs_restart(&on, &off), named);
        assert!(needs_restart(&on, &moved).is_empty());
        assert!(in_effect(&off, parse("[audit]\npath = \"-\"\n"))
            .audit
            .is_none());
        let kept = in_effect(&on, moved).audit.unwrap().into_inner();
        assert_eq!(
            (kept.path.as_str(), kept.shared_reads_max_pairs),
            ("/tmp/b.jsonl", 5)
        );
    }
}
