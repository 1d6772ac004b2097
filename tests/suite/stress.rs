//! Shared connections under strain: many sessions pipelining over few shared connections
//! while Redis is paused past `command_timeout`, put to sleep, killed and restarted; every
//! request is answered with its own reply or an error, never hangs, never gets another's.
//! Big requests in a pipeline, and what a session keeps of one after it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::*;

/// The size of the occasional big token (1 in 50): past `MAX_INLINE`, so that whole
/// requests wait behind one still arriving (`big_echo_in_a_pipeline`), and past a socket's
/// buffer, so that writes both ways are partial.
const BIG: usize = 200 * 1024;
const UNAVAILABLE: &str = "-ERR upstream unavailable: ";

/// A tiny deterministic PRNG (xorshift), so that a failure can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Many sessions, each pipelining 1 to 24 ECHOs of unique tokens (some large: partial
/// writes both ways) over 2 shared connections per protocol, while Redis is paused past
/// `command_timeout`, sleeps (DEBUG SLEEP), is killed and restarted. Each reply is its
/// own request's token or the upstream error; none takes 5 s (`Raw::reply`).
async fn stress(threads: usize, sessions: usize) {
    let mut redis = Redis::start_with(&["--enable-debug-command", "yes"]);
    let proxy = Proxy::start_config(&format!(
        "[server]\nthreads = {threads}\n\
         [upstream]\nurl = \"{}\"\ncommand_timeout_ms = 300\nconnect_timeout_ms = 300\n\
         connections = 2\n{TENANTS}",
        redis.url()
    ))
    .await;
    let addr = proxy.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let workers = hammer(addr, sessions, &stop, &ok, &failed);
    let phase = |name: &str| {
        eprintln!(
            "{name}: ok={} failed={}",
            ok.load(Relaxed),
            failed.load(Relaxed)
        )
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    phase("warm");
    {
        let mut d = redis.direct().await;
        q::<()>(&mut d, &["CLIENT", "PAUSE", "700", "ALL"])
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    phase("paused");
    {
        let port = redis.port;
        // DEBUG SLEEP from a thread (it blocks the connection that asks, as all of Redis).
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"DEBUG SLEEP 0.6\r\n").unwrap();
            let mut b = [0u8; 16];
            let _ = s.read(&mut b);
        });
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    phase("slept");
    redis.stop();
    tokio::time::sleep(Duration::from_millis(400)).await;
    phase("down");
    redis.restart();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    phase("restarted");
    finish(workers, &stop).await;
    assert!(ok.load(Relaxed) > 0 && failed.load(Relaxed) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_one_thread() {
    stress(1, 40).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_two_worker_threads() {
    stress(2, 40).await;
}

/// `tot-mem` of CLIENT INFO: what the session holds.
async fn tot_mem(c: &mut Raw) -> usize {
    let info = c.cmd(&["CLIENT", "INFO"]).await;
    let field = info
        .split_whitespace()
        .find_map(|f| f.strip_prefix("tot-mem="))
        .unwrap_or_else(|| panic!("no tot-mem in {info}"));
    field.parse().unwrap()
}

/// One 8 MiB SET, then small commands: the session lets the encoded request's buffer go,
/// as it lets a big reply's go. (The input buffer keeps one copy's worth: about 8.4 MB.
/// Kept too, the encoded request's buffer made it about 16.8 MB.)
#[tokio::test]
async fn a_big_request_is_not_held_for_the_session_s_life() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, TENANTS).await;
    let mut c = proxy.raw_as("a", "pa").await;
    let before = tot_mem(&mut c).await;
    let big = "v".repeat(8 << 20);
    assert_eq!(c.cmd(&["SET", "big", &big]).await, "+OK\r\n");
    for _ in 0..10 {
        assert_eq!(c.cmd(&["SET", "small", "1"]).await, "+OK\r\n");
    }
    let after = tot_mem(&mut c).await;
    assert!(
        after < before + (10 << 20),
        "tot-mem {before} before one 8 MiB request, {after} after it"
    );
}

/// One session, one big ECHO at a time.
#[tokio::test]
async fn big_echoes_one_at_a_time() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, TENANTS).await;
    let mut c = proxy.raw_as("a", "pa").await;
    for size in [1usize << 10, 64 << 10, 200 << 10, 1 << 20, 4 << 20] {
        let t = "x".repeat(size);
        let r = c.cmd(&["ECHO", &t]).await;
        assert_eq!(
            r.len(),
            t.len() + format!("${}\r\n\r\n", t.len()).len(),
            "size {size}"
        );
    }
}

