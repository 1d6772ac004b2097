//! Paced, open-loop load from many tenants at once: the "1,000 tenants at 10,000 req/s"
//! acceptance test. Measures the latency of each request, from its write to its reply, while
//! the offered rate stays fixed whatever the server does.
//!
//! ```text
//! cargo bench --bench paced -- --addr 127.0.0.1:6380 --tenants 1000 --rate 10000 --seconds 10
//! cargo bench --bench paced -- --addr 127.0.0.1:6379 --no-auth --key-prefix 'tenant:t{i}:'
//! ```
//!
//! `benches/tenants.py` runs it against a Redis and a respite of its own, side by side.
//!
//! - One TCP connection per tenant; tenant `i` (from 0) is `t{i}` (`--tenant-format`) and
//!   first sends `AUTH t{i} <password>` (`--password-format`, default `t{i}-secret`), which
//!   must answer `+OK`; `--no-auth` skips it (direct Redis, where `--key-prefix
//!   'tenant:t{i}:'` makes the keys those respite would write).
//! - Load: GET/SET 80/20 (`--set-ratio`) of random keys `k:{n}` among `--keys` (1,000) per
//!   tenant, values of `--value-size` (100) bytes. Every key is SET before the run (pipelined,
//!   while connecting) unless `--no-prefill`; `--fill-only` connects, fills and exits.
//! - Pacing: one global schedule, a request every `1 / rate` seconds handed to the
//!   connections in turn, so each connection sends at `rate / tenants` on a fixed period, the
//!   connections offset from one another. A pacer thread (precise sleeps, not tokio's 1 ms
//!   timer) writes each request when it is due (a non-blocking write; bytes the socket does
//!   not take go to the connection's flusher task), late replies or not: several requests
//!   may be outstanding on a connection. A reader task per connection reads the replies in
//!   order.
//! - Latency: from the request's write to its whole reply being read (`latency_us`), and from
//!   its scheduled time (`intended_us`: includes any lateness of the generator's own sends,
//!   which `send_lag_us` gives alone), for requests scheduled after `--warmup` (2) seconds,
//!   over `--seconds` (10).
//! - Ends by itself: after the last send, replies get `--drain` (2) seconds; the requests
//!   still unanswered are reported as `lost`.
//!
//! Output: one JSON line on stdout (sent, received, errors, lost, achieved rate, percentiles
//! in microseconds, the generator's own CPU seconds) and a human line on stderr. Runs on a
//! tokio runtime of `--threads` (1) worker threads plus the pacer thread, so as not to take
//! the cores the server needs. Raises its own open-file limit to the hard limit when 1,000+
//! sockets need it.

use std::collections::VecDeque;
use std::io::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{Buf, BytesMut};
use clap::Parser;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

