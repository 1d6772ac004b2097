//! `role = "admin"`: a tenant for operators runs the server-wide commands with Redis' own
//! replies, while its keys stay in `tenant:<id>:`; an ordinary tenant on the same respite is
//! still refused them, and no token makes an admin.

use std::time::Duration;

use crate::harness::{now, token, Proxy, Raw, Redis};

use super::Pair;

/// An admin (`ops`), an ordinary tenant (`acme`), and tokens that may make tenants.
const TENANTS: &str = r#"
[[tenants]]
id = "ops"
password = "ops-pw"
role = "admin"

[[tenants]]
id = "acme"
password = "acme-pw"

[auth.jwt]
hs256_secret = "jwt-secret"
dynamic_tenants = true
"#;

/// The commands an admin runs and a tenant may not, each with the start of the admin's
/// reply.
const SERVER_WIDE: &[(&str, &str)] = &[
    ("CONFIG SET maxmemory-samples 7", "+OK"),
    ("CONFIG RESETSTAT", "+OK"),
    ("SLOWLOG GET", "*"),
    ("SLOWLOG RESET", "+OK"),
    ("LATENCY LATEST", "*"),
    ("MEMORY STATS", "*"),
    ("MEMORY DOCTOR", "$"),
    ("CLIENT PAUSE 10", "+OK"),
    ("CLIENT UNPAUSE", "+OK"),
    ("DEBUG SLEEP 0", "+OK"),
];

async fn start() -> (Redis, Proxy) {
    let redis = Redis::start_with(&["--enable-debug-command", "yes"]);
    let proxy = Proxy::start(&redis, TENANTS).await;
    (redis, proxy)
}

fn words(line: &str) -> Vec<&str> {
    line.split(' ').collect()
}

/// The admin's server-wide commands reach Redis; CONFIG GET is Redis' own, unfiltered; INFO
/// is Redis' text (its `used_memory`) with respite's `# Tenant` after it.
#[tokio::test]
async fn an_admin_runs_the_server_wide_commands() {
    let (redis, proxy) = start().await;
    let mut p = Pair {
        redis: Raw::connect(format!("127.0.0.1:{}", redis.port).parse().unwrap()).await,
        respite: proxy.raw_as("ops", "ops-pw").await,
    };
    for (line, start) in SERVER_WIDE {
        let reply = p.respite.cmd(&words(line)).await;
        assert!(reply.starts_with(start), "{line}: {reply}");
    }
    // What it set is Redis' setting, and it reads every setting as Redis shows them.
    assert_eq!(
        p.redis.cmd(&words("CONFIG GET maxmemory-samples")).await,
        "*2\r\n$17\r\nmaxmemory-samples\r\n$1\r\n7\r\n"
    );
    for line in [
        "CONFIG GET maxmemory-samples",
        "CONFIG GET dir",
        "CONFIG GET port",
        "CONFIG GET requirepass",
    ] {
        p.same(&words(line)).await;
    }
    let info = p.respite.cmd(&["INFO"]).await;
    assert!(info.contains("\r\nused_memory:"), "{info}");
    assert!(info.contains("\r\n# Keyspace\r\n"), "{info}");
    assert!(
        info.contains("# Tenant\r\ntenant:ops\r\nrole:admin\r\n"),
        "{info}"
    );
    let memory = p.respite.cmd(&["INFO", "memory"]).await;
    assert!(memory.contains("\r\nused_memory_peak:"), "{memory}");
}

/// Its keys still live in `tenant:ops:`, DEBUG's included; KEYS, FLUSHALL and MOVE stay the
/// tenant's own; a DEBUG subcommand respite cannot tell the keys of is refused.
#[tokio::test]
async fn an_admins_keys_stay_in_its_namespace() {
    let (redis, proxy) = start().await;
    let mut direct = Raw::connect(format!("127.0.0.1:{}", redis.port).parse().unwrap()).await;
    let mut ops = proxy.raw_as("ops", "ops-pw").await;
    assert_eq!(direct.cmd(&["SET", "outside", "1"]).await, "+OK\r\n");
    assert_eq!(ops.cmd(&["SET", "k", "v"]).await, "+OK\r\n");
    assert_eq!(direct.cmd(&["EXISTS", "tenant:ops:k"]).await, ":1\r\n");
    assert_eq!(direct.cmd(&["EXISTS", "k"]).await, ":0\r\n");
    let object = ops.cmd(&["DEBUG", "OBJECT", "k"]).await;
    assert!(object.starts_with("+Value at:"), "{object}");
    assert_eq!(
        ops.cmd(&["DEBUG", "OBJECT", "outside"]).await,
        "-ERR no such key\r\n"
    );
    assert_eq!(
        ops.cmd(&["DEBUG", "DIGEST-VALUE", "k"]).await,
        direct.cmd(&["DEBUG", "DIGEST-VALUE", "tenant:ops:k"]).await
    );
    assert_eq!(ops.cmd(&["DEBUG", "POPULATE", "2"]).await, "+OK\r\n");
    assert_eq!(ops.cmd(&["DEBUG", "POPULATE", "1", "p"]).await, "+OK\r\n");
    let mut keys = redis.keys().await;
    keys.sort();
    assert_eq!(
        keys,
        [
            "outside",
            "tenant:ops:k",
            "tenant:ops:key:0",
            "tenant:ops:key:1",
            "tenant:ops:p:0"
        ]
    );
    let refused = ops.cmd(&["DEBUG", "PROTOCOL", "push"]).await;
    assert!(refused.starts_with("-ERR respite cannot tell"), "{refused}");
    assert_eq!(
        ops.cmd(&["KEYS", "out*"]).await,
        "*0\r\n",
        "KEYS walks its own namespace"
    );
    for line in ["SWAPDB 0 1", "ACL WHOAMI", "SHUTDOWN"] {
        let reply = ops.cmd(&words(line)).await;
        assert!(reply.starts_with("-NOPERM"), "{line}: {reply}");
    }
    assert_eq!(ops.cmd(&["FLUSHALL"]).await, "+OK\r\n");
    assert_eq!(
        redis.keys().await,
        ["outside"],
        "FLUSHALL flushes its own keys"
    );
}

