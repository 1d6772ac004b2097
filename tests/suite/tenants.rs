//! Tenants at scale: tenants from signed tokens and their plans, a token's expiry, reload
//! without restart (POST /reload, SIGHUP), and /metrics naming only the active tenants.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::admin::{answers, http, http_get};
use crate::harness::*;

const WRONGPASS: &str = "-WRONGPASS invalid username-password pair or user is disabled.\r\n";
const SECRET: &str = "jwt-secret-for-plans";

fn info_line(info: &str, field: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
}

const PLANS: &str = "[defaults]\nquota_bytes = 1000000\n\
     [plans.pro]\nquota_bytes = 5000000\nmax_clients = 50\n\
     [plans.small]\nquota_bytes = 2000\n\
     [[tenants]]\nid = \"listed\"\npassword = \"p-listed\"\nquota_bytes = 777777\n\
     [auth.jwt]\nhs256_secret = \"jwt-secret-for-plans\"\ndynamic_tenants = true\n";

/// Redis, respite with [`PLANS`], and an expiry a minute away.
async fn with_plans() -> (Redis, Proxy, i64) {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, PLANS).await;
    (redis, proxy, now() + 60)
}

#[tokio::test]
async fn a_token_for_an_unlisted_tenant_gets_its_plan() {
    let (redis, proxy, exp) = with_plans().await;

    let mut pro = proxy.raw().await;
    let t = token(
        json!({"tenant_id": "newco", "plan": "pro", "exp": exp}),
        SECRET,
    );
    assert_eq!(pro.cmd(&["AUTH", &t]).await, "+OK\r\n");
    assert_eq!(pro.cmd(&["SET", "k", "v"]).await, "+OK\r\n");
    let info = pro.cmd(&["INFO", "tenant"]).await;
    assert_eq!(info_line(&info, "tenant").as_deref(), Some("newco"));
    assert_eq!(info_line(&info, "plan").as_deref(), Some("pro"));
    assert_eq!(info_line(&info, "quota_bytes").as_deref(), Some("5000000"));
    assert_eq!(info_line(&info, "max_clients").as_deref(), Some("50"));

    // No plan claim: [defaults].
    let mut plain = proxy.raw().await;
    let t = token(json!({"tenant_id": "plainco", "exp": exp}), SECRET);
    assert_eq!(plain.cmd(&["AUTH", "plainco", &t]).await, "+OK\r\n");
    let info = plain.cmd(&["INFO", "tenant"]).await;
    assert_eq!(info_line(&info, "quota_bytes").as_deref(), Some("1000000"));
    assert_eq!(info_line(&info, "plan"), None);

    // The plan's quota is enforced.
    let mut small = proxy.raw().await;
    let t = token(
        json!({"tenant_id": "tiny", "plan": "small", "exp": exp}),
        SECRET,
    );
    assert_eq!(small.cmd(&["AUTH", &t]).await, "+OK\r\n");
    assert!(small
        .cmd(&["SET", "big", &"x".repeat(5000)])
        .await
        .starts_with("-OOM"));
    assert_eq!(small.cmd(&["SET", "ok", "x"]).await, "+OK\r\n");

    // A listed tenant keeps its own settings whatever the token's plan.
    let mut listed = proxy.raw().await;
    let t = token(
        json!({"tenant_id": "listed", "plan": "pro", "exp": exp}),
        SECRET,
    );
    assert_eq!(listed.cmd(&["AUTH", &t]).await, "+OK\r\n");
    let info = listed.cmd(&["INFO", "tenant"]).await;
    assert_eq!(info_line(&info, "quota_bytes").as_deref(), Some("777777"));

    let mut c = proxy.raw().await;
    for (what, claims, secret) in [
        (
            "unknown plan",
            json!({"tenant_id": "x1", "plan": "gold", "exp": exp}),
            SECRET,
        ),
        (
            "bad tenant id",
            json!({"tenant_id": "a:b", "plan": "pro", "exp": exp}),
            SECRET,
        ),
        (
            "bad signature",
            json!({"tenant_id": "x2", "plan": "pro", "exp": exp}),
            "not-the-secret",
        ),
        (
            "expired",
            json!({"tenant_id": "x3", "plan": "pro", "exp": now() - 10}),
            SECRET,
        ),
    ] {
        assert_eq!(
            c.cmd(&["AUTH", &token(claims, secret)]).await,
            WRONGPASS,
            "{what}"
        );
    }
    // A token for one tenant does not log in as another.
    let t = token(json!({"tenant_id": "newco", "exp": exp}), SECRET);
    assert_eq!(c.cmd(&["AUTH", "tiny", &t]).await, WRONGPASS);
    let keys: Vec<String> = redis
        .keys()
        .await
        .into_iter()
        .filter(|k| !k.starts_with("respite:"))
        .collect();
    assert_eq!(
        keys,
        vec!["tenant:newco:k", "tenant:tiny:ok"],
        "each tenant wrote under its own prefix"
    );
}

