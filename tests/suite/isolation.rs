//! Two tenants using the same key names: each sees only its own data, and Redis really holds
//! `tenant:a:...` and `tenant:b:...`.

use std::collections::HashSet;
use std::time::Duration;

use redis::aio::MultiplexedConnection as Conn;

use crate::harness::*;

/// Writes one key of every type, with values that say whose they are.
async fn write_everything(c: &mut Conn, who: &str) {
    let v = |s: &str| format!("{who}-{s}");
    q::<()>(c, &["SET", "str", &v("str")]).await.unwrap();
    q::<()>(c, &["HSET", "hash", "f", &v("hash")])
        .await
        .unwrap();
    q::<()>(c, &["RPUSH", "list", &v("l1"), &v("l2")])
        .await
        .unwrap();
    q::<()>(c, &["SADD", "set", &v("s")]).await.unwrap();
    q::<()>(c, &["ZADD", "zset", "1", &v("z")]).await.unwrap();
    q::<String>(c, &["XADD", "stream", "1-1", "f", &v("x")])
        .await
        .unwrap();
    q::<()>(
        c,
        &["GEOADD", "geo", "13.361389", "38.115556", &v("palermo")],
    )
    .await
    .unwrap();
    q::<()>(c, &["PFADD", "hll", &v("h1"), &v("h2"), &v("h3")])
        .await
        .unwrap();
    q::<()>(
        c,
        &["SETBIT", "bits", if who == "a" { "3" } else { "5" }, "1"],
    )
    .await
    .unwrap();
    q::<()>(c, &["SET", "ttl", &v("ttl"), "EX", "100"])
        .await
        .unwrap();
    q::<()>(c, &["MSET", "m1", &v("m1"), "m2", &v("m2")])
        .await
        .unwrap();
}

async fn check_everything(c: &mut Conn, who: &str) {
    let v = |s: &str| format!("{who}-{s}");
    assert_eq!(q::<String>(c, &["GET", "str"]).await.unwrap(), v("str"));
    assert_eq!(
        q::<String>(c, &["HGET", "hash", "f"]).await.unwrap(),
        v("hash")
    );
    assert_eq!(
        q::<Vec<String>>(c, &["LRANGE", "list", "0", "-1"])
            .await
            .unwrap(),
        vec![v("l1"), v("l2")]
    );
    assert_eq!(
        q::<Vec<String>>(c, &["SMEMBERS", "set"]).await.unwrap(),
        vec![v("s")]
    );
    assert_eq!(
        q::<Vec<String>>(c, &["ZRANGE", "zset", "0", "-1"])
            .await
            .unwrap(),
        vec![v("z")]
    );
    let xs: Vec<(String, Vec<String>)> = q(c, &["XRANGE", "stream", "-", "+"]).await.unwrap();
    assert_eq!(xs, vec![("1-1".to_string(), vec!["f".to_string(), v("x")])]);
    let members: Vec<String> = q(c, &["GEORADIUS", "geo", "13.36", "38.11", "10", "km"])
        .await
        .unwrap();
    assert_eq!(members, vec![v("palermo")]);
    assert_eq!(q::<i64>(c, &["PFCOUNT", "hll"]).await.unwrap(), 3);
    let bit = if who == "a" { "3" } else { "5" };
    assert_eq!(q::<i64>(c, &["GETBIT", "bits", bit]).await.unwrap(), 1);
    assert_eq!(q::<i64>(c, &["BITCOUNT", "bits"]).await.unwrap(), 1);
    let ttl: i64 = q(c, &["TTL", "ttl"]).await.unwrap();
    assert!((1..=100).contains(&ttl), "{ttl}");
    let m: Vec<Option<String>> = q(c, &["MGET", "m1", "m2", "nope"]).await.unwrap();
    assert_eq!(m, vec![Some(v("m1")), Some(v("m2")), None]);
}

const NAMES: [&str; 12] = [
    "bits", "geo", "hash", "hll", "list", "m1", "m2", "set", "str", "stream", "ttl", "zset",
];

