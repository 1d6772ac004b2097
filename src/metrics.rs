//! Per-tenant figures for operators: commands by name and outcome, cache hits and misses,
//! bytes read and written, and the latency of every command from the moment its request was
//! read to the moment its reply was ready to write, in hdrhistogram per command family.
//!
//! A session notes what happens in a [`Tally`] (a vector, no locking) and hands it to its
//! tenant's [`TenantStats`] once per pass of its loop, under one lock: the hot path pays a
//! push per command, not a shared atomic or a hash lookup.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use hdrhistogram::Histogram;

use crate::command::{self, Command, CommandSpec};

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Ok,
    /// An error reply (from Redis or respite), other than a refusal.
    Error,
    /// Refused by respite: NOPERM, OOM, NOAUTH, unknown command, wrong arity...
    Refused,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Refused => "refused",
        }
    }
}

/// Command families for latency, from Redis' ACL categories (the first that applies).
const FAMILIES: &[(u32, &str)] = &[
    (command::ACL_STRING, "string"),
    (command::ACL_HASH, "hash"),
    (command::ACL_LIST, "list"),
    (command::ACL_SET, "set"),
    (command::ACL_SORTEDSET, "sortedset"),
    (command::ACL_STREAM, "stream"),
    (command::ACL_GEO, "geo"),
    (command::ACL_BITMAP, "bitmap"),
    (command::ACL_HYPERLOGLOG, "hyperloglog"),
    (command::ACL_PUBSUB, "pubsub"),
    (command::ACL_SCRIPTING, "scripting"),
    (command::ACL_TRANSACTION, "transaction"),
    (command::ACL_CONNECTION, "connection"),
    (command::ACL_KEYSPACE, "keyspace"),
];

/// What a command is, for the figures: its name, latency family, and whether it reads keys.
/// It rides in every request's place in the reply queue, so it is kept to half a cache
/// line: the command's table entry rather than its name and family as slices.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    /// The command's entry in the table (a container's, for a subcommand).
    spec: &'static CommandSpec,
    /// Its index in [`FAMILIES`]; past the end: "other".
    family: u8,
    /// A read of keys: its reply counts as a hit or a miss.
    pub read: bool,
    /// When its request was read.
    pub at: Instant,
}

/// What a command respite could not name is counted as.
static UNKNOWN: CommandSpec = CommandSpec {
    name: b"unknown",
    arity: 0,
    flags: 0,
    acl: 0,
    key_specs: &[],
    subcommands: &[],
};

impl Meta {
    pub fn of(cmd: &Command, at: Instant) -> Meta {
        Meta {
            spec: cmd.parent.unwrap_or(cmd.spec),
            family: FAMILIES
                .iter()
                .position(|(bit, _)| cmd.in_category(*bit))
                .unwrap_or(FAMILIES.len()) as u8,
            read: cmd.has(command::CMD_READONLY) && !cmd.spec.key_specs.is_empty(),
            at,
        }
    }

    /// A command not in the table, read at `at`.
    pub fn unknown(at: Instant) -> Meta {
        Meta {
            spec: &UNKNOWN,
            family: FAMILIES.len() as u8,
            read: false,
            at,
        }
    }

    /// As in the command table (ASCII).
    pub fn name(&self) -> &'static [u8] {
        self.spec.name
    }

    pub fn family(&self) -> &'static str {
        FAMILIES
            .get(self.family as usize)
            .map_or("other", |(_, f)| f)
    }
}

