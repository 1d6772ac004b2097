//! The audit trail (`[audit] path`): one JSON object per line, appended to a file of its own
//! or written to standard output, never into the log (which goes to standard error). Each
//! line has `ts` (UTC, milliseconds), `event`, and the event's fields:
//!
//! | event | when | fields |
//! |---|---|---|
//! | `auth_failed` | a refused AUTH, HELLO AUTH, or `POST /reload` token | `via`, `tenant` (when one was named, and is a tenant's), `peer`, `reason` (a word: `wrong_password`, `unknown_tenant`, `expired_token`, ...), `detail` (a bad token's fault) |
//! | `reload` | SIGHUP or `POST /reload` | `by`, `peer` (HTTP), `result`, and what changed (`reload::Report`) |
//! | `command_refused` | a server-wide command refused to a tenant | `tenant`, `peer`, `command`, `why` |
//! | `admin_command` | a server-wide command an admin tenant runs | `tenant`, `peer`, `command`, `args` (secret values redacted) |
//! | `shared_reads` | each minute, and at shutdown | `minute`, `tenant`, `key` (`key_hex` when not UTF-8), `count` |
//! | `shared_reads_overflow` | with them, past `shared_reads_max_pairs` | `minute`, `count`, `max_pairs` |
//! | `audit_dropped` | lines lost because the writer fell behind | `count` |
//!
//! A secret (a password, a token) never goes into a line: the failures say why, not with what.
//!
//! Lines are written by a thread of the trail's own, behind a bounded queue: a session never
//! waits on the disk, or on a pipe behind standard output, and past the queue a line is
//! dropped and counted. Shared reads are counted in each session (one hash-map increment per
//! read, [`SharedReads`]), handed to the trail once per pass of its loop, and written by the
//! writer at each minute's end: never a line per read.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::ser::SerializeMap;
use serde::Serialize;

use crate::config::AuditConfig;

/// Lines waiting for the writer, at most: a burst of failed logins is queued, a writer stuck
/// on its output costs this much memory and no more.
const QUEUE: usize = 16 * 1024;

/// Keys longer than this are not named in a `shared_reads` line, only counted in the
/// overflow: a tenant naming long keys must not make the trail hold them for a minute.
pub const MAX_KEY_BYTES: usize = 1024;

/// Distinct shared keys a session keeps room for between passes.
const SESSION_ROOM: usize = 16;

/// Where audit lines go, as `[audit] path` says: a file (appended to) or standard output.
type Output = Box<dyn Write + Send>;

/// The audit trail of one running proxy: its writer, and the shared reads of the minute.
/// Built from `[audit]` by `lib::context`; `None` writer: no trail.
pub struct Trail {
    queue: Option<SyncSender<Msg>>,
    shared: Arc<Shared>,
}

/// What the trail and its writer thread share.
struct Shared {
    /// `shared_reads_max_pairs`, which a reload may change; 0: reads are not recorded.
    max_pairs: AtomicUsize,
    window: Mutex<Window>,
    /// Lines dropped because the queue was full, since the writer last said so.
    dropped: AtomicU64,
    /// The output a reload opened, for the writer to take in place of its own.
    reopened: Mutex<Option<Output>>,
}

enum Msg {
    Line(String),
    /// Write the shared reads counted so far, now (shutdown).
    FlushReads,
    /// Everything sent before is written and flushed: say so.
    Sync(mpsc::Sender<()>),
    /// Look for a reopened output.
    Wake,
}

/// Shared reads handed over since the window began, per tenant and key.
struct Window {
    /// When it began (Unix seconds): its lines name that minute.
    began: u64,
    reads: HashMap<String, HashMap<Bytes, u64>>,
    pairs: usize,
    /// Reads of pairs past the cap, or of keys past [`MAX_KEY_BYTES`].
    overflow: u64,
}

impl Window {
    fn new(began: u64) -> Window {
        Window {
            began,
            reads: HashMap::new(),
            pairs: 0,
            overflow: 0,
        }
    }
}

/// One session's reads of shared keys since it last handed them to the trail: counted
/// without a lock, handed over once per pass of the session's loop.
#[derive(Debug, Default)]
pub struct SharedReads {
    counts: HashMap<Bytes, u64, foldhash::fast::RandomState>,
    overflow: u64,
}