#[tokio::test]
async fn a_new_plan_reaches_the_tenants_open_connections() {
    let (_redis, proxy, exp) = with_plans().await;
    let mut first = proxy.raw().await;
    let small = token(
        json!({"tenant_id": "grow", "plan": "small", "exp": exp}),
        SECRET,
    );
    assert_eq!(first.cmd(&["AUTH", &small]).await, "+OK\r\n");
    assert_eq!(first.cmd(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(first.cmd(&["SET", "a", "1"]).await, "+QUEUED\r\n");
    let mut second = proxy.raw().await;
    let pro = token(
        json!({"tenant_id": "grow", "plan": "pro", "exp": exp}),
        SECRET,
    );
    assert_eq!(second.cmd(&["AUTH", &pro]).await, "+OK\r\n");
    // The first connection is in the same tenant, now on pro, with its transaction.
    assert_eq!(first.cmd(&["EXEC"]).await, "*1\r\n+OK\r\n");
    let info = first.cmd(&["INFO", "tenant"]).await;
    assert_eq!(info_line(&info, "plan").as_deref(), Some("pro"));
    assert_eq!(info_line(&info, "connections").as_deref(), Some("2"));
    assert_eq!(
        first.cmd(&["SET", "big", &"x".repeat(5000)]).await,
        "+OK\r\n"
    );
}

#[tokio::test]
async fn a_token_login_ends_when_the_token_does() {
    let (_redis, proxy, _) = with_plans().await;
    let mut c = proxy.raw().await;
    let t = token(json!({"tenant_id": "brief", "exp": now() + 2}), SECRET);
    assert_eq!(c.cmd(&["AUTH", &t]).await, "+OK\r\n");
    assert_eq!(
        c.cmd(&["SUBSCRIBE", "ch"]).await,
        "*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
    );
    // A password login on another connection has no expiry.
    let mut p = proxy.raw().await;
    assert_eq!(p.cmd(&["AUTH", "listed", "p-listed"]).await, "+OK\r\n");
    let started = Instant::now();
    assert!(c.closed().await, "closed when its token expired");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(p.cmd(&["PING"]).await, "+PONG\r\n");
    // Logging in again with a fresh token replaces the old one's expiry.
    let mut again = proxy.raw().await;
    let short = token(json!({"tenant_id": "brief", "exp": now() + 1}), SECRET);
    let long = token(json!({"tenant_id": "brief", "exp": now() + 60}), SECRET);
    assert_eq!(again.cmd(&["AUTH", &short]).await, "+OK\r\n");
    assert_eq!(again.cmd(&["AUTH", &long]).await, "+OK\r\n");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(again.cmd(&["PING"]).await, "+PONG\r\n");
}

/// A config file for respite in front of `redis`, with an admin listener and `tail`.
fn config_text(redis: &Redis, admin: SocketAddr, tail: &str) -> String {
    format!(
        "[upstream]\nurl = \"{}\"\ncommand_timeout_ms = 2000\nconnect_timeout_ms = 500\n\
         [admin]\nlisten = \"{admin}\"\ntoken = \"admin-token\"\n{tail}",
        redis.url()
    )
}

const BEFORE: &str = "[[tenants]]\nid = \"a\"\npassword = \"pa\"\nquota_bytes = 100000\n\
     [[tenants]]\nid = \"b\"\npassword = \"pb\"\n\
     [[tenants]]\nid = \"c\"\npassword = \"pc\"\n";

const AFTER: &str = "[[tenants]]\nid = \"a\"\npassword = \"pa\"\nquota_bytes = 500\n\
     [[tenants]]\nid = \"c\"\npassword = \"pc2\"\n\
     [[tenants]]\nid = \"d\"\npassword = \"pd\"\n";

/// respite started from a file (the admin listener's, with `tail`) that a test rewrites:
/// the proxy, its admin address, the directory (removed when dropped) and the file.
async fn reloadable(redis: &Redis, tail: &str) -> (Proxy, SocketAddr, TempDir, PathBuf) {
    let dir = TempDir::new();
    let file = dir.0.join("respite.toml");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    std::fs::write(&file, config_text(redis, admin, tail)).unwrap();
    let proxy = Proxy::start_file(&file).await;
    answers(admin, "/healthz", 200, Duration::from_secs(5)).await;
    (proxy, admin, dir, file)
}

async fn reload(admin: SocketAddr) -> (u16, serde_json::Value) {
    let (status, body) = http(admin, "POST", "/reload", Some("admin-token")).await;
    let json = serde_json::from_str(&body).unwrap_or_else(|_| json!({ "text": body }));
    (status, json)
}

/// A reload that takes a tenant's admin role away closes its connections: a MONITOR it began
/// does not outlive the role. One that makes a tenant an admin closes the connections that
/// logged in before: the role comes with a login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_that_ends_an_admin_closes_its_connections() {
    let redis = Redis::start();
    let ops =
        |role: &str| format!("[[tenants]]\nid = \"ops\"\npassword = \"po\"\nrole = \"{role}\"\n");
    let (proxy, admin, _dir, file) = reloadable(&redis, &ops("admin")).await;
    let mut monitor = proxy.raw_as("ops", "po").await;
    assert_eq!(monitor.cmd(&["MONITOR"]).await, "+OK\r\n");
    std::fs::write(&file, config_text(&redis, admin, &ops("tenant"))).unwrap();
    let (status, report) = reload(admin).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["admin_changed"], json!(["ops"]));
    // Lines MONITOR streamed before the close may come first.
    let mut closed = false;
    for _ in 0..20 {
        if monitor.closed().await {
            closed = true;
            break;
        }
    }
    assert!(closed, "the admin's MONITOR outlived its role");
    let mut again = proxy.raw_as("ops", "po").await;
    assert!(again.cmd(&["MONITOR"]).await.starts_with("-NOPERM"));
    std::fs::write(&file, config_text(&redis, admin, &ops("admin"))).unwrap();
    let (_, report) = reload(admin).await;
    assert_eq!(report["admin_changed"], json!(["ops"]));
    assert!(
        again.closed().await,
        "a tenant's connection became an admin's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_tenants_live_and_keeps_connection_state() {
    let redis = Redis::start();
    let (proxy, admin, _dir, file) = reloadable(&redis, BEFORE).await;

    let mut in_multi = proxy.raw_as("a", "pa").await;
    assert_eq!(in_multi.cmd(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(in_multi.cmd(&["SET", "x", "1"]).await, "+QUEUED\r\n");
    let mut sub = proxy.raw_as("a", "pa").await;
    sub.cmd(&["SUBSCRIBE", "news"]).await;
    let mut removed = proxy.raw_as("b", "pb").await;
    let mut repassworded = proxy.raw_as("c", "pc").await;

    std::fs::write(&file, config_text(&redis, admin, AFTER)).unwrap();
    assert_eq!(http(admin, "POST", "/reload", None).await.0, 401);
    assert_eq!(http(admin, "POST", "/reload", Some("wrong")).await.0, 401);
    let (status, report) = reload(admin).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["added"], json!(["d"]));
    assert_eq!(report["removed"], json!(["b"]));
    assert_eq!(report["new_credentials"], json!(["c"]));
    assert_eq!(report["closed"], json!(2));
    assert_eq!(report["needs_restart"], json!([]));

    assert!(
        removed.closed().await,
        "a removed tenant's connection closes"
    );
    assert!(repassworded.closed().await, "a changed password closes");
    // a's connections keep their state and take the new quota.
    assert_eq!(in_multi.cmd(&["EXEC"]).await, "*1\r\n+OK\r\n");
    assert!(in_multi
        .cmd(&["SET", "big", &"x".repeat(2000)])
        .await
        .starts_with("-OOM"));
    let info = in_multi.cmd(&["INFO", "tenant"]).await;
    assert_eq!(info_line(&info, "quota_bytes").as_deref(), Some("500"));
    assert_eq!(in_multi.cmd(&["PUBLISH", "news", "hi"]).await, ":1\r\n");
    assert_eq!(
        sub.reply().await,
        "*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nhi\r\n"
    );

    let mut c = proxy.raw().await;
    assert_eq!(c.cmd(&["AUTH", "b", "pb"]).await, WRONGPASS);
    assert_eq!(c.cmd(&["AUTH", "c", "pc"]).await, WRONGPASS);
    assert_eq!(c.cmd(&["AUTH", "c", "pc2"]).await, "+OK\r\n");
    assert_eq!(c.cmd(&["AUTH", "d", "pd"]).await, "+OK\r\n");

    let (_, metrics) = http_get(admin, "/metrics").await;
    assert!(
        metrics.contains("respite_config_reloads_total{result=\"applied\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_changes_nothing_and_says_why() {
    let redis = Redis::start();
    let (proxy, admin, _dir, file) = reloadable(&redis, BEFORE).await;

    let broken = "[[tenants]]\nid = \"bad id\"\npassword = \"x\"\n\
                  [[tenants]]\nid = \"e\"\npassword = \"pe\"\nplan = \"nope\"\n";
    std::fs::write(&file, config_text(&redis, admin, broken)).unwrap();
    let (status, body) = reload(admin).await;
    assert_eq!(status, 400);
    let errors = body["errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().unwrap().contains("\"bad id\"")),
        "{body}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().unwrap().contains("\"nope\"")),
        "{body}"
    );
    let mut c = proxy.raw().await;
    assert_eq!(
        c.cmd(&["AUTH", "b", "pb"]).await,
        "+OK\r\n",
        "nothing changed"
    );
    let (_, metrics) = http_get(admin, "/metrics").await;
    assert!(metrics.contains("respite_config_reloads_total{result=\"invalid\"} 1"));
    assert!(metrics.contains("respite_config_last_reload_failed 1"));

    // What cannot change live is reported, and the rest applies.
    let moved = config_text(&redis, admin, BEFORE).replace(
        "[upstream]",
        "[server]\nlisten = \"127.0.0.1:1\"\n[upstream]",
    ) + "[[tenants]]\nid = \"e\"\npassword = \"pe\"\n";
    std::fs::write(&file, moved).unwrap();
    let (status, body) = reload(admin).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["needs_restart"], json!(["server.listen"]));
    assert_eq!(body["added"], json!(["e"]));
    assert_eq!(c.cmd(&["AUTH", "e", "pe"]).await, "+OK\r\n");
    let (_, metrics) = http_get(admin, "/metrics").await;
    assert!(metrics.contains("respite_config_last_reload_failed 0"));
}

