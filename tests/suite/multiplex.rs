//! The multiplexed upstream: many sessions of several tenants over few shared connections,
//! pinned connections for state, and what Redis sees.

use std::time::{Duration, Instant};

use crate::harness::*;

/// Client connections Redis has, not counting the one asking.
async fn redis_clients(redis: &Redis) -> Vec<String> {
    let mut d = redis.direct().await;
    let list: String = q(&mut d, &["CLIENT", "LIST"]).await.unwrap();
    list.lines()
        .filter(|l| !l.contains("cmd=client|list"))
        // respite's own connection (bookkeeping, reading Redis' settings), not a client's.
        .filter(|l| !l.contains("name=respite-own "))
        .map(String::from)
        .collect()
}

fn proxy_config(redis: &Redis, upstream: &str) -> String {
    format!(
        "[upstream]\nurl = \"{}\"\ncommand_timeout_ms = 2000\n{upstream}\n{TENANTS}",
        redis.url()
    )
}

#[tokio::test]
async fn many_sessions_interleave_over_one_shared_connection() {
    let redis = Redis::start();
    let proxy = Proxy::start_config(&proxy_config(&redis, "connections = 1")).await;
    let addr = proxy.addr;
    let mut tasks = Vec::new();
    for s in 0..24 {
        tasks.push(tokio::spawn(async move {
            let (tenant, pass) = if s % 2 == 0 { ("a", "pa") } else { ("b", "pb") };
            let mut c = Raw::login(addr, tenant, pass).await;
            let key = format!("counter{s}");
            for round in 0..50 {
                // A pipeline of mixed commands, some answered by respite itself; every reply
                // must be this session's own, in order.
                let v = format!("{s}-{round}");
                c.send_cmd(&["SET", "shared-name", &v]).await;
                c.send_cmd(&["INCR", &key]).await;
                c.send_cmd(&["CLIENT", "GETNAME"]).await;
                c.send_cmd(&["GET", "shared-name"]).await;
                c.send_cmd(&["ECHO", &v]).await;
                assert_eq!(c.reply().await, "+OK\r\n");
                assert_eq!(c.reply().await, format!(":{}\r\n", round + 1));
                assert_eq!(c.reply().await, "$-1\r\n");
                let got = c.reply().await;
                let owner: usize = got
                    .split("\r\n")
                    .nth(1)
                    .unwrap()
                    .split('-')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                // Another session of the same tenant may have written in between, but never
                // a session of the other tenant.
                assert_eq!(owner % 2, s % 2, "{got}");
                assert_eq!(c.reply().await, format!("${}\r\n{v}\r\n", v.len()));
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .unwrap()
            .unwrap();
    }
    // One shared connection for all 24 clients (RESP2 only here), and nothing pinned.
    assert_eq!(redis_clients(&redis).await.len(), 1);
    let mut d = redis.direct().await;
    assert_eq!(
        q::<i64>(&mut d, &["GET", "tenant:a:counter0"])
            .await
            .unwrap(),
        50
    );
    assert_eq!(
        q::<i64>(&mut d, &["GET", "tenant:b:counter23"])
            .await
            .unwrap(),
        50
    );
}

#[tokio::test]
async fn redis_sees_the_configured_connections_whatever_the_client_count() {
    let redis = Redis::start();
    let proxy = Proxy::start_config(&proxy_config(&redis, "connections = 3")).await;
    let mut clients = Vec::new();
    for i in 0..300 {
        let (t, p) = if i % 3 == 0 { ("b", "pb") } else { ("a", "pa") };
        let mut c = proxy.raw_as(t, p).await;
        assert_eq!(c.cmd(&["SET", &format!("k{i}"), "v"]).await, "+OK\r\n");
        clients.push(c);
    }
    for c in clients.iter_mut() {
        assert_eq!(c.cmd(&["PING"]).await, "+PONG\r\n");
    }
    assert_eq!(redis_clients(&redis).await.len(), 3);
    // RESP3 sessions get shared connections of their own protocol.
    let mut r3 = proxy.raw().await;
    r3.send_cmd(&["HELLO", "3", "AUTH", "a", "pa"]).await;
    r3.protocol = 3;
    r3.reply().await;
    assert_eq!(r3.cmd(&["HGETALL", "nothing"]).await, "%0\r\n");
    // Shared connections open when first used: at most 3 per protocol.
    let conns = redis_clients(&redis).await;
    let resp3 = conns.iter().filter(|l| l.contains("resp=3")).count();
    assert!((1..=3).contains(&resp3), "{conns:?}");
    assert_eq!(conns.len() - resp3, 3);
}

/// `server.threads = 2`: sessions run on two worker threads, each with shared connections
/// of its own (`connections` per worker), and every reply still reaches its request:
/// pipelines from many clients, a transaction, a blocked pop woken from the other worker,
/// pub/sub across workers.
#[tokio::test]
async fn two_worker_threads_keep_every_reply_in_place() {
    let redis = Redis::start();
    let config = proxy_config(&redis, "connections = 1");
    let proxy = Proxy::start_config(&format!("[server]\nthreads = 2\n{config}")).await;
    let mut tasks = Vec::new();
    for c in 0..20 {
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            let mut conn = Raw::login(addr, "a", "pa").await;
            let mut pipeline = String::new();
            for i in 0..100 {
                let (k, v) = (format!("c{c}k{i}"), format!("v{c}.{i}"));
                pipeline.push_str(&format!(
                    "*3\r\n$3\r\nSET\r\n${}\r\n{k}\r\n${}\r\n{v}\r\n",
                    k.len(),
                    v.len()
                ));
                pipeline.push_str(&format!("*2\r\n$3\r\nGET\r\n${}\r\n{k}\r\n", k.len()));
            }
            conn.send(pipeline.as_bytes()).await;
            for i in 0..100 {
                assert_eq!(conn.reply().await, "+OK\r\n");
                let v = format!("v{c}.{i}");
                assert_eq!(conn.reply().await, format!("${}\r\n{v}\r\n", v.len()));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        redis_clients(&redis).await.len(),
        2,
        "one shared connection per worker (connections = 1)"
    );
    // Sessions alternate between the workers: these two are on different ones.
    let mut waiter = proxy.raw_as("a", "pa").await;
    let mut pusher = proxy.raw_as("a", "pa").await;
    waiter.send_cmd(&["BLPOP", "q", "5"]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(pusher.cmd(&["RPUSH", "q", "x"]).await, ":1\r\n");
    assert_eq!(waiter.reply().await, "*2\r\n$1\r\nq\r\n$1\r\nx\r\n");
    waiter.send_cmd(&["SUBSCRIBE", "news"]).await;
    assert_eq!(
        waiter.reply().await,
        "*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n"
    );
    assert_eq!(pusher.cmd(&["PUBLISH", "news", "hi"]).await, ":1\r\n");
    assert_eq!(
        waiter.reply().await,
        "*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nhi\r\n"
    );
    for line in ["MULTI", "INCR n", "INCR n", "EXEC"] {
        pusher.send_cmd(&line.split(' ').collect::<Vec<_>>()).await;
    }
    for want in [
        "+OK\r\n",
        "+QUEUED\r\n",
        "+QUEUED\r\n",
        "*2\r\n:1\r\n:2\r\n",
    ] {
        assert_eq!(pusher.reply().await, want);
    }
}

#[tokio::test]
async fn a_shared_connection_killed_mid_burst_fails_only_what_was_in_flight() {
    let redis = Redis::start();
    let proxy = Proxy::start_config(&proxy_config(&redis, "connections = 1")).await;
    let addr = proxy.addr;
    let mut tasks = Vec::new();
    for s in 0..8 {
        tasks.push(tokio::spawn(async move {
            let mut c = Raw::login(addr, "a", "pa").await;
            let (mut ok, mut failed) = (0, 0);
            let until = Instant::now() + Duration::from_millis(1500);
            let mut i = 0u64;
            while Instant::now() < until {
                let key = format!("s{s}");
                c.send_cmd(&["SET", &key, &i.to_string()]).await;
                c.send_cmd(&["GET", &key]).await;
                let set = c.reply().await;
                let get = c.reply().await;
                if set == "+OK\r\n" {
                    ok += 1;
                    // The GET answers this session's own SET, or fails; never another's.
                    if !get.starts_with("-ERR upstream unavailable") {
                        assert_eq!(get, format!("${}\r\n{i}\r\n", i.to_string().len()));
                    }
                } else {
                    assert!(set.starts_with("-ERR upstream unavailable: "), "{set}");
                    failed += 1;
                }
                i += 1;
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let shared = redis_clients(&redis).await;
    assert_eq!(shared.len(), 1, "the one shared connection: {shared:?}");
    let mut d = redis.direct().await;
    let id = shared[0]
        .split(' ')
        .find_map(|f| f.strip_prefix("id="))
        .unwrap();
    let killed: i64 = q(&mut d, &["CLIENT", "KILL", "ID", id]).await.unwrap();
    assert_eq!(killed, 1);
    let mut total_ok = 0;
    for t in tasks {
        let (ok, _failed) = tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("no session hangs")
            .unwrap();
        total_ok += ok;
    }
    assert!(total_ok > 0);
    // And traffic flows again on a new shared connection.
    let mut c = proxy.raw_as("b", "pb").await;
    assert_eq!(c.cmd(&["SET", "after", "1"]).await, "+OK\r\n");
}

#[tokio::test]
async fn stateful_commands_pin_and_stay_exact_under_load() {
    let redis = Redis::start();
    let proxy = Proxy::start_config(&proxy_config(&redis, "connections = 1")).await;
    let addr = proxy.addr;
    let mut tasks = Vec::new();
    // Transactions with WATCH retry loops, racing each other and plain INCRs.
    for s in 0..6 {
        tasks.push(tokio::spawn(async move {
            let mut c = Raw::login(addr, "a", "pa").await;
            let mut done = 0;
            while done < 30 {
                assert_eq!(c.cmd(&["WATCH", "balance"]).await, "+OK\r\n");
                let v = c.cmd(&["GET", "balance"]).await;
                let n: i64 = v
                    .split("\r\n")
                    .nth(1)
                    .filter(|x| !x.is_empty())
                    .unwrap_or("0")
                    .parse()
                    .unwrap_or(0);
                assert_eq!(c.cmd(&["MULTI"]).await, "+OK\r\n");
                assert_eq!(
                    c.cmd(&["SET", "balance", &(n + 1).to_string()]).await,
                    "+QUEUED\r\n"
                );
                assert_eq!(c.cmd(&["INCR", &format!("tx{s}")]).await, "+QUEUED\r\n");
                let exec = c.cmd(&["EXEC"]).await;
                if exec.starts_with("*2\r\n") {
                    done += 1;
                } else {
                    assert_eq!(exec, "*-1\r\n", "aborted by another WATCHer");
                }
            }
        }));
    }
    for s in 0..4 {
        tasks.push(tokio::spawn(async move {
            let mut c = Raw::login(addr, "b", "pb").await;
            for i in 1..=300 {
                assert_eq!(
                    c.cmd(&["INCR", &format!("plain{s}")]).await,
                    format!(":{i}\r\n")
                );
            }
        }));
    }
    // Blocking pops fed by a pusher.
    let popper = tokio::spawn(async move {
        let mut c = Raw::login(addr, "a", "pa").await;
        let mut got = Vec::new();
        for _ in 0..20 {
            let r = c.cmd(&["BLPOP", "jobs", "5"]).await;
            got.push(r.split("\r\n").nth(4).unwrap().to_string());
        }
        got
    });
    let mut pusher = proxy.raw_as("a", "pa").await;
    for i in 0..20 {
        pusher.cmd(&["RPUSH", "jobs", &i.to_string()]).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .unwrap()
            .unwrap();
    }
    let got = popper.await.unwrap();
    assert_eq!(got, (0..20).map(|i| i.to_string()).collect::<Vec<_>>());
    let mut d = redis.direct().await;
    assert_eq!(
        q::<i64>(&mut d, &["GET", "tenant:a:balance"])
            .await
            .unwrap(),
        180
    );
    for s in 0..4 {
        assert_eq!(
            q::<i64>(&mut d, &["GET", &format!("tenant:b:plain{s}")])
                .await
                .unwrap(),
            300
        );
    }
}

#[tokio::test]
async fn pinned_pool_exhaustion_waits_then_fails_and_stateless_traffic_flows() {
    let redis = Redis::start();
    let proxy = Proxy::start_config(&format!(
        "[upstream]\nurl = \"{}\"\ncommand_timeout_ms = 400\npinned_max = 2\n{TENANTS}",
        redis.url()
    ))
    .await;
    let mut b1 = proxy.raw_as("a", "pa").await;
    let mut b2 = proxy.raw_as("b", "pb").await;
    b1.send_cmd(&["BLPOP", "q", "1.5"]).await;
    b2.send_cmd(&["BLPOP", "q", "1.5"]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = proxy.raw_as("a", "pa").await;
    let t = Instant::now();
    assert_eq!(
        third.cmd(&["BLPOP", "q", "1"]).await,
        "-ERR upstream unavailable: all 2 pinned connections are in use (upstream.pinned_max)\r\n"
    );
    assert!(t.elapsed() >= Duration::from_millis(350) && t.elapsed() < Duration::from_millis(1200));
    assert_eq!(
        third.cmd(&["MULTI"]).await.split(':').next().unwrap(),
        "-ERR upstream unavailable"
    );
    assert_eq!(
        third.cmd(&["SET", "k", "v"]).await,
        "+OK\r\n",
        "not left in a phantom MULTI"
    );
    assert_eq!(b1.reply().await, "*-1\r\n");
    assert_eq!(b2.reply().await, "*-1\r\n");
    // Released: a pinned connection is available again.
    assert_eq!(third.cmd(&["BLPOP", "q", "0.1"]).await, "*-1\r\n");
}

#[tokio::test]
async fn nothing_a_tenant_sets_on_a_pinned_connection_reaches_the_next_holder() {
    let redis = Redis::start();
    let proxy = Proxy::start_config(&proxy_config(&redis, "connections = 1\npinned_max = 1")).await;
    let mut a = proxy.raw_as("a", "pa").await;
    assert!(a.cmd(&["SUBSCRIBE", "secret"]).await.contains("subscribe"));
    assert!(a.cmd(&["PSUBSCRIBE", "*"]).await.contains("psubscribe"));
    assert!(a.cmd(&["UNSUBSCRIBE"]).await.contains("unsubscribe"));
    assert!(a.cmd(&["PUNSUBSCRIBE"]).await.contains("punsubscribe"));
    assert_eq!(a.cmd(&["CLIENT", "NO-EVICT", "on"]).await, "+OK\r\n");
    assert_eq!(a.cmd(&["WATCH", "k"]).await, "+OK\r\n");
    assert_eq!(a.cmd(&["CLIENT", "NO-EVICT", "off"]).await, "+OK\r\n");
    assert_eq!(a.cmd(&["UNWATCH"]).await, "+OK\r\n");
    // The only pinned connection is reset in the background, then b gets it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut b = proxy.raw_as("b", "pb").await;
    assert_eq!(b.cmd(&["BLPOP", "nothing", "0.5"]).await, "*-1\r\n");
    let pinned: Vec<String> = redis_clients(&redis)
        .await
        .into_iter()
        .filter(|l| !l.contains("cmd=get") && !l.contains("cmd=hello"))
        .collect();
    for l in &pinned {
        assert!(
            l.contains("flags=N") && l.contains("sub=0") && l.contains("psub=0"),
            "{l}"
        );
    }
    // a publishes to the channel it once subscribed: b hears nothing.
    let mut b_sub = b;
    assert!(b_sub
        .cmd(&["SUBSCRIBE", "mine"])
        .await
        .contains("subscribe"));
    let mut a2 = proxy.raw_as("a", "pa").await;
    assert_eq!(a2.cmd(&["PUBLISH", "secret", "x"]).await, ":0\r\n");
    assert_eq!(b_sub.try_reply(Duration::from_millis(200)).await, None);
}
