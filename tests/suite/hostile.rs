//! A hostile tenant with a plain Redis client: each attack that once reached another tenant's
//! keys, respite's own bookkeeping or the shared upstream, tried against a real redis-server.
//! Each test asserts the exact reply and what Redis holds afterwards.

use crate::harness::*;

/// Tenants `a` and victim `v`, publisher `pub`, and shared keys.
fn config(redis: &Redis, extra: &str) -> String {
    format!(
        "[upstream]\nurl = \"{}\"\ncommand_timeout_ms = 2000\n\
         [[tenants]]\nid = \"a\"\npassword = \"pa\"\n\
         [[tenants]]\nid = \"v\"\npassword = \"pv\"\n\
         [[tenants]]\nid = \"pub\"\npassword = \"ppub\"\nrole = \"publisher\"\n\
         [shared]\nprefixes = [\"shared:market:\"]\n{extra}",
        redis.url()
    )
}

async fn get(redis: &Redis, key: &str) -> Option<String> {
    let mut d = redis.direct().await;
    q(&mut d, &["GET", key]).await.unwrap()
}

#[tokio::test]
async fn sort_patterns_read_only_the_tenants_own_keys() {
    let redis = Redis::start();
    let proxy = Proxy::start_config(&config(&redis, "")).await;
    let mut v = proxy.raw_as("v", "pv").await;
    assert_eq!(v.cmd(&["SET", "x", "secret"]).await, "+OK\r\n");
    let mut a = proxy.raw_as("a", "pa").await;
    assert_eq!(a.cmd(&["RPUSH", "l", "x"]).await, ":1\r\n");
    // `limit` used as BY's pattern once hid the GET pattern from respite's check.
    for attack in [
        vec!["SORT", "l", "BY", "limit", "GET", "tenant:v:*"],
        vec!["SORT_RO", "l", "BY", "limit", "GET", "tenant:v:*"],
        vec!["SORT", "l", "BY", "nosort", "GET", "tenant:v:*->f"],
        vec!["SORT", "l", "BY", "nosort", "GET", "respite:quota:*"],
    ] {
        assert_eq!(a.cmd(&attack).await, "*1\r\n$-1\r\n", "{attack:?}");
    }
    // The same patterns inside the tenant's own namespace work as in Redis.
    assert_eq!(a.cmd(&["SET", "x", "mine"]).await, "+OK\r\n");
    assert_eq!(a.cmd(&["SET", "w_x", "1"]).await, "+OK\r\n");
    assert_eq!(
        a.cmd(&["SORT", "l", "BY", "w_*", "GET", "#", "GET", "*"])
            .await,
        "*2\r\n$1\r\nx\r\n$4\r\nmine\r\n"
    );
    assert_eq!(
        a.cmd(&["SORT", "l", "BY", "limit", "LIMIT", "limit", "1"])
            .await,
        "-ERR value is not an integer or out of range\r\n"
    );
}

#[tokio::test]
async fn a_repeated_store_writes_nothing_outside_the_namespace() {
    let redis = Redis::start();
    let proxy = Proxy::start_config(&config(&redis, "")).await;
    let mut v = proxy.raw_as("v", "pv").await;
    assert_eq!(v.cmd(&["SET", "x", "victim"]).await, "+OK\r\n");
    let mut a = proxy.raw_as("a", "pa").await;
    assert_eq!(a.cmd(&["RPUSH", "l", "1"]).await, ":1\r\n");
    // SORT writes the last STORE: it is the tenant's, whatever it names.
    assert_eq!(
        a.cmd(&["SORT", "l", "STORE", "a", "STORE", "tenant:v:x"])
            .await,
        ":1\r\n"
    );
    assert_eq!(get(&redis, "tenant:v:x").await.as_deref(), Some("victim"));
    assert!(redis
        .keys()
        .await
        .contains(&"tenant:a:tenant:v:x".to_string()));
    // Where Redis' key lookup and SORT itself disagree, refused.
    assert_eq!(
        a.cmd(&["SORT", "l", "STORE", "get", "STORE", "tenant:v:x"])
            .await,
        "-ERR syntax error\r\n"
    );
    // An empty source once deleted the target.
    assert_eq!(
        a.cmd(&["SORT", "empty", "STORE", "x", "STORE", "tenant:v:x"])
            .await,
        ":0\r\n"
    );
    assert_eq!(get(&redis, "tenant:v:x").await.as_deref(), Some("victim"));

    assert_eq!(
        a.cmd(&["GEOADD", "g", "13.361389", "38.115556", "p"]).await,
        ":1\r\n"
    );
    for store in [
        ["STORE", "a", "STORE", "tenant:v:x"],
        ["STORE", "a", "STOREDIST", "tenant:v:x"],
        ["STOREDIST", "a", "STORE", "shared:market:x"],
    ] {
        let mut attack = vec!["GEORADIUS", "g", "13", "38", "500", "km"];
        attack.extend(store);
        assert_eq!(a.cmd(&attack).await, "-ERR syntax error\r\n", "{attack:?}");
        let mut by_member = vec!["GEORADIUSBYMEMBER", "g", "p", "500", "km"];
        by_member.extend(store);
        assert_eq!(a.cmd(&by_member).await, "-ERR syntax error\r\n");
    }
    assert_eq!(get(&redis, "tenant:v:x").await.as_deref(), Some("victim"));
    assert_eq!(get(&redis, "shared:market:x").await, None);
    // One STORE is the tenant's key.
    assert_eq!(
        a.cmd(&["GEORADIUS", "g", "13", "38", "500", "km", "STORE", "near"])
            .await,
        ":1\r\n"
    );
    assert!(redis.keys().await.contains(&"tenant:a:near".to_string()));
}

