//! Shared market data: one name for every tenant, read-only but to a publisher, served from
//! respite's cache, fetched once however many ask, from Redis and then the origin.

use std::time::{Duration, Instant};

use crate::harness::*;

const PRICE: &str = "shared:market:BTC-USD:price";

/// 100 tenants t0..t99, a publisher `pub`, and `[shared]` with `extra` appended.
fn shared_config(redis: &Redis, extra: &str) -> String {
    let mut c = format!(
        "[upstream]\nurl = \"{}\"\ncommand_timeout_ms = 2000\n\
         [[tenants]]\nid = \"pub\"\npassword = \"ppub\"\nrole = \"publisher\"\n",
        redis.url()
    );
    for i in 0..100 {
        c.push_str(&format!(
            "[[tenants]]\nid = \"t{i}\"\npassword = \"pt{i}\"\n"
        ));
    }
    c.push_str("[shared]\nprefixes = [\"shared:market:\"]\n");
    c.push_str(extra);
    c
}

/// respite with [`shared_config`], an origin, and a TTL tier of `seconds` for `pattern`.
async fn with_origin(redis: &Redis, origin: &str, tier: Option<(&str, u64)>) -> Proxy {
    let tier = tier.map_or(String::new(), |(pattern, seconds)| {
        format!("[[shared.ttl]]\npattern = \"{pattern}\"\nseconds = {seconds}\n")
    });
    let origin = format!("[shared.origin]\nurl = \"{origin}\"\ntimeout_ms = 1000\n");
    Proxy::start_config(&shared_config(redis, &(tier + &origin))).await
}

/// A number from INFO's `# Shared` section.
async fn shared_figure(r: &mut Raw, field: &str) -> u64 {
    info_field(&r.cmd(&["INFO", "shared"]).await, field) as u64
}

