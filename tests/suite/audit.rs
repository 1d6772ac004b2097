//! The audit trail (`[audit] path`): each event one JSON line with exact fields and no
//! secret in it; shared reads counted per tenant and key, a line per pair and minute; the
//! binary's trail on standard output with none of the log in it, and none of it in the log.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::admin::{answers, http_on};
use crate::harness::*;

const WRONGPASS: &str = "-WRONGPASS invalid username-password pair or user is disabled.\r\n";
const ADMIN_TOKEN: &str = "audit-admin-token";
const JWT_SECRET: &str = "audit-jwt-secret";

/// A trail line without its timestamp, which must be `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC) of
/// today or yesterday (a test running over midnight).
fn event(line: &str) -> Value {
    let mut v: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
    let ts = v
        .as_object_mut()
        .and_then(|o| o.remove("ts"))
        .unwrap_or_else(|| panic!("no ts: {line}"));
    let ts = ts.as_str().unwrap_or_else(|| panic!("ts not text: {line}"));
    let now = unix_now();
    let days = [
        respite::billing::day(now),
        respite::billing::day(now - 86_400),
    ];
    let shape = ts.len() == 24
        && ts.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'T',
            13 | 16 => b == b':',
            19 => b == b'.',
            23 => b == b'Z',
            _ => b.is_ascii_digit(),
        });
    assert!(
        shape && days.iter().any(|d| ts.starts_with(d.as_str())),
        "{line}"
    );
    assert!(
        v.get("event").is_some_and(Value::is_string),
        "no event: {line}"
    );
    v
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Every line of the trail at `path` (none if it is not there yet).
pub fn lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().map(event).collect()
}

