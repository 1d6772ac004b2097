//! Byte quotas: usage as Redis measures it, -OOM past quota + overage with Redis untouched,
//! reads and deletes always allowed, one limit across several respite instances.

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

use crate::harness::*;

/// Tenant `a` with `quota`/`overage`; `b` without a quota (measured, never refused).
fn quota_config(redis: &Redis, quota: u64, overage: u64, reconcile_ms: u64) -> String {
    format!(
        "[upstream]\nurl = \"{}\"\ncommand_timeout_ms = 2000\n\
         [quota]\nflush_interval_ms = 20\nmeasure_delay_ms = 0\nreconcile_interval_ms = {reconcile_ms}\n\
         reconcile_keys_per_second = 100000\n\
         [[tenants]]\nid = \"a\"\npassword = \"pa\"\nquota_bytes = {quota}\noverage_bytes = {overage}\n\
         [[tenants]]\nid = \"b\"\npassword = \"pb\"\n",
        redis.url()
    )
}

/// The sum of MEMORY USAGE over every key under `prefix`, asked of Redis directly.
async fn memory_of(redis: &Redis, prefix: &str) -> i64 {
    let mut d = redis.direct().await;
    let mut cursor = 0u64;
    let mut total = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut d)
            .await
            .unwrap();
        for k in keys {
            let size: Option<i64> = q(&mut d, &["MEMORY", "USAGE", &k, "SAMPLES", "0"])
                .await
                .unwrap();
            total += size.unwrap_or(0);
        }
        if next == 0 {
            return total;
        }
        cursor = next;
    }
}

/// A number from the caller's `# Tenant` section of INFO.
async fn tenant_figure(c: &mut MultiplexedConnection, field: &str) -> i64 {
    let info: String = q(c, &["INFO", "tenant"]).await.unwrap();
    info_field(&info, field)
}

