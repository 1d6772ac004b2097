//! The namespace's rewrite and strip, for every command of the table with fuzzed arguments,
//! any tenant id and any database (the properties of `tests/suite/properties.rs`, over the
//! whole table rather than DEL alone).
//!
//! A request goes through the stages before the rewrite as a session runs them (arity, key
//! map, policy), then through `namespace::request`. Checked:
//! - no key reaches Redis without the tenant's prefix (of the selected database; a channel's
//!   without a database), unless it is a shared key; a (un)subscribed channel is the
//!   tenant's, or its keyspace channel, or one Redis only fills with what `strip_push`
//!   filters (keyevents, invalidations);
//! - the namespace guard never has to refuse (each refusal is a bug in the rewrite);
//! - every name Redis gets behind the prefix, named back in a reply of each shape (RESP2 and
//!   RESP3, bulk and simple strings), strips back to the tenant's own name; a channel in a
//!   (un)subscribe confirmation or a message strips back to the channel the tenant named;
//! - no such name reads as another tenant's, nor is stripped with another tenant's prefix.
//!
//! The input is read as a little program (see [`Input`]).

#![no_main]

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use respite::command::{lookup, CommandSpec, KeyMap, COMMANDS};
use respite::namespace::reply::{strip, strip_push};
use respite::namespace::{
    key_error, own_prefix, request, Expect, Shape, SubKind, GUARD_REFUSALS, INVALIDATE, KEYEVENT,
    KEYSPACE,
};
use respite::tenant::Tenant;
use respite::upstream::Facts;
use respite::wire::{encode_marked, encode_request, next_frame, parse_request, Limits};

/// Every command and subcommand of the table: (spec, its container).
fn commands() -> &'static [(&'static CommandSpec, Option<&'static CommandSpec>)] {
    static ALL: OnceLock<Vec<(&'static CommandSpec, Option<&'static CommandSpec>)>> =
        OnceLock::new();
    ALL.get_or_init(|| {
        COMMANDS
            .iter()
            .flat_map(|c| {
                std::iter::once((c, None)).chain(c.subcommands.iter().map(move |s| (s, Some(c))))
            })
            .collect()
    })
}

/// Words the key specs and the commands' grammars look for: where keys begin, options that
/// take a key or a pattern, keywords that are also values.
const WORDS: &[&str] = &[
    "KEYS",
    "STORE",
    "STOREDIST",
    "STREAMS",
    "BY",
    "GET",
    "LIMIT",
    "ASC",
    "DESC",
    "ALPHA",
    "GROUP",
    "COUNT",
    "BLOCK",
    "NOACK",
    "MATCH",
    "TYPE",
    "PREFIX",
    "BCAST",
    "REDIRECT",
    "ON",
    "OFF",
    "OPTIN",
    "OPTOUT",
    "NOLOOP",
    "WEIGHTS",
    "AGGREGATE",
    "POPULATE",
    "LEFT",
    "RIGHT",
    "MIN",
    "MAX",
    "WITHSCORES",
    "COPY",
    "REPLACE",
    "AUTH",
    "AUTH2",
    "FROM",
    "ANY",
    "#",
    "*",
    "",
    "0",
    "1",
    "2",
    "3",
    "-1",
    "$",
    ">",
    "streams",
    "store",
    "keys",
    "FIELDS",
    "EX",
];