#[tokio::test]
async fn same_names_every_type_kept_apart() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, TENANTS).await;
    let mut a = proxy.client("a", "pa").await;
    let mut b = proxy.client("b", "pb").await;
    write_everything(&mut a, "a").await;
    write_everything(&mut b, "b").await;
    check_everything(&mut a, "a").await;
    check_everything(&mut b, "b").await;

    // What Redis holds: every name twice, once per namespace, and nothing else.
    let mut expect: Vec<String> = NAMES
        .iter()
        .flat_map(|n| [format!("tenant:a:{n}"), format!("tenant:b:{n}")])
        .collect();
    expect.sort();
    assert_eq!(redis.keys().await, expect);

    // Enumeration is per tenant.
    let mut keys: Vec<String> = q(&mut a, &["KEYS", "*"]).await.unwrap();
    keys.sort();
    assert_eq!(keys, NAMES.to_vec());
    assert_eq!(
        q::<i64>(&mut b, &["DBSIZE"]).await.unwrap(),
        NAMES.len() as i64
    );
    let scanned: HashSet<String> = {
        let mut seen = HashSet::new();
        let mut cursor = "0".to_string();
        loop {
            let (next, batch): (String, Vec<String>) =
                q(&mut b, &["SCAN", &cursor, "COUNT", "3"]).await.unwrap();
            seen.extend(batch);
            if next == "0" {
                break seen;
            }
            cursor = next;
        }
    };
    assert_eq!(scanned, NAMES.iter().map(|s| s.to_string()).collect());
    let m: Vec<String> = q(&mut a, &["KEYS", "m*"]).await.unwrap();
    assert_eq!(m.len(), 2);
    let (_, hashes): (String, Vec<String>) =
        q(&mut a, &["SCAN", "0", "TYPE", "hash", "COUNT", "1000"])
            .await
            .unwrap();
    assert_eq!(hashes, vec!["hash"]);
    let rk: String = q(&mut a, &["RANDOMKEY"]).await.unwrap();
    assert!(NAMES.contains(&rk.as_str()), "{rk}");
    assert_eq!(
        q::<i64>(&mut a, &["EXISTS", "str", "nope"]).await.unwrap(),
        1
    );
    assert_eq!(
        q::<String>(&mut a, &["TYPE", "zset"]).await.unwrap(),
        "zset"
    );

    // Deleting and flushing stays inside the namespace.
    assert_eq!(q::<i64>(&mut a, &["DEL", "str", "hash"]).await.unwrap(), 2);
    assert_eq!(q::<String>(&mut b, &["GET", "str"]).await.unwrap(), "b-str");
    q::<()>(&mut a, &["FLUSHDB"]).await.unwrap();
    assert_eq!(q::<i64>(&mut a, &["DBSIZE"]).await.unwrap(), 0);
    assert_eq!(
        q::<Option<String>>(&mut a, &["RANDOMKEY"]).await.unwrap(),
        None
    );
    assert_eq!(
        q::<i64>(&mut b, &["DBSIZE"]).await.unwrap(),
        NAMES.len() as i64
    );
    q::<()>(&mut b, &["FLUSHALL", "ASYNC"]).await.unwrap();
    assert!(redis.keys().await.is_empty());
}

#[tokio::test]
async fn expiry_and_rename_stay_in_namespace() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, TENANTS).await;
    let mut a = proxy.client("a", "pa").await;
    let mut b = proxy.client("b", "pb").await;
    q::<()>(&mut a, &["SET", "k", "1", "PX", "50"])
        .await
        .unwrap();
    q::<()>(&mut b, &["SET", "k", "2"]).await.unwrap();
    q::<()>(&mut b, &["EXPIRE", "k", "1000"]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        q::<Option<String>>(&mut a, &["GET", "k"]).await.unwrap(),
        None
    );
    assert_eq!(q::<String>(&mut b, &["GET", "k"]).await.unwrap(), "2");
    q::<()>(&mut b, &["RENAME", "k", "k2"]).await.unwrap();
    q::<()>(&mut b, &["COPY", "k2", "k3"]).await.unwrap();
    q::<()>(&mut b, &["LMOVE", "nolist", "x", "LEFT", "RIGHT"])
        .await
        .unwrap();
    assert_eq!(redis.keys().await, vec!["tenant:b:k2", "tenant:b:k3"]);
    // Another tenant's full key name is just a (missing) key name.
    assert_eq!(
        q::<Option<String>>(&mut a, &["GET", "tenant:b:k2"])
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        q::<i64>(&mut a, &["EXISTS", "tenant:b:k2"]).await.unwrap(),
        0
    );
}