#[tokio::test]
async fn reload_over_http_needs_a_configured_token() {
    let redis = Redis::start();
    let dir = TempDir::new();
    let file = dir.0.join("respite.toml");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = format!(
        "[upstream]\nurl = \"{}\"\n[admin]\nlisten = \"{admin}\"\n{BEFORE}",
        redis.url()
    );
    std::fs::write(&file, text).unwrap();
    let _proxy = Proxy::start_file(&file).await;
    answers(admin, "/healthz", 200, Duration::from_secs(5)).await;
    let (status, body) = http(admin, "POST", "/reload", Some("anything")).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("admin.token"));
    // The read-only endpoints stay open.
    assert_eq!(http_get(admin, "/metrics").await.0, 200);
}

#[tokio::test]
async fn sighup_reloads_the_binary() {
    let redis = Redis::start();
    let dir = TempDir::new();
    let file = dir.0.join("respite.toml");
    let port = free_port();
    let text = |tail: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[upstream]\nurl = \"{}\"\n{tail}",
            redis.url()
        )
    };
    std::fs::write(&file, text(BEFORE)).unwrap();
    let (mut child, addr) = run_binary(&file, port, |_| {}).await;
    let mut c = Raw::connect(addr).await;
    assert_eq!(c.cmd(&["AUTH", "d", "pd"]).await, WRONGPASS);
    std::fs::write(&file, text(AFTER)).unwrap();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if c.cmd(&["AUTH", "d", "pd"]).await == "+OK\r\n" {
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(child.try_wait().unwrap().is_none(), "still running");
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_name_only_active_tenants() {
    let redis = Redis::start();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut tenants = String::new();
    for i in 0..50 {
        tenants.push_str(&format!(
            "[[tenants]]\nid = \"t{i}\"\npassword = \"p{i}\"\nquota_bytes = 100000\n"
        ));
    }
    let proxy = Proxy::start(
        &redis,
        &format!("[admin]\nlisten = \"{admin}\"\ntenant_window_seconds = 60\n{tenants}"),
    )
    .await;
    answers(admin, "/healthz", 200, Duration::from_secs(5)).await;
    let mut c = proxy.raw_as("t7", "p7").await;
    assert_eq!(c.cmd(&["SET", "k", "v"]).await, "+OK\r\n");
    let deadline = Instant::now() + Duration::from_secs(5);
    let metrics = loop {
        let (_, m) = http_get(admin, "/metrics").await;
        if m.contains("respite_commands_total{tenant=\"t7\",command=\"set\",outcome=\"ok\"} 1") {
            break m;
        }
        assert!(Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        metrics.contains("respite_tenants{state=\"active\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("respite_tenants{state=\"quiet\"} 49"));
    assert!(metrics.contains("respite_quota_bytes{tenant=\"t7\"} 100000"));
    for quiet in ["t0", "t8", "t49"] {
        assert!(
            !metrics.contains(&format!("tenant=\"{quiet}\"")),
            "{quiet} is not named"
        );
    }
}

/// A token minted with a fractional `exp` (JavaScript's `Date.now() / 1000 + 3600`) is
/// valid for jsonwebtoken, which rounds it; respite reads it as 0 and closes the
/// connection right after `+OK`.
#[tokio::test]
async fn a_fractional_exp_does_not_end_the_login_at_once() {
    let (_redis, proxy, _) = with_plans().await;
    let mut c = proxy.raw().await;
    let exp = now() as f64 + 60.5;
    let t = token(json!({"tenant_id": "jsco", "exp": exp}), SECRET);
    assert_eq!(c.cmd(&["AUTH", &t]).await, "+OK\r\n");
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.send_cmd(&["PING"]).await;
    assert_eq!(
        c.try_reply(Duration::from_secs(2)).await.as_deref(),
        Some("+PONG\r\n"),
        "a token valid for a minute keeps its connection"
    );
}

/// An `exp` past what SystemTime holds (>= 2^63 s) passes validation, then
/// `UNIX_EPOCH + Duration` panics in the session task: no reply, connection dropped.
#[tokio::test]
async fn a_far_exp_gets_an_answer() {
    let (_redis, proxy, _) = with_plans().await;
    let mut c = proxy.raw().await;
    let t = token(
        json!({"tenant_id": "forever", "exp": 10_000_000_000_000_000_000u64}),
        SECRET,
    );
    c.send_cmd(&["AUTH", &t]).await;
    let r = c.try_reply(Duration::from_secs(2)).await;
    assert!(
        r.as_deref() == Some("+OK\r\n") || r.as_deref() == Some(WRONGPASS),
        "AUTH answered, not a panicked session: {r:?}"
    );
}

/// Sidecar mode: removing `server.default_tenant` (to require AUTH) leaves connections
/// that never authenticated acting as that tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_default_tenant_ends_unauthenticated_access() {
    let redis = Redis::start();
    let with_default = format!("[server]\ndefault_tenant = \"a\"\n{BEFORE}");
    let (proxy, admin, _dir, file) = reloadable(&redis, &with_default).await;
    let mut sidecar = proxy.raw().await;
    assert_eq!(sidecar.cmd(&["SET", "k", "v"]).await, "+OK\r\n");

    std::fs::write(&file, config_text(&redis, admin, BEFORE)).unwrap();
    let (status, report) = reload(admin).await;
    assert_eq!(status, 200, "{report}");
    let mut fresh = proxy.raw().await;
    assert!(fresh.cmd(&["GET", "k"]).await.starts_with("-NOAUTH"));
    sidecar.send_cmd(&["GET", "k"]).await;
    let r = sidecar.try_reply(Duration::from_secs(2)).await;
    assert!(
        r.as_deref().is_none_or(|r| r.starts_with("-NOAUTH")),
        "a connection that never logged in still reads tenant a's keys: {r:?}"
    );
}

/// `admin.token = ""` would let a request with no Authorization header match it.
#[test]
fn an_empty_admin_token_is_refused() {
    let err =
        respite::config::Config::parse("[admin]\nlisten = \"127.0.0.1:9121\"\ntoken = \"\"\n")
            .unwrap_err()
            .to_string();
    assert!(err.contains("admin.token must not be empty"), "{err}");
}

/// AUTH checked against the old book, applied after a reload that changed the password:
/// the login is verified, then the session drains the previous tenant's blocked command;
/// the reload's kill looks at the connection's tenant (still b) and passes it by; the
/// session then becomes a on the revoked password and `retake_tenant` finds a alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_racing_a_password_change_does_not_survive() {
    let redis = Redis::start();
    let (proxy, admin, _dir, file) = reloadable(&redis, BEFORE).await;
    let mut c = proxy.raw_as("b", "pb").await;
    let mut out = bytes::BytesMut::new();
    respite::wire::encode_request(&mut out, ["BLPOP", "q", "2"].iter().map(|a| a.as_bytes()));
    respite::wire::encode_request(&mut out, ["AUTH", "a", "pa"].iter().map(|a| a.as_bytes()));
    c.send(&out).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let revoked = BEFORE.replace("password = \"pa\"", "password = \"pa-new\"");
    std::fs::write(&file, config_text(&redis, admin, &revoked)).unwrap();
    let (status, report) = reload(admin).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["new_credentials"], json!(["a"]));
    assert_eq!(c.reply().await, "*-1\r\n", "BLPOP timed out");
    let auth = c.try_reply(Duration::from_secs(2)).await;
    c.send_cmd(&["SET", "stolen", "1"]).await;
    let set = c.try_reply(Duration::from_secs(2)).await;
    assert!(
        set.as_deref() != Some("+OK\r\n"),
        "AUTH a with the revoked password answered {auth:?}, and the connection writes as a"
    );
}