/// How many GETs Redis has run since the last CONFIG RESETSTAT.
async fn redis_gets(redis: &Redis) -> u64 {
    let mut d = redis.direct().await;
    let stats: String = q(&mut d, &["INFO", "commandstats"]).await.unwrap();
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_get:calls="))
        .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_keys_have_one_name_and_only_a_publisher_writes_them() {
    let redis = Redis::start();
    let proxy = Proxy::start_config(&shared_config(&redis, "")).await;
    let mut publisher = proxy.raw_as("pub", "ppub").await;
    assert_eq!(publisher.cmd(&["SET", PRICE, "100"]).await, "+OK\r\n");
    assert!(
        redis.keys().await.contains(&PRICE.to_string()),
        "stored by its plain name"
    );

    let mut a = proxy.raw_as("t1", "pt1").await;
    let mut b = proxy.raw_as("t2", "pt2").await;
    assert_eq!(a.cmd(&["GET", PRICE]).await, "$3\r\n100\r\n");
    assert_eq!(b.cmd(&["GET", PRICE]).await, "$3\r\n100\r\n");

    // Every kind of write by a tenant is refused, and the value stays.
    for write in [
        vec!["SET", PRICE, "1"],
        vec!["DEL", PRICE],
        vec!["EXPIRE", PRICE, "1"],
        vec!["HSET", PRICE, "f", "v"],
        vec!["APPEND", PRICE, "x"],
        vec!["RENAME", PRICE, "mine"],
        vec!["SUNIONSTORE", "shared:market:x", "mine"],
    ] {
        let r = a.cmd(&write).await;
        assert!(
            r.starts_with("-NOPERM ") && r.contains("shared keys are read-only"),
            "{write:?}: {r}"
        );
    }
    let mut d = redis.direct().await;
    let v: String = q(&mut d, &["GET", PRICE]).await.unwrap();
    assert_eq!(v, "100");

    // Any read, also mixed with the tenant's own keys; copying into its own keys is fine.
    assert_eq!(a.cmd(&["SET", "mine", "m"]).await, "+OK\r\n");
    assert_eq!(
        a.cmd(&["MGET", "mine", PRICE, "nope"]).await,
        "*3\r\n$1\r\nm\r\n$3\r\n100\r\n$-1\r\n"
    );
    assert_eq!(a.cmd(&["EXISTS", PRICE, "mine"]).await, ":2\r\n");
    assert_eq!(a.cmd(&["TYPE", PRICE]).await, "+string\r\n");
    assert_eq!(a.cmd(&["TTL", PRICE]).await, ":-1\r\n");
    assert_eq!(a.cmd(&["COPY", PRICE, "copy"]).await, ":1\r\n");
    assert_eq!(a.cmd(&["GET", "copy"]).await, "$3\r\n100\r\n");
    assert_eq!(
        b.cmd(&["GET", "copy"]).await,
        "$-1\r\n",
        "the copy is t1's own"
    );
    // Shared keys are not in a tenant's keyspace.
    assert_eq!(a.cmd(&["DBSIZE"]).await, ":2\r\n");

    // A publisher's write through respite is what the next read sees, on any connection.
    assert_eq!(publisher.cmd(&["SET", PRICE, "101"]).await, "+OK\r\n");
    assert_eq!(a.cmd(&["GET", PRICE]).await, "$3\r\n101\r\n");
    publisher.send_cmd(&["SET", PRICE, "102"]).await;
    publisher.send_cmd(&["GET", PRICE]).await;
    assert_eq!(publisher.reply().await, "+OK\r\n");
    assert_eq!(publisher.reply().await, "$3\r\n102\r\n");

    // A shared key of another type: Redis' own error.
    assert_eq!(
        publisher.cmd(&["HSET", "shared:market:h", "f", "v"]).await,
        ":1\r\n"
    );
    assert_eq!(
        a.cmd(&["GET", "shared:market:h"]).await,
        "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
    );
    assert_eq!(
        a.cmd(&["HGET", "shared:market:h", "f"]).await,
        "$1\r\nv\r\n"
    );
    // Without an origin, a key Redis lacks is nil.
    assert_eq!(a.cmd(&["GET", "shared:market:none"]).await, "$-1\r\n");
    // Channels are never shared, whatever their name.
    assert_eq!(
        a.cmd(&["SPUBLISH", "shared:market:c", "hi"]).await,
        ":0\r\n"
    );
}

/// The check: 1,000 concurrent GETs of one cold key from 100 tenants make exactly
/// one Redis fetch and one origin fetch, and all get the same value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_misses_make_one_redis_and_one_origin_fetch() {
    let redis = Redis::start();
    let origin = Origin::start(Duration::from_millis(300)).await;
    origin.set(PRICE, 200, "42000.5");
    let proxy = with_origin(&redis, &origin.url, None).await;
    let mut clients = Vec::new();
    for i in 0..100 {
        clients.push(Raw::login(proxy.addr, &format!("t{i}"), &format!("pt{i}")).await);
    }
    let mut d = redis.direct().await;
    let () = q(&mut d, &["CONFIG", "RESETSTAT"]).await.unwrap();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                for _ in 0..10 {
                    c.send_cmd(&["GET", PRICE]).await;
                }
                let mut replies = Vec::new();
                for _ in 0..10 {
                    replies.push(c.reply().await);
                }
                replies
            })
        })
        .collect();
    for t in tasks {
        for r in t.await.unwrap() {
            assert_eq!(r, "$7\r\n42000.5\r\n");
        }
    }
    assert_eq!(origin.hits(PRICE), 1, "origin fetches");
    assert_eq!(redis_gets(&redis).await, 1, "Redis fetches");
    // The origin's value is in Redis with the price tier's TTL.
    let pttl: i64 = q(&mut d, &["PTTL", PRICE]).await.unwrap();
    assert!((50_000..=60_000).contains(&pttl), "{pttl}");
    let mut r = proxy.raw_as("t0", "pt0").await;
    assert_eq!(shared_figure(&mut r, "shared_reads").await, 1000);
    assert_eq!(shared_figure(&mut r, "shared_redis_fetches").await, 1);
    assert_eq!(shared_figure(&mut r, "shared_origin_fetches").await, 1);
    assert!(shared_figure(&mut r, "shared_flight_waiters").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_404_is_nil_and_failures_are_errors_that_are_not_cached() {
    let redis = Redis::start();
    let origin = Origin::start(Duration::ZERO).await;
    let proxy = with_origin(&redis, &origin.url, None).await;
    let mut a = proxy.raw_as("t1", "pt1").await;
    assert_eq!(a.cmd(&["GET", "shared:market:NONE:price"]).await, "$-1\r\n");

    let key = "shared:market:ETH:price";
    origin.set(key, 503, "down");
    let e = a.cmd(&["GET", key]).await;
    assert!(
        e.starts_with("-ERR origin http://") && e.contains("answered HTTP 503"),
        "{e}"
    );
    origin.set(key, 200, "3000");
    assert_eq!(
        a.cmd(&["GET", key]).await,
        "$4\r\n3000\r\n",
        "the error was not cached"
    );
    assert_eq!(origin.hits(key), 2);

    // A slow origin: an error naming it within its timeout.
    let slow = Origin::start(Duration::from_secs(3)).await;
    slow.set(key, 200, "late");
    let proxy = with_origin(&redis, &slow.url, None).await;
    let mut a = proxy.raw_as("t1", "pt1").await;
    let started = Instant::now();
    let e = a.cmd(&["GET", "shared:market:SOL:price"]).await;
    assert!(e.contains("no answer within 1000 ms"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_values_never_outlive_their_ttl_and_hot_keys_are_refreshed_ahead() {
    let redis = Redis::start();
    let origin = Origin::start(Duration::ZERO).await;
    let key = "shared:market:BTC:fast";
    origin.set(key, 200, "v1");
    let proxy = with_origin(&redis, &origin.url, Some(("shared:market:*:fast", 2))).await;
    let mut publisher = proxy.raw_as("pub", "ppub").await;
    let mut a = proxy.raw_as("t1", "pt1").await;

    // A value published with a short TTL is not served past it.
    assert_eq!(
        publisher
            .cmd(&["SET", "shared:market:X:brief", "b", "PX", "300"])
            .await,
        "+OK\r\n"
    );
    assert_eq!(
        a.cmd(&["GET", "shared:market:X:brief"]).await,
        "$1\r\nb\r\n"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(a.cmd(&["GET", "shared:market:X:brief"]).await, "$-1\r\n");

    // A hot key with a 2 s tier, read every 20 ms for 6 s: refreshed ahead (fetched again
    // while it still lives in Redis), not fetched after it expired. Redis counts a miss
    // for every fetch of the key after it expired; one is forgiven, for a refresh that a
    // loaded machine schedules too late. Without refresh ahead there are three.
    assert_eq!(a.cmd(&["GET", key]).await, "$2\r\nv1\r\n");
    let mut d = redis.direct().await;
    let misses = async |d: &mut redis::aio::MultiplexedConnection| {
        let stats: String = q(d, &["INFO", "stats"]).await.unwrap();
        info_field(&stats, "keyspace_misses")
    };
    let before = misses(&mut d).await;
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        assert_eq!(a.cmd(&["GET", key]).await, "$2\r\nv1\r\n");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let expired = misses(&mut d).await - before;
    assert!(
        expired <= 1,
        "the hot key was fetched {expired} times after it expired"
    );
    let fetches = origin.hits(key);
    assert!(
        (3..=5).contains(&fetches),
        "{fetches} origin fetches in 6 s of a 2 s tier"
    );
}

/// A session reading several shared keys in turn (so that no read is of the key read just
/// before it) is served from the cache's front: a publisher's write through respite is
/// seen at once, and a value changed in Redis around respite within `max_stale_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_of_many_keys_sees_a_publishers_write_at_once() {
    let redis = Redis::start();
    let proxy = Proxy::start_config(&shared_config(&redis, "max_stale_ms = 300\n")).await;
    let keys: Vec<String> = (0..5)
        .map(|i| format!("shared:market:M{i}:price"))
        .collect();
    let mut publisher = proxy.raw_as("pub", "ppub").await;
    for k in &keys {
        assert_eq!(publisher.cmd(&["SET", k, "1"]).await, "+OK\r\n");
    }
    let mut reader = proxy.raw_as("t1", "pt1").await;
    let read_all = async |reader: &mut Raw, changed: usize, value: &str| {
        for (i, k) in keys.iter().enumerate() {
            let want = if i == changed { value } else { "1" };
            assert_eq!(
                reader.cmd(&["GET", k]).await,
                format!("$1\r\n{want}\r\n"),
                "{k}"
            );
        }
    };
    for _ in 0..3 {
        read_all(&mut reader, usize::MAX, "1").await;
    }
    let hits = shared_figure(&mut reader, "shared_l1_hits").await;
    assert!(hits >= 10, "{hits} L1 hits of 15 reads");
    assert_eq!(publisher.cmd(&["SET", &keys[2], "2"]).await, "+OK\r\n");
    read_all(&mut reader, 2, "2").await;
    read_all(&mut reader, 2, "2").await;
    let mut d = redis.direct().await;
    q::<()>(&mut d, &["SET", &keys[2], "3"]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    read_all(&mut reader, 2, "3").await;
}

/// The soak, shortened for CI: tenants reading the top 100 symbols continuously get
/// their values from L1 (hit rate above 95%) and the origin sees at most one fetch per key
/// per TTL window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_hot_symbols_are_served_from_l1_and_fetched_once_per_window() {
    let redis = Redis::start();
    let origin = Origin::start(Duration::ZERO).await;
    let keys: Vec<String> = (0..100)
        .map(|i| format!("shared:market:S{i}:hot"))
        .collect();
    for k in &keys {
        origin.set(k, 200, "price");
    }
    let proxy = with_origin(&redis, &origin.url, Some(("shared:market:*:hot", 3))).await;
    let run = Duration::from_secs(6);
    let until = Instant::now() + run;
    let readers: Vec<_> = (0..20)
        .map(|t| {
            let (addr, keys) = (proxy.addr, keys.clone());
            tokio::spawn(async move {
                let mut c = Raw::login(addr, &format!("t{t}"), &format!("pt{t}")).await;
                let mut n = 0usize;
                while Instant::now() < until {
                    for j in 0..20 {
                        c.send_cmd(&["GET", &keys[(n + j * 7 + t) % 100]]).await;
                    }
                    for _ in 0..20 {
                        assert_eq!(c.reply().await, "$5\r\nprice\r\n");
                    }
                    n += 1;
                }
            })
        })
        .collect();
    for r in readers {
        r.await.unwrap();
    }
    let windows = (run.as_secs() / 3 + 1) as usize;
    for k in &keys {
        assert!(
            origin.hits(k) <= windows,
            "{k}: {} origin fetches",
            origin.hits(k)
        );
    }
    let mut r = proxy.raw_as("t0", "pt0").await;
    let (reads, hits) = (
        shared_figure(&mut r, "shared_reads").await,
        shared_figure(&mut r, "shared_l1_hits").await,
    );
    assert!(
        hits as f64 / reads as f64 > 0.95,
        "{hits} L1 hits of {reads} reads"
    );
}

/// `fetches_per_second_per_tenant`: a tenant asking for many distinct missing keys causes at
/// most its rate of origin fetches; past it the misses are nil (not cached), or an error for
/// a tenant with `rate_limit = "refuse"`; another tenant fetches with its own allowance.
#[tokio::test]
async fn a_tenants_misses_fetch_from_the_origin_at_its_rate() {
    let redis = Redis::start();
    let origin = Origin::start(Duration::ZERO).await;
    let extra = format!(
        "[shared.origin]\nurl = \"{}\"\ntimeout_ms = 1000\nfetches_per_second_per_tenant = 2\n\
         [[tenants]]\nid = \"strict\"\npassword = \"pstrict\"\nrate_limit = \"refuse\"\n",
        origin.url
    );
    let proxy = Proxy::start_config(&shared_config(&redis, &extra)).await;
    let key = |i: usize| format!("shared:market:S{i}:price");
    for i in 0..20 {
        origin.set(&key(i), 200, "1");
    }
    let mut a = proxy.raw_as("t1", "pt1").await;
    let mut found = 0;
    for i in 0..10 {
        match a.cmd(&["GET", &key(i)]).await.as_str() {
            "$1\r\n1\r\n" => found += 1,
            "$-1\r\n" => {}
            other => panic!("{other}"),
        }
    }
    // The burst: two at once (half a second's worth at 2 a second).
    assert!((1..=3).contains(&found), "{found}");
    let fetched: usize = (0..10).map(|i| origin.hits(&key(i))).sum();
    assert_eq!(fetched, found);
    // Another tenant's allowance is its own.
    let mut b = proxy.raw_as("t2", "pt2").await;
    assert_eq!(b.cmd(&["GET", &key(9)]).await, "$1\r\n1\r\n");
    let mut strict = proxy.raw_as("strict", "pstrict").await;
    let mut refused = 0;
    for i in 10..20 {
        let reply = strict.cmd(&["GET", &key(i)]).await;
        if reply.starts_with("-ERR rate limit exceeded: tenant 'strict' may cause 2 origin") {
            refused += 1;
        }
    }
    assert!(refused >= 5, "{refused}");
    // A refused miss was not cached: the key is fetched once the tenant has allowance again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(a.cmd(&["GET", &key(8)]).await, "$1\r\n1\r\n");
}