#[derive(Parser, Debug, Clone)]
#[command(about = "Paced open-loop GET/SET load, one connection per tenant")]
struct Opts {
    /// Server address (respite or Redis). Without it the generator does nothing: `cargo
    /// test --all-targets` runs every bench binary with no arguments.
    #[arg(long)]
    addr: Option<String>,
    /// Tenants, one connection each.
    #[arg(long, default_value_t = 1000)]
    tenants: usize,
    /// Requests per second over all connections.
    #[arg(long, default_value_t = 10000.0)]
    rate: f64,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seconds replies get after the last send.
    #[arg(long, default_value_t = 2.0)]
    drain: f64,
    /// Tenant names; {i} is the tenant's number.
    #[arg(long, default_value = "t{i}")]
    tenant_format: String,
    /// Passwords; {i} is the tenant's number.
    #[arg(long, default_value = "t{i}-secret")]
    password_format: String,
    /// No AUTH (direct Redis).
    #[arg(long)]
    no_auth: bool,
    /// Put before every key; {i} is the tenant's number.
    #[arg(long, default_value = "")]
    key_prefix: String,
    /// Keys per tenant.
    #[arg(long, default_value_t = 1000)]
    keys: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Share of requests that are SETs (the rest are GETs).
    #[arg(long, default_value_t = 0.2)]
    set_ratio: f64,
    /// Do not SET the keys before the run.
    #[arg(long)]
    no_prefill: bool,
    /// Connect, SET every key, report and exit.
    #[arg(long)]
    fill_only: bool,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Seed of the key and command choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Highest latency the histograms hold, in microseconds (longer ones count as this).
const MAX_US: u64 = 60_000_000;
/// Connections opened (and logged in, and filled) at once.
const CONNECT_BATCH: usize = 100;
/// SETs per pipelined batch while filling.
const FILL_BATCH: u64 = 200;
/// Error texts kept for the report.
const FIRST_ERRORS: usize = 5;

fn main() -> std::process::ExitCode {
    let opts = Opts::parse();
    if opts.addr.is_none() {
        eprintln!("paced: no --addr, nothing to load (cargo bench --bench paced -- --help)");
        return std::process::ExitCode::SUCCESS;
    }
    match start(opts) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever RUST_BACKTRACE says.
            eprintln!("paced: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn start(opts: Opts) -> anyhow::Result<()> {
    if opts.tenants == 0 || opts.rate <= 0.0 || opts.keys == 0 || opts.threads == 0 {
        bail!("--tenants, --rate, --keys and --threads must be positive");
    }
    raise_nofile(opts.tenants as u64 + 64);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.threads)
        .enable_all()
        .build()?;
    let result = runtime.block_on(run(opts));
    // Tasks still waiting on sockets (replies that never came) are dropped, not awaited.
    runtime.shutdown_background();
    result
}

fn fill_in(format: &str, i: usize) -> String {
    format.replace("{i}", &i.to_string())
}

/// A small xorshift64* generator: the key and command choices, cheap and reproducible.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Appends a command as a RESP array of bulk strings.
fn push_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    let _ = write!(out, "*{}\r\n", args.len());
    for arg in args {
        let _ = write!(out, "${}\r\n", arg.len());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// One whole reply at the front of a buffer.
#[derive(Debug, PartialEq)]
struct Reply {
    /// Its length in bytes.
    len: usize,
    /// Its first line, when it is an error (`-` or RESP3 `!`).
    error: Option<String>,
    /// Its first line is `+OK`.
    ok: bool,
}

/// The reply at the front of `buf`: `Ok(None)` while it is incomplete, `Err` when the bytes
/// are not RESP. RESP2 (`+ - : $ *`) and RESP3's types.
fn parse_reply(buf: &[u8]) -> Result<Option<Reply>, String> {
    let Some(end) = parse_at(buf, 0)? else {
        return Ok(None);
    };
    let line_end = buf.iter().position(|&b| b == b'\r').unwrap_or(end);
    let error = match buf[0] {
        b'-' => Some(String::from_utf8_lossy(&buf[1..line_end]).into_owned()),
        b'!' => Some(String::from_utf8_lossy(&buf[line_end + 2..end - 2]).into_owned()),
        _ => None,
    };
    Ok(Some(Reply {
        len: end,
        error,
        ok: buf.starts_with(b"+OK\r\n"),
    }))
}

/// Where the reply starting at `pos` ends.
fn parse_at(buf: &[u8], pos: usize) -> Result<Option<usize>, String> {
    let Some(nl) = buf[pos..].windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = &buf[pos + 1..pos + nl];
    let next = pos + nl + 2;
    let number = || -> Result<i64, String> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad length {:?}", String::from_utf8_lossy(line)))
    };
    match buf[pos] {
        b'+' | b'-' | b':' | b',' | b'_' | b'#' | b'(' => Ok(Some(next)),
        b'$' | b'!' | b'=' => {
            let n = number()?;
            if n < 0 {
                return Ok(Some(next));
            }
            let end = next + n as usize + 2;
            Ok((buf.len() >= end).then_some(end))
        }
        kind @ (b'*' | b'~' | b'>' | b'%' | b'|') => {
            let n = number()?;
            let items = if matches!(kind, b'%' | b'|') {
                2 * n
            } else {
                n
            };
            let mut at = next;
            for _ in 0..items.max(0) {
                match parse_at(buf, at)? {
                    Some(end) => at = end,
                    None => return Ok(None),
                }
            }
            // An attribute (`|`) comes before the reply it describes.
            if kind == b'|' {
                return parse_at(buf, at);
            }
            Ok(Some(at))
        }
        other => Err(format!("unexpected reply type byte {other:#04x}")),
    }
}

/// Reads one whole reply.
async fn read_reply(stream: &mut TcpStream, buf: &mut BytesMut) -> anyhow::Result<Reply> {
    loop {
        if !buf.is_empty() {
            if let Some(reply) = parse_reply(buf).map_err(anyhow::Error::msg)? {
                buf.advance(reply.len);
                return Ok(reply);
            }
        }
        buf.reserve(4096);
        if stream.read_buf(buf).await? == 0 {
            bail!("connection closed");
        }
    }
}

/// What a connection writes: its tenant's keys and values.
struct Workload {
    prefix: Vec<u8>,
    keys: u64,
    value: Vec<u8>,
    set_ratio: f64,
}

impl Workload {
    fn key(&self, key: &mut Vec<u8>, n: u64) {
        key.clear();
        key.extend_from_slice(&self.prefix);
        let _ = write!(key, "k:{n}");
    }
}

/// Connects tenant `i`, logs it in and, unless told not to, SETs all its keys.
/// Returns the stream, the fill's error count.
async fn open(opts: &Opts, i: usize, work: &Workload) -> anyhow::Result<(TcpStream, u64)> {
    let addr = opts.addr.as_deref().unwrap_or_default();
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let mut buf = BytesMut::with_capacity(4096);
    let mut out = Vec::new();
    if !opts.no_auth {
        let user = fill_in(&opts.tenant_format, i);
        let password = fill_in(&opts.password_format, i);
        push_command(&mut out, &[b"AUTH", user.as_bytes(), password.as_bytes()]);
        stream.write_all(&out).await?;
        let reply = read_reply(&mut stream, &mut buf).await?;
        if !reply.ok {
            bail!("AUTH {user}: {:?}", reply.error.unwrap_or_default());
        }
    }
    let mut errors = 0;
    if !opts.no_prefill || opts.fill_only {
        let mut key = Vec::new();
        let mut first = 0;
        while first < work.keys {
            let last = (first + FILL_BATCH).min(work.keys);
            out.clear();
            for n in first..last {
                work.key(&mut key, n);
                push_command(&mut out, &[b"SET", &key, &work.value]);
            }
            stream.write_all(&out).await?;
            for _ in first..last {
                if let Some(error) = read_reply(&mut stream, &mut buf).await?.error {
                    if errors == 0 {
                        eprintln!("fill t{i}: -{error}");
                    }
                    errors += 1;
                }
            }
            first = last;
        }
    }
    if !buf.is_empty() {
        bail!("tenant {i}: {} unexpected bytes after the fill", buf.len());
    }
    Ok((stream, errors))
}

/// A request written and not yet answered.
struct Pending {
    scheduled: Instant,
    written: Instant,
    measured: bool,
    /// A SET (else a GET): their latencies are also kept apart.
    set: bool,
}

/// What every connection's tasks add to.
struct Shared {
    /// Requests scheduled from here on are measured.
    measure_from: Instant,
    /// Write to reply, µs.
    latency: Mutex<Histogram<u64>>,
    /// The same, of SETs only.
    set_latency: Mutex<Histogram<u64>>,
    /// Scheduled time to reply, µs.
    intended: Mutex<Histogram<u64>>,
    /// Scheduled time to write, µs.
    send_lag: Mutex<Histogram<u64>>,
    sent: AtomicU64,
    received: AtomicU64,
    /// Replies read, warm-up included.
    replies: AtomicU64,
    errors: AtomicU64,
    warmup_errors: AtomicU64,
    /// Requests written (warm-up included) and not answered.
    outstanding: AtomicI64,
    /// Connections the server closed, or that failed.
    closed: AtomicU64,
    first_errors: Mutex<Vec<String>>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, MAX_US)
}