/// One session's notes since it last handed them over.
#[derive(Debug, Default)]
pub struct Tally {
    /// Runs of the same command and outcome (a pipeline of GETs is one entry).
    commands: Vec<(&'static [u8], Outcome, u64)>,
    /// Runs of (family, microseconds): a pipeline's requests are read together and their
    /// replies timed together, so their latencies are mostly one run.
    latencies: Vec<(&'static str, u64, u64)>,
    hits: u64,
    misses: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl Tally {
    /// A command has its reply: `error` if the reply is an error, `hit` for a read that found
    /// something (`None` when not a read).
    pub fn done(&mut self, meta: &Meta, outcome: Outcome, hit: Option<bool>, now: Instant) {
        match self.commands.last_mut() {
            Some((name, o, n)) if std::ptr::eq(*name, meta.name()) && *o == outcome => *n += 1,
            _ => self.commands.push((meta.name(), outcome, 1)),
        }
        let micros = (now.saturating_duration_since(meta.at).as_micros() as u64).max(1);
        match self.latencies.last_mut() {
            Some((family, m, n)) if std::ptr::eq(*family, meta.family()) && *m == micros => *n += 1,
            _ => self.latencies.push((meta.family(), micros, 1)),
        }
        match hit {
            Some(true) => self.hits += 1,
            Some(false) => self.misses += 1,
            None => {}
        }
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty() && self.bytes_in == 0 && self.bytes_out == 0
    }

    pub fn has_commands(&self) -> bool {
        !self.commands.is_empty()
    }
}

/// A tenant's figures on this instance.
#[derive(Debug, Default)]
pub struct TenantStats {
    inner: Mutex<Totals>,
}

/// Cumulative since start.
#[derive(Debug, Default, Clone)]
pub struct Totals {
    pub commands: HashMap<(&'static [u8], Outcome), u64, foldhash::fast::RandomState>,
    pub hits: u64,
    pub misses: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub auth_failures: u64,
    pub latency: HashMap<&'static str, Histogram<u64>, foldhash::fast::RandomState>,
    /// The sum of every latency, for the billing roll-up's mean.
    pub latency_sum_us: u64,
    /// When its figures last moved (/metrics lists the tenants active lately).
    pub last_active: Option<Instant>,
}

impl Totals {
    /// p50, p90, p99, p99.9 in microseconds of every command of the family (all families
    /// when `None`).
    pub fn percentiles(&self, family: Option<&str>) -> Option<[u64; 4]> {
        let mut all: Option<Histogram<u64>> = None;
        for (f, h) in &self.latency {
            if family.is_some_and(|want| want != *f) {
                continue;
            }
            match &mut all {
                Some(a) => {
                    let _ = a.add(h);
                }
                None => all = Some(h.clone()),
            }
        }
        let h = all.filter(|h| !h.is_empty())?;
        Some([50.0, 90.0, 99.0, 99.9].map(|q| h.value_at_quantile(q / 100.0)))
    }

    /// Commands of every kind and outcome.
    pub fn requests(&self) -> u64 {
        self.commands.values().sum()
    }

    /// Hits over hits and misses; 0 before any read.
    pub fn hit_rate(&self) -> f64 {
        let reads = self.hits + self.misses;
        if reads == 0 {
            0.0
        } else {
            self.hits as f64 / reads as f64
        }
    }
}

impl TenantStats {
    /// Takes a session's notes in, and empties them; `now` is the session's last reading
    /// of the clock (its last read from the client).
    pub fn absorb(&self, t: &mut Tally, now: Instant) {
        let mut s = self.inner.lock().unwrap();
        for (name, outcome, n) in t.commands.drain(..) {
            *s.commands.entry((name, outcome)).or_default() += n;
        }
        let Totals {
            latency,
            latency_sum_us,
            ..
        } = &mut *s;
        let mut runs = t.latencies.drain(..).peekable();
        while let Some((family, micros, n)) = runs.next() {
            let h = latency.entry(family).or_insert_with(|| {
                Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid bounds")
            });
            h.saturating_record_n(micros, n);
            *latency_sum_us += micros * n;
            // The runs of a pipeline of one family (their latencies differ by a microsecond
            // or two) go to the histogram found for the first: one map lookup.
            while let Some((_, micros, n)) = runs.next_if(|r| std::ptr::eq(r.0, family)) {
                h.saturating_record_n(micros, n);
                *latency_sum_us += micros * n;
            }
        }
        s.hits += std::mem::take(&mut t.hits);
        s.misses += std::mem::take(&mut t.misses);
        s.bytes_in += std::mem::take(&mut t.bytes_in);
        s.bytes_out += std::mem::take(&mut t.bytes_out);
        s.last_active = Some(s.last_active.map_or(now, |was| was.max(now)));
    }

    pub fn auth_failed(&self) {
        let mut s = self.inner.lock().unwrap();
        s.auth_failures += 1;
        s.last_active = Some(Instant::now());
    }

    /// Did its figures move since `since`?
    pub fn active_since(&self, since: Instant) -> bool {
        self.inner
            .lock()
            .unwrap()
            .last_active
            .is_some_and(|at| at >= since)
    }

    /// A copy of the figures (for /metrics and INFO).
    pub fn snapshot(&self) -> Totals {
        self.inner.lock().unwrap().clone()
    }
}