/// Waits until respite's usage figure for the caller equals what Redis measures.
async fn usage_settles(redis: &Redis, c: &mut MultiplexedConnection, prefix: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (used, truth) = (
            tenant_figure(c, "used_bytes").await,
            memory_of(redis, prefix).await,
        );
        if used == truth {
            return used;
        }
        assert!(
            Instant::now() < deadline,
            "usage {used} never reached {truth}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn reconciled(c: &mut MultiplexedConnection, after: i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tenant_figure(c, "quota_reconciliations").await <= after {
        assert!(Instant::now() < deadline, "no reconciliation pass");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_past_quota_and_overage_get_oom_and_redis_is_untouched() {
    let redis = Redis::start();
    let proxy = Proxy::start_config(&quota_config(&redis, 20_000, 5_000, 600_000)).await;
    let mut a = proxy.raw_as("a", "pa").await;
    let value = "x".repeat(1000);
    let (key, reply) = a.set_until_refused(&value).await;
    assert!(
        reply.starts_with("-OOM command not allowed: tenant 'a' is at ")
            && reply.contains("of its 25000 bytes (quota 20000 + overage 5000)"),
        "{reply}"
    );
    let mut d = redis.direct().await;
    let exists: i64 = q(&mut d, &["EXISTS", &format!("tenant:a:{key}")])
        .await
        .unwrap();
    assert_eq!(exists, 0, "a refused write must not reach Redis");
    let held = memory_of(&redis, "tenant:a:").await;
    assert!((22_000..=25_000).contains(&held), "holds {held}");

    // Over quota, reads and deletes still work, and deleting makes room again.
    assert_eq!(a.cmd(&["STRLEN", "k0"]).await, ":1000\r\n");
    assert_eq!(a.cmd(&["SET", "more", &value]).await.get(..4), Some("-OOM"));
    assert_eq!(a.cmd(&["EXPIRE", "k1", "100"]).await, ":1\r\n");
    assert_eq!(a.cmd(&["DEL", "k0", "k1", "k2"]).await, ":3\r\n");
    assert_eq!(a.cmd(&["SET", "more", &value]).await, "+OK\r\n");

    // Another tenant is not affected, and sees only its own figures.
    let mut b = proxy.client("b", "pb").await;
    let () = q(&mut b, &["SET", "big", &"y".repeat(50_000)])
        .await
        .unwrap();
    let info: String = q(&mut b, &["INFO", "tenant"]).await.unwrap();
    assert!(
        info.contains("tenant:b\r\n") && info.contains("quota:unlimited"),
        "{info}"
    );
    assert!(!info.contains("tenant:a"), "{info}");

    let mut ac = proxy.client("a", "pa").await;
    assert_eq!(tenant_figure(&mut ac, "quota_bytes").await, 20_000);
    assert_eq!(tenant_figure(&mut ac, "overage_bytes").await, 5_000);
    assert!(tenant_figure(&mut ac, "quota_refusals").await >= 2);
    assert!(tenant_figure(&mut ac, "overage_writes").await >= 1);
    usage_settles(&redis, &mut ac, "tenant:a:").await;
    usage_settles(&redis, &mut b, "tenant:b:").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_follows_overwrites_deletes_renames_and_transactions() {
    let redis = Redis::start();
    let proxy = Proxy::start_config(&quota_config(&redis, 100_000, 0, 600_000)).await;
    let mut a = proxy.client("a", "pa").await;
    // 300 overwrites of 1,000 bytes fit a 100,000-byte quota: only the last one is held.
    for i in 0..300 {
        let v = format!("{i:04}{}", "x".repeat(996));
        let () = q(&mut a, &["SET", "k", &v]).await.unwrap();
    }
    let one = usage_settles(&redis, &mut a, "tenant:a:").await;
    assert!((1_000..1_300).contains(&one), "{one}");

    let steps: &[&[&str]] = &[
        &["SET", "k", "small"],
        &["APPEND", "k", &"z".repeat(3000)],
        &["SETRANGE", "r", "5000", "x"],
        &["HSET", "h", "f1", "v1", "f2", "v2"],
        &["RPUSH", "l", "a", "b", "c"],
        &["SADD", "s", "m1", "m2"],
        &["ZADD", "z", "1", "a", "2", "b"],
        &["XADD", "x", "*", "f", "v"],
        &["INCR", "n"],
        &["RENAME", "k", "k2"],
        &["LPOP", "l"],
        &["HDEL", "h", "f1"],
        &["UNLINK", "r"],
    ];
    for s in steps {
        let _: redis::Value = q(&mut a, s).await.unwrap();
    }
    usage_settles(&redis, &mut a, "tenant:a:").await;

    let _: redis::Value = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg("t1")
        .arg("x".repeat(2000))
        .cmd("RPUSH")
        .arg("l")
        .arg("y".repeat(500))
        .cmd("DEL")
        .arg("x")
        .cmd("SET")
        .arg("brief")
        .arg("b".repeat(3000))
        .arg("PX")
        .arg(300)
        .query_async(&mut a)
        .await
        .unwrap();
    usage_settles(&redis, &mut a, "tenant:a:").await;
    // Keys that expire are measured again when their TTL ends, not only at reconciliation
    // (which this config runs every 10 minutes).
    let () = q(&mut a, &["SET", "brief2", &"b".repeat(3000), "EX", "1"])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut d = redis.direct().await;
    let left: i64 = q(&mut d, &["EXISTS", "tenant:a:brief", "tenant:a:brief2"])
        .await
        .unwrap();
    assert_eq!(left, 0);
    usage_settles(&redis, &mut a, "tenant:a:").await;

    let () = q(&mut a, &["FLUSHDB"]).await.unwrap();
    assert_eq!(usage_settles(&redis, &mut a, "tenant:a:").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_inside_multi_aborts_the_transaction() {
    let redis = Redis::start();
    let proxy = Proxy::start_config(&quota_config(&redis, 5_000, 0, 600_000)).await;
    let mut a = proxy.raw_as("a", "pa").await;
    assert_eq!(a.cmd(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(a.cmd(&["SET", "small", "v"]).await, "+QUEUED\r\n");
    let big = "x".repeat(10_000);
    assert!(a.cmd(&["SET", "big", &big]).await.starts_with("-OOM "));
    assert_eq!(
        a.cmd(&["EXEC"]).await,
        "-EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    assert!(redis
        .keys()
        .await
        .iter()
        .all(|k| !k.starts_with("tenant:a:")));
    // The connection is usable afterwards.
    assert_eq!(a.cmd(&["SET", "small", "v"]).await, "+OK\r\n");
}

/// Writes charged but never answered (discarded, or their client gone while Redis was busy)
/// give their charge back: the tenant can still use its whole quota afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_that_never_answer_give_their_charge_back() {
    let redis = Redis::start_with(&["--enable-debug-command", "yes"]);
    let proxy = Proxy::start_config(&quota_config(&redis, 10_000, 0, 600_000)).await;
    let value = "x".repeat(3_000);
    let mut a = proxy.raw_as("a", "pa").await;
    assert_eq!(a.cmd(&["MULTI"]).await, "+OK\r\n");
    for k in ["d1", "d2"] {
        assert_eq!(a.cmd(&["SET", k, &value]).await, "+QUEUED\r\n");
    }
    assert_eq!(a.cmd(&["DISCARD"]).await, "+OK\r\n");
    // Measured (nothing there) and handed back by the next flush.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Redis busy for 300 ms: the client leaves before its writes are answered.
    let mut d = redis.direct().await;
    let sleep = tokio::spawn(async move {
        let () = q(&mut d, &["DEBUG", "SLEEP", "0.3"]).await.unwrap();
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut gone = proxy.raw_as("a", "pa").await;
    for k in ["g1", "g2"] {
        gone.send_cmd(&["SET", k, &value]).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(gone);
    sleep.await.unwrap();
    // They run once Redis is back (after the quota's own requests queued before them).
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.cmd(&["EXISTS", "g1", "g2"]).await != ":2\r\n" {
        assert!(Instant::now() < deadline, "the abandoned writes never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(a.cmd(&["DEL", "g1", "g2"]).await, ":2\r\n");

    // Nothing is held for writes that are over: three values of 3,000 bytes fit in 10,000.
    for k in ["k1", "k2", "k3"] {
        assert_eq!(a.cmd(&["SET", k, &value]).await, "+OK\r\n", "{k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_are_charged_by_what_they_copy() {
    let redis = Redis::start();
    let proxy = Proxy::start_config(&quota_config(&redis, 20_000, 0, 600_000)).await;
    let mut a = proxy.raw_as("a", "pa").await;
    assert_eq!(a.cmd(&["SET", "src", &"x".repeat(7000)]).await, "+OK\r\n");
    assert_eq!(a.cmd(&["COPY", "src", "c1"]).await, ":1\r\n");
    // A third copy passes 20,000 bytes: refused though the request itself is tiny.
    assert!(a.cmd(&["COPY", "src", "c2"]).await.starts_with("-OOM "));
    assert_eq!(a.cmd(&["EXISTS", "c2"]).await, ":0\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_already_in_redis_counts_and_an_over_quota_tenant_can_still_read_and_delete() {
    let redis = Redis::start();
    let mut d = redis.direct().await;
    let () = q(&mut d, &["SET", "tenant:a:big", &"x".repeat(30_000)])
        .await
        .unwrap();
    let () = q(&mut d, &["SET", "tenant:a:old", "v", "PX", "300"])
        .await
        .unwrap();
    // A quota below what the tenant already holds, as after a shrink and a restart.
    let proxy = Proxy::start_config(&quota_config(&redis, 10_000, 0, 500)).await;
    let mut a = proxy.client("a", "pa").await;
    reconciled(&mut a, 0).await;
    assert!(tenant_figure(&mut a, "used_bytes").await > 30_000);
    assert!(tenant_figure(&mut a, "over_quota_bytes").await > 20_000);

    let refused: redis::RedisResult<()> = q(&mut a, &["SET", "k", "v"]).await;
    assert_eq!(refused.unwrap_err().code(), Some("OOM"));
    let len: i64 = q(&mut a, &["STRLEN", "big"]).await.unwrap();
    assert_eq!(len, 30_000);
    let n: i64 = q(&mut a, &["DEL", "big"]).await.unwrap();
    assert_eq!(n, 1);
    let () = q(&mut a, &["SET", "k", "v"]).await.unwrap();

    // The key that expired on its own leaves the figure at the next pass.
    let passes = tenant_figure(&mut a, "quota_reconciliations").await;
    reconciled(&mut a, passes).await;
    assert_eq!(
        tenant_figure(&mut a, "used_bytes").await,
        memory_of(&redis, "tenant:a:").await
    );
}

/// The issue's accuracy check: 100,000 writes of every kind, overwrites, deletes and 10% of
/// keys with short TTLs left to expire; after one reconciliation pass the figure is within 5%
/// of what Redis measures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_workload_usage_is_within_five_percent() {
    let redis = Redis::start();
    let proxy = Proxy::start_config(&quota_config(&redis, 1 << 30, 0, 1_000)).await;
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let mut c = proxy.client("a", "pa").await;
        tasks.push(tokio::spawn(async move {
            for round in 0..50u64 {
                let mut p = redis::pipe();
                for j in 0..500u64 {
                    let i = (t * 50 + round) * 500 + j;
                    let n = i % 400;
                    let size = (i * 7919 % 1500 + 10) as usize;
                    match i % 20 {
                        0..=4 => p.cmd("SET").arg(format!("s{n}")).arg("v".repeat(size)),
                        5 => p
                            .cmd("APPEND")
                            .arg(format!("s{n}"))
                            .arg("a".repeat(size / 4)),
                        6 => p.cmd("SETRANGE").arg(format!("s{n}")).arg(size).arg("r"),
                        7 => p
                            .cmd("HSET")
                            .arg(format!("h{n}"))
                            .arg(i % 10)
                            .arg("h".repeat(20)),
                        8 => p.cmd("RPUSH").arg(format!("l{n}")).arg("l".repeat(16)),
                        9 => p
                            .cmd("SADD")
                            .arg(format!("z{n}"))
                            .arg(format!("{:08}", i % 12)),
                        10 => p
                            .cmd("ZADD")
                            .arg(format!("o{n}"))
                            .arg(i % 9)
                            .arg(format!("{:06}", i % 11)),
                        11 if n < 40 => p
                            .cmd("XADD")
                            .arg(format!("x{n}"))
                            .arg("MAXLEN")
                            .arg("20")
                            .arg("*")
                            .arg("f")
                            .arg(size),
                        11 => p.cmd("INCRBY").arg(format!("c{n}")).arg(i),
                        12 => p.cmd("DEL").arg(format!("s{}", (n + 7) % 400)),
                        13 => p.cmd("UNLINK").arg(format!("h{}", (n + 3) % 400)),
                        14 => p.cmd("EXPIRE").arg(format!("s{n}")).arg(3600),
                        15 => p
                            .cmd("RENAME")
                            .arg(format!("s{n}"))
                            .arg(format!("s{}", (n + 1) % 400)),
                        16 => p.cmd("LPOP").arg(format!("l{n}")),
                        // 10% of keys live briefly and are left to expire.
                        17 | 18 => p
                            .cmd("SET")
                            .arg(format!("ttl{i}"))
                            .arg("t".repeat(size))
                            .arg("PX")
                            .arg(500),
                        _ => p.cmd("SET").arg(format!("s{n}")).arg("w".repeat(size / 2)),
                    };
                    p.ignore();
                }
                // Errors (RENAME of a missing key, WRONGTYPE) are part of a real workload.
                let _: redis::RedisResult<()> = p.query_async(&mut c).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut a = proxy.client("a", "pa").await;
    // Every short TTL has run out, and respite has measured those keys again.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let within = |used: i64, truth: i64| (used - truth).abs() as f64 / truth as f64 <= 0.05;
    let (used, truth) = (
        tenant_figure(&mut a, "used_bytes").await,
        memory_of(&redis, "tenant:a:").await,
    );
    assert!(
        within(used, truth),
        "before the pass: respite says {used}, Redis {truth}"
    );
    let passes = tenant_figure(&mut a, "quota_reconciliations").await;
    reconciled(&mut a, passes).await;
    let used = tenant_figure(&mut a, "used_bytes").await;
    let truth = memory_of(&redis, "tenant:a:").await;
    assert!(
        within(used, truth),
        "after the pass: respite says {used}, Redis {truth}"
    );
}

/// The issue's enforcement check: one tenant writing as fast as it can from 50 connections
/// through 2 respite instances never holds more than quota + overage + max(1% of quota, one
/// write), and another tenant's writes keep succeeding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_connections_through_two_instances_stay_within_the_limit() {
    let redis = Redis::start();
    let (quota, overage) = (400_000u64, 40_000u64);
    let config = quota_config(&redis, quota, overage, 600_000);
    let proxies = [
        Proxy::start_config(&config).await,
        Proxy::start_config(&config).await,
    ];
    let stop = Instant::now() + Duration::from_secs(3);
    let mut writers = Vec::new();
    for w in 0..50usize {
        let addr = proxies[w % 2].addr;
        writers.push(tokio::spawn(async move {
            let mut c = Raw::login(addr, "a", "pa").await;
            let value = "v".repeat(500);
            let (mut ok, mut oom) = (0u64, 0u64);
            let mut i = 0;
            while Instant::now() < stop {
                i += 1;
                let key = format!("w{w}:{i}");
                let r = c.cmd(&["SET", &key, &value]).await;
                match r.get(..4) {
                    Some("+OK\r") => ok += 1,
                    Some("-OOM") => oom += 1,
                    _ => panic!("{r}"),
                }
            }
            (ok, oom)
        }));
    }
    let other = {
        let addr = proxies[0].addr;
        tokio::spawn(async move {
            let mut c = Raw::login(addr, "b", "pb").await;
            let mut n = 0;
            while Instant::now() < stop {
                n += 1;
                assert_eq!(
                    c.cmd(&["SET", &format!("k{}", n % 100), "value"]).await,
                    "+OK\r\n"
                );
            }
            n
        })
    };
    let (mut ok, mut oom) = (0, 0);
    for w in writers {
        let (o, r) = w.await.unwrap();
        ok += o;
        oom += r;
    }
    assert!(other.await.unwrap() > 10);
    assert!(oom > 0 && ok > 0, "ok {ok}, refused {oom}");
    let held = memory_of(&redis, "tenant:a:").await as u64;
    let limit = quota + overage;
    let slack = (quota / 100).max(700);
    assert!(held <= limit + slack, "holds {held} past {limit} + {slack}");
    assert!(
        held >= limit * 9 / 10,
        "refused too early: holds {held} of {limit}"
    );
}

/// Quota escapes a hostile tenant tried: a collection whose sampled size hides its few huge
/// members, and writes Redis does not flag `denyoom` (a rename, SMOVE, a new stream consumer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_collections_and_moves_are_charged() {
    let redis = Redis::start();
    let mut d = redis.direct().await;
    // Tenant a is over its quota with data already in Redis.
    let () = q(&mut d, &["SET", "tenant:a:big", &"x".repeat(200_000)])
        .await
        .unwrap();
    let () = q(&mut d, &["SADD", "tenant:a:s", "member"]).await.unwrap();
    let _: String = q(&mut d, &["XADD", "tenant:a:st", "1-1", "f", "v"])
        .await
        .unwrap();
    let () = q(&mut d, &["XGROUP", "CREATE", "tenant:a:st", "g", "0"])
        .await
        .unwrap();
    let proxy = Proxy::start_config(&quota_config(&redis, 100_000, 0, 500)).await;

    // Many small members, then a few big ones: sampling 5 members would count ~1% of it.
    let mut b = proxy.client("b", "pb").await;
    let small: Vec<String> = (0..2000).map(|i| format!("m{i}")).collect();
    let mut zadd = vec!["ZADD", "z"];
    for m in &small {
        zadd.push("1");
        zadd.push(m);
    }
    let _: i64 = q(&mut b, &zadd).await.unwrap();
    let big = "x".repeat(60_000);
    for i in 0..4 {
        let member = format!("{i}{big}");
        let _: i64 = q(&mut b, &["ZADD", "z", "2", &member]).await.unwrap();
    }
    let used = usage_settles(&redis, &mut b, "tenant:b:").await;
    assert!(used > 240_000, "the big members count: {used}");

    let mut a = proxy.client("a", "pa").await;
    reconciled(&mut a, 0).await;
    assert!(tenant_figure(&mut a, "over_quota_bytes").await > 100_000);
    let long_name = "n".repeat(50_000);
    for cmd in [
        vec!["RENAME", "big", &long_name],
        vec!["RENAMENX", "s", &long_name],
        vec!["SMOVE", "s", &long_name, "member"],
        vec!["XREADGROUP", "GROUP", "g", &long_name, "STREAMS", "st", ">"],
    ] {
        let r: redis::RedisResult<redis::Value> = q(&mut a, &cmd).await;
        assert_eq!(r.unwrap_err().code(), Some("OOM"), "{}", cmd[0]);
    }
    // Nothing moved; reads and deletes still work.
    let consumers: Vec<redis::Value> = q(&mut d, &["XINFO", "CONSUMERS", "tenant:a:st", "g"])
        .await
        .unwrap();
    assert!(consumers.is_empty());
    let n: i64 = q(&mut a, &["SCARD", "s"]).await.unwrap();
    assert_eq!(n, 1);
    let n: i64 = q(&mut a, &["DEL", "big"]).await.unwrap();
    assert_eq!(n, 1);
}

/// RESTORE's payload is compressed: 8 MiB of one byte dumps to under 100 KB. It is charged
/// by what Redis holds after it, and removed again when that does not fit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_is_charged_by_what_redis_holds_after_it() {
    let redis = Redis::start_with(&["--sanitize-dump-payload", "yes"]);
    let proxy = Proxy::start_config(&quota_config(&redis, 1 << 20, 0, 60_000)).await;
    let mut b = proxy.client("b", "pb").await;
    let () = q(&mut b, &["SET", "big", &"x".repeat(8 << 20)])
        .await
        .unwrap();
    let () = q(&mut b, &["SET", "small", "hello"]).await.unwrap();
    let dump = |key: &'static str| {
        let mut b = b.clone();
        async move {
            redis::cmd("DUMP")
                .arg(key)
                .query_async::<Vec<u8>>(&mut b)
                .await
                .unwrap()
        }
    };
    let (big, small) = (dump("big").await, dump("small").await);
    assert!(big.len() < 200_000, "compressed: {}", big.len());

    let mut a = proxy.client("a", "pa").await;
    let restore = |key: &'static str, payload: Vec<u8>| {
        let mut a = a.clone();
        async move {
            redis::cmd("RESTORE")
                .arg(key)
                .arg(0)
                .arg(payload)
                .query_async::<String>(&mut a)
                .await
        }
    };
    let e = restore("k", big.clone()).await.unwrap_err();
    assert_eq!(e.code(), Some("OOM"), "{e}");
    assert!(!redis.keys().await.contains(&"tenant:a:k".to_string()));
    assert_eq!(restore("s", small.clone()).await.unwrap(), "OK");
    let e = restore("s", small).await.unwrap_err();
    assert_eq!(e.code(), Some("BUSYKEY"), "{e}");
    let got: String = q(&mut a, &["GET", "s"]).await.unwrap();
    assert_eq!(got, "hello");
    // REPLACE with a value that does not fit: refused, and the replaced value is back.
    let _: i64 = q(&mut a, &["PEXPIRE", "s", "100000"]).await.unwrap();
    let e = redis::cmd("RESTORE")
        .arg("s")
        .arg(0)
        .arg(big.clone())
        .arg("REPLACE")
        .query_async::<String>(&mut a)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("OOM"), "{e}");
    let got: String = q(&mut a, &["GET", "s"]).await.unwrap();
    assert_eq!(got, "hello");
    let ttl: i64 = q(&mut a, &["PTTL", "s"]).await.unwrap();
    assert!(ttl > 90_000, "the TTL came back too: {ttl}");
    // Inside MULTI its size could not be known before EXEC: refused.
    let mut raw = proxy.raw_as("a", "pa").await;
    assert_eq!(raw.cmd(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(
        raw.cmd(&["RESTORE", "m", "0", "x"]).await,
        "-ERR respite does not run this command inside MULTI\r\n"
    );
    assert!(raw.cmd(&["EXEC"]).await.starts_with("-EXECABORT"));
    let used = usage_settles(&redis, &mut a, "tenant:a:").await;
    assert!(used < 1 << 20, "{used}");
}

/// A script may write keys it builds itself, which no charge can foresee: past the limit a
/// tenant's EVAL/EVALSHA is refused like a write; read-only scripts still run.
#[tokio::test]
async fn an_over_quota_tenant_cannot_run_scripts_that_may_write() {
    let redis = Redis::start();
    let mut d = redis.direct().await;
    let () = q(&mut d, &["SET", "tenant:a:big", &"x".repeat(30_000)])
        .await
        .unwrap();
    let proxy = Proxy::start_config(&quota_config(&redis, 10_000, 0, 500)).await;
    let mut a = proxy.client("a", "pa").await;
    reconciled(&mut a, 0).await;
    let build = "for i = 1, 20 do redis.call('SETRANGE', 'u' .. i, 5000000, 'x') end return 1";
    let refused: redis::RedisResult<i64> = q(&mut a, &["EVAL", build, "0"]).await;
    assert_eq!(refused.unwrap_err().code(), Some("OOM"));
    let len: i64 = q(
        &mut a,
        &[
            "EVAL_RO",
            "return redis.call('STRLEN', KEYS[1])",
            "1",
            "big",
        ],
    )
    .await
    .unwrap();
    assert_eq!(len, 30_000);
    let keys = redis.keys().await;
    assert!(
        !keys.iter().any(|k| k.starts_with("tenant:a:u")),
        "{keys:?}"
    );
}

/// Reconciliation walks the keyspace once per pass for every tenant, not once per tenant:
/// 50 tenants with keys written around respite each get their usage from one walk, and Redis
/// sees as many SCAN steps as one walk of its keys takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_reconciliation_walk_serves_every_tenant() {
    let redis = Redis::start();
    let mut d = redis.direct().await;
    let mut config = format!(
        "[upstream]\nurl = \"{}\"\ncommand_timeout_ms = 2000\n\
         [quota]\nflush_interval_ms = 20\nmeasure_delay_ms = 0\nreconcile_interval_ms = 600000\n\
         reconcile_keys_per_second = 1000000\n",
        redis.url()
    );
    for t in 0..50 {
        config.push_str(&format!(
            "[[tenants]]\nid = \"t{t}\"\npassword = \"pt{t}\"\nquota_bytes = 10000000\n"
        ));
        // Written around respite: 20 keys each, 1,000 in all.
        for i in 0..20 {
            let () = q(
                &mut d,
                &["SET", &format!("tenant:t{t}:k{i}"), &"x".repeat(100 + t)],
            )
            .await
            .unwrap();
        }
    }
    let () = q(&mut d, &["CONFIG", "RESETSTAT"]).await.unwrap();
    let proxy = Proxy::start_config(&config).await;
    let mut clients = Vec::new();
    for t in [0, 17, 49] {
        let mut c = proxy.client(&format!("t{t}"), &format!("pt{t}")).await;
        reconciled(&mut c, 0).await;
        clients.push((t, c));
    }
    let stats: String = q(&mut d, &["INFO", "commandstats"]).await.unwrap();
    for (t, c) in &mut clients {
        let used = tenant_figure(c, "used_bytes").await;
        assert_eq!(used, memory_of(&redis, &format!("tenant:t{t}:")).await);
    }
    let scans: i64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_scan:calls="))
        .and_then(|l| l.split(',').next()?.parse().ok())
        .unwrap_or(0);
    // 1,000 keys in steps of 256: a handful of SCAN calls, not 50 walks of the keyspace.
    assert!((1..=10).contains(&scans), "{scans} SCAN calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_kept_when_redis_loses_respites_scripts() {
    let redis = Redis::start();
    let proxy = Proxy::start_config(&quota_config(&redis, 1_000_000, 0, 300_000)).await;
    let mut a = proxy.client("a", "pa").await;
    let mut b = proxy.client("b", "pb").await;
    let _: () = q(&mut a, &["SET", "k", &"x".repeat(1000)]).await.unwrap();
    usage_settles(&redis, &mut a, "tenant:a:").await;
    // Redis restarted or someone ran SCRIPT FLUSH: the flushes load the script again.
    let mut d = redis.direct().await;
    let _: () = q(&mut d, &["SCRIPT", "FLUSH"]).await.unwrap();
    let _: () = q(&mut a, &["SET", "j", &"y".repeat(3000)]).await.unwrap();
    let _: () = q(&mut b, &["SET", "j", &"z".repeat(2000)]).await.unwrap();
    let used = usage_settles(&redis, &mut a, "tenant:a:").await;
    assert!(used > 4000, "{used}");
    usage_settles(&redis, &mut b, "tenant:b:").await;
}