#[tokio::test]
async fn info_keyspace_and_select_are_per_tenant() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, TENANTS).await;
    let mut a = proxy.client("a", "pa").await;
    let mut b = proxy.client("b", "pb").await;
    for i in 0..5 {
        q::<()>(&mut b, &["SET", &format!("k{i}"), "v"])
            .await
            .unwrap();
    }
    q::<()>(&mut a, &["SET", "x", "v", "EX", "100"])
        .await
        .unwrap();
    q::<()>(&mut a, &["SET", "y", "v"]).await.unwrap();
    let info: String = q(&mut a, &["INFO", "keyspace"]).await.unwrap();
    assert!(
        info.starts_with("# Keyspace\r\ndb0:keys=2,expires=1,avg_ttl="),
        "{info}"
    );
    let all: String = q(&mut b, &["INFO"]).await.unwrap();
    assert!(
        all.contains("redis_version:"),
        "INFO still reports the server"
    );
    assert!(
        all.contains("# Keyspace\r\ndb0:keys=5,expires=0,avg_ttl=0\r\n"),
        "{all}"
    );
    assert_eq!(all.matches("db0:").count(), 1);
    let mut c = proxy.raw_as("a", "pa").await;
    assert_eq!(c.cmd(&["SELECT", "0"]).await, "+OK\r\n");
    assert_eq!(
        c.cmd(&["SELECT", "16"]).await,
        "-ERR DB index is out of range\r\n"
    );
    assert_eq!(
        c.cmd(&["SWAPDB", "0", "1"])
            .await
            .split(':')
            .next()
            .unwrap(),
        "-NOPERM this user has no permissions to run the 'swapdb' command"
    );
    assert_eq!(
        c.cmd(&["COPY", "x", "z", "DB", "16"]).await,
        "-ERR DB index is out of range\r\n"
    );
}

#[tokio::test]
async fn cross_tenant_commands_are_refused_with_noperm() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, TENANTS).await;
    let mut c = proxy.raw_as("a", "pa").await;
    for (cmd, name) in [
        (vec!["CONFIG", "SET", "maxmemory", "1"], "config|set"),
        (vec!["DEBUG", "SLEEP", "0"], "debug"),
        (vec!["MONITOR"], "monitor"),
        (vec!["MODULE", "LOAD", "/x.so"], "module|load"),
        (vec!["SHUTDOWN"], "shutdown"),
        (vec!["REPLICAOF", "NO", "ONE"], "replicaof"),
        (vec!["SLAVEOF", "NO", "ONE"], "slaveof"),
        (vec!["SYNC"], "sync"),
        (vec!["PSYNC", "x", "1"], "psync"),
        (vec!["MIGRATE", "h", "1", "k", "0", "5"], "migrate"),
        (vec!["ACL", "WHOAMI"], "acl|whoami"),
        (
            vec!["CLUSTER", "GETKEYSINSLOT", "1", "1"],
            "cluster|getkeysinslot",
        ),
        (
            vec!["CLUSTER", "COUNTKEYSINSLOT", "1"],
            "cluster|countkeysinslot",
        ),
        (vec!["MEMORY", "STATS"], "memory|stats"),
        (vec!["MEMORY", "DOCTOR"], "memory|doctor"),
        (vec!["SCRIPT", "DEBUG", "YES"], "script|debug"),
        (vec!["FUNCTION", "DUMP"], "function|dump"),
        (vec!["FUNCTION", "STATS"], "function|stats"),
        (vec!["CLIENT", "PAUSE", "10"], "client|pause"),
        (vec!["SLOWLOG", "GET"], "slowlog|get"),
        (vec!["FLUSHALL"], ""),
    ] {
        let reply = c.cmd(&cmd).await;
        if name.is_empty() {
            assert_eq!(reply, "+OK\r\n", "FLUSHALL is scoped, not refused");
            continue;
        }
        let expect = format!("-NOPERM this user has no permissions to run the '{name}' command: ");
        assert!(reply.starts_with(&expect), "{cmd:?}: {reply}");
    }
    // The connection is still fine, and Redis' config untouched.
    assert_eq!(c.cmd(&["PING"]).await, "+PONG\r\n");
    let mut d = redis.direct().await;
    let mm: Vec<String> = q(&mut d, &["CONFIG", "GET", "maxmemory"]).await.unwrap();
    assert_eq!(mm[1], "0");
}