/// One session, a pipeline of small ECHOs around a big one: once the big one is parsed,
/// the whole small requests behind it are not taken for part of one still arriving (a mark
/// left from before the big one hid them, and the pipeline hung).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_echo_in_a_pipeline() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, TENANTS).await;
    let mut c = proxy.raw_as("a", "pa").await;
    big_echo_rounds(&mut c).await;
}

/// The same, straight to Redis: the test is sound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_echo_in_a_pipeline_direct() {
    let redis = Redis::start();
    let mut c = Raw::connect(format!("127.0.0.1:{}", redis.port).parse().unwrap()).await;
    big_echo_rounds(&mut c).await;
}

async fn big_echo_rounds(c: &mut Raw) {
    for round in 0..20 {
        let mut out = bytes::BytesMut::new();
        let mut tokens = Vec::new();
        for k in 0..11 {
            let t = if k == 5 {
                "x".repeat(200 << 10)
            } else {
                format!("t{round}:{k}")
            };
            respite::wire::encode_request(&mut out, [&b"ECHO"[..], t.as_bytes()].into_iter());
            tokens.push(t);
        }
        c.send(&out).await;
        for (k, t) in tokens.iter().enumerate() {
            let Some(r) = c.try_reply(Duration::from_secs(5)).await else {
                panic!("round {round}: no reply to request {k} within 5 s");
            };
            assert_eq!(
                r,
                format!("${}\r\n{t}\r\n", t.len()),
                "round {round} request {k}"
            );
        }
    }
}

/// Stops the [`hammer`]'s sessions and waits for each to end (bounded).
pub(crate) async fn finish(workers: Vec<tokio::task::JoinHandle<()>>, stop: &AtomicBool) {
    stop.store(true, Relaxed);
    for w in workers {
        tokio::time::timeout(Duration::from_secs(15), w)
            .await
            .expect("no session hangs")
            .unwrap();
    }
}

/// `sessions` clients pipelining ECHOs of unique tokens until `stop`, each reply checked
/// against its own request (or the upstream error); then each waits (bounded) until Redis
/// answers again.
pub(crate) fn hammer(
    addr: std::net::SocketAddr,
    sessions: usize,
    stop: &Arc<AtomicBool>,
    ok: &Arc<AtomicU64>,
    failed: &Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut workers = Vec::new();
    for w in 0..sessions {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            let mut c = Raw::login(
                addr,
                if w % 2 == 0 { "a" } else { "b" },
                if w % 2 == 0 { "pa" } else { "pb" },
            )
            .await;
            if w % 3 == 0 {
                // Some sessions speak RESP3: the other shared connections.
                c.protocol = 3;
                let r = c.cmd(&["HELLO", "3"]).await;
                assert!(r.starts_with('%'), "{r}");
            }
            let mut rng = Rng(w as u64 * 7919 + 1);
            let mut i = 0u64;
            while !stop.load(Relaxed) {
                let n = 1 + (rng.next() % 24) as usize;
                let mut tokens = Vec::with_capacity(n);
                let mut out = bytes::BytesMut::new();
                for _ in 0..n {
                    let is_big = rng.next() % 50 == 0;
                    let mut t = format!("w{w}:{i}:");
                    if is_big {
                        t.push_str(&"x".repeat(BIG));
                    }
                    i += 1;
                    respite::wire::encode_request(
                        &mut out,
                        [&b"ECHO"[..], t.as_bytes()].into_iter(),
                    );
                    tokens.push(t);
                }
                c.send(&out).await;
                for (k, t) in tokens.iter().enumerate() {
                    let Some(r) = c.try_reply(Duration::from_secs(5)).await else {
                        panic!(
                            "session {w}: no reply to request {k} of {n} ({} bytes) within 5 s",
                            t.len()
                        );
                    };
                    if r.starts_with('-') {
                        assert!(r.starts_with(UNAVAILABLE), "session {w}: {r}");
                        failed.fetch_add(1, Relaxed);
                    } else {
                        let want = format!("${}\r\n{t}\r\n", t.len());
                        assert!(
                            r == want,
                            "session {w}: misrouted reply: wanted {:.60}, got {:.60}",
                            want,
                            r
                        );
                        ok.fetch_add(1, Relaxed);
                    }
                }
            }
            // Everyone recovers once Redis is back.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let r = c.cmd(&["ECHO", "again"]).await;
                if r == "$5\r\nagain\r\n" {
                    break;
                }
                assert!(r.starts_with(UNAVAILABLE), "{r}");
                assert!(Instant::now() < deadline, "session {w} did not recover");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }
    workers
}