#[tokio::test]
async fn xread_keywords_used_as_names_cannot_move_the_keys() {
    let redis = Redis::start();
    let proxy = Proxy::start_config(&config(&redis, "")).await;
    let mut a = proxy.raw_as("a", "pa").await;
    assert_eq!(
        a.cmd(&["XGROUP", "CREATE", "s", "g", "$", "MKSTREAM"])
            .await,
        "+OK\r\n"
    );
    // A consumer named `streams` where Redis' key spec would look for the keyword.
    assert_eq!(
        a.cmd(&[
            "XREADGROUP",
            "COUNT",
            "1",
            "GROUP",
            "g",
            "streams",
            "STREAMS",
            "s",
            ">"
        ])
        .await,
        "-ERR syntax error\r\n"
    );
    // A group named `streams` is unambiguous: Redis' spec starts looking after it.
    assert_eq!(
        a.cmd(&["XGROUP", "CREATE", "s", "streams", "$"]).await,
        "+OK\r\n"
    );
    assert_eq!(
        a.cmd(&["XREADGROUP", "GROUP", "streams", "c", "STREAMS", "s", ">"])
            .await,
        "*-1\r\n"
    );
}

#[tokio::test]
async fn shared_keys_are_never_written_by_a_non_publisher() {
    let redis = Redis::start();
    let proxy = Proxy::start_config(&config(&redis, "")).await;
    let mut publisher = proxy.raw_as("pub", "ppub").await;
    let s = "shared:market:feed";
    assert!(publisher
        .cmd(&["XADD", s, "1-1", "p", "100"])
        .await
        .starts_with("$3\r\n1-1"));
    assert_eq!(
        publisher.cmd(&["XGROUP", "CREATE", s, "g", "0"]).await,
        "+OK\r\n"
    );
    assert_eq!(
        publisher
            .cmd(&["PFADD", "shared:market:hll", "a", "b"])
            .await,
        ":1\r\n"
    );
    let mut a = proxy.raw_as("a", "pa").await;
    let read_only =
        "-NOPERM this user has no permissions to run the '{}' command: shared keys are read-only";
    for (cmd, name) in [
        (
            vec!["XREADGROUP", "GROUP", "g", "c", "STREAMS", s, ">"],
            "xreadgroup",
        ),
        (vec!["XACK", s, "g", "1-1"], "xack"),
        (vec!["XCLAIM", s, "g", "c", "0", "1-1"], "xclaim"),
        (vec!["XAUTOCLAIM", s, "g", "c", "0", "0"], "xautoclaim"),
        (
            vec!["XGROUP", "CREATECONSUMER", s, "g", "c"],
            "xgroup|createconsumer",
        ),
        (vec!["XGROUP", "DESTROY", s, "g"], "xgroup|destroy"),
        (vec!["XGROUP", "SETID", s, "g", "0"], "xgroup|setid"),
        (vec!["PFCOUNT", "shared:market:hll"], "pfcount"),
        (vec!["SORT", "l", "STORE", s], "sort"),
    ] {
        let reply = a.cmd(&cmd).await;
        let expect = read_only.replace("{}", name);
        assert!(reply.starts_with(&expect), "{cmd:?}: {reply}");
    }
    // Reads still work, and the publisher's group is untouched.
    assert!(a.cmd(&["XRANGE", s, "-", "+"]).await.starts_with("*1\r\n"));
    let mut d = redis.direct().await;
    let consumers: Vec<redis::Value> = q(&mut d, &["XINFO", "CONSUMERS", s, "g"]).await.unwrap();
    assert!(consumers.is_empty(), "{consumers:?}");
}

