//! Noisy neighbours: what one tenant does cannot take another's memory, connections or
//! Redis time. Each bound against a real redis-server.

use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::harness::*;

fn config(redis: &Redis, extra: &str) -> String {
    format!(
        "[upstream]\nurl = \"{}\"\n{extra}\n\
         [[tenants]]\nid = \"a\"\npassword = \"pa\"\n\
         [[tenants]]\nid = \"b\"\npassword = \"pb\"\n",
        redis.url()
    )
}

/// Reads whatever comes until the server closes the connection (true) or `wait` passes.
async fn read_until_closed(c: &mut Raw, wait: Duration) -> (bool, usize) {
    let mut total = 0;
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, c.stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (true, total),
            Ok(Ok(n)) => total += n,
            Err(_) => return (false, total),
        }
    }
}

/// The case: a client pipelines GETs of a 100 KB value and never reads. respite
/// holds at most its bound of replies for it, then closes it, as Redis closes a client past
/// its client-output-buffer-limit; the other tenant is served throughout.
#[tokio::test]
async fn a_client_that_never_reads_is_closed_past_its_output_limit() {
    let redis = Redis::start();
    let proxy = Proxy::start_config(&config(
        &redis,
        "[server]\nclient_output_limit_bytes = 1048576\n",
    ))
    .await;
    let value = "x".repeat(100_000);
    let mut a = proxy.raw_as("a", "pa").await;
    assert_eq!(a.cmd(&["SET", "big", &value]).await, "+OK\r\n");
    let mut batch = bytes::BytesMut::new();
    for _ in 0..300 {
        respite::wire::encode_request(&mut batch, [&b"GET"[..], b"big"].into_iter());
    }
    a.send(&batch).await;
    // Not read for a while: the replies pile up in respite until the bound closes it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut b = proxy.raw_as("b", "pb").await;
    assert_eq!(b.cmd(&["SET", "k", "v"]).await, "+OK\r\n");
    let (closed, got) = read_until_closed(&mut a, Duration::from_secs(10)).await;
    assert!(closed, "closed past its bound");
    assert!(
        got < 300 * 100_000,
        "it did not get every reply: {got} bytes"
    );
    assert_eq!(b.cmd(&["GET", "k"]).await, "$1\r\nv\r\n");
    // A client that reads what it asks for is never closed for it.
    let mut c = proxy.raw_as("a", "pa").await;
    for _ in 0..50 {
        assert_eq!(c.cmd(&["GET", "big"]).await.len(), 100_000 + 11);
    }
}

/// `output_limit_bytes` bounds the sum over a tenant's clients: five connections that each
/// stay under the client bound add up past the tenant's, and the tenant's clients are
/// closed, not another tenant's.
#[tokio::test]
async fn a_tenants_clients_together_stay_within_its_output_limit() {
    let redis = Redis::start();
    let proxy = Proxy::start_config(&config(
        &redis,
        "[server]\nclient_output_limit_bytes = 0\n[defaults]\noutput_limit_bytes = 2097152\n",
    ))
    .await;
    let value = "x".repeat(100_000);
    let mut setup = proxy.raw_as("a", "pa").await;
    assert_eq!(setup.cmd(&["SET", "big", &value]).await, "+OK\r\n");
    let mut b = proxy.raw_as("b", "pb").await;
    assert_eq!(b.cmd(&["SET", "big", &value]).await, "+OK\r\n");
    let mut batch = bytes::BytesMut::new();
    for _ in 0..100 {
        respite::wire::encode_request(&mut batch, [&b"GET"[..], b"big"].into_iter());
    }
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut c = proxy.raw_as("a", "pa").await;
        c.send(&batch).await;
        clients.push(c);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut closed = 0;
    for c in &mut clients {
        if read_until_closed(c, Duration::from_secs(5)).await.0 {
            closed += 1;
        }
    }
    assert!(closed >= 1, "at least one of a's clients is closed");
    // b is not a's neighbour in this: its own pipelines are whole.
    for _ in 0..20 {
        assert_eq!(b.cmd(&["GET", "big"]).await.len(), 100_000 + 11);
    }
}