impl SharedReads {
    /// One read of `key`; at most `max_pairs` distinct keys are held, the rest counted.
    pub fn note(&mut self, key: &Bytes, max_pairs: usize) {
        if let Some(n) = self.counts.get_mut(&key[..]) {
            *n += 1;
        } else if self.counts.len() < max_pairs && key.len() <= MAX_KEY_BYTES {
            // The request's own bytes, held until the end of the pass only.
            self.counts.insert(key.clone(), 1);
        } else {
            self.overflow += 1;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty() && self.overflow == 0
    }
}

/// A refused login, as `auth_failed` records it.
#[derive(Debug, Serialize)]
pub struct AuthFailed<'a> {
    /// How it tried: "AUTH", "HELLO", "POST /reload" or "TLS" (a client certificate).
    pub via: &'static str,
    /// The tenant it named, if it named one that could exist (a valid id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<&'a str>,
    pub peer: SocketAddr,
    pub reason: &'a str,
    /// What was wrong with a bad token (the verifier's words, never the token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<&'a str>,
}

/// A command refused or run, with who asked from where.
#[derive(Serialize)]
struct CommandLine<'a, A: Serialize> {
    tenant: &'a str,
    peer: SocketAddr,
    command: &'a str,
    #[serde(flatten)]
    more: A,
}

#[derive(Serialize)]
struct Why<'a> {
    why: &'a str,
}

#[derive(Serialize)]
struct Args<'a, T: Serialize> {
    args: &'a [T],
}

#[derive(Serialize)]
struct ReadsLine<'a> {
    minute: &'a str,
    tenant: &'a str,
    #[serde(flatten)]
    key: KeyText<'a>,
    count: u64,
}

#[derive(Serialize)]
struct OverflowLine<'a> {
    minute: &'a str,
    count: u64,
    max_pairs: usize,
}

#[derive(Serialize)]
struct Dropped {
    count: u64,
}

/// A key as JSON: `key` when it is UTF-8 (market keys are), else `key_hex`, so that a
/// binary key is shown exactly.
struct KeyText<'a>(&'a [u8]);

impl Serialize for KeyText<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1))?;
        match std::str::from_utf8(self.0) {
            Ok(key) => map.serialize_entry("key", key)?,
            Err(_) => map.serialize_entry("key_hex", &hex::encode(self.0))?,
        }
        map.end()
    }
}

#[derive(Serialize)]
struct Line<'a, F: Serialize> {
    ts: &'a str,
    event: &'a str,
    #[serde(flatten)]
    fields: F,
}

/// One audit line, newline included.
fn line(event: &str, fields: impl Serialize) -> Option<String> {
    let ts = timestamp(since_epoch());
    match serde_json::to_string(&Line {
        ts: &ts,
        event,
        fields,
    }) {
        Ok(mut text) => {
            text.push('\n');
            Some(text)
        }
        Err(e) => {
            tracing::error!(event, error = %e, "audit line not made");
            None
        }
    }
}

/// Opens what `path` names: standard output for "-", else the file, appended to.
fn open(path: &str) -> std::io::Result<Output> {
    if path == "-" {
        return Ok(Box::new(std::io::stdout()));
    }
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    {
        // Who failed to log in from where is for operators, not for every local user.
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o640);
        // A FIFO no one reads would hold the open until a reader comes, and a reload opens
        // on the thread that serves the clients: refused at once instead (ENXIO).
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(|e| match e.raw_os_error() {
        #[cfg(unix)]
        Some(libc::ENXIO) if is_fifo(path) => std::io::Error::new(e.kind(), "a FIFO no one reads"),
        _ => e,
    })?;
    #[cfg(unix)]
    blocking(&file)?;
    Ok(Box::new(std::io::BufWriter::new(file)))
}

#[cfg(unix)]
fn is_fifo(path: &str) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo())
}

/// Makes writes to `file` wait for room again (the writer thread's own: a full pipe is
/// waited on there, not lost), once it is open.
#[cfg(unix)]
fn blocking(file: &std::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL and F_SETFL on a descriptor `file` owns and keeps open.
    let done = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags != -1 && libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) != -1
    };
    match done {
        true => Ok(()),
        false => Err(std::io::Error::last_os_error()),
    }
}

/// A reloaded `[audit]`, opened and not yet in place.
pub struct Reopening {
    out: Output,
    max_pairs: usize,
}

/// Why the trail cannot be written where `[audit] path` says.
#[derive(Debug, thiserror::Error)]
#[error("audit.path {path:?}: {source}")]
pub struct OpenError {
    path: String,
    source: std::io::Error,
}