/// A dynamic tenant holding tokens on two plans with different pinned_max: every plan
/// flip builds a fresh pinned share, so the tenant holds more pinned connections than
/// either plan allows and takes the pool from everyone else.
#[tokio::test]
async fn plan_flips_do_not_reset_the_pinned_share() {
    let redis = Redis::start();
    let proxy = Proxy::start_config(&format!(
        "[upstream]\nurl = \"{}\"\ncommand_timeout_ms = 400\npinned_max = 3\n\
         [plans.one]\npinned_max = 1\n[plans.two]\npinned_max = 2\n\
         [[tenants]]\nid = \"v\"\npassword = \"pv\"\n\
         [auth.jwt]\nhs256_secret = \"{SECRET}\"\ndynamic_tenants = true\n",
        redis.url()
    ))
    .await;
    let exp = now() + 60;
    let one = token(json!({"tenant_id": "x", "plan": "one", "exp": exp}), SECRET);
    let two = token(json!({"tenant_id": "x", "plan": "two", "exp": exp}), SECRET);
    let mut held = Vec::new();
    for t in [&one, &two, &one] {
        let mut c = proxy.raw().await;
        assert_eq!(c.cmd(&["AUTH", t]).await, "+OK\r\n");
        let r = c.cmd(&["MULTI"]).await;
        held.push((c, r));
    }
    let answers: Vec<&str> = held.iter().map(|(_, r)| r.as_str()).collect();
    let mut v = proxy.raw_as("v", "pv").await;
    assert_eq!(
        v.cmd(&["MULTI"]).await,
        "+OK\r\n",
        "tenant x holds the whole pinned pool (its MULTIs: {answers:?})"
    );
}