impl Shared {
    fn note_error(&self, text: String) {
        let mut first = self.first_errors.lock().unwrap();
        if first.len() < FIRST_ERRORS {
            first.push(text);
        }
    }
}

/// One connection, as the pacer sees it.
struct Conn {
    half: Arc<OwnedWriteHalf>,
    /// Bytes the socket did not take at once, for the flusher to write in order.
    backlog: Arc<Mutex<Vec<u8>>>,
    flush: Arc<Notify>,
    pending: Arc<Mutex<VecDeque<Pending>>>,
    work: Arc<Workload>,
    rng: Rng,
    tenant: usize,
    /// Its socket failed: nothing more is sent on it.
    dead: bool,
}

impl Conn {
    /// Writes one request now (scheduled at `due`), without blocking: what the socket does
    /// not take goes to the flusher, behind anything already waiting there.
    fn send(
        &mut self,
        due: Instant,
        out: &mut Vec<u8>,
        key: &mut Vec<u8>,
        shared: &Shared,
    ) -> Instant {
        out.clear();
        self.work.key(key, self.rng.next() % self.work.keys);
        let set = self.rng.unit() < self.work.set_ratio;
        if set {
            push_command(out, &[b"SET", key, &self.work.value]);
        } else {
            push_command(out, &[b"GET", key]);
        }
        let written = Instant::now();
        // Queued before the write, so that the reader finds it whatever the timing.
        self.pending.lock().unwrap().push_back(Pending {
            scheduled: due,
            written,
            measured: due >= shared.measure_from,
            set,
        });
        shared.outstanding.fetch_add(1, Ordering::Relaxed);
        let mut backlog = self.backlog.lock().unwrap();
        if !backlog.is_empty() {
            backlog.extend_from_slice(out);
            self.flush.notify_one();
            return written;
        }
        match self.half.try_write(out) {
            Ok(n) if n == out.len() => {}
            Ok(n) => {
                backlog.extend_from_slice(&out[n..]);
                self.flush.notify_one();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                backlog.extend_from_slice(out);
                self.flush.notify_one();
            }
            Err(e) => {
                shared.note_error(format!("t{}: write: {e}", self.tenant));
                shared.closed.fetch_add(1, Ordering::Relaxed);
                self.dead = true;
            }
        }
        written
    }
}