impl Trail {
    /// The trail `[audit]` asks for (none without it), its writer thread started.
    pub fn start(config: Option<&AuditConfig>) -> Result<Trail, OpenError> {
        let shared = Arc::new(Shared {
            max_pairs: AtomicUsize::new(config.map_or(0, |c| c.shared_reads_max_pairs)),
            window: Mutex::new(Window::new(since_epoch().as_secs())),
            dropped: AtomicU64::new(0),
            reopened: Mutex::new(None),
        });
        let Some(config) = config else {
            return Ok(Trail {
                queue: None,
                shared,
            });
        };
        let out = open(&config.path).map_err(|source| OpenError {
            path: config.path.clone(),
            source,
        })?;
        let (queue, lines) = mpsc::sync_channel(QUEUE);
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("respite-audit".into())
            .spawn(move || write_lines(lines, out, &writer))
            .map_err(|source| OpenError {
                path: config.path.clone(),
                source,
            })?;
        Ok(Trail {
            queue: Some(queue),
            shared,
        })
    }

    /// Is a trail written?
    pub fn on(&self) -> bool {
        self.queue.is_some()
    }

    /// Opens what a reloaded `[audit]` names (the same file again: a rotated one starts
    /// anew), for [`Trail::reopen`] to put in place once the rest of the reload is applied.
    /// `None` without a trail: turning it on needs a restart (`reload` says so).
    pub fn prepare(&self, config: &AuditConfig) -> Result<Option<Reopening>, OpenError> {
        if self.queue.is_none() {
            return Ok(None);
        }
        let out = open(&config.path).map_err(|source| OpenError {
            path: config.path.clone(),
            source,
        })?;
        Ok(Some(Reopening {
            out,
            max_pairs: config.shared_reads_max_pairs,
        }))
    }

    /// Writes to the output [`Trail::prepare`] opened from now on, with its cap on shared
    /// reads.
    pub fn reopen(&self, r: Reopening) {
        *self.shared.reopened.lock().unwrap() = Some(r.out);
        self.shared.max_pairs.store(r.max_pairs, Relaxed);
        if let Some(queue) = &self.queue {
            // A full queue wakes the writer anyway.
            let _ = queue.try_send(Msg::Wake);
        }
    }