#[tokio::test]
async fn restore_needs_redis_to_sanitize_payloads() {
    let redis = Redis::start();
    let proxy = Proxy::start_config(&config(&redis, "")).await;
    let mut a = proxy.raw_as("a", "pa").await;
    // Redis' default is `sanitize-dump-payload no`: a crafted payload could crash it.
    assert_eq!(
        a.cmd(&["RESTORE", "k", "0", "\x00\x01x"]).await,
        "-NOPERM this user has no permissions to run the 'restore' command: Redis does not \
         check DUMP payloads (sanitize-dump-payload is not yes) and a crafted one can crash \
         the server every tenant shares\r\n"
    );
    assert!(redis.keys().await.is_empty());

    let redis = Redis::start_with(&["--sanitize-dump-payload", "yes"]);
    let proxy = Proxy::start_config(&config(&redis, "")).await;
    let mut a = proxy.client("a", "pa").await;
    q::<()>(&mut a, &["RPUSH", "l", "x", "y"]).await.unwrap();
    let dump: Vec<u8> = redis::cmd("DUMP")
        .arg("l")
        .query_async(&mut a)
        .await
        .unwrap();
    let ok: String = redis::cmd("RESTORE")
        .arg("copy")
        .arg(0)
        .arg(&dump)
        .query_async(&mut a)
        .await
        .unwrap();
    assert_eq!(ok, "OK");
    assert_eq!(
        q::<Vec<String>>(&mut a, &["LRANGE", "copy", "0", "-1"])
            .await
            .unwrap(),
        ["x", "y"]
    );
    // A payload Redis finds corrupt is refused by Redis, which stays up.
    let mut bad = dump.clone();
    bad[2] ^= 0xff;
    let e = redis::cmd("RESTORE")
        .arg("bad")
        .arg(0)
        .arg(&bad)
        .query_async::<String>(&mut a)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("payload"), "{e}");
    assert_eq!(q::<String>(&mut a, &["PING"]).await.unwrap(), "PONG");
}

#[tokio::test]
async fn a_key_too_long_once_prefixed_never_reaches_redis() {
    let redis = Redis::start_with(&["--proto-max-bulk-len", "1mb"]);
    let proxy = Proxy::start_config(&config(&redis, "")).await;
    let mut v = proxy.raw_as("v", "pv").await;
    let mut a = proxy.raw_as("a", "pa").await;
    // Fits in Redis' limit as sent, not once `tenant:a:` stands in front of it.
    let key = "k".repeat((1 << 20) - 4);
    for i in 0..50 {
        v.send_cmd(&["INCR", "n"]).await;
        if i == 25 {
            a.send_cmd(&["SET", &key, "1"]).await;
        }
    }
    assert_eq!(
        a.reply().await,
        "-ERR Protocol error: invalid bulk length\r\n"
    );
    assert!(a.closed().await);
    for i in 1..=50 {
        assert_eq!(v.reply().await, format!(":{i}\r\n"));
    }
    // The longest key that still fits with the prefix goes through.
    let mut a = proxy.raw_as("a", "pa").await;
    let key = "k".repeat((1 << 20) - 72);
    assert_eq!(a.cmd(&["SET", &key, "1"]).await, "+OK\r\n");
    assert_eq!(v.cmd(&["GET", "n"]).await, "$2\r\n50\r\n");
}