#[tokio::test]
async fn scripts_for_trusted_tenants_have_their_keys_namespaced() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, TENANTS).await;
    let mut s = proxy.client("scripter", "ps").await;
    let r: String = q(
        &mut s,
        &[
            "EVAL",
            "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[1])",
            "1",
            "k",
            "v",
        ],
    )
    .await
    .unwrap();
    assert_eq!(r, "v");
    let keys: Vec<String> = redis.keys().await;
    assert!(keys.contains(&"tenant:scripter:k".to_string()));
    assert!(keys
        .iter()
        .all(|k| k.starts_with("tenant:scripter:") || k.starts_with("respite:")));
}

#[tokio::test]
async fn blocking_pops_return_the_tenants_key_names() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, TENANTS).await;
    let mut a = proxy.client("a", "pa").await;
    let mut b = proxy.client("b", "pb").await;
    let client = proxy.redis_client("a", "pa");
    let waiter = tokio::spawn(async move {
        let mut w = connect(&client).await;
        q::<(String, String)>(&mut w, &["BLPOP", "q1", "q2", "5"])
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // b pushing to its own q2 must not wake a's BLPOP.
    q::<()>(&mut b, &["RPUSH", "q2", "from-b"]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished());
    q::<()>(&mut a, &["RPUSH", "q2", "from-a"]).await.unwrap();
    assert_eq!(
        waiter.await.unwrap(),
        ("q2".to_string(), "from-a".to_string())
    );

    q::<()>(&mut a, &["ZADD", "z", "1", "m"]).await.unwrap();
    let z: (String, String, String) = q(&mut a, &["BZPOPMIN", "z", "1"]).await.unwrap();
    assert_eq!(z.0, "z");
    q::<()>(&mut a, &["RPUSH", "l", "x", "y"]).await.unwrap();
    let mpop: (String, Vec<String>) = q(&mut a, &["LMPOP", "2", "none", "l", "LEFT", "COUNT", "2"])
        .await
        .unwrap();
    assert_eq!(
        mpop,
        ("l".to_string(), vec!["x".to_string(), "y".to_string()])
    );
    q::<String>(&mut a, &["XADD", "s1", "1-1", "f", "v"])
        .await
        .unwrap();
    let mut raw = proxy.raw_as("a", "pa").await;
    assert_eq!(
        raw.cmd(&["XREAD", "COUNT", "1", "STREAMS", "s1", "0"])
            .await,
        "*1\r\n*2\r\n$2\r\ns1\r\n*1\r\n*2\r\n$3\r\n1-1\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n"
    );
    // A blocking pop that times out answers nil, not an upstream error.
    assert_eq!(raw.cmd(&["BLPOP", "empty", "0.1"]).await, "*-1\r\n");
}

#[tokio::test]
async fn transactions_are_per_tenant_and_exact() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, TENANTS).await;
    let mut c = proxy.raw_as("a", "pa").await;
    assert_eq!(c.cmd(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(c.cmd(&["SET", "k", "1"]).await, "+QUEUED\r\n");
    assert_eq!(c.cmd(&["CLIENT", "ID"]).await, "+QUEUED\r\n");
    assert_eq!(c.cmd(&["EXISTS", "k"]).await, "+QUEUED\r\n");
    assert_eq!(c.cmd(&["INCR", "k"]).await, "+QUEUED\r\n");
    let exec = c.cmd(&["EXEC"]).await;
    assert!(exec.starts_with("*4\r\n+OK\r\n:"), "{exec}");
    assert!(exec.ends_with(":1\r\n:2\r\n"), "{exec}");

    // KEYS inside MULTI would run whole in Redis, a walk of every tenant's keys: refused,
    // which dooms the transaction as Redis' queuing errors do.
    assert_eq!(c.cmd(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(
        c.cmd(&["KEYS", "*"]).await,
        "-ERR respite does not run this command inside MULTI\r\n"
    );
    assert_eq!(
        c.cmd(&["EXEC"]).await,
        "-EXECABORT Transaction discarded because of previous errors.\r\n"
    );

    // A refused command inside MULTI aborts EXEC, as Redis' queuing errors do.
    assert_eq!(c.cmd(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(c.cmd(&["SET", "k", "changed"]).await, "+QUEUED\r\n");
    assert!(c
        .cmd(&["CONFIG", "SET", "x", "y"])
        .await
        .starts_with("-NOPERM"));
    assert_eq!(
        c.cmd(&["EXEC"]).await,
        "-EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    assert_eq!(c.cmd(&["GET", "k"]).await, "$1\r\n2\r\n");

    // WATCH sees another client's write to the same tenant key, not another tenant's.
    let mut other = proxy.raw_as("a", "pa").await;
    let mut b = proxy.raw_as("b", "pb").await;
    assert_eq!(c.cmd(&["WATCH", "k"]).await, "+OK\r\n");
    assert_eq!(b.cmd(&["SET", "k", "b"]).await, "+OK\r\n");
    assert_eq!(c.cmd(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(c.cmd(&["SET", "k", "3"]).await, "+QUEUED\r\n");
    assert_eq!(c.cmd(&["EXEC"]).await, "*1\r\n+OK\r\n");
    assert_eq!(c.cmd(&["WATCH", "k"]).await, "+OK\r\n");
    assert_eq!(other.cmd(&["SET", "k", "4"]).await, "+OK\r\n");
    assert_eq!(c.cmd(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(c.cmd(&["SET", "k", "5"]).await, "+QUEUED\r\n");
    assert_eq!(c.cmd(&["EXEC"]).await, "*-1\r\n");
    assert_eq!(c.cmd(&["GET", "k"]).await, "$1\r\n4\r\n");
}

#[tokio::test]
async fn client_commands_see_only_the_tenants_connections() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, TENANTS).await;
    let mut a1 = proxy.raw_as("a", "pa").await;
    let mut a2 = proxy.raw_as("a", "pa").await;
    let mut b = proxy.raw_as("b", "pb").await;
    assert_eq!(a1.cmd(&["CLIENT", "SETNAME", "worker-1"]).await, "+OK\r\n");
    assert_eq!(
        a1.cmd(&["CLIENT", "SETNAME", "has space"]).await,
        "-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
    );
    assert_eq!(
        a1.cmd(&["CLIENT", "SETINFO", "LIB-NAME", "redis-py"]).await,
        "+OK\r\n"
    );
    let list = a2.cmd(&["CLIENT", "LIST"]).await;
    assert_eq!(list.matches("user=a").count(), 2, "{list}");
    assert!(!list.contains("user=b"));
    assert!(list.contains("name=worker-1"), "{list}");
    // Redis 7.0 behind respite: its CLIENT LIST has no lib-name (7.2's).
    assert!(!list.contains("lib-name="), "{list}");
    let info = a1.cmd(&["CLIENT", "INFO"]).await;
    assert!(
        info.contains("name=worker-1") && info.contains("cmd=client|info"),
        "{info}"
    );
    let b_id = b.cmd(&["CLIENT", "ID"]).await;
    let b_id = b_id.trim_start_matches(':').trim();
    // a cannot kill b's connection; it can kill its own.
    assert_eq!(a1.cmd(&["CLIENT", "KILL", "ID", b_id]).await, ":0\r\n");
    assert_eq!(b.cmd(&["PING"]).await, "+PONG\r\n");
    let a2_id = a2.cmd(&["CLIENT", "ID"]).await;
    assert_eq!(
        a1.cmd(&["CLIENT", "KILL", "ID", a2_id.trim_start_matches(':').trim()])
            .await,
        ":1\r\n"
    );
    assert!(a2.closed().await);
    // Commands client libraries send on connect.
    for cmd in [
        vec!["CLIENT", "NO-EVICT", "on"],
        vec!["COMMAND", "COUNT"],
        vec!["ECHO", "x"],
        vec!["TIME"],
        vec!["ROLE"],
    ] {
        assert!(!a1.cmd(&cmd).await.starts_with('-'), "{cmd:?}");
    }
}
