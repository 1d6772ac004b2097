//! The admin HTTP listener: health, readiness that follows Redis, and Prometheus metrics.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

/// `GET path` over HTTP/1.1: the status and the body; status 0 if nothing listens yet.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, None).await
}

/// `method path` over HTTP/1.1, with a bearer `token` if given: the status and the body;
/// status 0 if nothing listens yet.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let Ok(s) = tokio::net::TcpStream::connect(addr).await else {
        return (0, String::new());
    };
    http_on(s, method, path, token).await
}

/// [`http`] over a connection already made (whose address the caller wants to know).
pub async fn http_on(
    mut s: tokio::net::TcpStream,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: respite\r\n{auth}Content-Length: 0\r\n\
         Connection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("an HTTP answer within 5 s")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// Waits up to `within` for `path` to answer `status`; returns how long it took.
pub async fn answers(addr: SocketAddr, path: &str, status: u16, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if http_get(addr, path).await.0 == status {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{path} not {status} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// respite with an admin listener on a free port, two tenants (a with a quota) and [shared].
async fn start_with_admin(redis: &Redis) -> (Proxy, SocketAddr) {
    start_with_admin_as(redis, "quota_bytes = 100000\noverage_bytes = 1000\n").await
}

/// respite with an admin listener; tenant `a` has `a_settings`.
async fn start_with_admin_as(redis: &Redis, a_settings: &str) -> (Proxy, SocketAddr) {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!(
        "[upstream]\nurl = \"{}\"\ncommand_timeout_ms = 1000\nconnect_timeout_ms = 300\n\
         [admin]\nlisten = \"{admin}\"\n\
         [[tenants]]\nid = \"a\"\npassword = \"pa\"\n{a_settings}\
         [[tenants]]\nid = \"b\"\npassword = \"pb\"\n\
         [shared]\n",
        redis.url()
    );
    (Proxy::start_config(&config).await, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_say_what_respite_holds() {
    let redis = Redis::start();
    let (proxy, admin) = start_with_admin(&redis).await;
    answers(admin, "/healthz", 200, Duration::from_secs(5)).await;
    answers(admin, "/readyz", 200, Duration::from_secs(2)).await;

    let mut a = proxy.raw_as("a", "pa").await;
    let _a2 = proxy.raw_as("a", "pa").await;
    assert_eq!(a.cmd(&["SET", "k", &"x".repeat(2000)]).await, "+OK\r\n");
    assert!(a
        .cmd(&["SET", "big", &"x".repeat(200_000)])
        .await
        .starts_with("-OOM"));
    assert_eq!(a.cmd(&["GET", "shared:market:X:price"]).await, "$-1\r\n");
    assert_eq!(a.cmd(&["GET", "shared:market:X:price"]).await, "$-1\r\n");
    let mut d = redis.direct().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let body = loop {
        let (status, body) = http_get(admin, "/metrics").await;
        assert_eq!(status, 200);
        // The flusher measures the write within 50 ms.
        if !body.contains("respite_quota_used_bytes{tenant=\"a\"} 0") {
            break body;
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let used: i64 = q(&mut d, &["MEMORY", "USAGE", "tenant:a:k"]).await.unwrap();
    for line in [
        "respite_connections{tenant=\"a\"} 2".to_string(),
        "respite_redis_up 1".to_string(),
        format!("respite_quota_used_bytes{{tenant=\"a\"}} {used}"),
        "respite_quota_bytes{tenant=\"a\"} 100000".to_string(),
        "respite_quota_overage_bytes{tenant=\"a\"} 1000".to_string(),
        "respite_quota_refusals_total{tenant=\"a\"} 1".to_string(),
        // b has done nothing: counted, not named (admin.tenant_window_seconds).
        "respite_tenants{state=\"quiet\"} 1".to_string(),
        "respite_shared_reads_total 2".to_string(),
        "respite_shared_l1_hits_total 1".to_string(),
        "respite_shared_redis_fetches_total 1".to_string(),
    ] {
        assert!(body.lines().any(|l| l == line), "no {line:?} in\n{body}");
    }
    assert!(body.ends_with("# EOF\n"));
    assert!(!body.contains("tenant=\"b\""));

    // The Grafana dashboard and the alerting rules in config/ ask only for metrics respite
    // exposes.
    for (file, least) in [
        ("config/grafana-dashboard.json", 10),
        ("config/prometheus-alerts.yml", 5),
    ] {
        let text = std::fs::read_to_string(file).unwrap();
        let mut rest = text.as_str();
        let mut names = 0;
        while let Some(i) = rest.find("respite_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                body.contains(&format!("\n{name}")),
                "{file}'s {name} is not in /metrics"
            );
            names += 1;
            rest = &rest[i + name.len()..];
        }
        assert!(names >= least, "{file}: {names} metric names");
    }
}

/// The check: /readyz is 503 within 2 s of Redis stopping and 200 within 2 s of its
/// return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_redis_within_two_seconds() {
    let mut redis = Redis::start();
    let (proxy, admin) = start_with_admin(&redis).await;
    answers(admin, "/readyz", 200, Duration::from_secs(5)).await;
    // A connection made before Redis goes away.
    let mut warm = Raw::login(proxy.addr, "b", "pb").await;
    assert_eq!(warm.cmd(&["GET", "k"]).await, "$-1\r\n");
    redis.stop();
    answers(admin, "/readyz", 503, Duration::from_secs(2)).await;
    assert_eq!(
        http_get(admin, "/healthz").await.0,
        200,
        "the process is still up"
    );
    // A client's command while Redis is away: a connect error, then a reconnect.
    let mut a = Raw::login(proxy.addr, "a", "pa").await;
    assert!(a
        .cmd(&["GET", "k"])
        .await
        .starts_with("-ERR upstream unavailable"));
    redis.restart();
    answers(admin, "/readyz", 200, Duration::from_secs(2)).await;
    let deadline = Instant::now() + Duration::from_secs(3);
    while a.cmd(&["GET", "k"]).await != "$-1\r\n" {
        assert!(Instant::now() < deadline, "no reconnect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, body) = http_get(admin, "/metrics").await;
    let counter = |name: &str| -> u64 {
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in\n{body}"))
            .parse()
            .unwrap()
    };
    assert!(counter("respite_upstream_connect_errors_total") >= 1);
    assert!(counter("respite_upstream_reconnects_total") >= 1);
}

/// The check: after a scripted workload, /metrics has the exact counts, the hit rate,
/// and ordered latency percentiles; INFO shows the caller's own figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_workload_shows_in_exact_counters() {
    let redis = Redis::start();
    let (proxy, admin) = start_with_admin(&redis).await;
    answers(admin, "/healthz", 200, Duration::from_secs(5)).await;
    let mut a = proxy.raw_as("a", "pa").await;
    for (cmd, reply) in [
        (vec!["SET", "k", "v"], "+OK\r\n"),
        (vec!["GET", "k"], "$1\r\nv\r\n"),
        (vec!["GET", "nokey"], "$-1\r\n"),
        (vec!["MGET", "k", "nokey"], "*2\r\n$1\r\nv\r\n$-1\r\n"),
        (vec!["HGETALL", "nohash"], "*0\r\n"),
        (vec!["EXISTS", "k"], ":1\r\n"),
        (
            vec!["INCR", "k"],
            "-ERR value is not an integer or out of range\r\n",
        ),
    ] {
        assert_eq!(a.cmd(&cmd).await, reply, "{cmd:?}");
    }
    assert!(a
        .cmd(&["CONFIG", "SET", "maxmemory", "1"])
        .await
        .starts_with("-NOPERM"));
    let mut wrong = Raw::connect(proxy.addr).await;
    assert!(wrong
        .cmd(&["AUTH", "a", "nope"])
        .await
        .starts_with("-WRONGPASS"));

    let info = a.cmd(&["INFO", "tenant"]).await;
    assert_eq!(info_field(&info, "cache_hits"), 3, "{info}");
    assert_eq!(info_field(&info, "cache_misses"), 2, "{info}");
    assert_eq!(info_field(&info, "connections"), 1, "{info}");

    let (_, body) = http_get(admin, "/metrics").await;
    let t = "tenant=\"a\"";
    for line in [
        format!("respite_commands_total{{{t},command=\"auth\",outcome=\"ok\"}} 1"),
        format!("respite_commands_total{{{t},command=\"set\",outcome=\"ok\"}} 1"),
        format!("respite_commands_total{{{t},command=\"get\",outcome=\"ok\"}} 2"),
        format!("respite_commands_total{{{t},command=\"mget\",outcome=\"ok\"}} 1"),
        format!("respite_commands_total{{{t},command=\"incr\",outcome=\"error\"}} 1"),
        format!("respite_commands_total{{{t},command=\"config\",outcome=\"refused\"}} 1"),
        format!("respite_cache_hits_total{{{t}}} 3"),
        format!("respite_cache_misses_total{{{t}}} 2"),
        format!("respite_cache_hit_ratio{{{t}}} 0.6"),
        format!("respite_auth_failures_total{{{t}}} 1"),
    ] {
        assert!(body.lines().any(|l| l == line), "no {line:?} in\n{body}");
    }
    let quantile = |q: &str| -> i64 {
        let prefix =
            format!("respite_latency_microseconds{{{t},family=\"string\",quantile=\"{q}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{body}"))
            .parse()
            .unwrap()
    };
    let p = ["0.5", "0.9", "0.99", "0.999"].map(quantile);
    assert!(p[0] > 0 && p.windows(2).all(|w| w[0] <= w[1]), "{p:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_switched_off() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, &format!("[server]\nmetrics = false\n{TENANTS}")).await;
    let mut a = proxy.raw_as("a", "pa").await;
    assert_eq!(a.cmd(&["GET", "k"]).await, "$-1\r\n");
    let info = a.cmd(&["INFO", "tenant"]).await;
    assert_eq!(info_field(&info, "commands"), 0, "{info}");
    assert_eq!(info_field(&info, "cache_misses"), 0, "{info}");
}

/// Billing roll-ups: what each instance served lands in `respite:metrics:<tenant>:<date>`,
/// with quota usage integrated over time, and a restart counts nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_roll_ups_survive_a_restart_without_double_counting() {
    let redis = Redis::start();
    let config = format!(
        "[upstream]\nurl = \"{}\"\n[billing]\ninterval_ms = 100\n\
         [quota]\nmeasure_delay_ms = 50\n\
         [[tenants]]\nid = \"a\"\npassword = \"pa\"\nquota_bytes = 1000000\n",
        redis.url()
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let key = format!("respite:metrics:a:{}", respite::billing::day(now));
    let mut d = redis.direct().await;
    let field = |h: &std::collections::HashMap<String, String>, f: &str| -> f64 {
        h.get(f)
            .unwrap_or_else(|| panic!("no {f} in {h:?}"))
            .parse()
            .unwrap()
    };

    let mut proxy = Proxy::start_config(&config).await;
    let mut a = proxy.raw_as("a", "pa").await;
    assert_eq!(a.cmd(&["SET", "k", "v"]).await, "+OK\r\n");
    assert_eq!(a.cmd(&["GET", "k"]).await, "$1\r\nv\r\n");
    assert_eq!(a.cmd(&["GET", "nokey"]).await, "$-1\r\n");
    // Several intervals with the key held (and measured, within measure_delay_ms):
    // byte-seconds accrue.
    tokio::time::sleep(Duration::from_millis(600)).await;
    drop(a);
    proxy.stop().await;
    let h: std::collections::HashMap<String, String> = q(&mut d, &["HGETALL", &key]).await.unwrap();
    assert_eq!(field(&h, "requests"), 4.0, "AUTH, SET, GET, GET: {h:?}");
    assert_eq!((field(&h, "hits"), field(&h, "misses")), (1.0, 1.0));
    assert_eq!(field(&h, "hit_rate"), 0.5);
    assert!(field(&h, "bytes_served") > 0.0 && field(&h, "mean_latency_us") > 0.0);
    assert!(field(&h, "byte_seconds") > 0.0, "{h:?}");

    let mut proxy = Proxy::start_config(&config).await;
    let mut a = proxy.raw_as("a", "pa").await;
    assert_eq!(a.cmd(&["GET", "k"]).await, "$1\r\nv\r\n");
    drop(a);
    proxy.stop().await;
    let h: std::collections::HashMap<String, String> = q(&mut d, &["HGETALL", &key]).await.unwrap();
    assert_eq!(field(&h, "requests"), 6.0, "{h:?}");
    assert_eq!((field(&h, "hits"), field(&h, "misses")), (2.0, 1.0));
}

/// Tenant `a`'s figure `name` on /metrics (0 before it has one).
async fn tenant_a_counter(admin: SocketAddr, name: &str) -> u64 {
    let (_, body) = http_get(admin, "/metrics").await;
    let prefix = format!("{name}{{tenant=\"a\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.parse().unwrap())
}

/// A session hands its bytes to its tenant's figures with the command they carry, but one
/// blocked in `BLPOP q 0` may carry none for as long as it likes: the bytes it reads
/// meanwhile (a SET pipelined behind the BLPOP) are on /metrics while it blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_read_behind_a_blocked_command_reach_metrics() {
    let redis = Redis::start();
    let (proxy, admin) = start_with_admin_as(&redis, "").await;
    answers(admin, "/healthz", 200, Duration::from_secs(5)).await;
    let mut a = proxy.raw_as("a", "pa").await;
    assert_eq!(a.cmd(&["PING"]).await, "+PONG\r\n");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = tenant_a_counter(admin, "respite_bytes_read_total").await;
    assert!(before > 0, "AUTH and PING are counted");

    let mut pipeline = bytes::BytesMut::new();
    respite::wire::encode_request(&mut pipeline, [&b"BLPOP"[..], b"q", b"0"].into_iter());
    let value = "x".repeat(100_000);
    respite::wire::encode_request(
        &mut pipeline,
        [&b"SET"[..], b"k", value.as_bytes()].into_iter(),
    );
    a.send(&pipeline).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = tenant_a_counter(admin, "respite_bytes_read_total").await;
    assert!(
        during >= before + pipeline.len() as u64,
        "bytes read while BLPOP blocks: /metrics says {} of {}",
        during - before,
        pipeline.len()
    );
    let mut b = proxy.raw_as("a", "pa").await;
    assert_eq!(b.cmd(&["LPUSH", "q", "v"]).await, ":1\r\n");
    assert_eq!(a.reply().await, "*2\r\n$1\r\nq\r\n$1\r\nv\r\n");
    assert_eq!(a.reply().await, "+OK\r\n");
}

/// The same for bytes written, as a queue consumer meets it: BLPOP hands it a 50 kB job and
/// it asks for the next one at once, on an empty queue; the job's bytes are on /metrics
/// while it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_written_to_a_waiting_queue_consumer_reach_metrics() {
    let redis = Redis::start();
    let (proxy, admin) = start_with_admin_as(&redis, "").await;
    answers(admin, "/healthz", 200, Duration::from_secs(5)).await;
    let mut producer = proxy.raw_as("a", "pa").await;
    let job = "j".repeat(50_000);
    assert_eq!(producer.cmd(&["LPUSH", "q", &job]).await, ":1\r\n");
    let mut a = proxy.raw_as("a", "pa").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = tenant_a_counter(admin, "respite_bytes_written_total").await;
    let got = a.cmd(&["BLPOP", "q", "0"]).await;
    assert!(got.len() > 50_000);
    a.send_cmd(&["BLPOP", "q", "0"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = tenant_a_counter(admin, "respite_bytes_written_total").await;
    assert!(
        during >= before + 50_000,
        "a 50 kB job written, then BLPOP waits: /metrics says {} bytes written",
        during - before
    );
}