/// A publisher demoted by a reload: plain writes to shared keys are refused at once, but
/// its scripts still run as the ACL user set up for the publisher (cached per prefix in
/// `Scripts::users`, never invalidated), which may write the shared prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_publisher_cannot_write_shared_keys_from_a_script() {
    let redis = Redis::start();
    let shared = "[shared]\nprefixes = [\"shared:market:\"]\n";
    let before = format!(
        "{shared}[[tenants]]\nid = \"pub\"\npassword = \"ppub\"\nrole = \"publisher\"\n{BEFORE}"
    );
    let after = format!("{shared}[[tenants]]\nid = \"pub\"\npassword = \"ppub\"\n{BEFORE}");
    let (proxy, admin, _dir, file) = reloadable(&redis, &before).await;
    let script = "return redis.call('SET', KEYS[1], ARGV[1])";
    let mut p = proxy.raw_as("pub", "ppub").await;
    assert_eq!(
        p.cmd(&["EVAL", script, "1", "shared:market:px", "v1"])
            .await,
        "+OK\r\n"
    );
    std::fs::write(&file, config_text(&redis, admin, &after)).unwrap();
    let (status, report) = reload(admin).await;
    assert_eq!(status, 200, "{report}");
    let mut p = proxy.raw_as("pub", "ppub").await;
    let plain = p.cmd(&["SET", "shared:market:px", "v2"]).await;
    assert!(plain.starts_with('-'), "plain write refused: {plain}");
    let declared = p
        .cmd(&["EVAL", script, "1", "shared:market:px", "v3"])
        .await;
    // The key built inside the script, not declared in KEYS.
    let built = "return redis.call('SET', 'shared:market:' .. ARGV[1], ARGV[2])";
    let scripted = p.cmd(&["EVAL", built, "0", "px", "v4"]).await;
    let scripted = format!("{declared:?} / {scripted:?}");
    // Control: a tenant that never was a publisher is stopped by its ACL user.
    let mut a = proxy.raw_as("a", "pa").await;
    let control = a.cmd(&["EVAL", built, "0", "ax", "v5"]).await;
    assert!(
        control.starts_with('-'),
        "a never-publisher is refused: {control}"
    );
    let mut d = redis.direct().await;
    let held: Option<String> = q(&mut d, &["GET", "shared:market:px"]).await.unwrap();
    assert_eq!(
        held.as_deref(),
        Some("v1"),
        "the demoted tenant's script answered {scripted:?} and wrote the shared key"
    );
}