/// Writes what the pacer could not (the server is not reading fast enough), in order.
async fn flusher(
    half: Arc<OwnedWriteHalf>,
    backlog: Arc<Mutex<Vec<u8>>>,
    flush: Arc<Notify>,
    shared: Arc<Shared>,
    tenant: usize,
) {
    loop {
        flush.notified().await;
        loop {
            if half.writable().await.is_err() {
                return;
            }
            let mut bytes = backlog.lock().unwrap();
            if bytes.is_empty() {
                break;
            }
            match half.try_write(&bytes) {
                Ok(n) => {
                    bytes.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    shared.note_error(format!("t{tenant}: write: {e}"));
                    return;
                }
            }
        }
    }
}

/// Reads the replies in order and times them against the requests they answer.
async fn reader(
    mut half: OwnedReadHalf,
    pending: Arc<Mutex<VecDeque<Pending>>>,
    shared: Arc<Shared>,
    tenant: usize,
) {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        buf.reserve(4096);
        match half.read_buf(&mut buf).await {
            Ok(0) => {
                shared.note_error(format!("t{tenant}: connection closed by the server"));
                shared.closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(e) => {
                shared.note_error(format!("t{tenant}: read: {e}"));
                shared.closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(_) => {}
        }
        let now = Instant::now();
        loop {
            let reply = match parse_reply(&buf) {
                Ok(Some(reply)) => reply,
                Ok(None) => break,
                Err(e) => {
                    shared.note_error(format!("t{tenant}: protocol: {e}"));
                    shared.closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            buf.advance(reply.len);
            let Some(request) = pending.lock().unwrap().pop_front() else {
                shared.note_error(format!("t{tenant}: a reply to no request"));
                continue;
            };
            shared.outstanding.fetch_sub(1, Ordering::Relaxed);
            shared.replies.fetch_add(1, Ordering::Relaxed);
            if let Some(text) = reply.error {
                let counter = if request.measured {
                    &shared.errors
                } else {
                    &shared.warmup_errors
                };
                counter.fetch_add(1, Ordering::Relaxed);
                shared.note_error(format!("t{tenant}: -{text}"));
            }
            if request.measured {
                shared.received.fetch_add(1, Ordering::Relaxed);
                shared
                    .latency
                    .lock()
                    .unwrap()
                    .saturating_record(micros(now - request.written));
                if request.set {
                    shared
                        .set_latency
                        .lock()
                        .unwrap()
                        .saturating_record(micros(now - request.written));
                }
                shared
                    .intended
                    .lock()
                    .unwrap()
                    .saturating_record(micros(now.saturating_duration_since(request.scheduled)));
            }
        }
    }
}

/// The pacer: request `j` is due at `start + j / rate` and goes to connection `j % n`,
/// written by this thread itself (non-blocking) as soon as it is due. Sleeps between requests
/// with the thread's timer slack lowered, so sends are on time to tens of microseconds
/// (tokio's timer rounds to milliseconds, and handing each send to a tokio task costs a
/// wake-up). Returns the measured sends' lateness, in µs.
fn pace(
    mut conns: Vec<Conn>,
    shared: &Shared,
    start: Instant,
    end: Instant,
    rate: f64,
) -> Histogram<u64> {
    lower_timer_slack();
    let mut lag = histogram();
    let (mut out, mut key) = (Vec::with_capacity(512), Vec::with_capacity(64));
    let n = conns.len() as u64;
    let mut sent = 0;
    let mut j: u64 = 0;
    loop {
        let due = start + Duration::from_secs_f64(j as f64 / rate);
        if due >= end {
            break;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let conn = &mut conns[(j % n) as usize];
        j += 1;
        if conn.dead {
            continue;
        }
        let written = conn.send(due, &mut out, &mut key, shared);
        if due >= shared.measure_from {
            sent += 1;
            lag.saturating_record(micros(written.saturating_duration_since(due)));
        }
    }
    shared.sent.store(sent, Ordering::Relaxed);
    lag
}

async fn run(opts: Opts) -> anyhow::Result<()> {
    let value = vec![b'v'; opts.value_size];
    let works: Vec<Arc<Workload>> = (0..opts.tenants)
        .map(|i| {
            Arc::new(Workload {
                prefix: fill_in(&opts.key_prefix, i).into_bytes(),
                keys: opts.keys,
                value: value.clone(),
                set_ratio: opts.set_ratio,
            })
        })
        .collect();

    // Connect (log in, fill) a batch at a time: a thousand SYNs at once overflow a backlog.
    let began = Instant::now();
    let shared_opts = Arc::new(opts.clone());
    let mut streams = Vec::with_capacity(opts.tenants);
    let mut fill_errors = 0;
    for batch in (0..opts.tenants).collect::<Vec<_>>().chunks(CONNECT_BATCH) {
        let mut set = tokio::task::JoinSet::new();
        for &i in batch {
            let (opts, work) = (shared_opts.clone(), works[i].clone());
            set.spawn(async move { (i, open(&opts, i, &work).await) });
        }
        let mut opened: Vec<_> = set.join_all().await;
        opened.sort_by_key(|(i, _)| *i);
        for (i, result) in opened {
            let (stream, errors) = result.with_context(|| format!("tenant {i}"))?;
            fill_errors += errors;
            streams.push(stream);
        }
    }
    let setup = began.elapsed().as_secs_f64();
    if opts.fill_only {
        let report = serde_json::json!({
            "addr": opts.addr, "tenants": opts.tenants, "keys": opts.keys * opts.tenants as u64,
            "fill_errors": fill_errors, "seconds": setup,
        });
        println!("{report}");
        eprintln!(
            "filled {} keys of {} tenants in {setup:.1} s, {fill_errors} errors",
            opts.keys * opts.tenants as u64,
            opts.tenants
        );
        return Ok(());
    }

    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + Duration::from_secs_f64(opts.warmup);
    let end = measure_from + Duration::from_secs_f64(opts.seconds);
    let shared = Arc::new(Shared {
        measure_from,
        latency: Mutex::new(histogram()),
        set_latency: Mutex::new(histogram()),
        intended: Mutex::new(histogram()),
        send_lag: Mutex::new(histogram()),
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        replies: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        warmup_errors: AtomicU64::new(0),
        outstanding: AtomicI64::new(0),
        closed: AtomicU64::new(0),
        first_errors: Mutex::new(Vec::new()),
    });
    let mut conns = Vec::with_capacity(opts.tenants);
    for (i, stream) in streams.into_iter().enumerate() {
        let (read, write) = stream.into_split();
        // The flusher task keeps a reference to the write half until the runtime ends: the
        // socket is not shut down (a FIN) while replies are still coming.
        let half = Arc::new(write);
        let backlog = Arc::new(Mutex::new(Vec::new()));
        let flush = Arc::new(Notify::new());
        let pending = Arc::new(Mutex::new(VecDeque::new()));
        tokio::spawn(flusher(
            half.clone(),
            backlog.clone(),
            flush.clone(),
            shared.clone(),
            i,
        ));
        tokio::spawn(reader(read, pending.clone(), shared.clone(), i));
        conns.push(Conn {
            half,
            backlog,
            flush,
            pending,
            work: works[i].clone(),
            rng: Rng::new(opts.seed.wrapping_mul(1_000_003).wrapping_add(i as u64)),
            tenant: i,
            dead: false,
        });
    }
    let (rate, pacer_shared) = (opts.rate, shared.clone());
    let pacer = std::thread::Builder::new()
        .name("pacer".into())
        .spawn(move || pace(conns, &pacer_shared, start, end, rate))?;
    let lag = tokio::task::spawn_blocking(move || pacer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the pacer thread panicked"))?;
    *shared.send_lag.lock().unwrap() = lag;

    // Replies get `drain` seconds after the last send.
    let drain_until = Instant::now() + Duration::from_secs_f64(opts.drain);
    while shared.outstanding.load(Ordering::Relaxed) > 0 && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    report(&opts, &shared, setup);
    Ok(())
}

fn percentiles(hist: &Histogram<u64>) -> serde_json::Value {
    serde_json::json!({
        "p50": hist.value_at_quantile(0.50),
        "p90": hist.value_at_quantile(0.90),
        "p99": hist.value_at_quantile(0.99),
        "p999": hist.value_at_quantile(0.999),
        "max": hist.max(),
    })
}

fn report(opts: &Opts, shared: &Shared, setup: f64) {
    let sent = shared.sent.load(Ordering::Relaxed);
    let received = shared.received.load(Ordering::Relaxed);
    let errors = shared.errors.load(Ordering::Relaxed);
    let latency = shared.latency.lock().unwrap();
    let set_latency = shared.set_latency.lock().unwrap();
    let intended = shared.intended.lock().unwrap();
    let lag = shared.send_lag.lock().unwrap();
    let first_errors = shared.first_errors.lock().unwrap();
    let achieved = received as f64 / opts.seconds;
    let report = serde_json::json!({
        "addr": opts.addr,
        "tenants": opts.tenants,
        "rate": opts.rate,
        "seconds": opts.seconds,
        "sent": sent,
        "received": received,
        "errors": errors,
        "replies_all": shared.replies.load(Ordering::Relaxed),
        "warmup_errors": shared.warmup_errors.load(Ordering::Relaxed),
        "lost": sent.saturating_sub(received),
        "closed_connections": shared.closed.load(Ordering::Relaxed),
        "achieved_rate": achieved,
        "latency_us": percentiles(&latency),
        "set_latency_us": percentiles(&set_latency),
        "intended_us": percentiles(&intended),
        "send_lag_us": percentiles(&lag),
        "setup_seconds": setup,
        "generator_cpu_seconds": own_cpu_seconds(),
        "first_errors": *first_errors,
    });
    println!("{report}");
    eprintln!(
        "{}: {} tenants, {:.0} req/s offered, {achieved:.0} answered; sent {sent} received \
         {received} errors {errors} lost {}; latency p50 {} p99 {} p999 {} max {} µs; from \
         schedule p50 {} p99 {} p999 {} max {} µs; SETs p50 {} p99 {} µs; send lag p99 {} µs",
        opts.addr.as_deref().unwrap_or_default(),
        opts.tenants,
        opts.rate,
        sent.saturating_sub(received),
        latency.value_at_quantile(0.5),
        latency.value_at_quantile(0.99),
        latency.value_at_quantile(0.999),
        latency.max(),
        intended.value_at_quantile(0.5),
        intended.value_at_quantile(0.99),
        intended.value_at_quantile(0.999),
        intended.max(),
        set_latency.value_at_quantile(0.5),
        set_latency.value_at_quantile(0.99),
        lag.value_at_quantile(0.99),
    );
    for text in first_errors.iter() {
        eprintln!("  error: {text}");
    }
}

/// utime + stime of this process, from /proc (Linux; None elsewhere).
fn own_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(ticks as f64 / 100.0)
}

#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
mod sys {
    use std::os::raw::{c_int, c_ulong};

    #[repr(C)]
    pub struct RLimit {
        pub cur: u64,
        pub max: u64,
    }

    pub const RLIMIT_NOFILE: c_int = 7;
    pub const PR_SET_TIMERSLACK: c_int = 29;

    extern "C" {
        pub fn getrlimit(resource: c_int, limit: *mut RLimit) -> c_int;
        pub fn setrlimit(resource: c_int, limit: *const RLimit) -> c_int;
        pub fn prctl(
            option: c_int,
            arg2: c_ulong,
            arg3: c_ulong,
            arg4: c_ulong,
            arg5: c_ulong,
        ) -> c_int;
    }
}

/// Raises the soft open-file limit towards the hard one when `needed` is more.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
fn raise_nofile(needed: u64) {
    let mut limit = sys::RLimit { cur: 0, max: 0 };
    // SAFETY: getrlimit/setrlimit read and write one plain struct of two u64 (rlim_t).
    unsafe {
        if sys::getrlimit(sys::RLIMIT_NOFILE, &mut limit) != 0 || limit.cur >= needed {
            return;
        }
        let had = limit.cur;
        limit.cur = limit.max.min(needed.max(65536));
        if sys::setrlimit(sys::RLIMIT_NOFILE, &limit) != 0 {
            limit.cur = had;
        }
        if limit.cur < needed {
            eprintln!(
                "open-file limit {} is below the {needed} sockets needed (ulimit -n)",
                limit.cur
            );
        }
    }
}

#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
fn raise_nofile(_needed: u64) {}

/// Timer slack of the calling thread down to 10 µs (Linux' default is 50 µs).
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
fn lower_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer and touches no memory of ours.
    unsafe {
        sys::prctl(sys::PR_SET_TIMERSLACK, 10_000, 0, 0, 0);
    }
}

#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
fn lower_timer_slack() {}