/// `ops_per_second` with the default `rate_limit = "delay"`: a flood is slowed to the rate
/// (never below it), every request answered in order without an error, and the other tenant
/// is served while the flooder is held back.
#[tokio::test]
async fn a_tenant_past_its_rate_is_slowed_not_refused() {
    let redis = Redis::start();
    let proxy = Proxy::start_config(&format!(
        "[upstream]\nurl = \"{}\"\n\
         [[tenants]]\nid = \"a\"\npassword = \"pa\"\nops_per_second = 100\n\
         [[tenants]]\nid = \"b\"\npassword = \"pb\"\n",
        redis.url()
    ))
    .await;
    let mut a = proxy.raw_as("a", "pa").await;
    let mut b = proxy.raw_as("b", "pb").await;
    let started = std::time::Instant::now();
    let mut batch = bytes::BytesMut::new();
    for i in 0..61 {
        let n = i.to_string();
        respite::wire::encode_request(&mut batch, [&b"ECHO"[..], n.as_bytes()].into_iter());
    }
    a.send(&batch).await;
    // The burst (a tenth of a second's worth) goes at once, the rest at 100 a second.
    for i in 0..11 {
        assert_eq!(
            a.reply().await,
            format!("${}\r\n{i}\r\n", i.to_string().len())
        );
    }
    // b is not held back by a.
    assert_eq!(b.cmd(&["PING"]).await, "+PONG\r\n");
    for i in 11..61 {
        assert_eq!(
            a.reply().await,
            format!("${}\r\n{i}\r\n", i.to_string().len())
        );
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(450),
        "50 requests past the burst at 100/s: {took:?}"
    );
    let info = b.cmd(&["INFO", "tenant"]).await;
    assert!(info.contains("ops_per_second:0\r\n"), "{info}");
    let info = a.cmd(&["INFO", "tenant"]).await;
    assert!(
        info.contains("ops_per_second:100\r\nbytes_per_second:0\r\nrate_limit:delay\r\n"),
        "{info}"
    );
    assert!(info_field(&info, "rate_throttled_us") >= 400_000, "{info}");
}

/// `rate_limit = "refuse"`: past the rate, requests are answered with the error at once.
#[tokio::test]
async fn a_tenant_past_its_rate_is_refused_when_it_asked_to_be() {
    let redis = Redis::start();
    let proxy = Proxy::start_config(&format!(
        "[upstream]\nurl = \"{}\"\n\
         [[tenants]]\nid = \"a\"\npassword = \"pa\"\nops_per_second = 10\nrate_limit = \"refuse\"\n",
        redis.url()
    ))
    .await;
    let mut a = proxy.raw_as("a", "pa").await;
    let mut batch = bytes::BytesMut::new();
    for _ in 0..5 {
        respite::wire::encode_request(&mut batch, [&b"PING"[..]].into_iter());
    }
    a.send(&batch).await;
    let mut replies = Vec::new();
    for _ in 0..5 {
        replies.push(a.reply().await);
    }
    let refused = "-ERR rate limit exceeded: tenant 'a' may send 10 ops per second on this \
                   instance\r\n";
    assert_eq!(replies[..2], ["+PONG\r\n", "+PONG\r\n"]);
    assert_eq!(replies[2..], [refused, refused, refused]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.cmd(&["PING"]).await, "+PONG\r\n");
}

/// `bytes_per_second` counts request and reply bytes: a large request waits for the bytes
/// it brought; a large reply is never withheld, but the next request waits until the bucket
/// has paid for it.
#[tokio::test]
async fn request_and_reply_bytes_count_against_the_byte_rate() {
    let redis = Redis::start();
    let proxy = Proxy::start_config(&format!(
        "[upstream]\nurl = \"{}\"\n\
         [[tenants]]\nid = \"a\"\npassword = \"pa\"\nbytes_per_second = 200000\n",
        redis.url()
    ))
    .await;
    let mut a = proxy.raw_as("a", "pa").await;
    let value = "x".repeat(300_000);
    let started = std::time::Instant::now();
    assert_eq!(a.cmd(&["SET", "big", &value]).await, "+OK\r\n");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1000),
        "300 KB in at 200 KB/s: {waited:?}"
    );
    assert_eq!(a.cmd(&["GET", "big"]).await.len(), 300_000 + 11);
    let started = std::time::Instant::now();
    assert_eq!(a.cmd(&["STRLEN", "big"]).await, ":300000\r\n");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1000),
        "300 KB out at 200 KB/s: {waited:?}"
    );
}