/// An ordinary tenant on the same respite is refused every one of them, reads only its
/// view of CONFIG GET and INFO.
#[tokio::test]
async fn a_tenant_beside_an_admin_is_still_refused() {
    let (_redis, proxy) = start().await;
    let mut acme = proxy.raw_as("acme", "acme-pw").await;
    for (line, _) in SERVER_WIDE.iter().chain(&[("MONITOR", "")]) {
        let reply = acme.cmd(&words(line)).await;
        assert!(reply.starts_with("-NOPERM"), "{line}: {reply}");
    }
    assert_eq!(acme.cmd(&["CONFIG", "GET", "dir"]).await, "*0\r\n");
    let info = acme.cmd(&["INFO"]).await;
    assert!(!info.contains("\r\nused_memory:"), "{info}");
    assert!(info.contains("tenant:acme\r\nrole:tenant\r\n"), "{info}");
}

/// A token never opens an admin: not for the listed admin's id (it logs in by password
/// only), and a tenant a token makes is a plain tenant, whatever its claims say.
#[tokio::test]
async fn no_token_makes_an_admin() {
    let (_redis, proxy) = start().await;
    let claims =
        |id: &str| serde_json::json!({"tenant_id": id, "role": "admin", "exp": now() + 600});
    let for_ops = token(claims("ops"), "jwt-secret");
    let mut c = proxy.raw().await;
    for auth in [
        vec!["AUTH", for_ops.as_str()],
        vec!["AUTH", "ops", for_ops.as_str()],
    ] {
        assert_eq!(
            c.cmd(&auth).await,
            "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
        );
    }
    let made = token(claims("newco"), "jwt-secret");
    assert_eq!(c.cmd(&["AUTH", &made]).await, "+OK\r\n");
    for line in ["CONFIG SET maxmemory-samples 7", "DEBUG SLEEP 0", "MONITOR"] {
        let reply = c.cmd(&words(line)).await;
        assert!(reply.starts_with("-NOPERM"), "{line}: {reply}");
    }
    let info = c.cmd(&["INFO", "tenant"]).await;
    assert!(info.contains("tenant:newco\r\nrole:tenant\r\n"), "{info}");
}

/// MONITOR streams Redis' lines, every tenant's commands as Redis runs them, until RESET;
/// the connection runs commands meanwhile, as Redis' does.
#[tokio::test]
async fn an_admin_monitors_until_reset() {
    let (_redis, proxy) = start().await;
    let mut ops = proxy.raw_as("ops", "ops-pw").await;
    let mut acme = proxy.raw_as("acme", "acme-pw").await;
    assert_eq!(ops.cmd(&["MONITOR"]).await, "+OK\r\n");
    assert_eq!(acme.cmd(&["SET", "watched", "1"]).await, "+OK\r\n");
    let line = next_line_with(&mut ops, "tenant:acme:watched").await;
    assert!(line.starts_with('+') && line.contains("\"SET\""), "{line}");
    // Its own requests are answered in between the lines.
    ops.send_cmd(&["ECHO", "between"]).await;
    next_line_with(&mut ops, "$7\r\nbetween").await;
    ops.send_cmd(&["RESET"]).await;
    next_line_with(&mut ops, "+RESET").await;
    assert_eq!(ops.cmd(&["AUTH", "ops", "ops-pw"]).await, "+OK\r\n");
    assert_eq!(acme.cmd(&["SET", "unwatched", "1"]).await, "+OK\r\n");
    assert_eq!(ops.try_reply(Duration::from_millis(300)).await, None);
}

/// Replies from `c` until one contains `needle` (MONITOR's lines come before it).
async fn next_line_with(c: &mut Raw, needle: &str) -> String {
    for _ in 0..100 {
        let line = c.reply().await;
        if line.contains(needle) {
            return line;
        }
    }
    panic!("no reply with {needle}");
}
