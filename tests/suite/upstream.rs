//! Redis down, restarting, slow, or behind a password: clear errors in bounded time, never a
//! hang, every reply to its own request, and recovery when Redis is back.

use std::time::{Duration, Instant};

use crate::harness::*;

const UNAVAILABLE: &str = "-ERR upstream unavailable: ";

#[tokio::test]
async fn redis_down_gives_errors_fast_then_recovers() {
    let mut redis = Redis::start();
    let proxy = Proxy::start(&redis, TENANTS).await;
    let mut c = proxy.raw_as("a", "pa").await;
    assert_eq!(c.cmd(&["SET", "k", "1"]).await, "+OK\r\n");
    redis.stop();
    let t = Instant::now();
    let r = c.cmd(&["GET", "k"]).await;
    assert!(r.starts_with(UNAVAILABLE), "{r}");
    // Pipelined commands each get their error, in order, with local replies in between.
    c.send_cmd(&["GET", "k"]).await;
    c.send_cmd(&["CLIENT", "GETNAME"]).await;
    c.send_cmd(&["INCR", "n"]).await;
    assert!(c.reply().await.starts_with(UNAVAILABLE));
    assert_eq!(c.reply().await, "$-1\r\n");
    assert!(c.reply().await.starts_with(UNAVAILABLE));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // New connections can still log in (auth is respite's own) and get the same error.
    let mut fresh = proxy.raw_as("b", "pb").await;
    assert!(fresh.cmd(&["PING"]).await.starts_with(UNAVAILABLE));

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = c.cmd(&["SET", "k", "2"]).await;
        if r == "+OK\r\n" {
            break;
        }
        assert!(r.starts_with(UNAVAILABLE), "{r}");
        assert!(Instant::now() < deadline, "respite did not reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.cmd(&["GET", "k"]).await, "$1\r\n2\r\n");
}

#[tokio::test]
async fn slow_redis_times_out_within_command_timeout() {
    let redis = Redis::start();
    let proxy = Proxy::start_config(&format!(
        "[upstream]\nurl = \"{}\"\ncommand_timeout_ms = 300\n{TENANTS}",
        redis.url()
    ))
    .await;
    let mut c = proxy.raw_as("a", "pa").await;
    assert_eq!(c.cmd(&["SET", "k", "1"]).await, "+OK\r\n");
    // Freeze Redis for every client but the one that asked.
    let mut d = redis.direct().await;
    q::<()>(&mut d, &["CLIENT", "PAUSE", "1500", "ALL"])
        .await
        .unwrap();
    let t = Instant::now();
    c.send_cmd(&["GET", "k"]).await;
    c.send_cmd(&["ECHO", "x"]).await;
    let r1 = c.reply().await;
    let r2 = c.reply().await;
    let took = t.elapsed();
    assert_eq!(r1, format!("{UNAVAILABLE}no reply within 300 ms\r\n"));
    assert_eq!(r2, r1);
    assert!(took < Duration::from_millis(1000), "{took:?}");
    // A blocking command is not cut short by the timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t = Instant::now();
    assert_eq!(c.cmd(&["BLPOP", "nothing", "0.6"]).await, "*-1\r\n");
    assert!(t.elapsed() >= Duration::from_millis(550));
    // And the connection works again after the pause.
    assert_eq!(c.cmd(&["GET", "k"]).await, "$1\r\n1\r\n");
}

#[tokio::test]
async fn lost_connection_state_closes_the_client() {
    let mut redis = Redis::start();
    let proxy = Proxy::start(&redis, TENANTS).await;
    let mut sub = proxy.raw_as("a", "pa").await;
    assert!(sub.cmd(&["SUBSCRIBE", "c"]).await.contains("subscribe"));
    let mut tx = proxy.raw_as("a", "pa").await;
    assert_eq!(tx.cmd(&["MULTI"]).await, "+OK\r\n");
    redis.stop();
    // The subscriber's subscriptions are gone with Redis: it must learn so, as from Redis.
    assert!(sub.closed().await);
    // So is the half-built transaction: closed, as a direct connection to Redis would be,
    // rather than carrying on as if later commands were queued.
    assert!(tx.closed().await);
    // A client without connection state stays connected and gets errors instead.
    let mut plain = proxy.raw_as("a", "pa").await;
    assert!(plain.cmd(&["GET", "k"]).await.starts_with(UNAVAILABLE));
    assert_eq!(plain.cmd(&["CLIENT", "GETNAME"]).await, "$-1\r\n");
}

#[tokio::test]
async fn killed_and_restarted_under_load() {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    use std::sync::Arc;

    let mut redis = Redis::start();
    let proxy = Proxy::start(&redis, TENANTS).await;
    let addr = proxy.addr;
    let stop = Arc::new(AtomicBool::new(false));
    // Set once the new Redis is up: writes sent after that must survive once acknowledged
    // (the killed Redis, which saved nothing, took earlier ones with it).
    let restarted = Arc::new(AtomicBool::new(false));
    let recovered = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut workers = Vec::new();
    for w in 0..8 {
        let (stop, restarted, recovered) = (stop.clone(), restarted.clone(), recovered.clone());
        workers.push(tokio::spawn(async move {
            let mut c = Raw::login(addr, "a", "pa").await;
            let (mut ok, mut failed, mut must_exist) = (0u32, 0u32, Vec::new());
            let mut i = 0u32;
            while !stop.load(Relaxed) && i < 400_000 {
                // Pipelines of 4, each reply checked against its own request.
                let after = restarted.load(Relaxed);
                let keys: Vec<String> = (0..4).map(|j| format!("w{w}:{}", i + j)).collect();
                for k in &keys {
                    c.send_cmd(&["SET", k, k]).await;
                }
                for k in &keys {
                    let r = c.reply().await;
                    if r == "+OK\r\n" {
                        ok += 1;
                        if after {
                            must_exist.push(k.clone());
                            recovered.fetch_add(1, Relaxed);
                        }
                    } else {
                        assert!(r.starts_with(UNAVAILABLE), "{r}");
                        failed += 1;
                    }
                }
                i += 4;
            }
            (ok, failed, must_exist)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.restart();
    restarted.store(true, Relaxed);
    // Wait (bounded) until writes go through again, then a little more.
    let deadline = Instant::now() + Duration::from_secs(10);
    while recovered.load(Relaxed) < 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Relaxed);
    let mut d = redis.direct().await;
    let (mut ok, mut failed, mut checked) = (0, 0, 0);
    for w in workers {
        let (o, f, must_exist) = tokio::time::timeout(Duration::from_secs(10), w)
            .await
            .expect("no worker hangs")
            .unwrap();
        ok += o;
        failed += f;
        for chunk in must_exist.chunks(500) {
            let mut cmd = redis::cmd("MGET");
            for k in chunk {
                cmd.arg(format!("tenant:a:{k}"));
            }
            let values: Vec<Option<String>> = cmd.query_async(&mut d).await.unwrap();
            for (k, v) in chunk.iter().zip(values) {
                assert_eq!(v.as_deref(), Some(k.as_str()), "acknowledged write lost");
            }
            checked += chunk.len();
        }
    }
    assert!(
        ok > 0 && failed > 0 && checked > 0,
        "ok={ok} failed={failed} checked={checked}"
    );
}

#[tokio::test]
async fn upstream_url_credentials_log_in() {
    let redis = Redis::start_with(&["--requirepass", "s3cret"]);
    let url = format!("redis://:s3cret@127.0.0.1:{}/0", redis.port);
    let proxy = Proxy::start_config(&format!("[upstream]\nurl = \"{url}\"\n{TENANTS}")).await;
    let mut c = proxy.raw_as("a", "pa").await;
    assert_eq!(c.cmd(&["SET", "k", "v"]).await, "+OK\r\n");
    assert_eq!(redis.keys().await, vec!["tenant:a:k"]);

    // An ACL user, as managed Redis hands out.
    let mut d = redis.direct().await;
    q::<()>(
        &mut d,
        &["ACL", "SETUSER", "app", "on", ">apppw", "~*", "&*", "+@all"],
    )
    .await
    .unwrap();
    let url = format!("redis://app:apppw@127.0.0.1:{}/", redis.port);
    let proxy = Proxy::start_config(&format!("[upstream]\nurl = \"{url}\"\n{TENANTS}")).await;
    let mut c = proxy.raw_as("b", "pb").await;
    assert_eq!(c.cmd(&["SET", "k", "v"]).await, "+OK\r\n");

    // Wrong credentials: a clear error, not a hang.
    let url = format!("redis://app:wrong@127.0.0.1:{}/", redis.port);
    let proxy = Proxy::start_config(&format!("[upstream]\nurl = \"{url}\"\n{TENANTS}")).await;
    let mut c = proxy.raw_as("b", "pb").await;
    let r = c.cmd(&["GET", "k"]).await;
    assert!(
        r.starts_with("-ERR upstream unavailable: Redis refused respite's login"),
        "{r}"
    );
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_commands() {
    let redis = Redis::start();
    let mut proxy = Proxy::start(&redis, TENANTS).await;
    let mut c = proxy.raw_as("a", "pa").await;
    // A blocking command in flight when shutdown begins still gets its reply.
    c.send_cmd(&["BLPOP", "q", "0.5"]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    proxy.stop().await;
    assert_eq!(c.reply().await, "*-1\r\n");
    assert!(c.closed().await);
    assert!(t.elapsed() < Duration::from_secs(3));
    // And nothing listens any more.
    assert!(tokio::net::TcpStream::connect(proxy.addr).await.is_err());
}

/// The binary, on one thread (the default) and on two worker threads: it serves, and on
/// SIGTERM answers what is in flight and exits 0.
#[tokio::test]
async fn sigterm_lets_in_flight_commands_finish_and_exits_zero() {
    for threads in [1, 2] {
        binary_serves_then_stops_on_sigterm(threads).await;
    }
}

async fn binary_serves_then_stops_on_sigterm(threads: usize) {
    let redis = Redis::start();
    let dir = TempDir::new();
    let port = free_port();
    let config = dir.0.join("respite.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nthreads = {threads}\n[upstream]\nurl = \"{}\"\n{TENANTS}",
            redis.url()
        ),
    )
    .unwrap();
    let (mut child, addr) = run_binary(&config, port, |_| {}).await;
    let mut c = Raw::login(addr, "a", "pa").await;
    c.send_cmd(&["SET", "k", "v"]).await;
    c.send_cmd(&["GET", "k"]).await;
    assert_eq!(c.reply().await, "+OK\r\n", "threads = {threads}");
    assert_eq!(c.reply().await, "$1\r\nv\r\n", "threads = {threads}");
    c.send_cmd(&["BLPOP", "q", "0.5"]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        c.reply().await,
        "*-1\r\n",
        "the in-flight command is answered"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        assert!(Instant::now() < deadline, "respite did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(code, Some(0));
}

/// A pinned connection left idle in the pool when Redis restarts is not handed out again:
/// the next MULTI after the restart gets a fresh connection, not the dead one's error.
#[tokio::test]
async fn idle_pinned_connections_redis_closed_are_not_reused() {
    let mut redis = Redis::start();
    let proxy = Proxy::start(&redis, TENANTS).await;
    let mut c = proxy.raw_as("a", "pa").await;
    // A transaction pins a connection; after EXEC it goes back to the pool, idle.
    assert_eq!(c.cmd(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(c.cmd(&["SET", "k", "1"]).await, "+QUEUED\r\n");
    assert_eq!(c.cmd(&["EXEC"]).await, "*1\r\n+OK\r\n");
    redis.restart();
    // The shared connection notices its close on its own; wait until it is back.
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.cmd(&["PING"]).await != "+PONG\r\n" {
        assert!(Instant::now() < deadline, "respite did not reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.cmd(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(c.cmd(&["SET", "k", "2"]).await, "+QUEUED\r\n");
    assert_eq!(c.cmd(&["EXEC"]).await, "*1\r\n+OK\r\n");
    assert_eq!(c.cmd(&["GET", "k"]).await, "$1\r\n2\r\n");
}