    /// Appends one `event` line with `fields` (an object's fields), unless the writer is
    /// that far behind: then it is counted in an `audit_dropped` line instead.
    pub fn record(&self, event: &str, fields: impl Serialize) {
        let Some(queue) = &self.queue else {
            return;
        };
        let Some(text) = line(event, fields) else {
            return;
        };
        match queue.try_send(Msg::Line(text)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.shared.dropped.fetch_add(1, Relaxed);
            }
            // The writer is gone (it cannot have ended otherwise than by a panic, logged).
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    pub fn auth_failed(&self, failed: AuthFailed) {
        self.record("auth_failed", failed);
    }

    /// A server-wide command refused to `tenant`, and why (its arguments are not shown:
    /// CONFIG SET's may be a password).
    pub fn command_refused(&self, tenant: &str, peer: SocketAddr, command: &str, why: &str) {
        let more = Why { why };
        self.record(
            "command_refused",
            CommandLine {
                tenant,
                peer,
                command,
                more,
            },
        );
    }

    /// A server-wide command an admin tenant runs, with its arguments as `policy` shows
    /// them (secret values redacted).
    pub fn admin_command(
        &self,
        tenant: &str,
        peer: SocketAddr,
        command: &str,
        args: &[impl Serialize],
    ) {
        let more = Args { args };
        self.record(
            "admin_command",
            CommandLine {
                tenant,
                peer,
                command,
                more,
            },
        );
    }

    /// The most distinct (tenant, key) pairs a minute counts; 0 when shared reads are not
    /// recorded (no trail, or `shared_reads_max_pairs = 0`).
    pub fn shared_reads_cap(&self) -> usize {
        match self.queue {
            Some(_) => self.shared.max_pairs.load(Relaxed),
            None => 0,
        }
    }

    /// Takes a session's shared reads of `tenant`'s into the minute's, and empties them.
    pub fn hand_over(&self, tenant: &str, reads: &mut SharedReads) {
        let max = self.shared.max_pairs.load(Relaxed);
        let mut window = self.shared.window.lock().unwrap();
        let w = &mut *window;
        w.overflow += std::mem::take(&mut reads.overflow);
        if reads.counts.is_empty() {
            return;
        }
        if !w.reads.contains_key(tenant) {
            w.reads.insert(tenant.to_string(), HashMap::new());
        }
        let keys = w.reads.get_mut(tenant).expect("inserted");
        for (key, n) in reads.counts.drain() {
            if let Some(count) = keys.get_mut(&key[..]) {
                *count += n;
            } else if w.pairs < max {
                // A copy: the session's key shares the buffer its request was read into.
                keys.insert(Bytes::copy_from_slice(&key), n);
                w.pairs += 1;
            } else {
                w.overflow += n;
            }
        }
        // A pass that read many keys must not leave the session holding room for them.
        reads.counts.shrink_to(SESSION_ROOM);
    }

    /// Writes the shared reads counted so far and everything queued, and waits (at most
    /// `wait`) until it is written: at shutdown, after the sessions have handed theirs over.
    pub fn finish(&self, wait: Duration) {
        let Some(queue) = &self.queue else {
            return;
        };
        let deadline = Instant::now() + wait;
        let (done, written) = mpsc::channel();
        // Not `send`: a writer stuck on its output (a pipe nobody reads) leaves the queue
        // full, and the shutdown must not wait on it past `wait`.
        for mut msg in [Msg::FlushReads, Msg::Sync(done)] {
            loop {
                match queue.try_send(msg) {
                    Ok(()) => break,
                    Err(TrySendError::Full(again)) if Instant::now() < deadline => {
                        msg = again;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => return,
                }
            }
        }
        let _ = written.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }
}

/// The writer thread's output, and whether writing to it is failing (said once per run
/// of failures in the log: a full disk must not flood the log too).
struct Writer {
    out: Output,
    failing: bool,
}

impl Writer {
    fn put(&mut self, text: &[u8]) {
        let written = self.out.write_all(text);
        self.check(written);
    }

    fn flush(&mut self) {
        let flushed = self.out.flush();
        self.check(flushed);
    }

    fn check(&mut self, done: std::io::Result<()>) {
        match done {
            Ok(()) => self.failing = false,
            Err(e) => {
                if !self.failing {
                    tracing::error!(error = %e, "audit trail not written");
                }
                self.failing = true;
            }
        }
    }
}

/// The writer thread: writes what comes in order, flushes once the queue is empty, and at
/// each minute's end writes the minute's shared reads. Ends when the trail is dropped.
fn write_lines(lines: Receiver<Msg>, out: Output, shared: &Shared) {
    let mut w = Writer {
        out,
        failing: false,
    };
    let mut minute_ends = next_minute(since_epoch().as_secs());
    loop {
        let wait = Duration::from_secs(minute_ends).saturating_sub(since_epoch());
        let first = match lines.recv_timeout(wait) {
            Ok(msg) => Some(msg),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if let Some(new) = shared.reopened.lock().unwrap().take() {
            w.flush();
            w.out = new;
        }
        let (mut acks, mut reads_now) = (Vec::new(), false);
        // At most a queue's worth at a time: a steady stream of lines still gets flushed, and
        // the minute's reads written.
        let queued = std::iter::from_fn(|| lines.try_recv().ok()).take(QUEUE);
        for msg in first.into_iter().chain(queued) {
            match msg {
                Msg::Line(text) => w.put(text.as_bytes()),
                Msg::FlushReads => reads_now = true,
                Msg::Sync(ack) => acks.push(ack),
                Msg::Wake => {}
            }
        }
        let dropped = shared.dropped.swap(0, Relaxed);
        if dropped > 0 {
            if let Some(text) = line("audit_dropped", Dropped { count: dropped }) {
                w.put(text.as_bytes());
            }
        }
        let now = since_epoch().as_secs();
        if reads_now || now >= minute_ends {
            let window = std::mem::replace(&mut *shared.window.lock().unwrap(), Window::new(now));
            for text in reads_lines(window, shared.max_pairs.load(Relaxed)) {
                w.put(text.as_bytes());
            }
            minute_ends = next_minute(now);
        }
        w.flush();
        for ack in acks {
            let _ = ack.send(());
        }
    }
    w.flush();
}

/// A window's `shared_reads` lines, by tenant and key, and its overflow line.
fn reads_lines(window: Window, max_pairs: usize) -> Vec<String> {
    let minute = minute(window.began);
    let mut pairs: Vec<(&String, &Bytes, u64)> = window
        .reads
        .iter()
        .flat_map(|(tenant, keys)| keys.iter().map(move |(key, n)| (tenant, key, *n)))
        .collect();
    pairs.sort_unstable();
    let mut out: Vec<String> = pairs
        .into_iter()
        .filter_map(|(tenant, key, count)| {
            let key = KeyText(key);
            let minute = &minute;
            line(
                "shared_reads",
                ReadsLine {
                    minute,
                    tenant,
                    key,
                    count,
                },
            )
        })
        .collect();
    if window.overflow > 0 {
        let count = window.overflow;
        let minute = &minute;
        out.extend(line(
            "shared_reads_overflow",
            OverflowLine {
                minute,
                count,
                max_pairs,
            },
        ));
    }
    out
}

fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// The Unix second the minute after `secs`'s begins.
fn next_minute(secs: u64) -> u64 {
    (secs / 60 + 1) * 60
}

/// Days since 1970-01-01 as a civil (year, month, day), UTC (Howard Hinnant's algorithm).
fn civil(days: u64) -> (i64, u32, u32) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `YYYY-MM-DD` (UTC) of a Unix time: billing's days, the trail's dates.
pub fn date(unix_secs: u64) -> String {
    let (y, m, d) = civil(unix_secs / 86_400);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (RFC 3339, UTC) of a time since the Unix epoch.
fn timestamp(t: Duration) -> String {
    let s = t.as_secs();
    format!(
        "{}T{:02}:{:02}:{:02}.{:03}Z",
        date(s),
        s % 86_400 / 3_600,
        s % 3_600 / 60,
        s % 60,
        t.subsec_millis()
    )
}

/// The minute a Unix time falls in, `YYYY-MM-DDTHH:MM:00Z`.
fn minute(unix_secs: u64) -> String {
    let s = unix_secs;
    format!(
        "{}T{:02}:{:02}:00Z",
        date(s),
        s % 86_400 / 3_600,
        s % 3_600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_times_become_utc_text() {
        let t = Duration::from_millis(1_795_305_600_000 + 13 * 3_600_000 + 4 * 60_000 + 5_067);
        assert_eq!(timestamp(t), "2026-11-22T13:04:05.067Z");
        assert_eq!(minute(t.as_secs()), "2026-11-22T13:04:00Z");
        assert_eq!(next_minute(1_795_305_600), 1_795_305_660);
        assert_eq!(next_minute(1_795_305_659), 1_795_305_660);
    }

    fn reads(keys: &[&str]) -> SharedReads {
        let mut r = SharedReads::default();
        for k in keys {
            r.note(&Bytes::copy_from_slice(k.as_bytes()), 2);
        }
        r
    }

    fn trail(max_pairs: usize) -> Trail {
        let shared = Arc::new(Shared {
            max_pairs: AtomicUsize::new(max_pairs),
            window: Mutex::new(Window::new(1_795_305_600 + 59)),
            dropped: AtomicU64::new(0),
            reopened: Mutex::new(None),
        });
        Trail {
            queue: None,
            shared,
        }
    }

    fn fields(text: &str) -> serde_json::Value {
        let mut v: serde_json::Value = serde_json::from_str(text).unwrap();
        v.as_object_mut()
            .unwrap()
            .remove("ts")
            .expect("a timestamp");
        v
    }

    /// Reads add up per tenant and key across sessions; pairs past the cap (in a session,
    /// then in the minute) and overlong keys are counted in the overflow line.
    #[test]
    fn reads_add_up_within_their_caps() {
        let t = trail(3);
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        let mut one = reads(&["x", "y", "x", "z", &long]);
        assert_eq!((one.counts.len(), one.overflow), (2, 2));
        t.hand_over("a", &mut one);
        assert!(one.is_empty());
        t.hand_over("b", &mut reads(&["x"]));
        t.hand_over("b", &mut reads(&["y"]));
        t.hand_over("a", &mut reads(&["x"]));
        let window = std::mem::replace(&mut *t.shared.window.lock().unwrap(), Window::new(0));
        let lines: Vec<_> = reads_lines(window, 3).iter().map(|l| fields(l)).collect();
        let minute = "2026-11-22T00:00:00Z";
        let line = |tenant: &str, key: &str, count: u64| {
            serde_json::json!({"event": "shared_reads", "minute": minute, "tenant": tenant,
                "key": key, "count": count})
        };
        assert_eq!(
            lines,
            [
                line("a", "x", 3),
                line("a", "y", 1),
                line("b", "x", 1),
                serde_json::json!({"event": "shared_reads_overflow", "minute": minute,
                    "count": 3, "max_pairs": 3}),
            ]
        );
    }

    #[test]
    fn binary_keys_are_shown_in_hex() {
        let mut window = Window::new(0);
        window
            .reads
            .entry("a".into())
            .or_default()
            .insert(Bytes::from_static(b"shared:\xff"), 2);
        let lines = reads_lines(window, 10);
        assert_eq!(
            fields(&lines[0]),
            serde_json::json!({"event": "shared_reads", "minute": "1970-01-01T00:00:00Z",
                "tenant": "a", "key_hex": "7368617265643aff", "count": 2})
        );
    }

    /// No trail: nothing is counted, nothing is held.
    #[test]
    fn without_a_trail_reads_are_not_counted() {
        let t = Trail::start(None).unwrap();
        assert_eq!(t.shared_reads_cap(), 0);
        assert!(!t.on());
    }
}