/// The fuzz input, read front to back (missing bytes read as 0):
/// - flags: bit 0 admin, bit 1 shared prefixes configured, bit 2 publisher, bit 3 a
///   database past 255;
/// - the tenant's id and another tenant's (a length byte, then one byte per character);
/// - the database (one byte, or four with flag bit 3);
/// - the command: two bytes, an index into the table's commands and subcommands;
/// - arguments until the input ends, each a tag byte and its bytes (see [`Input::arg`]).
struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    fn bytes(&mut self, n: usize) -> &[u8] {
        let (taken, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        taken
    }

    /// A valid tenant id (`[A-Za-z0-9_-]{1,64}`: exactly 64 characters to pick from).
    fn id(&mut self) -> String {
        const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
        let len = self.byte() as usize % 64 + 1;
        (0..len)
            .map(|_| CHARS[self.byte() as usize % 64] as char)
            .collect()
    }

    fn arg(&mut self, ids: &[&str; 2]) -> Vec<u8> {
        match self.byte() % 8 {
            0..=2 => {
                let len = self.byte() as usize % 40;
                self.bytes(len).to_vec()
            }
            3 | 4 => WORDS[self.byte() as usize % WORDS.len()]
                .as_bytes()
                .to_vec(),
            5 => (self.byte() as i8 as i64 % 12).to_string().into_bytes(),
            // Channels Redis itself publishes on, in the forms a tenant may name them.
            6 => {
                let len = self.byte() as usize % 16;
                let db = self.byte();
                let name = String::from_utf8_lossy(self.bytes(len)).into_owned();
                match db % 5 {
                    0 => format!("__keyspace@{}__:{name}", db / 5),
                    1 => format!("__keyevent@{}__:{name}", db / 5 % 3),
                    2 => "__redis__:invalidate".to_string(),
                    3 => format!("__keyspace@0{}__:{name}", db / 5),
                    _ => format!("__keyspace@*__:{name}"),
                }
                .into_bytes()
            }
            // Names that look like a tenant's own: a tenant may call its key anything.
            _ => {
                let who = ids[self.byte() as usize % 2];
                let db = self.byte();
                let name = match db % 3 {
                    0 => format!("tenant:{who}:k"),
                    1 => format!("tenant:{who}@{db}:k"),
                    _ => format!("shared:market:{who}"),
                };
                name.into_bytes()
            }
        }
    }
}

const ROOMY: Limits = Limits {
    max_bulk_bytes: 1 << 30,
    max_array_len: 1 << 30,
};

fn frame(bytes: &[u8], protocol: u8) -> respite::wire::Frame {
    let mut buf = BytesMut::from(bytes);
    let f = next_frame(&mut buf, protocol).unwrap().unwrap();
    assert!(buf.is_empty(), "one whole frame");
    f
}

/// The strings of a reply made only of bulk strings (as the tenant reads it back).
fn strings(reply: &[u8]) -> Vec<Bytes> {
    let mut buf = BytesMut::from(reply);
    let args = parse_request(&mut buf, &ROOMY, true).unwrap().unwrap().args;
    assert!(buf.is_empty());
    args
}

fn bulk(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(format!("${}\r\n", s.len()).as_bytes());
    out.extend_from_slice(s);
    out.extend_from_slice(b"\r\n");
}

/// `sent` named back by Redis in a reply of each shape that carries names, stripped as the
/// tenant gets it: `want`, the names as the tenant wrote them.
fn named_back(sent: &[Bytes], want: &[Bytes], prefix: &[u8], other: &[u8]) {
    let n = sent.len();
    // KEYS: `[name, ...]`, in bulk strings (either protocol) and RESP3 simple strings.
    let mut keys = BytesMut::new();
    encode_request(&mut keys, sent.iter().map(|s| &s[..]));
    for protocol in [2, 3] {
        let f = frame(&keys, protocol);
        assert_eq!(strings(&strip(&f, &Shape::Keys, prefix)), want);
        // Never with another tenant's prefix: the reply stays as Redis sent it.
        assert_eq!(strip(&f, &Shape::Keys, other), f.raw);
    }
    if sent
        .iter()
        .all(|s| !s.contains(&b'\r') && !s.contains(&b'\n'))
    {
        let mut simple = format!("*{n}\r\n").into_bytes();
        for s in sent {
            simple.push(b'+');
            simple.extend_from_slice(s);
            simple.extend_from_slice(b"\r\n");
        }
        assert_eq!(
            strings(&strip(&frame(&simple, 3), &Shape::Keys, prefix)),
            want
        );
    }
    // SCAN: `[cursor, [name, ...]]`.
    let mut scan = b"*2\r\n$1\r\n0\r\n".to_vec();
    scan.extend_from_slice(&keys);
    let stripped = strip(&frame(&scan, 2), &Shape::Scan, prefix);
    assert_eq!(
        strings(&stripped[b"*2\r\n$1\r\n0\r\n".len()..]),
        want,
        "SCAN"
    );
    // BLPOP and kin: `[name, value]`.
    let mut first = b"*2\r\n".to_vec();
    bulk(&mut first, &sent[0]);
    bulk(&mut first, b"v");
    let mut expected = b"*2\r\n".to_vec();
    bulk(&mut expected, &want[0]);
    bulk(&mut expected, b"v");
    assert_eq!(strip(&frame(&first, 2), &Shape::FirstKey, prefix), expected);
    // XREAD: `[[name, []], ...]` in RESP2, `{name: [], ...}` in RESP3; PUBSUB NUMSUB:
    // `[name, n, ...]` or a map.
    for (shape, open, value) in [
        (Shape::Streams, "*", "*0\r\n"),
        (Shape::Streams, "%", "*0\r\n"),
        (Shape::EveryOther, "*", ":1\r\n"),
        (Shape::EveryOther, "%", ":1\r\n"),
    ] {
        let pairs = |names: &[Bytes]| {
            let mut out = match (open, &shape) {
                ("*", Shape::EveryOther) => format!("*{}\r\n", 2 * n),
                _ => format!("{open}{n}\r\n"),
            }
            .into_bytes();
            for s in names {
                if open == "*" && shape == Shape::Streams {
                    out.extend_from_slice(b"*2\r\n");
                }
                bulk(&mut out, s);
                out.extend_from_slice(value.as_bytes());
            }
            out
        };
        let protocol = if open == "%" { 3 } else { 2 };
        if open == "%" && !distinct(sent) {
            // A map keeps one entry per key.
            continue;
        }
        let got = strip(&frame(&pairs(sent), protocol), &shape, prefix);
        assert_eq!(got, pairs(want), "{shape:?} {open}");
    }
}

