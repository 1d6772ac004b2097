//! A tenant's databases (SELECT 0-15) against Redis' own: two Redis servers, one straight
//! (its databases are Redis') and one behind respite (the tenant's databases are key
//! prefixes in its database 0), so that keyspace-wide replies compare too.

use std::time::Duration;

use crate::harness::{q, Proxy, Raw, Redis};

use super::Pair;

/// Redis, and respite (sidecar tenant `suite`) in front of a Redis of its own.
struct Apart {
    direct: Redis,
    behind: Redis,
    proxy: Proxy,
}

impl Apart {
    async fn start(redis_args: &[&str], extra: &str) -> Apart {
        let (direct, behind) = (Redis::start_with(redis_args), Redis::start_with(redis_args));
        let proxy = Proxy::start(&behind, &format!("{}{extra}", super::SIDECAR)).await;
        Apart {
            direct,
            behind,
            proxy,
        }
    }

    async fn pair(&self) -> Pair {
        let addr = format!("127.0.0.1:{}", self.direct.port).parse().unwrap();
        Pair {
            redis: Raw::connect(addr).await,
            respite: self.proxy.raw().await,
        }
    }
}

fn words(line: &str) -> Vec<&str> {
    line.split(' ').collect()
}

/// Each line sent to both, replies compared byte for byte.
async fn same_lines(p: &mut Pair, lines: &[&str]) {
    for line in lines {
        p.same(&words(line)).await;
    }
}

/// SELECT, the keyspace commands and MOVE answer as Redis' databases do.
#[tokio::test]
async fn databases_answer_as_redis() {
    let apart = Apart::start(&[], "").await;
    let mut p = apart.pair().await;
    same_lines(
        &mut p,
        &[
            "SELECT 16",
            "SELECT -1",
            "SELECT abc",
            "SELECT 1.5",
            "SELECT +1",
            "SELECT 01",
            "SELECT 99999999999",
            "SELECT 1 2",
            "SET k zero",
            "SELECT 1",
            "GET k",
            "SET k one",
            "SET t v EX 1000",
            "RPUSH l a b c",
            "DBSIZE",
            "EXISTS k t l",
            "SELECT 0",
            "GET k",
            "DBSIZE",
            "SELECT 1",
            "MOVE k 1",
            "MOVE k 16",
            "MOVE k x",
            "MOVE k 99999999999",
            "COPY k k2 DB 99999999999",
            "COPY k k2 DB x",
            "MOVE nokey 2",
            "MOVE k 0",
            "MOVE k 2",
            "MOVE t 2",
            "MOVE l 2",
            "DBSIZE",
            "SELECT 2",
            "GET k",
            "LRANGE l 0 -1",
            "DBSIZE",
            "FLUSHDB",
            "DBSIZE",
            "SELECT 0",
            "GET k",
            "DBSIZE",
        ],
    )
    .await;
    // The key moved with its TTL.
    p.same(&["SELECT", "1"]).await;
    p.same(&["SET", "t2", "v", "EX", "1000"]).await;
    p.same(&["MOVE", "t2", "3"]).await;
    p.same(&["SELECT", "3"]).await;
    let (a, b) = p.both(&["TTL", "t2"]).await;
    assert!(a.starts_with(":99") || a == ":1000\r\n", "{a}");
    assert!(b.starts_with(":99") || b == ":1000\r\n", "{b}");
    // One key in each of a few databases: KEYS, SCAN and INFO's keyspace per database.
    for db in ["4", "5", "7"] {
        p.same(&["SELECT", db]).await;
        p.same(&["SET", &format!("in{db}"), "v"]).await;
        p.same(&["KEYS", "*"]).await;
        p.same(&["SCAN", "0"]).await;
    }
    let (a, b) = p.both(&["INFO", "keyspace"]).await;
    let lines = |info: &str| -> Vec<String> {
        info.lines()
            .filter(|l| l.starts_with("db"))
            .map(|l| l.split(",avg_ttl").next().unwrap().to_string())
            .collect()
    };
    assert_eq!(lines(&b), lines(&a), "INFO keyspace per database");
    assert!(
        lines(&b).contains(&"db5:keys=1,expires=0".to_string()),
        "{b}"
    );
    // SWAPDB is the one refused: a tenant's databases are prefixes of one Redis database.
    let (_, swap) = p.both(&["SWAPDB", "0", "1"]).await;
    assert!(swap.starts_with("-NOPERM"), "{swap}");
    // FLUSHALL empties every database of the tenant's, and nothing else.
    q::<()>(&mut apart.behind.direct().await, &["SET", "outside", "1"])
        .await
        .unwrap();
    same_lines(&mut p, &["FLUSHALL", "DBSIZE", "SELECT 1", "DBSIZE"]).await;
    let left: Vec<String> = apart
        .behind
        .keys()
        .await
        .into_iter()
        .filter(|k| !k.starts_with("respite:"))
        .collect();
    assert_eq!(left, ["outside"]);
    // RESET goes back to database 0, CLIENT INFO shows the database.
    p.same(&["SELECT", "9"]).await;
    let info = p.respite.cmd(&["CLIENT", "INFO"]).await;
    assert!(info.contains(" db=9 "), "{info}");
    same_lines(&mut p, &["SET x 9", "RESET", "GET x", "SELECT 9", "GET x"]).await;
}

