//! Scripts for every tenant: EVAL/EVALSHA/SCRIPT through respite against a real redis-server.
//! Keys a script names or builds land in its tenant's namespace; another tenant's keys
//! cannot be read, written or listed from a script, however it reaches Redis (the tenant's
//! ACL user is the wall); runaway scripts are killed.

use std::time::Duration;

use crate::harness::*;

/// Tenants `a` and victim `v` (scripts on by default), `off` (allow_scripts = false),
/// and shared keys.
fn config(redis: &Redis, extra: &str) -> String {
    format!(
        "[upstream]\nurl = \"{}\"\ncommand_timeout_ms = 5000\n\
         [[tenants]]\nid = \"a\"\npassword = \"pa\"\n\
         [[tenants]]\nid = \"v\"\npassword = \"pv\"\n\
         [[tenants]]\nid = \"off\"\npassword = \"poff\"\nallow_scripts = false\n\
         [shared]\nprefixes = [\"shared:market:\"]\n{extra}",
        redis.url()
    )
}

async fn start(extra: &str) -> (Redis, Proxy) {
    let redis = Redis::start();
    let proxy = Proxy::start_config(&config(&redis, extra)).await;
    (redis, proxy)
}

/// Redis' keys outside respite's own bookkeeping.
async fn data_keys(redis: &Redis) -> Vec<String> {
    let mut keys: Vec<String> = redis
        .keys()
        .await
        .into_iter()
        .filter(|k| !k.starts_with("respite:"))
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn keys_built_inside_a_script_land_in_the_namespace() {
    let (redis, proxy) = start("").await;
    let mut a = proxy.raw_as("a", "pa").await;
    // The repro: BullMQ passes a prefix and builds job keys inside the script.
    let script = "redis.call('HSET', ARGV[1]..'1', 'n', 'j'); return redis.call('EXISTS', KEYS[1])";
    assert_eq!(
        a.cmd(&["EVAL", script, "1", "bull:q:1", "bull:q:"]).await,
        ":1\r\n"
    );
    assert_eq!(data_keys(&redis).await, vec!["tenant:a:bull:q:1"]);
    // Numbers as key names, and keys that already carry the prefix, are not prefixed twice.
    let script = "redis.call('SET', 7, 'x'); redis.call('SET', 'tenant:a:y', 'z'); return 1";
    assert_eq!(a.cmd(&["EVAL", script, "0"]).await, ":1\r\n");
    assert_eq!(
        data_keys(&redis).await,
        vec!["tenant:a:7", "tenant:a:bull:q:1", "tenant:a:y"]
    );
}

#[tokio::test]
async fn scripts_see_keys_as_written_and_key_names_come_back_without_the_prefix() {
    let (_redis, proxy) = start("").await;
    let mut a = proxy.raw_as("a", "pa").await;
    assert_eq!(
        a.cmd(&["EVAL", "return KEYS[1]", "1", "foo"]).await,
        "$3\r\nfoo\r\n"
    );
    assert_eq!(
        a.cmd(&[
            "EVAL",
            "return {KEYS[1], KEYS[2], ARGV[1], #ARGV}",
            "2",
            "k1",
            "k2",
            "x"
        ])
        .await,
        "*4\r\n$2\r\nk1\r\n$2\r\nk2\r\n$1\r\nx\r\n:1\r\n"
    );
    assert_eq!(a.cmd(&["RPUSH", "l", "e"]).await, ":1\r\n");
    assert_eq!(
        a.cmd(&["EVAL", "return redis.call('LMPOP', 1, 'l', 'LEFT')", "0"])
            .await,
        "*2\r\n$1\r\nl\r\n*1\r\n$1\r\ne\r\n"
    );
    let xread = "redis.call('XADD', KEYS[1], '1-1', 'f', 'v'); \
                 return redis.call('XREAD', 'STREAMS', KEYS[1], '0')[1][1]";
    assert_eq!(a.cmd(&["EVAL", xread, "1", "s"]).await, "$1\r\ns\r\n");
    // Shared keys keep their name and are readable; a tenant cannot write them.
    let mut d = _redis.direct().await;
    let _: () = q(&mut d, &["SET", "shared:market:btc:price", "42"])
        .await
        .unwrap();
    assert_eq!(
        a.cmd(&[
            "EVAL",
            "return redis.call('GET', 'shared:market:btc:price')",
            "0"
        ])
        .await,
        "$2\r\n42\r\n"
    );
    let write = a
        .cmd(&[
            "EVAL",
            "return redis.call('SET', 'shared:market:btc:price', 1)",
            "0",
        ])
        .await;
    assert!(
        write.starts_with("-ERR The user executing the script can't access"),
        "{write}"
    );
    // Line numbers are the script's own (for what the script itself raises), and so is
    // the script's name.
    let boom = "local x = 1\nerror('boom')";
    let err = a.cmd(&["EVAL", boom, "0"]).await;
    let mut d = _redis.direct().await;
    let sha: String = q(&mut d, &["SCRIPT", "LOAD", boom]).await.unwrap();
    assert_eq!(
        err,
        format!("-ERR user_script:2: boom script: {sha}, on @user_script:2.\r\n")
    );
    assert_eq!(a.cmd(&["EVALSHA", &sha, "0"]).await, err);
}

#[tokio::test]
async fn a_script_cannot_read_write_or_list_another_tenants_keys() {
    let (redis, proxy) = start("").await;
    let mut v = proxy.raw_as("v", "pv").await;
    assert_eq!(v.cmd(&["SET", "secret", "s3cret"]).await, "+OK\r\n");
    assert_eq!(
        v.cmd(&["SUBSCRIBE", "ch"]).await,
        "*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
    );
    let mut a = proxy.raw_as("a", "pa").await;
    // Through the prelude: the names land in a's own namespace.
    for (script, argv) in [
        ("return redis.call('GET', 'tenant:v:secret')", ""),
        ("return redis.call('GET', ARGV[1] .. 'secret')", "tenant:v:"),
        ("return redis.pcall('GET', 'tenant:v:secret')", ""),
    ] {
        let mut cmd = vec!["EVAL", script, "0"];
        if !argv.is_empty() {
            cmd.push(argv);
        }
        assert_eq!(a.cmd(&cmd).await, "$-1\r\n", "{script}");
    }
    // Around the prelude: Redis' ACLs refuse them.
    for script in [
        "return _G.redis.call('GET', 'tenant:v:secret')",
        "return rawget(_G, 'redis').call('GET', 'tenant:v:secret')",
        "return loadstring('return redis')().call('GET', 'tenant:v:secret')",
        "return getfenv(0).redis.call('GET', 'tenant:v:secret')",
        "return _G.redis.call('SET', 'tenant:v:secret', 'pwned')",
        "return _G.redis.call('DEL', 'tenant:v:secret')",
        "return _G.redis.call('RENAME', 'tenant:v:secret', 'tenant:a:mine')",
        "return _G.redis.call('GET', 'respite:quota:v')",
        "return _G.redis.call('PUBLISH', 'tenant:v:ch', 'spoof')",
        "return _G.redis.call('SCAN', 0)",
        "return _G.redis.call('KEYS', '*')",
        "return _G.redis.call('RANDOMKEY')",
        "return _G.redis.call('DBSIZE')",
        "return _G.redis.call('FLUSHALL')",
        "return _G.redis.call('FLUSHDB')",
        "return _G.redis.call('SELECT', 1)",
        "return _G.redis.call('INFO', 'keyspace')",
        "return _G.redis.call('CONFIG', 'GET', 'maxmemory')",
        "return _G.redis.call('PUBSUB', 'CHANNELS')",
        "return _G.redis.call('OBJECT', 'ENCODING', 'tenant:v:secret')",
        // Redis 7.0 checks GEORADIUS' first STORE and writes the last.
        "return _G.redis.call('GEORADIUS', 'tenant:a:g', 0, 0, 1, 'km', 'STORE', 'tenant:a:s', 'STORE', 'tenant:v:s')",
        // Through the prelude, refused before Redis sees them.
        "return redis.call('SCAN', 0)",
        "return redis.call('KEYS', '*')",
        "return redis.call('FLUSHALL')",
        "return redis.call('CONFIG', 'GET', 'maxmemory')",
    ] {
        let reply = a.cmd(&["EVAL", script, "0"]).await;
        assert!(reply.starts_with('-'), "{script}: {reply}");
        assert!(!reply.contains("s3cret"), "{script}: {reply}");
    }
    // Around the prelude, the tenant's own keys are still its own.
    let reply = a
        .cmd(&["EVAL", "return _G.redis.call('GET', 'tenant:a:x')", "0"])
        .await;
    assert_eq!(reply, "$-1\r\n");
    assert_eq!(
        data_keys(&redis).await,
        vec!["tenant:v:secret"],
        "nothing written outside a's namespace"
    );
    let mut d = redis.direct().await;
    let secret: String = q(&mut d, &["GET", "tenant:v:secret"]).await.unwrap();
    assert_eq!(secret, "s3cret");
    // v's subscriber saw no spoofed message.
    assert_eq!(v.try_reply(Duration::from_millis(100)).await, None);
    // a's connection is still a itself, and logged back in as respite between scripts.
    assert_eq!(a.cmd(&["SET", "k", "1"]).await, "+OK\r\n");
    assert_eq!(a.cmd(&["GET", "k"]).await, "$1\r\n1\r\n");
}

#[tokio::test]
async fn evalsha_script_load_exists_and_flush_are_per_tenant() {
    let (redis, proxy) = start("").await;
    let body = "return redis.call('INCR', KEYS[1])";
    // Redis' own name for the body.
    let mut d = redis.direct().await;
    let sha: String = q(&mut d, &["SCRIPT", "LOAD", body]).await.unwrap();
    let _: () = q(&mut d, &["SCRIPT", "FLUSH"]).await.unwrap();
    let mut a = proxy.raw_as("a", "pa").await;
    let mut v = proxy.raw_as("v", "pv").await;
    let noscript = "-NOSCRIPT No matching script. Please use EVAL.\r\n";
    assert_eq!(a.cmd(&["EVALSHA", &sha, "1", "n"]).await, noscript);
    assert_eq!(
        a.cmd(&["SCRIPT", "LOAD", body]).await,
        format!("$40\r\n{sha}\r\n")
    );
    assert_eq!(a.cmd(&["EVALSHA", &sha, "1", "n"]).await, ":1\r\n");
    assert_eq!(
        a.cmd(&["EVALSHA", &sha.to_uppercase(), "1", "n"]).await,
        ":2\r\n"
    );
    let zeros = "0".repeat(40);
    assert_eq!(
        a.cmd(&["SCRIPT", "EXISTS", &sha, &zeros]).await,
        "*2\r\n:1\r\n:0\r\n"
    );
    // Another tenant never loaded it.
    assert_eq!(v.cmd(&["EVALSHA", &sha, "1", "n"]).await, noscript);
    assert_eq!(v.cmd(&["SCRIPT", "EXISTS", &sha]).await, "*1\r\n:0\r\n");
    // EVAL makes it known to EVALSHA, as in Redis (ioredis falls back to EVAL once).
    assert_eq!(v.cmd(&["EVAL", body, "1", "n"]).await, ":1\r\n");
    assert_eq!(v.cmd(&["EVALSHA", &sha, "1", "n"]).await, ":2\r\n");
    // A FLUSH is the tenant's own.
    assert_eq!(a.cmd(&["SCRIPT", "FLUSH"]).await, "+OK\r\n");
    assert_eq!(a.cmd(&["EVALSHA", &sha, "1", "n"]).await, noscript);
    assert_eq!(v.cmd(&["EVALSHA", &sha, "1", "n"]).await, ":3\r\n");
    // Another instance (a second respite) knows the names from Redis.
    let other = Proxy::start_config(&config(&redis, "")).await;
    let mut v2 = other.raw_as("v", "pv").await;
    assert_eq!(v2.cmd(&["EVALSHA", &sha, "1", "n"]).await, ":4\r\n");
    // A script that does not compile: Redis' own error.
    let bad = a.cmd(&["SCRIPT", "LOAD", "return ("]).await;
    assert!(bad.starts_with("-ERR Error compiling script"), "{bad}");
    assert_eq!(data_keys(&redis).await, vec!["tenant:a:n", "tenant:v:n"]);
}

#[tokio::test]
async fn scripts_inside_multi_run_confined_and_exec_shows_only_the_clients_replies() {
    let (redis, proxy) = start("").await;
    let mut v = proxy.raw_as("v", "pv").await;
    assert_eq!(v.cmd(&["SET", "secret", "s"]).await, "+OK\r\n");
    let mut a = proxy.raw_as("a", "pa").await;
    assert_eq!(a.cmd(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(a.cmd(&["SET", "k", "v1"]).await, "+QUEUED\r\n");
    assert_eq!(
        a.cmd(&["EVAL", "return redis.call('GET', KEYS[1])", "1", "k"])
            .await,
        "+QUEUED\r\n"
    );
    assert_eq!(
        a.cmd(&[
            "EVAL",
            "return _G.redis.call('GET', 'tenant:v:secret')",
            "0"
        ])
        .await,
        "+QUEUED\r\n"
    );
    assert_eq!(a.cmd(&["GET", "k"]).await, "+QUEUED\r\n");
    let exec = a.cmd(&["EXEC"]).await;
    assert!(
        exec.starts_with(
            "*4\r\n+OK\r\n$2\r\nv1\r\n-ERR The user executing the script can't access"
        ),
        "{exec}"
    );
    assert!(exec.ends_with("$2\r\nv1\r\n"), "{exec}");
    // WATCH (a pinned connection) and a script.
    assert_eq!(a.cmd(&["WATCH", "k"]).await, "+OK\r\n");
    assert_eq!(
        a.cmd(&["EVAL", "return redis.call('SET', KEYS[1], 'v2')", "1", "k"])
            .await,
        "+OK\r\n"
    );
    assert_eq!(a.cmd(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(a.cmd(&["GET", "k"]).await, "+QUEUED\r\n");
    assert_eq!(
        a.cmd(&["EXEC"]).await,
        "*-1\r\n",
        "the script touched a watched key"
    );
    assert_eq!(a.cmd(&["GET", "secret"]).await, "$-1\r\n");
    assert_eq!(
        data_keys(&redis).await,
        vec!["tenant:a:k", "tenant:v:secret"]
    );
}

#[tokio::test]
async fn a_runaway_script_is_killed_after_the_tenants_timeout() {
    let redis = Redis::start_with(&["--busy-reply-threshold", "100"]);
    let proxy = Proxy::start_config(&config(&redis, "[defaults]\nscript_timeout_ms = 300\n")).await;
    let mut a = proxy.raw_as("a", "pa").await;
    let mut v = proxy.raw_as("v", "pv").await;
    a.send_cmd(&["EVAL", "while true do end", "0"]).await;
    let killed = tokio::time::timeout(Duration::from_secs(10), a.reply())
        .await
        .expect("killed, not left running");
    assert!(
        killed.starts_with("-ERR Script killed by user with SCRIPT KILL"),
        "{killed}"
    );
    // Every tenant is served again.
    assert_eq!(v.cmd(&["SET", "k", "1"]).await, "+OK\r\n");
    assert_eq!(a.cmd(&["EVAL", "return 1", "0"]).await, ":1\r\n");
}

#[tokio::test]
async fn script_kill_kills_only_the_tenants_own_script() {
    let redis = Redis::start_with(&["--busy-reply-threshold", "100"]);
    let proxy =
        Proxy::start_config(&config(&redis, "[defaults]\nscript_timeout_ms = 60000\n")).await;
    let mut a = proxy.raw_as("a", "pa").await;
    a.send_cmd(&["EVAL", "while true do end", "0"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut v = proxy.raw_as("v", "pv").await;
    assert_eq!(
        v.cmd(&["SCRIPT", "KILL"]).await,
        "-NOTBUSY No scripts in execution right now.\r\n"
    );
    let mut a2 = proxy.raw_as("a", "pa").await;
    assert_eq!(a2.cmd(&["SCRIPT", "KILL"]).await, "+OK\r\n");
    let killed = a.reply().await;
    assert!(
        killed.starts_with("-ERR Script killed by user with SCRIPT KILL"),
        "{killed}"
    );
}

#[tokio::test]
async fn switched_off_scripts_are_refused() {
    let (_redis, proxy) = start("").await;
    let mut off = proxy.raw_as("off", "poff").await;
    assert_eq!(
        off.cmd(&["EVAL", "return 1", "0"]).await,
        "-NOPERM this user has no permissions to run the 'eval' command: this tenant has \
         allow_scripts = false\r\n"
    );
}

#[tokio::test]
async fn without_acl_rights_only_unconfined_tenants_run_scripts() {
    let redis = Redis::start();
    let mut d = redis.direct().await;
    let _: () = q(
        &mut d,
        &[
            "ACL", "SETUSER", "lim", "on", ">pw", "~*", "&*", "+@all", "-@admin",
        ],
    )
    .await
    .unwrap();
    let url = format!("redis://lim:pw@127.0.0.1:{}", redis.port);
    let proxy = Proxy::start_config(&format!(
        "[upstream]\nurl = \"{url}\"\n\
         [[tenants]]\nid = \"a\"\npassword = \"pa\"\n\
         [[tenants]]\nid = \"t\"\npassword = \"pt\"\nallow_unconfined_scripts = true\n"
    ))
    .await;
    let mut a = proxy.raw_as("a", "pa").await;
    let reply = a.cmd(&["EVAL", "return 1", "0"]).await;
    assert!(
        reply.starts_with("-NOPERM this user has no permissions to run the 'eval' command: respite's Redis user cannot create ACL users"),
        "{reply}"
    );
    let info = a.cmd(&["INFO", "tenant"]).await;
    assert!(
        info.contains("scripts:refused (respite's Redis user cannot run ACL SETUSER)\r\n"),
        "{info}"
    );
    let mut t = proxy.raw_as("t", "pt").await;
    assert!(t
        .cmd(&["INFO", "tenant"])
        .await
        .contains("scripts:unconfined\r\n"));
    assert_eq!(
        t.cmd(&[
            "EVAL",
            "redis.call('SET', KEYS[1], 1) return KEYS[1]",
            "1",
            "k"
        ])
        .await,
        "$1\r\nk\r\n"
    );
    assert_eq!(data_keys(&redis).await, vec!["tenant:t:k"]);
}

/// What a tenant may not do directly it may not do from a script either: RESTORE (its
/// payload unchecked, a crafted one crashes Redis), COPY into another database, consume a
/// shared stream's group or rewrite a shared HyperLogLog.
#[tokio::test]
async fn scripts_cannot_do_what_respite_refuses_directly() {
    let (redis, proxy) =
        start("[[tenants]]\nid = \"pub\"\npassword = \"ppub\"\nrole = \"publisher\"\n").await;
    let mut publisher = proxy.raw_as("pub", "ppub").await;
    assert!(publisher
        .cmd(&["XADD", "shared:market:st", "1-1", "px", "100"])
        .await
        .starts_with('$'));
    assert_eq!(
        publisher
            .cmd(&["XGROUP", "CREATE", "shared:market:st", "g", "0"])
            .await,
        "+OK\r\n"
    );
    assert_eq!(
        publisher.cmd(&["PFADD", "shared:market:h", "x"]).await,
        ":1\r\n"
    );
    let mut a = proxy.raw_as("a", "pa").await;
    assert_eq!(a.cmd(&["SET", "q", "1"]).await, "+OK\r\n");
    let dump = a.cmd(&["DUMP", "q"]).await;
    assert!(dump.starts_with('$'), "{dump}");
    for (script, keys) in [
        ("return redis.call('COPY', KEYS[1], KEYS[1], 'DB', '3')", vec!["q"]),
        ("return redis.call('COPY', KEYS[1], 'q2')", vec!["q"]),
        ("return redis.call('RESTORE', 'r', 0, redis.call('DUMP', KEYS[1]))", vec!["q"]),
        ("return redis.call('XREADGROUP', 'GROUP', 'g', 'evil', 'STREAMS', 'shared:market:st', '>')", vec![]),
        ("return redis.call('PFCOUNT', 'shared:market:h')", vec![]),
        ("return redis.call('MEMORY', 'MALLOC-STATS')", vec![]),
    ] {
        let mut cmd = vec!["EVAL", script];
        let n = keys.len().to_string();
        cmd.push(&n);
        cmd.extend(keys);
        let reply = a.cmd(&cmd).await;
        assert!(reply.starts_with('-'), "{script}: {reply}");
    }
    // The shared stream's group is untouched; the tenant's own streams and HyperLogLogs
    // work, as do reads mixing its keys and shared ones.
    let mut d = redis.direct().await;
    let pending: Vec<redis::Value> = q(&mut d, &["XPENDING", "shared:market:st", "g"])
        .await
        .unwrap();
    assert_eq!(pending[0], redis::Value::Int(0));
    assert_eq!(
        a.cmd(&["XADD", "mine", "1-1", "f", "v"]).await,
        "$3\r\n1-1\r\n"
    );
    assert_eq!(
        a.cmd(&["XGROUP", "CREATE", "mine", "g", "0"]).await,
        "+OK\r\n"
    );
    let own = "return #redis.call('XREADGROUP', 'GROUP', 'g', 'c', 'STREAMS', KEYS[1], '>')[1][2]";
    assert_eq!(a.cmd(&["EVAL", own, "1", "mine"]).await, ":1\r\n");
    assert_eq!(a.cmd(&["PFADD", "h", "x"]).await, ":1\r\n");
    assert_eq!(
        a.cmd(&["EVAL", "return redis.call('PFCOUNT', KEYS[1])", "1", "h"])
            .await,
        ":1\r\n"
    );
    let mixed = "return redis.call('MGET', KEYS[1], 'shared:market:h')[1]";
    assert_eq!(a.cmd(&["EVAL", mixed, "1", "q"]).await, "$1\r\n1\r\n");
    // The publisher's scripts write shared keys.
    assert_eq!(
        publisher
            .cmd(&[
                "EVAL",
                "return redis.call('PFCOUNT', 'shared:market:h')",
                "0"
            ])
            .await,
        ":1\r\n"
    );
    assert_eq!(
        data_keys(&redis)
            .await
            .iter()
            .filter(|k| k.starts_with("tenant:a:"))
            .count(),
        3
    );
}

/// A script queued behind a blocking command is not running: its timeout must not start
/// (respite kills the oldest script it has in flight), or another tenant's script running
/// then would be killed in its place.
#[tokio::test]
async fn a_script_waiting_behind_a_blocking_command_kills_nothing() {
    let redis = Redis::start_with(&["--busy-reply-threshold", "100"]);
    let proxy = Proxy::start_config(&config(
        &redis,
        "[defaults]\nscript_timeout_ms = 300\n[[tenants]]\nid = \"slow\"\npassword = \"pslow\"\nscript_timeout_ms = 60000\n",
    ))
    .await;
    let mut a = proxy.raw_as("a", "pa").await;
    a.send_cmd(&["BLPOP", "never", "0"]).await;
    a.send_cmd(&["EVAL", "return 1", "0"]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut slow = proxy.raw_as("slow", "pslow").await;
    // Runs for one to two seconds by Redis' clock, well past a's timeout.
    let busy = "local s = tonumber(redis.call('TIME')[1]) \
                while tonumber(redis.call('TIME')[1]) < s + 2 do end return 'done'";
    slow.send_cmd(&["EVAL", busy, "0"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut a2 = proxy.raw_as("a", "pa").await;
    assert_eq!(
        a2.cmd(&["SCRIPT", "KILL"]).await,
        "-NOTBUSY No scripts in execution right now.\r\n"
    );
    assert_eq!(slow.reply().await, "$4\r\ndone\r\n");
    // a's script runs once its BLPOP is answered.
    assert_eq!(a2.cmd(&["LPUSH", "never", "x"]).await, ":1\r\n");
    assert_eq!(a.reply().await, "*2\r\n$5\r\nnever\r\n$1\r\nx\r\n");
    assert_eq!(a.reply().await, ":1\r\n");
}

/// Redis restarted (its ACL users gone): the first script after it is refused rather than
/// run unconfined, and the tenant's user is set up again for the next.
#[tokio::test]
async fn the_tenants_acl_user_comes_back_after_a_redis_restart() {
    let (mut redis, proxy) = start("").await;
    let mut a = proxy.raw_as("a", "pa").await;
    let set = "return redis.call('SET', KEYS[1], 'v')";
    assert_eq!(a.cmd(&["EVAL", set, "1", "k"]).await, "+OK\r\n");
    redis.restart();
    let mut first = String::new();
    for _ in 0..50 {
        first = a.cmd(&["EVAL", set, "1", "k"]).await;
        if !first.starts_with("-ERR upstream unavailable") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        first.starts_with(
            "-ERR respite: refusing to run a tenant script as an unconfined Redis user"
        ),
        "{first}"
    );
    assert_eq!(a.cmd(&["EVAL", set, "1", "k"]).await, "+OK\r\n");
    assert_eq!(data_keys(&redis).await, vec!["tenant:a:k"]);
}

const LIBRARY: &str = "#!lua name=mylib\n\
    redis.register_function('incr2', function(keys, args) \
      redis.call('INCRBY', keys[1], 2) return redis.call('GET', keys[1]) end)\n\
    redis.register_function{function_name='peek', callback=function(keys, args) \
      return {keys[1], redis.pcall('GET', args[1])} end, flags={'no-writes'}}";

/// FUNCTION libraries and function names are the tenant's own: two tenants load a library
/// of the same name with functions of the same names, each calls its own, inside its own
/// keys; LIST shows the tenant's libraries by their names and code, nobody else's.
#[tokio::test]
async fn function_libraries_are_per_tenant() {
    let (redis, proxy) = start("").await;
    let mut a = proxy.raw_as("a", "pa").await;
    let mut v = proxy.raw_as("v", "pv").await;
    assert_eq!(
        a.cmd(&["FUNCTION", "LOAD", LIBRARY]).await,
        "$5\r\nmylib\r\n"
    );
    let other = "#!lua name=mylib\nredis.register_function('incr2', function() return 'v' end)";
    assert_eq!(v.cmd(&["FUNCTION", "LOAD", other]).await, "$5\r\nmylib\r\n");
    assert_eq!(a.cmd(&["FCALL", "incr2", "1", "n"]).await, "$1\r\n2\r\n");
    assert_eq!(v.cmd(&["FCALL", "incr2", "0"]).await, "$1\r\nv\r\n");
    assert_eq!(a.cmd(&["FCALL", "incr2", "1", "n"]).await, "$1\r\n4\r\n");
    // Keys as written, another tenant's key out of reach.
    assert_eq!(v.cmd(&["SET", "secret", "s"]).await, "+OK\r\n");
    assert_eq!(
        a.cmd(&["FCALL_RO", "peek", "1", "k", "tenant:v:secret"])
            .await,
        "*2\r\n$1\r\nk\r\n$-1\r\n"
    );
    let escape = "#!lua name=esc\nredis.register_function('esc', function() \
                  return loadstring('return redis')().call('GET', 'tenant:v:secret') end)";
    assert_eq!(a.cmd(&["FUNCTION", "LOAD", escape]).await, "$3\r\nesc\r\n");
    let reply = a.cmd(&["FCALL", "esc", "0"]).await;
    assert!(
        reply.starts_with("-ERR The user executing the script can't access"),
        "{reply}"
    );
    assert_eq!(
        a.cmd(&["FUNCTION", "LOAD", LIBRARY]).await,
        "-ERR Library 'mylib' already exists\r\n"
    );
    assert_eq!(
        a.cmd(&["FUNCTION", "LOAD", "REPLACE", LIBRARY]).await,
        "$5\r\nmylib\r\n"
    );
    // LIST: the tenant's own, byte for byte as Redis would show them had the tenant loaded
    // them alone (one function each: Redis lists functions in its hash table's order).
    let one = "#!lua name=one\nredis.register_function{function_name='look', \
               callback=function(keys, args) return 1 end, flags={'no-writes'}, \
               description='looks'}";
    assert_eq!(a.cmd(&["FUNCTION", "LOAD", one]).await, "$3\r\none\r\n");
    let mut d = Raw::connect(format!("127.0.0.1:{}", redis.port).parse().unwrap()).await;
    assert_eq!(d.cmd(&["FUNCTION", "LOAD", one]).await, "$3\r\none\r\n");
    for hello in ["2", "3"] {
        for c in [&mut a, &mut d] {
            c.protocol = hello.parse().unwrap();
            assert!(c.cmd(&["HELLO", hello]).await.len() > 10);
        }
        for args in [
            vec!["FUNCTION", "LIST", "LIBRARYNAME", "o*", "WITHCODE"],
            vec!["FUNCTION", "LIST", "WITHCODE", "LIBRARYNAME", "one"],
            vec!["FUNCTION", "LIST", "LIBRARYNAME", "one"],
        ] {
            assert_eq!(
                a.cmd(&args).await,
                d.cmd(&args).await,
                "RESP{hello} {args:?}"
            );
        }
    }
    assert_eq!(d.cmd(&["FUNCTION", "DELETE", "one"]).await, "+OK\r\n");
    let listed = a.cmd(&["FUNCTION", "LIST"]).await;
    assert!(
        listed.starts_with("%3\r\n") || listed.starts_with("*3\r\n"),
        "{listed}"
    );
    assert_eq!(
        v.cmd(&["FUNCTION", "LIST", "LIBRARYNAME", "esc"]).await,
        "*0\r\n"
    );
    // DELETE and FLUSH reach the tenant's own libraries only.
    assert_eq!(a.cmd(&["FUNCTION", "DELETE", "esc"]).await, "+OK\r\n");
    assert_eq!(
        v.cmd(&["FUNCTION", "DELETE", "esc"]).await,
        "-ERR Library not found\r\n"
    );
    assert_eq!(a.cmd(&["FUNCTION", "FLUSH"]).await, "+OK\r\n");
    assert_eq!(
        a.cmd(&["FCALL", "incr2", "1", "n"]).await,
        "-ERR Function not found\r\n"
    );
    assert_eq!(v.cmd(&["FCALL", "incr2", "0"]).await, "$1\r\nv\r\n");
    // A first line respite cannot read as Redis does is refused, not loaded under Redis'
    // reading of it.
    let quoted = "#!lua \"name=global\"\nredis.register_function('g', function() return 1 end)";
    let reply = a.cmd(&["FUNCTION", "LOAD", quoted]).await;
    assert!(
        reply.starts_with("-ERR respite reads a library's first line"),
        "{reply}"
    );
    for cmd in [
        vec!["FUNCTION", "DUMP"],
        vec!["FUNCTION", "RESTORE", "x"],
        vec!["FUNCTION", "STATS"],
    ] {
        assert!(a.cmd(&cmd).await.starts_with("-NOPERM"), "{cmd:?}");
    }
    let libs: Vec<redis::Value> = q(&mut redis.direct().await, &["FUNCTION", "LIST"])
        .await
        .unwrap();
    assert_eq!(libs.len(), 1, "only v's library is left");
    assert_eq!(
        data_keys(&redis).await,
        vec!["tenant:a:n", "tenant:v:secret"]
    );
}

#[tokio::test]
async fn a_runaway_function_is_killed_after_the_tenants_timeout() {
    let redis = Redis::start_with(&["--busy-reply-threshold", "100"]);
    let proxy = Proxy::start_config(&config(&redis, "[defaults]\nscript_timeout_ms = 300\n")).await;
    let mut a = proxy.raw_as("a", "pa").await;
    let spin = "#!lua name=spin\nredis.register_function('spin', function() while true do end end)";
    assert_eq!(a.cmd(&["FUNCTION", "LOAD", spin]).await, "$4\r\nspin\r\n");
    a.send_cmd(&["FCALL", "spin", "0"]).await;
    let killed = tokio::time::timeout(Duration::from_secs(10), a.reply())
        .await
        .expect("killed, not left running");
    assert!(
        killed.starts_with("-ERR Script killed by user with"),
        "{killed}"
    );
    let mut v = proxy.raw_as("v", "pv").await;
    assert_eq!(v.cmd(&["SET", "k", "1"]).await, "+OK\r\n");
}

/// Pipelined scripts of a tenant share one AUTH pair; whatever follows them runs as
/// respite again, in order, and a script that fails in the middle changes nothing of that.
#[tokio::test]
async fn pipelined_scripts_share_one_login_and_keep_their_order() {
    let (redis, proxy) = start("").await;
    let mut v = proxy.raw_as("v", "pv").await;
    assert_eq!(v.cmd(&["SET", "secret", "s"]).await, "+OK\r\n");
    let mut a = proxy.raw_as("a", "pa").await;
    let mut batch = bytes::BytesMut::new();
    let incr = "return redis.call('INCR', KEYS[1])";
    let escape = "return _G.redis.call('GET', 'tenant:v:secret')";
    for cmd in [
        vec!["EVAL", incr, "1", "n"],
        vec!["EVAL", escape, "0"],
        vec!["EVAL", incr, "1", "n"],
        vec!["GET", "n"],
        vec!["EVAL", incr, "1", "n"],
        vec!["MULTI"],
        vec!["EVAL", incr, "1", "n"],
        vec!["EVAL", incr, "1", "n"],
        vec!["EXEC"],
        vec!["GET", "n"],
    ] {
        respite::wire::encode_request(&mut batch, cmd.iter().map(|a| a.as_bytes()));
    }
    a.send(&batch).await;
    let mut replies = Vec::new();
    for _ in 0..10 {
        replies.push(a.reply().await);
    }
    assert_eq!(replies[0], ":1\r\n");
    assert!(
        replies[1].starts_with("-ERR The user executing the script can't access"),
        "{}",
        replies[1]
    );
    assert_eq!(replies[2..5], [":2\r\n", "$1\r\n2\r\n", ":3\r\n"]);
    assert_eq!(
        replies[5..9],
        [
            "+OK\r\n",
            "+QUEUED\r\n",
            "+QUEUED\r\n",
            "*2\r\n:4\r\n:5\r\n"
        ]
    );
    assert_eq!(replies[9], "$1\r\n5\r\n");
    assert_eq!(
        data_keys(&redis).await,
        vec!["tenant:a:n", "tenant:v:secret"]
    );
    // Three runs of scripts (the GET and the MULTI end a run): three AUTH pairs.
    let stats: String = q(&mut redis.direct().await, &["INFO", "commandstats"])
        .await
        .unwrap();
    let auth = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_auth:calls="))
        .and_then(|l| l.split(',').next())
        .unwrap_or("0");
    assert_eq!(auth, "6", "{stats}");
}