#[tokio::test]
async fn other_tenants_activity_does_not_show() {
    let redis = Redis::start();
    let proxy = Proxy::start_config(&config(&redis, "")).await;
    let mut busy = Vec::new();
    for _ in 0..5 {
        let mut v = proxy.raw_as("v", "pv").await;
        assert_eq!(v.cmd(&["HSET", "h", "f", "1"]).await.len(), 4);
        busy.push(v);
    }
    let mut a = proxy.raw_as("a", "pa").await;
    // Connection numbers count per tenant: a's first is 1 whatever v has open.
    assert_eq!(a.cmd(&["CLIENT", "ID"]).await, ":1\r\n");
    let mut a2 = proxy.raw_as("a", "pa").await;
    assert_eq!(a2.cmd(&["CLIENT", "ID"]).await, ":2\r\n");
    assert!(a2
        .cmd(&["CLIENT", "KILL", "ID", "1"])
        .await
        .starts_with(":1"));
    assert!(a.closed().await);
    assert_eq!(a2.cmd(&["SET", "k", "1"]).await, "+OK\r\n");
    let info = a2.cmd(&["INFO"]).await;
    assert!(info.contains("redis_version:"), "{info}");
    assert!(info.contains("maxmemory_policy:"), "{info}");
    assert_eq!(info_field(&info, "connected_clients"), 1, "{info}");
    for field in [
        "used_memory:",
        "total_net_input_bytes",
        "rdb_changes",
        "master_repl_offset",
    ] {
        assert!(!info.contains(field), "{field} in {info}");
    }
    let all = a2.cmd(&["INFO", "everything"]).await;
    assert!(all.contains("cmdstat_set:calls=1,"), "{all}");
    assert!(!all.contains("cmdstat_hset"), "{all}");
    assert!(!all.contains("used_cpu"), "{all}");
    assert!(!all.contains("errorstat"), "{all}");
}

#[tokio::test]
async fn no_single_command_holds_the_shared_redis() {
    let redis = Redis::start_with(&["--client-query-buffer-limit", "1mb"]);
    let proxy = Proxy::start_config(&config(&redis, "")).await;
    let mut a = proxy.raw_as("a", "pa").await;
    assert_eq!(a.cmd(&["SADD", "s", "x"]).await, ":1\r\n");
    assert_eq!(a.cmd(&["HSET", "h", "f", "v"]).await, ":1\r\n");
    assert_eq!(a.cmd(&["ZADD", "z", "1", "m"]).await, ":1\r\n");
    // A negative count asks for that many elements, repeats allowed, built in one command.
    for (cmd, key) in [
        ("SRANDMEMBER", "s"),
        ("HRANDFIELD", "h"),
        ("ZRANDMEMBER", "z"),
    ] {
        let reply = a.cmd(&[cmd, key, "-9223372036854775807"]).await;
        assert!(
            reply.starts_with("-ERR value is out of range: respite allows counts down to -1048576"),
            "{cmd}: {reply}"
        );
        let reply = a.cmd(&[cmd, key, "-3"]).await;
        assert!(reply.starts_with("*3\r\n"), "{cmd}: {reply}");
    }
    // KEYS is answered from paced SCAN steps: the tenant's keys, each once, never a KEYS.
    let mut v = proxy.raw_as("v", "pv").await;
    assert_eq!(v.cmd(&["SET", "s2", "x"]).await, "+OK\r\n");
    let keys = a.cmd(&["KEYS", "[sz]*"]).await;
    assert!(keys.starts_with("*2\r\n"), "{keys}");
    assert!(
        keys.contains("$1\r\ns\r\n") && keys.contains("$1\r\nz\r\n"),
        "{keys}"
    );
    assert_eq!(a.cmd(&["KEYS", "nothing*"]).await, "*0\r\n");
    let mut d = redis.direct().await;
    let stats: String = q(&mut d, &["INFO", "commandstats"]).await.unwrap();
    assert!(!stats.contains("cmdstat_keys"), "{stats}");
    // A SCAN step visits at most 10,000 keys, whatever COUNT says: still a valid SCAN.
    let scan = a.cmd(&["SCAN", "0", "COUNT", "1000000000"]).await;
    assert!(scan.starts_with("*2\r\n$1\r\n0\r\n*3\r\n"), "{scan}");
    // Redis closes a connection whose unread requests pass client-query-buffer-limit: an
    // argument may take half of it at most.
    let key = "k".repeat(600_000);
    for i in 0..20 {
        v.send_cmd(&["INCR", "n"]).await;
        if i == 10 {
            a.send_cmd(&["GET", &key]).await;
        }
    }
    assert_eq!(
        a.reply().await,
        "-ERR Protocol error: invalid bulk length\r\n"
    );
    for i in 1..=20 {
        assert_eq!(v.reply().await, format!(":{i}\r\n"));
    }
}