/// `max_subscriptions` per connection and `max_random_count`: past them, Redis-style errors
/// and the connection goes on.
#[tokio::test]
async fn subscriptions_and_random_counts_are_capped_per_tenant() {
    let redis = Redis::start();
    let proxy = Proxy::start_config(&format!(
        "[upstream]\nurl = \"{}\"\n[defaults]\nmax_subscriptions = 3\nmax_random_count = 10\n\
         [[tenants]]\nid = \"a\"\npassword = \"pa\"\n",
        redis.url()
    ))
    .await;
    let mut a = proxy.raw_as("a", "pa").await;
    assert_eq!(a.cmd(&["SADD", "s", "m"]).await, ":1\r\n");
    assert_eq!(
        a.cmd(&["SRANDMEMBER", "s", "-10"]).await.lines().count(),
        21
    );
    let refused = a.cmd(&["SRANDMEMBER", "s", "-11"]).await;
    assert!(
        refused.starts_with(
            "-ERR value is out of range: respite allows counts down to -10 (max_random_count)"
        ),
        "{refused}"
    );
    let mut batch = bytes::BytesMut::new();
    respite::wire::encode_request(
        &mut batch,
        ["SUBSCRIBE", "c1", "c2", "c3"].iter().map(|a| a.as_bytes()),
    );
    a.send(&batch).await;
    for n in 1..=3 {
        assert!(a.reply().await.ends_with(&format!(":{n}\r\n")));
    }
    let past = "-ERR max number of subscriptions per connection reached (3, max_subscriptions)\r\n";
    assert_eq!(a.cmd(&["SUBSCRIBE", "c4"]).await, past);
    assert_eq!(a.cmd(&["PSUBSCRIBE", "p*"]).await, past);
    // Already held: no new subscription.
    assert!(a.cmd(&["SUBSCRIBE", "c1"]).await.ends_with(":3\r\n"));
    assert!(a.cmd(&["UNSUBSCRIBE", "c1"]).await.ends_with(":2\r\n"));
    assert!(a.cmd(&["SUBSCRIBE", "c4"]).await.ends_with(":3\r\n"));
}

fn scans(stats: &str) -> i64 {
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_scan:calls="))
        .and_then(|l| l.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// DBSIZE walks Redis' whole keyspace: a tenant asking from many connections at once costs
/// Redis one walk at a time, the callers that asked while one ran sharing the next.
#[tokio::test]
async fn concurrent_dbsize_of_a_tenant_shares_its_walks() {
    let redis = Redis::start();
    let mut d = redis.direct().await;
    for chunk in 0..5 {
        let mut pipe = redis::pipe();
        for i in 0..1000 {
            pipe.cmd("SET")
                .arg(format!("tenant:b:{chunk}:{i}"))
                .arg("v");
        }
        let () = pipe.query_async(&mut d).await.unwrap();
    }
    let proxy = Proxy::start_config(&config(&redis, "")).await;
    let mut a = proxy.raw_as("a", "pa").await;
    for i in 0..10 {
        assert_eq!(a.cmd(&["SET", &format!("k{i}"), "v"]).await, "+OK\r\n");
    }
    let stats = |d: &mut redis::aio::MultiplexedConnection| {
        let mut d = d.clone();
        async move {
            let s: String = q(&mut d, &["INFO", "commandstats"]).await.unwrap();
            scans(&s)
        }
    };
    let before = stats(&mut d).await;
    assert_eq!(a.cmd(&["DBSIZE"]).await, ":10\r\n");
    let one_walk = stats(&mut d).await - before;
    assert!(one_walk >= 2, "{one_walk}");
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(proxy.raw_as("a", "pa").await);
    }
    let before = stats(&mut d).await;
    for c in &mut clients {
        c.send_cmd(&["DBSIZE"]).await;
    }
    for c in &mut clients {
        assert_eq!(c.reply().await, ":10\r\n");
    }
    let walks = (stats(&mut d).await - before) as f64 / one_walk as f64;
    assert!(walks <= 4.0, "20 DBSIZE at once cost {walks} walks");
}

/// A deep pipeline goes to the shared connection in turns of 64 requests: another
/// session's request sent just after it is written (and run by Redis) among the first turns,
/// not behind all of it. Redis' MONITOR shows the order it ran them in.
#[tokio::test]
async fn a_deep_pipeline_does_not_starve_the_other_sessions() {
    let redis = Redis::start();
    let proxy = Proxy::start_config(&format!(
        "[upstream]\nurl = \"{}\"\nconnections = 1\n\
         [[tenants]]\nid = \"a\"\npassword = \"pa\"\n\
         [[tenants]]\nid = \"b\"\npassword = \"pb\"\n",
        redis.url()
    ))
    .await;
    let mut a = proxy.raw_as("a", "pa").await;
    let mut b = proxy.raw_as("b", "pb").await;
    let mut monitor = Raw::connect(format!("127.0.0.1:{}", redis.port).parse().unwrap()).await;
    assert_eq!(monitor.cmd(&["MONITOR"]).await, "+OK\r\n");
    let mut batch = bytes::BytesMut::new();
    for _ in 0..1000 {
        respite::wire::encode_request(&mut batch, [&b"GET"[..], b"deep"].into_iter());
    }
    a.send(&batch).await;
    b.send_cmd(&["GET", "shallow"]).await;
    assert_eq!(b.reply().await, "$-1\r\n");
    let mut before = 0;
    loop {
        let line = monitor.reply().await;
        if line.contains("\"tenant:b:shallow\"") {
            break;
        }
        if line.contains("\"tenant:a:deep\"") {
            before += 1;
        }
    }
    assert!(before < 500, "b's GET ran after {before} of a's 1000");
    for _ in 0..1000 {
        assert_eq!(a.reply().await, "$-1\r\n");
    }
}