/// SELECT inside MULTI takes effect at EXEC, for the commands queued after it: kept when
/// the transaction runs, undone when it is discarded or a WATCH aborts it.
#[tokio::test]
async fn select_in_a_transaction() {
    let apart = Apart::start(&[], "").await;
    let mut p = apart.pair().await;
    let mut other = apart.pair().await;
    same_lines(
        &mut p,
        &[
            "MULTI",
            "SELECT 4",
            "SET a 4",
            "SELECT 99",
            "GET a",
            "EXEC",
            "GET a",
            "SELECT 0",
            "GET a",
            "MULTI",
            "SELECT 5",
            "SET b 5",
            "DISCARD",
            "GET b",
            "SELECT 5",
            "GET b",
            "SELECT 1",
            "WATCH w",
        ],
    )
    .await;
    same_lines(&mut other, &["SELECT 1", "SET w changed"]).await;
    same_lines(
        &mut p,
        &[
            "MULTI", "SELECT 6", "SET c 6", "EXEC", "GET c", "SELECT 6", "GET c", "SELECT 1",
        ],
    )
    .await;
    // Pipelined: the requests after EXEC are in the database the transaction chose.
    let pipeline = "MULTI\r\nSELECT 7\r\nSET d 7\r\nEXEC\r\nGET d\r\nSELECT 1\r\nGET d\r\n";
    p.redis.send(pipeline.as_bytes()).await;
    p.respite.send(pipeline.as_bytes()).await;
    for _ in 0..7 {
        p.next_same().await;
    }
    // MOVE's and COPY's errors come when they run: inside EXEC's reply, the rest runs.
    same_lines(
        &mut p,
        &[
            "MULTI",
            "SET mx 1",
            "MOVE mx 1",
            "MOVE mx 99",
            "MOVE mx abc",
            "COPY mx my DB 1",
            "COPY mx mz DB 99",
            "EXEC",
            "GET my",
            "MULTI",
            "MOVE mx 2",
            "EXEC",
            "EXISTS mx",
        ],
    )
    .await;
    // In RESP2 subscribed mode Redis names the command refused: MOVE, not what it becomes.
    p.same_frames(&["SUBSCRIBE", "c"], 1).await;
    p.same(&["MOVE", "my", "2"]).await;
}

/// COPY's DB goes nowhere near Redis: with an upstream URL naming database 3, the copy is
/// in database 3 with everything else of the tenant's.
#[tokio::test]
async fn copy_stays_in_the_upstream_database() {
    let redis = Redis::start();
    let proxy = Proxy::start_config(&format!(
        "[upstream]\nurl = \"{}/3\"\n[[tenants]]\nid = \"c\"\npassword = \"pc\"\n",
        redis.url().trim_end_matches('/')
    ))
    .await;
    let mut c = proxy.raw_as("c", "pc").await;
    assert_eq!(c.cmd(&["SET", "v", "1"]).await, "+OK\r\n");
    assert_eq!(c.cmd(&["COPY", "v", "w", "DB", "0"]).await, ":1\r\n");
    assert_eq!(c.cmd(&["SELECT", "2"]).await, "+OK\r\n");
    assert_eq!(c.cmd(&["SET", "v", "2"]).await, "+OK\r\n");
    assert_eq!(
        c.cmd(&["COPY", "v", "w", "REPLACE", "DB", "2"]).await,
        ":1\r\n"
    );
    let mut db3 = redis::Client::open(format!("{}/3", redis.url().trim_end_matches('/')))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut keys: Vec<String> = q(&mut db3, &["KEYS", "*"]).await.unwrap();
    keys.sort();
    assert_eq!(
        keys,
        ["tenant:c:v", "tenant:c:w", "tenant:c@2:v", "tenant:c@2:w"]
    );
    assert_eq!(redis.keys().await.len(), 0, "nothing in database 0");
}