#[tokio::test]
async fn one_tenant_cannot_take_every_connection() {
    let redis = Redis::start();
    let extra = "[defaults]\nmax_clients = 2\n";
    let proxy = Proxy::start_config(&config(&redis, extra)).await;
    let mut a1 = proxy.raw_as("a", "pa").await;
    let mut a2 = proxy.raw_as("a", "pa").await;
    let mut a3 = proxy.raw().await;
    assert_eq!(
        a3.cmd(&["AUTH", "a", "pa"]).await,
        "-ERR max number of clients reached\r\n"
    );
    assert!(a3.closed().await);
    // Other tenants keep their places; a re-AUTH to the same tenant keeps its own.
    let mut v = proxy.raw_as("v", "pv").await;
    assert_eq!(v.cmd(&["PING"]).await, "+PONG\r\n");
    assert_eq!(a1.cmd(&["AUTH", "a", "pa"]).await, "+OK\r\n");
    // A freed place can be taken again.
    drop(a2.cmd(&["QUIT"]).await);
    assert!(a2.closed().await);
    let mut a4 = proxy.raw().await;
    let mut reply = String::new();
    for _ in 0..50 {
        // The place is given back when the session ends, just after QUIT's reply.
        reply = a4.cmd(&["AUTH", "a", "pa"]).await;
        if reply == "+OK\r\n" {
            break;
        }
        a4 = proxy.raw().await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(reply, "+OK\r\n");
    assert_eq!(a1.cmd(&["PING"]).await, "+PONG\r\n");
}

#[tokio::test]
async fn a_sidecar_tenant_at_its_cap_gets_redis_error_on_connect() {
    let redis = Redis::start();
    let proxy = Proxy::start_config(&format!(
        "[server]\ndefault_tenant = \"a\"\n[defaults]\nmax_clients = 1\n{}",
        config(&redis, "")
    ))
    .await;
    let mut first = proxy.raw().await;
    assert_eq!(first.cmd(&["SET", "k", "1"]).await, "+OK\r\n");
    let mut second = proxy.raw().await;
    assert_eq!(
        second.reply().await,
        "-ERR max number of clients reached\r\n"
    );
    assert!(second.closed().await);
    assert_eq!(first.cmd(&["GET", "k"]).await, "$1\r\n1\r\n");
}

#[tokio::test]
async fn idle_sockets_that_never_log_in_cannot_lock_tenants_out() {
    let redis = Redis::start();
    let proxy = Proxy::start_config(&format!(
        "[server]\nauth_timeout_ms = 300\nmax_unauthenticated = 2\n{}",
        config(&redis, "")
    ))
    .await;
    let mut idle1 = proxy.raw().await;
    let mut idle2 = proxy.raw().await;
    // Both are registered once one has been answered.
    assert_eq!(
        idle2.cmd(&["PING"]).await,
        "-NOAUTH Authentication required.\r\n"
    );
    // Both places for connections not yet logged in are taken: a new connection gets one,
    // and the oldest waiting one is closed to make room.
    let mut third = proxy.raw().await;
    assert_eq!(third.cmd(&["AUTH", "a", "pa"]).await, "+OK\r\n");
    assert!(idle1.closed().await);
    // Logging in gave the place back: the next one waits beside idle2.
    let mut fourth = proxy.raw().await;
    assert_eq!(fourth.cmd(&["AUTH", "v", "pv"]).await, "+OK\r\n");
    // A socket that never logs in is closed after auth_timeout_ms; logged-in ones stay.
    assert!(idle2.closed().await);
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(third.cmd(&["PING"]).await, "+PONG\r\n");
    assert_eq!(fourth.cmd(&["PING"]).await, "+PONG\r\n");
}

#[tokio::test]
async fn one_tenant_cannot_hold_every_pinned_connection() {
    let redis = Redis::start();
    let proxy = Proxy::start_config(&config(&redis, "[defaults]\npinned_max = 1\n")).await;
    let mut a1 = proxy.raw_as("a", "pa").await;
    let mut a2 = proxy.raw_as("a", "pa").await;
    let mut v = proxy.raw_as("v", "pv").await;
    assert_eq!(a1.cmd(&["MULTI"]).await, "+OK\r\n");
    // Tenant a's share is taken; tenant v's is its own.
    assert_eq!(v.cmd(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(
        a2.cmd(&["MULTI"]).await,
        "-ERR upstream unavailable: all 1 pinned connections this tenant may hold are in use \
         (pinned_max)\r\n"
    );
    assert_eq!(v.cmd(&["EXEC"]).await, "*0\r\n");
    // Its transaction over, a1's place in the share is free again.
    assert_eq!(a1.cmd(&["EXEC"]).await, "*0\r\n");
    assert_eq!(a2.cmd(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(a2.cmd(&["SET", "k", "1"]).await, "+QUEUED\r\n");
    assert_eq!(a2.cmd(&["EXEC"]).await, "*1\r\n+OK\r\n");
}