fn distinct(names: &[Bytes]) -> bool {
    let mut sorted = names.to_vec();
    sorted.sort();
    sorted.dedup();
    sorted.len() == names.len()
}

/// A channel in the pushes Redis sends about it (RESP2 arrays, RESP3 pushes): its
/// (un)subscribe confirmation, and a message on it, stripped back to `want`.
fn pushed_back(kind: SubKind, sent: &[u8], want: &[u8], prefix: &[u8]) {
    let (confirm, message) = match kind {
        SubKind::Channel => ("subscribe", "message"),
        SubKind::Pattern => ("psubscribe", "pmessage"),
        SubKind::Shard => ("ssubscribe", "smessage"),
    };
    for open in ["*", ">"] {
        let protocol = if open == ">" { 3 } else { 2 };
        let push = |channel: &[u8]| {
            let mut out = format!("{open}3\r\n").into_bytes();
            bulk(&mut out, confirm.as_bytes());
            bulk(&mut out, channel);
            out.extend_from_slice(b":1\r\n");
            out
        };
        assert_eq!(
            strip_push(&frame(&push(sent), protocol), prefix),
            push(want)
        );
        if sent.starts_with(KEYEVENT) || sent == INVALIDATE {
            // Messages there carry keys, filtered by whose they are.
            continue;
        }
        let delivered = |channel: &[u8]| {
            let mut out = match kind {
                SubKind::Pattern => format!("{open}4\r\n"),
                _ => format!("{open}3\r\n"),
            }
            .into_bytes();
            bulk(&mut out, message.as_bytes());
            bulk(&mut out, channel);
            if kind == SubKind::Pattern {
                bulk(&mut out, channel);
            }
            bulk(&mut out, b"payload");
            out
        };
        let got = strip_push(&frame(&delivered(sent), protocol), prefix);
        assert_eq!(got, delivered(want), "{message}");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input { data };
    let flags = input.byte();
    let mut ids = [input.id(), input.id()];
    if ids[1] == ids[0] {
        // Another tenant has another id.
        let other = if ids[1].starts_with('a') { "b" } else { "a" };
        ids[1].replace_range(..1, other);
    }
    let db = match flags & 8 {
        0 => input.byte() as u32 % 16,
        _ => {
            u32::from_le_bytes([input.byte(), input.byte(), input.byte(), input.byte()])
                % (i32::MAX as u32)
        }
    };
    let index = u16::from_le_bytes([input.byte(), input.byte()]) as usize % commands().len();
    let (spec, parent) = commands()[index];
    let mut args: Vec<Bytes> = Vec::new();
    match parent {
        Some(p) => args.extend([Bytes::from_static(p.name), Bytes::from_static(spec.name)]),
        None => args.push(Bytes::from_static(spec.name)),
    }
    let names = [ids[0].as_str(), ids[1].as_str()];
    while !input.data.is_empty() && args.len() < 48 {
        args.push(Bytes::from(input.arg(&names)));
    }

    let mut tenant = Tenant::new(&ids[0], Default::default());
    tenant.databases = tenant.databases.max(db + 1);
    tenant.admin = flags & 1 != 0;
    tenant.publisher = flags & 4 != 0;
    if flags & 2 != 0 {
        tenant.shared = Arc::from(vec![Bytes::from_static(b"shared:market:")]);
    }
    let other = Tenant::new(&ids[1], Default::default());

    // The stages before the rewrite, as `session::decide` runs them.
    let cmd = match lookup(&args) {
        Ok(cmd) => cmd,
        // A container named without one of its subcommands.
        Err(_) if parent.is_none() && !spec.subcommands.is_empty() => return,
        Err(_) => panic!(
            "{} is in the table but not found",
            String::from_utf8_lossy(spec.name)
        ),
    };
    if parent.is_some() || spec.subcommands.is_empty() {
        assert!(
            std::ptr::eq(cmd.spec, spec),
            "{} found as another",
            cmd.full_name()
        );
    }
    if !cmd.arity_ok(args.len()) {
        return;
    }
    let keys = match KeyMap::find(&cmd, &args) {
        Ok(keys) => keys,
        Err(e) => {
            let _ = key_error(&cmd, &args, e);
            return;
        }
    };
    if respite::policy::check(&cmd, &args, Some(&keys), &tenant, &Facts::default()).is_err() {
        return;
    }
    let refusals = GUARD_REFUSALS.load(Ordering::Relaxed);
    let fwd = match request(&cmd, args.clone(), &keys, &tenant) {
        Ok(fwd) => fwd,
        Err(e) => {
            let now = GUARD_REFUSALS.load(Ordering::Relaxed);
            assert_eq!(now, refusals, "the guard refused {}: {e}", cmd.full_name());
            return;
        }
    };

    // The request as Redis gets it.
    let prefix = match fwd.channels {
        true => tenant.prefix.clone(),
        false => tenant.db_prefix(db),
    };
    let own = (prefix.len(), if fwd.channels { 0 } else { db });
    let mut wire = BytesMut::new();
    encode_marked(&mut wire, &fwd.args, &prefix, &fwd.prefixed);
    let sent = parse_request(&mut wire, &ROOMY, true)
        .unwrap()
        .unwrap()
        .args;
    assert!(wire.is_empty());
    assert_eq!(sent.len(), fwd.args.len());
    for (i, (s, a)) in sent.iter().zip(&fwd.args).enumerate() {
        match fwd.prefixed.has(i) {
            true => assert_eq!(&s[..], &[&prefix[..], &a[..]].concat()[..]),
            false => assert_eq!(s, a),
        }
    }

    // No key without the prefix, but a shared one (never a channel); keys are not moved.
    for (i, _) in keys.iter() {
        assert_eq!(
            fwd.args[i],
            args[i],
            "key {i} of {} changed",
            cmd.full_name()
        );
        if fwd.prefixed.has(i) {
            assert_eq!(own_prefix(&tenant.prefix, &sent[i]), Some(own), "key {i}");
            assert_eq!(own_prefix(&other.prefix, &sent[i]), None, "key {i}");
        } else {
            assert!(
                !fwd.channels && tenant.is_shared(&args[i]),
                "key {i} of {} leaves without the prefix",
                cmd.full_name()
            );
        }
    }

    // Every marked name, named back in replies, is the tenant's own name again.
    let marked: Vec<usize> = (0..sent.len()).filter(|&i| fwd.prefixed.has(i)).collect();
    if !marked.is_empty() {
        let sent_names: Vec<Bytes> = marked.iter().map(|&i| sent[i].clone()).collect();
        let want: Vec<Bytes> = marked.iter().map(|&i| fwd.args[i].clone()).collect();
        named_back(&sent_names, &want, &tenant.prefix, &other.prefix);
    }

    // Channels, (un)subscribed: each the tenant's, back as it named it.
    if let Expect::Confirm { kind, .. } = fwd.expect {
        for i in 1..sent.len() {
            let channel = &sent[i];
            let keyspace = channel
                .strip_prefix(KEYSPACE)
                .and_then(|rest| own_prefix(&tenant.prefix, rest));
            assert!(
                fwd.prefixed.has(i)
                    || keyspace.is_some()
                    || channel.starts_with(KEYEVENT)
                    || channel == INVALIDATE,
                "channel {i} of {} is not the tenant's",
                cmd.full_name()
            );
            pushed_back(kind, channel, &args[i], &tenant.prefix);
        }
    }
});