/// Scripts run in the selected database: their keys there, their channels the tenant's
/// (pub/sub has no databases). FCALL is refused outside database 0.
#[tokio::test]
async fn scripts_run_in_the_selected_database() {
    let apart = Apart::start(&[], "").await;
    let mut p = apart.pair().await;
    let mut listener = apart.pair().await;
    listener.same_frames(&["SUBSCRIBE", "news"], 1).await;
    let script = "redis.call('set', KEYS[1], ARGV[1]) \
                  redis.call('publish', 'news', ARGV[1]) \
                  return {KEYS[1], redis.call('get', KEYS[1])}";
    p.same(&["SELECT", "3"]).await;
    let (a, b) = p.both(&["EVAL", script, "1", "k", "v3"]).await;
    assert_eq!(b, a);
    listener.next_same().await;
    same_lines(&mut p, &["GET k", "SELECT 0", "GET k"]).await;
    let behind = apart.behind.keys().await;
    assert!(
        behind.contains(&"tenant:suite@3:k".to_string()),
        "{behind:?}"
    );
    p.same(&["SELECT", "2"]).await;
    let fcall = p.respite.cmd(&["FCALL", "f", "0"]).await;
    assert!(fcall.starts_with("-ERR respite runs functions"), "{fcall}");
}

/// Keyspace notifications of database n come on `__keyspace@n__:<key>`, as from Redis.
#[tokio::test]
async fn keyspace_notifications_per_database() {
    let apart = Apart::start(&["--notify-keyspace-events", "KEA"], "").await;
    let mut p = apart.pair().await;
    let mut w = apart.pair().await;
    p.same_frames(&["SUBSCRIBE", "__keyspace@2__:k"], 1).await;
    p.same_frames(&["PSUBSCRIBE", "__keyspace@3__:*"], 1).await;
    same_lines(
        &mut w,
        &["SET k 0", "SELECT 2", "SET k 2", "SELECT 3", "SET j 3"],
    )
    .await;
    p.next_same().await;
    p.next_same().await;
    p.silent(Duration::from_millis(300)).await;
}

/// Quotas count every database of the tenant's, and a client library's `/<db>` URL
/// selects the tenant's database.
#[tokio::test]
async fn quotas_count_every_database() {
    let redis = Redis::start();
    let config = r#"
[quota]
measure_delay_ms = 50
[[tenants]]
id = "q"
password = "pq"
quota_bytes = 300000
"#;
    let proxy = Proxy::start(&redis, config).await;
    let url = |db: u32| format!("redis://q:pq@{}/{db}", proxy.addr);
    let mut zero = proxy.client_url(&url(0)).await;
    let mut one = proxy.client_url(&url(1)).await;
    let value = "x".repeat(100_000);
    q::<()>(&mut zero, &["SET", "a", &value]).await.unwrap();
    q::<()>(&mut one, &["SET", "a", &value]).await.unwrap();
    let mut refused = None;
    for i in 0..3 {
        if let Err(e) = q::<()>(&mut one, &["SET", &format!("b{i}"), &value]).await {
            refused = Some(e.to_string());
            break;
        }
    }
    let refused = refused.expect("past the quota summed over databases");
    assert!(refused.contains("OOM"), "{refused}");
    let keys = redis.keys().await;
    assert!(keys.contains(&"tenant:q@1:a".to_string()), "{keys:?}");
    assert!(keys.contains(&"tenant:q:a".to_string()), "{keys:?}");
    // Deleting in database 1 frees room, measured there.
    q::<()>(&mut one, &["FLUSHDB"]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    q::<()>(&mut one, &["SET", "c", &value]).await.unwrap();
    // Measured within measure_delay_ms: database 0's `a` and database 1's `c`.
    let mut used = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let info: String = q(&mut one, &["INFO", "tenant"]).await.unwrap();
        used = crate::harness::info_field(&info, "used_bytes");
        if used > 200_000 {
            break;
        }
    }
    assert!((200_000..300_000).contains(&used), "used_bytes {used}");
    let sizes: Vec<String> = q(
        &mut redis.direct().await,
        &["HKEYS", "respite:quota:{q}:sizes@"],
    )
    .await
    .unwrap();
    assert_eq!(sizes, ["1:c"], "database 1's keys have their own sizes");
}

/// `databases` per tenant bounds SELECT; a reload lowering it closes the connections in a
/// database that is gone.
#[tokio::test]
async fn databases_are_a_tenant_setting() {
    let redis = Redis::start();
    let config = r#"
[[tenants]]
id = "few"
password = "pf"
databases = 2
"#;
    let proxy = Proxy::start(&redis, config).await;
    let mut c = proxy.raw_as("few", "pf").await;
    assert_eq!(c.cmd(&["SELECT", "1"]).await, "+OK\r\n");
    assert_eq!(
        c.cmd(&["SELECT", "2"]).await,
        "-ERR DB index is out of range\r\n"
    );
    assert_eq!(
        c.cmd(&["MOVE", "k", "2"]).await,
        "-ERR DB index is out of range\r\n"
    );
    let bad = respite::config::Config::parse(&format!(
        "[upstream]\nurl = \"{}\"\n[[tenants]]\nid = \"z\"\npassword = \"p\"\ndatabases = 0\n",
        redis.url()
    ));
    let errors = format!("{:?}", bad.expect_err("databases = 0 is refused"));
    assert!(errors.contains("databases must be from 1"), "{errors}");
}