/// The trail's lines once it holds `n` (the writer flushes when its queue is empty), after
/// a moment in which no other line may come.
pub async fn settled(path: &Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while lines(path).len() < n {
        assert!(Instant::now() < deadline, "{:#?}", lines(path));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    lines(path)
}

/// Redis, and respite with [`TENANTS`], `extra`, and an `[audit]` section with `audit`
/// after its path: the trail's file in a new directory.
async fn with_trail(extra: &str, audit: &str) -> (Redis, TempDir, std::path::PathBuf, Proxy) {
    let redis = Redis::start();
    let dir = TempDir::new();
    let trail = dir.0.join("audit.jsonl");
    let config = format!(
        "{TENANTS}\n{extra}\n[audit]\npath = \"{}\"\n{audit}",
        trail.display()
    );
    let proxy = Proxy::start(&redis, &config).await;
    (redis, dir, trail, proxy)
}

fn peer(c: &Raw) -> String {
    c.stream.local_addr().unwrap().to_string()
}

/// `POST /reload` to `admin` with `token`: the status, the body, and the address it came
/// from.
async fn post_reload(admin: SocketAddr, token: Option<&str>) -> (u16, String, String) {
    let s = tokio::net::TcpStream::connect(admin).await.unwrap();
    let from = s.local_addr().unwrap().to_string();
    let (status, body) = http_on(s, "POST", "/reload", token).await;
    (status, body, from)
}

fn assert_no_secret(path: &Path, secrets: &[&str]) {
    let text = std::fs::read_to_string(path).unwrap();
    for s in secrets {
        assert!(!text.contains(s), "{s:?} is in the trail:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_logins_are_audited_with_why_and_never_with_what() {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (_redis, _dir, trail, proxy) = with_trail(
        &format!(
            "[admin]\nlisten = \"{admin}\"\ntoken = \"{ADMIN_TOKEN}\"\n\
             [auth.jwt]\nhs256_secret = \"{JWT_SECRET}\"\n"
        ),
        "",
    )
    .await;
    answers(admin, "/healthz", 200, Duration::from_secs(5)).await;
    let expired = token(json!({"tenant_id": "a", "exp": now() - 10}), JWT_SECRET);
    let forged = token(
        json!({"tenant_id": "a", "exp": now() + 60}),
        "not-the-secret",
    );

    let mut ok = proxy.raw().await;
    assert_eq!(ok.cmd(&["AUTH", "a", "pa"]).await, "+OK\r\n", "no line");
    let mut c = proxy.raw().await;
    for args in [
        vec!["AUTH", "a", "wrong-password-1"],
        vec!["AUTH", "nosuch", "some-password-2"],
        vec!["AUTH", "lone-password-3"],
        vec!["AUTH", "default", "lone-password-4"],
        vec!["AUTH", "pass word 5", "x"],
        vec!["AUTH", &expired],
        vec!["AUTH", "a", &forged],
        vec!["HELLO", "3", "AUTH", "a", "wrong-password-8"],
        // User and password swapped: the password is in the user name's place.
        vec!["AUTH", "typed-password-9", "a"],
    ] {
        assert_eq!(c.cmd(&args).await, WRONGPASS, "{args:?}");
    }
    let (status, _, wrong_from) = post_reload(admin, Some("wrong-token")).await;
    assert_eq!(status, 401);
    let (status, _, none_from) = post_reload(admin, None).await;
    assert_eq!(status, 401);

    let p = peer(&c);
    let failed = |via: &str, tenant: Option<&str>, reason: &str| {
        let mut v = json!({"event": "auth_failed", "via": via, "peer": p, "reason": reason});
        if let Some(t) = tenant {
            v["tenant"] = json!(t);
        }
        v
    };
    let mut forged_line = failed("AUTH", Some("a"), "bad_token");
    forged_line["detail"] = json!("InvalidSignature");
    let http_failed = |from: &str, reason: &str| json!({"event": "auth_failed", "via": "POST /reload", "peer": from, "reason": reason});
    assert_eq!(
        settled(&trail, 11).await,
        [
            failed("AUTH", Some("a"), "wrong_password"),
            // A name no tenant has is not shown: it may be a password (as below).
            failed("AUTH", None, "unknown_tenant"),
            failed("AUTH", None, "wrong_password"),
            // Redis' default user names no tenant.
            failed("AUTH", None, "wrong_password"),
            // Not a tenant id: possibly a password typed in the wrong place, not shown.
            failed("AUTH", None, "unknown_tenant"),
            failed("AUTH", None, "expired_token"),
            forged_line,
            failed("HELLO", Some("a"), "wrong_password"),
            failed("AUTH", None, "unknown_tenant"),
            http_failed(&wrong_from, "wrong_admin_token"),
            http_failed(&none_from, "no_admin_token"),
        ]
    );
    assert_no_secret(
        &trail,
        &[
            "wrong-password-1",
            "some-password-2",
            "lone-password-3",
            "lone-password-4",
            "pass word 5",
            &expired,
            &forged,
            "wrong-password-8",
            "typed-password-9",
            "wrong-token",
            ADMIN_TOKEN,
            JWT_SECRET,
        ],
    );
}

/// The config file [`reloads_are_audited_with_who_and_what_changed`] starts from and
/// changes: `tail` after the upstream, the admin listener and `[audit]`.
fn reload_config(redis: &Redis, admin: SocketAddr, trail: &Path, tail: &str) -> String {
    format!(
        "[upstream]\nurl = \"{}\"\n[admin]\nlisten = \"{admin}\"\ntoken = \"{ADMIN_TOKEN}\"\n\
         [audit]\npath = \"{}\"\n{tail}",
        redis.url(),
        trail.display()
    )
}

const BEFORE: &str = "[[tenants]]\nid = \"a\"\npassword = \"pa\"\nquota_bytes = 1000000\n\
     [[tenants]]\nid = \"b\"\npassword = \"pb\"\n[[tenants]]\nid = \"c\"\npassword = \"pc\"\n";
const AFTER: &str = "[server]\nlisten = \"127.0.0.1:1\"\n\
     [[tenants]]\nid = \"a\"\npassword = \"pa\"\nquota_bytes = 2000000\n\
     [[tenants]]\nid = \"c\"\npassword = \"pc-new\"\n[[tenants]]\nid = \"d\"\npassword = \"pd\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_are_audited_with_who_and_what_changed() {
    let redis = Redis::start();
    let dir = TempDir::new();
    let (trail, moved) = (dir.0.join("audit.jsonl"), dir.0.join("moved.jsonl"));
    let file = dir.0.join("respite.toml");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    std::fs::write(&file, reload_config(&redis, admin, &trail, BEFORE)).unwrap();
    let _proxy = Proxy::start_file(&file).await;
    answers(admin, "/healthz", 200, Duration::from_secs(5)).await;
    let mut c = Raw::login(_proxy.addr, "c", "pc").await;
    assert_eq!(c.cmd(&["PING"]).await, "+PONG\r\n");

    // b removed, d added, a's quota and c's password changed, a listener that needs a
    // restart.
    std::fs::write(&file, reload_config(&redis, admin, &trail, AFTER)).unwrap();
    let (status, body, from) = post_reload(admin, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let applied = |from: &str, changes: Value| {
        let mut v = json!({"event": "reload", "by": "POST /reload", "peer": from,
            "result": "applied", "added": [], "removed": [], "changed": [],
            "new_credentials": [], "admin_changed": [], "token_settings": false,
            "default_tenant": false, "closed": 0, "needs_restart": ["server.listen"]});
        for (k, x) in changes.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    let first = applied(
        &from,
        json!({"added": ["d"], "removed": ["b"], "changed": ["a"], "new_credentials": ["c"],
            "closed": 1}),
    );
    // The reply says what the line says.
    let mut reply: Value = serde_json::from_str(&body).unwrap();
    for k in ["event", "by", "peer", "result"] {
        reply[k] = first[k].clone();
    }
    assert_eq!(reply, first);

    // An invalid file: how many errors, not their text (a value quoted in one may be a
    // password).
    let invalid = format!("{AFTER}[[tenants]]\nid = \"e\"\npassword = 12345678\n");
    std::fs::write(&file, reload_config(&redis, admin, &trail, &invalid)).unwrap();
    let (status, body, bad_from) = post_reload(admin, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("12345678"),
        "the reply has the errors: {body}"
    );
    let refused = json!({"event": "reload", "by": "POST /reload", "peer": bad_from,
        "result": "invalid", "errors": 1});
    assert_eq!(settled(&trail, 2).await, [first, refused]);
    assert_no_secret(&trail, &["12345678", "pc-new", ADMIN_TOKEN]);

    // Rotated away: the next reload opens the path again, and writes there.
    std::fs::rename(&trail, dir.0.join("audit.jsonl.1")).unwrap();
    std::fs::write(&file, reload_config(&redis, admin, &trail, AFTER)).unwrap();
    let (status, _, again_from) = post_reload(admin, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(settled(&trail, 1).await, [applied(&again_from, json!({}))]);
    assert_eq!(lines(&dir.0.join("audit.jsonl.1")).len(), 2);

    // A new path takes effect with the reload that names it.
    std::fs::write(&file, reload_config(&redis, admin, &moved, AFTER)).unwrap();
    let (status, _, moved_from) = post_reload(admin, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(settled(&moved, 1).await, [applied(&moved_from, json!({}))]);
    assert_eq!(lines(&trail).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_wide_commands_refused_and_run_are_audited() {
    let ops = "[[tenants]]\nid = \"ops\"\npassword = \"po\"\nrole = \"admin\"\n[shared]\n";
    let (_redis, _dir, trail, proxy) = with_trail(ops, "").await;
    let mut a = proxy.raw_as("a", "pa").await;
    for args in [
        vec!["CONFIG", "SET", "maxmemory", "0"],
        vec!["CONFIG", "SET", "requirepass", "hunter2-secret"],
        vec!["SWAPDB", "0", "1"],
        vec!["MONITOR"],
        // Refused, but not server-wide: not in the trail.
        vec!["SET", "shared:market:X:price", "1"],
    ] {
        assert!(a.cmd(&args).await.starts_with("-NOPERM"), "{args:?}");
    }
    let mut ops = proxy.raw_as("ops", "po").await;
    let masterauth = ["CONFIG", "SET", "masterauth", "hidden-masterauth"];
    assert_eq!(ops.cmd(&masterauth).await, "+OK\r\n");
    // Redis' other secret settings (SENSITIVE_CONFIG): the TLS keys' passphrases.
    let key_pass = [
        "CONFIG",
        "SET",
        "maxmemory-samples",
        "5",
        "tls-key-file-pass",
        "hidden-key-pass",
        "tls-client-key-file-pass",
        "hidden-client-key-pass",
    ];
    assert_eq!(ops.cmd(&key_pass).await, "+OK\r\n");
    assert!(ops.cmd(&["SLOWLOG", "LEN"]).await.starts_with(':'));
    assert!(ops.cmd(&["INFO", "server"]).await.contains("redis_version"));
    assert!(ops.cmd(&["SHUTDOWN"]).await.starts_with("-NOPERM"));

    let (pa, po) = (peer(&a), peer(&ops));
    let server_wide = "it acts on the whole Redis server, which every tenant shares";
    let refused = |tenant: &str, peer: &str, command: &str, why: &str| {
        json!({"event": "command_refused", "tenant": tenant, "peer": peer, "command": command,
            "why": why})
    };
    let ran = |command: &str, args: Value| {
        json!({"event": "admin_command", "tenant": "ops", "peer": po, "command": command,
            "args": args})
    };
    assert_eq!(
        settled(&trail, 9).await,
        [
            refused("a", &pa, "config|set", server_wide),
            refused("a", &pa, "config|set", server_wide),
            refused(
                "a",
                &pa,
                "swapdb",
                "a tenant's databases are key prefixes in one Redis database, which cannot \
                 be swapped at once"
            ),
            refused("a", &pa, "monitor", server_wide),
            ran(
                "config|set",
                json!(["CONFIG", "SET", "masterauth", "(redacted)"])
            ),
            ran(
                "config|set",
                json!([
                    "CONFIG",
                    "SET",
                    "maxmemory-samples",
                    "5",
                    "tls-key-file-pass",
                    "(redacted)",
                    "tls-client-key-file-pass",
                    "(redacted)"
                ])
            ),
            ran("slowlog|len", json!(["SLOWLOG", "LEN"])),
            ran("info", json!(["server"])),
            refused("ops", &po, "shutdown", server_wide),
        ]
    );
    assert_no_secret(
        &trail,
        &[
            "hunter2-secret",
            "hidden-masterauth",
            "hidden-key-pass",
            "hidden-client-key-pass",
        ],
    );
}

/// Sums the `shared_reads` lines by (tenant, key) and checks each pair has one line, in
/// `minute`; the overflow line's count, if any.
fn reads_by_pair(
    lines: &[Value],
    minute: &str,
) -> (BTreeMap<(String, String), u64>, Option<Value>) {
    let mut pairs = BTreeMap::new();
    let mut overflow = None;
    for l in lines {
        assert_eq!(l["minute"], minute, "{l}");
        match l["event"].as_str() {
            Some("shared_reads") => {
                let pair = (
                    l["tenant"].as_str().unwrap().into(),
                    l["key"].as_str().unwrap().into(),
                );
                let fields: Vec<&String> = l.as_object().unwrap().keys().collect();
                assert_eq!(fields, ["count", "event", "key", "minute", "tenant"], "{l}");
                assert!(
                    pairs.insert(pair, l["count"].as_u64().unwrap()).is_none(),
                    "{l}"
                );
            }
            Some("shared_reads_overflow") => overflow = Some(l.clone()),
            _ => panic!("{l}"),
        }
    }
    (pairs, overflow)
}

/// The minute the reads below fall in, `YYYY-MM-DDTHH:MM:00Z`: not within the last 3
/// seconds of one (waited out), so that a test of a second or so stays in one minute.
async fn one_minute() -> String {
    let left = 60 - unix_now() % 60;
    if left <= 3 {
        tokio::time::sleep(Duration::from_secs(left)).await;
    }
    let s = unix_now();
    let day = respite::billing::day(s);
    format!("{day}T{:02}:{:02}:00Z", s % 86_400 / 3_600, s % 3_600 / 60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_reads_are_counted_per_tenant_and_key_each_minute() {
    let (redis, _dir, trail, mut proxy) = with_trail("[shared]\n", "").await;
    let mut d = redis.direct().await;
    let (btc, eth) = ("shared:market:BTC:price", "shared:market:ETH:price");
    let () = q(&mut d, &["SET", btc, "100"]).await.unwrap();
    let minute = one_minute().await;
    let mut a = proxy.raw_as("a", "pa").await;
    for _ in 0..5 {
        assert_eq!(a.cmd(&["GET", btc]).await, "$3\r\n100\r\n");
    }
    assert_eq!(
        a.cmd(&["MGET", btc, eth, "mine"]).await,
        "*3\r\n$3\r\n100\r\n$-1\r\n$-1\r\n"
    );
    // Not reads of the value (Redis' ACCESS flag): not counted.
    assert_eq!(a.cmd(&["EXISTS", btc]).await, ":1\r\n");
    assert_eq!(a.cmd(&["TYPE", btc]).await, "+string\r\n");
    assert_eq!(a.cmd(&["GET", "mine"]).await, "$-1\r\n");
    let mut a2 = proxy.raw_as("a", "pa").await;
    assert_eq!(a2.cmd(&["GET", btc]).await, "$3\r\n100\r\n");
    let mut b = proxy.raw_as("b", "pb").await;
    b.send_cmd(&["GET", eth]).await;
    b.send_cmd(&["GET", eth]).await;
    assert_eq!(b.reply().await, "$-1\r\n");
    assert_eq!(b.reply().await, "$-1\r\n");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(lines(&trail), [] as [Value; 0], "no line per read");

    // At shutdown the minute so far is written; its end would have written it too.
    proxy.stop().await;
    let (pairs, overflow) = reads_by_pair(&lines(&trail), &minute);
    let pair = |t: &str, k: &str| (t.to_string(), k.to_string());
    assert_eq!(
        pairs,
        BTreeMap::from([
            (pair("a", btc), 7),
            (pair("a", eth), 1),
            (pair("b", eth), 2)
        ])
    );
    assert_eq!(overflow, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_reads_past_the_cap_are_counted_in_one_line() {
    let (_redis, _dir, trail, mut proxy) =
        with_trail("[shared]\n", "shared_reads_max_pairs = 2\n").await;
    let minute = one_minute().await;
    let mut a = proxy.raw_as("a", "pa").await;
    for k in ["k1", "k2", "k3", "k3"] {
        let key = format!("shared:market:{k}");
        assert_eq!(a.cmd(&["GET", &key]).await, "$-1\r\n");
    }
    proxy.stop().await;
    let (pairs, overflow) = reads_by_pair(&lines(&trail), &minute);
    let pair = |k: &str| ("a".to_string(), format!("shared:market:{k}"));
    assert_eq!(pairs, BTreeMap::from([(pair("k1"), 1), (pair("k2"), 1)]));
    assert_eq!(
        overflow,
        Some(
            json!({"event": "shared_reads_overflow", "minute": minute, "count": 2,
            "max_pairs": 2})
        )
    );
}

/// `RUST_LOG` as ever: a level, targets, or a directive on the connection's span (which
/// only `EnvFilter` reads; the plain kinds go through a filter without state per span). A
/// session's lines carry its `conn{peer, id, tenant}` prefix in each case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_takes_levels_targets_and_directives_on_the_connection() {
    let redis = Redis::start();
    let dir = TempDir::new();
    let file = dir.0.join("respite.toml");
    let port = free_port();
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[upstream]\nurl = \"{}\"\n{TENANTS}",
            redis.url()
        ),
    )
    .unwrap();
    type Case<'a> = (Option<&'a str>, &'a [&'a str], &'a [&'a str]);
    let cases: [Case; 4] = [
        (
            None,
            &[" INFO respite: respite listening", " WARN conn{peer="],
            &["DEBUG"],
        ),
        (
            Some("warn,respite::session=debug"),
            &["DEBUG conn{peer=", "connection closed", "WARN conn{peer="],
            &[" INFO "],
        ),
        (
            Some("[conn]=debug"),
            &["DEBUG conn{peer=", "connection closed"],
            &[" INFO "],
        ),
        (Some("error"), &[], &[" WARN ", " INFO ", "DEBUG"]),
    ];
    for (spec, present, absent) in cases {
        let err = dir.0.join("stderr");
        let (mut child, addr) = run_binary(&file, port, |c| {
            match spec {
                Some(s) => c.env("RUST_LOG", s),
                None => c.env_remove("RUST_LOG"),
            };
            c.stderr(std::fs::File::create(&err).unwrap());
        })
        .await;
        let mut c = Raw::connect(addr).await;
        assert_eq!(c.cmd(&["AUTH", "a", "wrong-password"]).await, WRONGPASS);
        assert_eq!(c.cmd(&["AUTH", "a", "pa"]).await, "+OK\r\n");
        drop(c);
        let log = || {
            // Without the colours' escape sequences.
            let raw = std::fs::read_to_string(&err).unwrap();
            let mut plain = String::new();
            let mut rest = raw.as_str();
            while let Some(at) = rest.find('\x1b') {
                plain.push_str(&rest[..at]);
                rest = rest[at..].split_once('m').map_or("", |(_, r)| r);
            }
            plain + rest
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !present.iter().all(|p| log().contains(p)) {
            assert!(
                Instant::now() < deadline,
                "RUST_LOG={spec:?}: want {present:?} in\n{}",
                log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let log = log();
        for a in absent {
            assert!(!log.contains(a), "RUST_LOG={spec:?}: {a:?} in\n{log}");
        }
    }
}
/// The binary with `[audit] path = "-"`: the trail on standard output, JSON lines only;
/// the log (at debug) on standard error, with none of the trail in it. SIGHUP's reload is
/// in the trail, by "SIGHUP".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_keeps_the_trail_and_the_log_apart() {
    let redis = Redis::start();
    let dir = TempDir::new();
    let file = dir.0.join("respite.toml");
    let port = free_port();
    let config = |tail: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[upstream]\nurl = \"{}\"\n{TENANTS}\
             [shared]\n[audit]\npath = \"-\"\n{tail}",
            redis.url()
        )
    };
    std::fs::write(&file, config("")).unwrap();
    let (out, err) = (dir.0.join("stdout"), dir.0.join("stderr"));
    let (mut child, addr) = run_binary(&file, port, |c| {
        c.env("RUST_LOG", "debug")
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap());
    })
    .await;
    let mut c = Raw::connect(addr).await;
    assert_eq!(c.cmd(&["AUTH", "a", "wrong-password"]).await, WRONGPASS);
    assert_eq!(c.cmd(&["AUTH", "a", "pa"]).await, "+OK\r\n");
    assert!(c
        .cmd(&["CONFIG", "SET", "x", "y"])
        .await
        .starts_with("-NOPERM"));
    for _ in 0..3 {
        assert_eq!(c.cmd(&["GET", "shared:market:BTC:price"]).await, "$-1\r\n");
    }
    std::fs::write(
        &file,
        config("[[tenants]]\nid = \"d\"\npassword = \"pd\"\n"),
    )
    .unwrap();
    let signal = |name: &str| {
        let sent = std::process::Command::new("kill")
            .args([name, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    };
    signal("-HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Raw::connect(addr).await.cmd(&["AUTH", "d", "pd"]).await != "+OK\r\n" {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal("-TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "respite did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let trail = std::fs::read_to_string(&out).unwrap();
    let events: Vec<Value> = trail.lines().map(event).collect();
    let p = peer(&c);
    let of = |name: &str| -> Vec<&Value> { events.iter().filter(|e| e["event"] == name).collect() };
    assert_eq!(
        of("auth_failed")[0],
        &json!({"event": "auth_failed", "via": "AUTH", "tenant": "a", "peer": p,
            "reason": "wrong_password"})
    );
    assert_eq!(
        of("command_refused"),
        [
            &json!({"event": "command_refused", "tenant": "a", "peer": p, "command": "config|set",
            "why": "it acts on the whole Redis server, which every tenant shares"})
        ]
    );
    assert_eq!(
        of("reload"),
        [
            &json!({"event": "reload", "by": "SIGHUP", "result": "applied", "added": ["d"],
            "removed": [], "changed": [], "new_credentials": [], "admin_changed": [],
            "token_settings": false, "default_tenant": false, "closed": 0,
            "needs_restart": []})
        ]
    );
    let reads: Vec<_> = of("shared_reads")
        .iter()
        .map(|l| {
            (
                l["tenant"].clone(),
                l["key"].clone(),
                l["count"].as_u64().unwrap(),
            )
        })
        .collect();
    let read_total: u64 = reads.iter().map(|r| r.2).sum();
    assert_eq!(read_total, 3, "{reads:?}");
    assert!(reads
        .iter()
        .all(|r| r.0 == "a" && r.1 == "shared:market:BTC:price"));
    assert!(!trail.contains("wrong-password"));

    let log = std::fs::read_to_string(&err).unwrap();
    assert!(log.contains("DEBUG"), "the log is at debug level:\n{log}");
    assert!(log.contains("config reloaded"), "{log}");
    assert!(
        !log.contains("\"event\""),
        "a trail line in the log:\n{log}"
    );
    for line in trail.lines() {
        assert!(!log.contains(line), "{line} is in the log");
    }
}

/// `n` pipelined `CONFIG SET x y` from tenant a, each refused and so one `command_refused`
/// line; their replies read in batches (a client that never read would stop respite reading).
async fn refused_lines(c: &mut Raw, n: usize) {
    let one = "*4\r\n$6\r\nCONFIG\r\n$3\r\nSET\r\n$1\r\nx\r\n$1\r\ny\r\n";
    for _ in 0..n / 1000 {
        c.send(one.repeat(1000).as_bytes()).await;
        for _ in 0..1000 {
            assert!(c.reply().await.starts_with("-NOPERM"));
        }
    }
}

/// A trail whose reader stopped reading (standard output into a pipe nobody empties, a log
/// shipper stuck): lines past the queue are dropped, and SIGTERM still ends respite, within
/// the sessions' grace and the trail's last 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_trail_does_not_hold_up_the_shutdown() {
    let redis = Redis::start();
    let dir = TempDir::new();
    let file = dir.0.join("respite.toml");
    let port = free_port();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n[upstream]\nurl = \"{}\"\n{TENANTS}\
         [audit]\npath = \"-\"\n",
        redis.url()
    );
    std::fs::write(&file, config).unwrap();
    let (mut child, addr) = run_binary(&file, port, |c| {
        c.stdout(std::process::Stdio::piped());
    })
    .await;
    // A pipe holds 64 KiB, the queue 16384 lines: both full, and more.
    let mut c = Raw::login(addr, "a", "pa").await;
    refused_lines(&mut c, 20_000).await;
    drop(c);
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("respite did not exit: its shutdown waits on a trail nobody reads");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A reload naming a FIFO no one reads (a log shipper not started, or gone) as the trail:
/// refused with why, and never a wait for a reader on the thread that serves the clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_to_a_fifo_no_one_reads_is_refused_not_waited_on() {
    let redis = Redis::start();
    let dir = TempDir::new();
    let (file, trail, fifo) = (
        dir.0.join("respite.toml"),
        dir.0.join("audit.jsonl"),
        dir.0.join("audit.fifo"),
    );
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let port = free_port();
    let config = |path: &Path| {
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[upstream]\nurl = \"{}\"\n{TENANTS}\
             [audit]\npath = \"{}\"\n",
            redis.url(),
            path.display()
        )
    };
    std::fs::write(&file, config(&trail)).unwrap();
    let (mut child, addr) = run_binary(&file, port, |_| {}).await;
    let mut c = Raw::login(addr, "a", "pa").await;

    std::fs::write(&file, config(&fifo)).unwrap();
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.send_cmd(&["PING"]).await;
    let answered = c.try_reply(Duration::from_secs(3)).await;
    if answered.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert_eq!(
        answered.as_deref(),
        Some("+PONG\r\n"),
        "respite stopped serving"
    );
    let reloads = settled(&trail, 1).await;
    assert_eq!(reloads[0]["event"], "reload");
    assert_eq!(reloads[0]["result"], "failed");
    let error = reloads[0]["error"].as_str().unwrap();
    assert!(
        error.contains("audit.fifo") && error.contains("FIFO"),
        "{error}"
    );

    // Once a reader is there, the same reload writes to it.
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let (mut got, deadline) = (Vec::new(), Instant::now() + Duration::from_secs(5));
    while !got.ends_with(b"\n") && Instant::now() < deadline {
        let mut buf = [0u8; 4096];
        match reader.read(&mut buf) {
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let line = event(std::str::from_utf8(&got).unwrap().trim_end());
    assert_eq!(
        (&line["event"], &line["result"]),
        (&json!("reload"), &json!("applied"))
    );
}
