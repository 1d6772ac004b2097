//! Replies from Redis, back out of the namespace: telling replies from pub/sub pushes, and
//! rewriting key and channel names out of `tenant:<id>:`. A reply is passed on as the raw
//! bytes Redis sent (framed by `wire`); when it
//! carries key names, only those strings are spliced out and re-encoded without the
//! `tenant:<id>:` prefix, so everything else (map order, doubles, attributes) stays
//! byte-for-byte what Redis said.

use bytes::{BufMut, Bytes, BytesMut};
use redis_protocol::resp3::types::RangeFrame;

use crate::wire::{element_spans, elements, next_frame, put_int, Frame};

/// Where a reply carries key (or channel) names that must lose the tenant prefix.
///
/// Every request's place in the reply queue holds one, so the rare shapes that carry a
/// list hold it behind a thin pointer: 16 bytes rather than 32.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::box_collection)]
pub enum Shape {
    /// Nothing to rewrite.
    Plain,
    /// SCAN: `[cursor, [key, ...]]`.
    Scan,
    /// KEYS, PUBSUB CHANNELS: `[key, ...]`.
    Keys,
    /// BLPOP, BZPOPMIN, LMPOP, ZMPOP, ...: `[key, ...]`, the first element a key.
    FirstKey,
    /// XREAD, XREADGROUP: `[[key, entries], ...]` (RESP2) or `{key: entries}` (RESP3).
    Streams,
    /// PUBSUB NUMSUB: `[channel, n, channel, n, ...]` or a map.
    EveryOther,
    /// CLIENT TRACKINGINFO: the strings under its `prefixes` field, and its `redirect`:
    /// Redis' id of a connection, shown as the tenant's id for it (the pairs (tenant's,
    /// Redis') the connection's REDIRECTs named).
    TrackingInfo(Box<Vec<(i64, i64)>>),
    /// CLIENT GETREDIR: Redis' id of a connection, shown as the tenant's id for it.
    GetRedir(Box<Vec<(i64, i64)>>),
    /// EXEC: one shape per queued command; `Local` results are ones respite answered itself,
    /// spliced in at their place.
    Exec(Box<Vec<ExecItem>>),
    /// A tenant's script: Redis' errors name the wrapped script (the first 40 bytes, its
    /// SHA1), which the tenant knows by its own (the last 40).
    Script(Box<[u8; 80]>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecItem {
    Upstream(Shape),
    Local(Bytes),
    /// A command respite queued itself (the AUTH around a tenant's script): its result is
    /// left out of the client's EXEC reply.
    Hidden,
}

/// A string inside a frame to re-encode without the prefix.
struct Edit {
    /// The whole encoded element, header to CRLF.
    start: usize,
    end: usize,
    /// The parts of the payload to keep (the second often empty).
    keep: [std::ops::Range<usize>; 2],
    /// A keyspace notification's channel for a key of database `n`: `n__:` goes between
    /// the two parts (`__keyspace@` and the key).
    db: Option<u32>,
}

impl Edit {
    fn len(&self) -> usize {
        let db = self.db.map_or(0, |n| decimal_digits(n as usize) + 3);
        self.keep.iter().map(|k| k.len()).sum::<usize>() + db
    }
}

fn edit(frame: &Frame, f: &RangeFrame, prefix: &[u8], edits: &mut Vec<Edit>) {
    let (data, header) = match f {
        RangeFrame::BlobString { data, .. } => {
            (data.0..data.1, 3 + decimal_digits(data.1 - data.0))
        }
        RangeFrame::SimpleString { data, .. } => (data.0..data.1, 1),
        _ => return,
    };
    let text = &frame.raw[data.clone()];
    // A keyspace notification's channel (or pattern): the key's prefix is inside it, and
    // a key of database n goes back to the channel Redis names for it (`__keyspace@n__:`).
    let (at, (len, db)) = match text.strip_prefix(super::KEYSPACE) {
        Some(rest) => match super::own_prefix(prefix, rest) {
            Some(own) => (super::KEYSPACE.len(), own),
            None => return,
        },
        None => match super::own_prefix(prefix, text) {
            Some(own) => (0, own),
            None => return,
        },
    };
    let (kept, db) = match (at, db) {
        (0, _) | (_, 0) => (at, None),
        // `__keyspace@`, then `n__:`.
        (_, n) => (at - b"0__:".len(), Some(n)),
    };
    edits.push(Edit {
        start: data.start - header,
        end: data.end + 2,
        keep: [
            data.start..data.start + kept,
            data.start + at + len..data.end,
        ],
        db,
    });
}

fn decimal_digits(mut n: usize) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

fn apply(frame: &Frame, mut edits: Vec<Edit>) -> Bytes {
    if edits.is_empty() {
        return frame.raw.clone();
    }
    edits.sort_by_key(|e| e.start);
    let raw = &frame.raw;
    let mut out = BytesMut::with_capacity(raw.len());
    let mut pos = 0;
    for e in edits {
        out.extend_from_slice(&raw[pos..e.start]);
        out.put_u8(b'$');
        put_int(&mut out, e.len() as i64);
        let [first, second] = e.keep;
        out.extend_from_slice(&raw[first]);
        if let Some(n) = e.db {
            out.extend_from_slice(n.to_string().as_bytes());
            out.extend_from_slice(b"__:");
        }
        out.extend_from_slice(&raw[second]);
        out.extend_from_slice(b"\r\n");
        pos = e.end;
    }
    out.extend_from_slice(&raw[pos..]);
    out.freeze()
}

/// [`strip`], appended to `out`: a reply passed as it is (most) is copied once, without
/// a reference to the read buffer taken and dropped for it.
pub fn strip_into(frame: &Frame, shape: &Shape, prefix: &[u8], out: &mut BytesMut) {
    match shape {
        Shape::Plain | Shape::Script(_) if !frame.is_error() => out.extend_from_slice(&frame.raw),
        _ => out.extend_from_slice(&strip(frame, shape, prefix)),
    }
}

/// The reply as the tenant must see it.
pub fn strip(frame: &Frame, shape: &Shape, prefix: &[u8]) -> Bytes {
    match shape {
        _ if frame.is_error() => {
            let raw = match shape {
                Shape::Script(names) => rename_script(frame, names),
                _ => frame.raw.clone(),
            };
            strip_error(raw, prefix)
        }
        Shape::Plain => frame.raw.clone(),
        Shape::Exec(items) => exec(frame, items, prefix),
        Shape::TrackingInfo(redirects) => {
            let mut edits = Vec::new();
            collect(frame, &frame.tree(), shape, prefix, &mut edits);
            let raw = apply(frame, edits);
            match redirect_field(&raw) {
                Some((at, id)) => splice_id(&raw, at, shown_id(id, redirects)),
                None => raw,
            }
        }
        Shape::GetRedir(redirects) => match *frame.tree() {
            RangeFrame::Number { data, .. } => {
                let mut out = BytesMut::new();
                out.put_u8(b':');
                put_int(&mut out, shown_id(data, redirects));
                out.freeze()
            }
            _ => frame.raw.clone(),
        },
        Shape::Script(_) => frame.raw.clone(),
        _ => {
            let mut edits = Vec::new();
            collect(frame, &frame.tree(), shape, prefix, &mut edits);
            apply(frame, edits)
        }
    }
}

/// An error (`-...` or RESP3's `!<len>`) with the tenant's prefix (any database's) taken off
/// the names in its text (`No such key 'tenant:a:k'` → `No such key 'k'`). A prefix counts where Redis
/// starts a name: after the quote it opens it with (or at the text's start), so that a
/// tenant's own key named `tenant:a:x`, ` tenant:a:x` or `'tenant:a:` keeps its name.
pub fn strip_error(raw: Bytes, prefix: &[u8]) -> Bytes {
    let blob = raw.first() == Some(&b'!');
    let start = match blob {
        true => raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(raw.len(), |i| i + 2),
        false => 1,
    };
    let end = raw.len().saturating_sub(2).max(start);
    let text = &raw[start..end];
    // An opening quote: one after a space (or the text's start); a quote inside a name
    // has none before it.
    let starts_name = |i: usize| match i {
        0 => true,
        1 => b"'\"".contains(&text[0]),
        _ => b"'\"".contains(&text[i - 1]) && text[i - 2] == b' ',
    };
    let cuts: Vec<(usize, usize)> = (0..text.len())
        .filter(|&i| starts_name(i))
        .filter_map(|i| Some((i, super::own_prefix(prefix, &text[i..])?.0)))
        .collect();
    if cuts.is_empty() {
        return raw;
    }
    let mut kept = Vec::with_capacity(text.len());
    let mut at = 0;
    for (cut, len) in cuts {
        kept.extend_from_slice(&text[at..cut]);
        at = cut + len;
    }
    kept.extend_from_slice(&text[at..]);
    let mut out = BytesMut::with_capacity(kept.len() + 16);
    match blob {
        true => {
            out.put_u8(b'!');
            put_int(&mut out, kept.len() as i64);
        }
        false => out.put_u8(b'-'),
    }
    out.extend_from_slice(&kept);
    out.extend_from_slice(b"\r\n");
    out.freeze()
}

/// The tenant's id for the connection Redis knows as `id`: from the pairs the connection's
/// REDIRECTs named; -1 and 0 (no redirect) as they are, and never Redis' own id (0 then).
fn shown_id(id: i64, redirects: &[(i64, i64)]) -> i64 {
    match redirects.iter().rev().find(|(_, upstream)| *upstream == id) {
        Some((shown, _)) => *shown,
        None if id <= 0 => id,
        None => 0,
    }
}

/// Where CLIENT TRACKINGINFO's `redirect` integer is (`redirect` then `:<id>`, in RESP2's
/// array and RESP3's map alike), and its value.
fn redirect_field(raw: &[u8]) -> Option<(std::ops::Range<usize>, i64)> {
    let key = b"$8\r\nredirect\r\n:";
    let start = raw.windows(key.len()).position(|w| w == key)? + key.len();
    let len = raw[start..].iter().position(|&b| b == b'\r')?;
    let id = std::str::from_utf8(&raw[start..start + len])
        .ok()?
        .parse()
        .ok()?;
    Some((start..start + len, id))
}

/// `raw` with the digits at `at` replaced by `id`.
fn splice_id(raw: &Bytes, at: std::ops::Range<usize>, id: i64) -> Bytes {
    let mut out = BytesMut::with_capacity(raw.len() + 8);
    out.extend_from_slice(&raw[..at.start]);
    out.extend_from_slice(id.to_string().as_bytes());
    out.extend_from_slice(&raw[at.end..]);
    out.freeze()
}

/// An error naming the wrapped script names the tenant's instead (same length: the frame's
/// lengths stay as they are).
fn rename_script(frame: &Frame, names: &[u8; 80]) -> Bytes {
    let (wrapped, own) = names.split_at(40);
    if !frame.is_error() || !frame.raw.windows(40).any(|w| w == wrapped) {
        return frame.raw.clone();
    }
    let mut out = frame.raw.to_vec();
    let mut i = 0;
    while i + 40 <= out.len() {
        if &out[i..i + 40] == wrapped {
            out[i..i + 40].copy_from_slice(own);
            i += 40;
        } else {
            i += 1;
        }
    }
    Bytes::from(out)
}

fn collect(frame: &Frame, f: &RangeFrame, shape: &Shape, prefix: &[u8], edits: &mut Vec<Edit>) {
    match shape {
        Shape::Plain | Shape::Script(_) | Shape::GetRedir(_) => {}
        Shape::Keys => {
            for e in elements(f).unwrap_or_default() {
                edit(frame, e, prefix, edits);
            }
        }
        Shape::Scan => {
            if let Some(keys) = elements(f).and_then(|e| e.get(1)) {
                collect(frame, keys, &Shape::Keys, prefix, edits);
            }
        }
        Shape::FirstKey => {
            if let Some(k) = elements(f).and_then(|e| e.first()) {
                edit(frame, k, prefix, edits);
            }
        }
        Shape::Streams => match f {
            RangeFrame::Map { data, .. } => {
                for k in data.keys() {
                    edit(frame, k, prefix, edits);
                }
            }
            _ => {
                for pair in elements(f).unwrap_or_default() {
                    collect(frame, pair, &Shape::FirstKey, prefix, edits);
                }
            }
        },
        Shape::EveryOther => match f {
            RangeFrame::Map { data, .. } => {
                for k in data.keys() {
                    edit(frame, k, prefix, edits);
                }
            }
            _ => {
                for e in elements(f).unwrap_or_default().iter().step_by(2) {
                    edit(frame, e, prefix, edits);
                }
            }
        },
        Shape::TrackingInfo(_) => {
            let fields: Vec<(&RangeFrame, &RangeFrame)> = match f {
                RangeFrame::Map { data, .. } => data.iter().collect(),
                _ => {
                    let e = elements(f).unwrap_or_default();
                    e.iter()
                        .step_by(2)
                        .zip(e.iter().skip(1).step_by(2))
                        .collect()
                }
            };
            for (k, v) in fields {
                if frame.str_at(k) == Some(b"prefixes") {
                    collect(frame, v, &Shape::Keys, prefix, edits);
                }
            }
        }
        Shape::Exec(items) => collect_exec(frame, f, items, prefix, edits),
    }
}

fn collect_exec(
    frame: &Frame,
    f: &RangeFrame,
    items: &[ExecItem],
    prefix: &[u8],
    edits: &mut Vec<Edit>,
) {
    let results = elements(f).unwrap_or_default();
    let upstream = items.iter().filter_map(|i| match i {
        ExecItem::Upstream(s) => Some(s),
        ExecItem::Hidden => Some(&Shape::Plain),
        ExecItem::Local(_) => None,
    });
    for (r, s) in results.iter().zip(upstream) {
        collect(frame, r, s, prefix, edits);
    }
}

/// EXEC's reply, stripped, with respite's own results put back among Redis' ones.
fn exec(frame: &Frame, items: &[ExecItem], prefix: &[u8]) -> Bytes {
    let mut edits = Vec::new();
    collect_exec(frame, &frame.tree(), items, prefix, &mut edits);
    let stripped = apply(frame, edits);
    if items.iter().all(|i| matches!(i, ExecItem::Upstream(_))) {
        return stripped;
    }
    // Re-frame the stripped reply to find each result's bytes, then interleave.
    let mut buf = BytesMut::from(&stripped[..]);
    let Ok(Some(whole)) = next_frame(&mut buf, frame.protocol) else {
        return stripped;
    };
    let Some(results) = whole.elements() else {
        // A nil (WATCH abort) or an error (EXECABORT): there is nothing to splice into.
        return stripped;
    };
    let mut out = BytesMut::with_capacity(stripped.len() + 64);
    out.put_u8(whole.raw[0]);
    let shown = items.iter().filter(|i| **i != ExecItem::Hidden).count();
    put_int(&mut out, shown as i64);
    let mut upstream = element_spans(&whole, results).into_iter();
    for item in items {
        match item {
            ExecItem::Local(b) => out.extend_from_slice(b),
            ExecItem::Upstream(_) => {
                if let Some(s) = upstream.next() {
                    out.extend_from_slice(&whole.raw[s]);
                }
            }
            ExecItem::Hidden => drop(upstream.next()),
        }
    }
    out.freeze()
}

/// The kinds of subscription Redis keeps per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubKind {
    Channel,
    Pattern,
    Shard,
}

/// What an upstream frame is, for routing.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    /// The reply to the command at the head of the queue.
    Reply,
    /// A message (or invalidation) nobody asked for just now: pass it straight on.
    Message,
    /// A (un)subscribe confirmation: `[kind, channel, count]`.
    Confirmation {
        kind: SubKind,
        subscribe: bool,
        count: i64,
    },
}

/// Is `raw` a line MONITOR streams (`+1700000000.123456 [0 127.0.0.1:6379] "get" "k"`),
/// rather than the reply to a command? A status reply never starts with a timestamp and
/// a bracket.
pub fn is_monitor_line(raw: &[u8]) -> bool {
    let Some(rest) = raw.strip_prefix(b"+") else {
        return false;
    };
    let secs = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let Some(rest) = rest[secs..].strip_prefix(b".") else {
        return false;
    };
    let micros = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    secs > 0 && micros > 0 && rest[micros..].starts_with(b" [")
}

/// Classifies `frame`. In RESP2 a push is an ordinary array, so arrays are only read as
/// pushes while `pubsub` (the connection is subscribed or a subscribe is in flight); in
/// RESP3 pushes have their own type.
pub fn classify(frame: &Frame, pubsub: bool) -> Kind {
    let Some(tree) = frame.aggregate() else {
        return Kind::Reply;
    };
    let elems = match tree {
        RangeFrame::Push { data, .. } => data,
        // In RESP3 pushes have their own type: an array is always a reply there (a
        // subscribed RESP3 connection runs every command, LRANGE of `message ...` too).
        RangeFrame::Array { data, .. } if pubsub && frame.protocol == 2 => data,
        _ => return Kind::Reply,
    };
    let Some(kind) = elems.first().and_then(|k| frame.str_at(k)) else {
        return Kind::Reply;
    };
    let confirmation = |kind, subscribe| {
        let count = match elems.get(2) {
            Some(RangeFrame::Number { data, .. }) => *data,
            _ => 0,
        };
        Kind::Confirmation {
            kind,
            subscribe,
            count,
        }
    };
    match kind {
        b"message" | b"pmessage" | b"smessage" | b"invalidate" => Kind::Message,
        b"subscribe" => confirmation(SubKind::Channel, true),
        b"unsubscribe" => confirmation(SubKind::Channel, false),
        b"psubscribe" => confirmation(SubKind::Pattern, true),
        b"punsubscribe" => confirmation(SubKind::Pattern, false),
        b"ssubscribe" => confirmation(SubKind::Shard, true),
        b"sunsubscribe" => confirmation(SubKind::Shard, false),
        _ if matches!(frame.aggregate(), Some(RangeFrame::Push { .. })) => Kind::Message,
        _ => Kind::Reply,
    }
}

/// A push with its channel names (and invalidated keys) out of the tenant namespace;
/// empty when it is not the tenant's to see (a keyevent notification of another's key).
pub fn strip_push(frame: &Frame, prefix: &[u8]) -> Bytes {
    let Some(elems) = frame.elements() else {
        return frame.raw.clone();
    };
    let mut edits = Vec::new();
    let kind = elems.first().and_then(|k| frame.str_at(k));
    if let (Some(b"message" | b"pmessage"), 3..) = (kind, elems.len()) {
        // On `__keyevent@0__:<event>` the message is a key: the tenant's, or not for it.
        let (channel, message) = (elems.len() - 2, elems.len() - 1);
        let keyevent = frame
            .str_at(&elems[channel])
            .is_some_and(|c| c.starts_with(super::KEYEVENT));
        if keyevent {
            match frame.str_at(&elems[message]) {
                Some(key) if key.starts_with(prefix) => {
                    edit(frame, &elems[message], prefix, &mut edits)
                }
                _ => return Bytes::new(),
            }
        }
    }
    match kind {
        Some(b"pmessage") => {
            for e in elems.iter().skip(1).take(2) {
                edit(frame, e, prefix, &mut edits);
            }
        }
        Some(b"invalidate") => {
            if let Some(keys) = elems.get(1) {
                collect(frame, keys, &Shape::Keys, prefix, &mut edits);
            }
        }
        // A redirected invalidation: `message __redis__:invalidate [keys]`.
        Some(b"message")
            if elems.get(1).and_then(|c| frame.str_at(c)) == Some(super::INVALIDATE) =>
        {
            if let Some(keys) = elems.get(2) {
                collect(frame, keys, &Shape::Keys, prefix, &mut edits);
            }
        }
        _ => {
            if let Some(e) = elems.get(1) {
                edit(frame, e, prefix, &mut edits);
            }
        }
    }
    apply(frame, edits)
}

/// The channel (or pattern) of a confirmation, as Redis holds it.
pub fn confirmation_channel(frame: &Frame) -> Option<Bytes> {
    let e = frame.elements()?.get(1)?;
    match e {
        RangeFrame::BlobString { data, .. } | RangeFrame::SimpleString { data, .. } => {
            Some(frame.raw.slice(data.0..data.1))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_lines_are_told_from_replies() {
        for line in [
            &b"+1700000000.123456 [0 127.0.0.1:5000] \"get\" \"k\"\r\n"[..],
            b"+1.5 [0 lua] \"set\"\r\n",
        ] {
            assert!(is_monitor_line(line), "{}", String::from_utf8_lossy(line));
        }
        for reply in [
            &b"+OK\r\n"[..],
            b"+1700000000.1\r\n",
            b"+1.x [\r\n",
            b":1\r\n",
        ] {
            assert!(
                !is_monitor_line(reply),
                "{}",
                String::from_utf8_lossy(reply)
            );
        }
    }

    fn frame(raw: &[u8]) -> Frame {
        let mut buf = BytesMut::from(raw);
        let resp3 = raw[0] != b'*' && raw[0] != b'$';
        let f = next_frame(&mut buf, if resp3 { 3 } else { 2 })
            .unwrap()
            .unwrap();
        assert!(buf.is_empty(), "one whole frame");
        f
    }

    const P: &[u8] = b"tenant:a:";

    /// `strip_into` only skips `strip`'s copy: for every shape, on replies passed as they
    /// are, rewritten, and errors (a script's renamed), it appends exactly what `strip`
    /// returns, after what the buffer held.
    #[test]
    fn strip_into_appends_what_strip_returns() {
        let mut script = Box::new([b'a'; 80]);
        script[40..].fill(b'b');
        let shapes = [
            Shape::Plain,
            Shape::Scan,
            Shape::Keys,
            Shape::FirstKey,
            Shape::Streams,
            Shape::EveryOther,
            Shape::Script(script),
            Shape::Exec(Box::new(vec![
                ExecItem::Upstream(Shape::Keys),
                ExecItem::Upstream(Shape::Plain),
            ])),
        ];
        let frames: [&[u8]; 8] = [
            b"$10\r\ntenant:a:k\r\n",
            b"*2\r\n$10\r\ntenant:a:k\r\n$10\r\ntenant:a:j\r\n",
            b"*2\r\n$1\r\n0\r\n*1\r\n$10\r\ntenant:a:k\r\n",
            b"-ERR key 'tenant:a:k'\r\n",
            b"!20\r\nERR key 'tenant:a:k'\r\n",
            b"-NOSCRIPT aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa not found\r\n",
            b":7\r\n",
            b"*2\r\n*1\r\n$10\r\ntenant:a:k\r\n+OK\r\n",
        ];
        for shape in &shapes {
            for raw in frames {
                let f = frame(raw);
                let mut out = BytesMut::from(&b"+before\r\n"[..]);
                strip_into(&f, shape, P, &mut out);
                let mut expected = b"+before\r\n".to_vec();
                expected.extend_from_slice(&strip(&f, shape, P));
                assert_eq!(
                    out[..],
                    expected[..],
                    "{shape:?} on {}",
                    String::from_utf8_lossy(raw)
                );
            }
        }
    }

    #[test]
    fn errors_lose_the_prefix_where_a_name_starts() {
        let p = b"tenant:a:";
        let strip = |raw: &[u8]| strip_error(Bytes::copy_from_slice(raw), p);
        assert_eq!(
            &strip(b"-NOGROUP No such key 'tenant:a:k' or consumer group 'g'\r\n")[..],
            b"-NOGROUP No such key 'k' or consumer group 'g'\r\n"
        );
        assert_eq!(
            &strip(b"-ERR Prefix 'tenant:a:F' overlaps 'tenant:a:FO'.\r\n")[..],
            b"-ERR Prefix 'F' overlaps 'FO'.\r\n"
        );
        // The tenant's own key named like a prefix keeps its name.
        assert_eq!(
            &strip(b"-ERR key 'tenant:a:tenant:a:x'\r\n")[..],
            b"-ERR key 'tenant:a:x'\r\n"
        );
        assert_eq!(
            &strip(b"!17\r\nERR 'tenant:a:kk'\r\n")[..],
            b"!8\r\nERR 'kk'\r\n"
        );
        assert_eq!(&strip(b"-ERR xtenant:a:k\r\n")[..], b"-ERR xtenant:a:k\r\n");
    }

    #[test]
    fn every_database_of_the_tenant_is_stripped_and_only_its_own() {
        let f = frame(
            b"*5\r\n$13\r\ntenant:a@12:x\r\n$10\r\ntenant:a:y\r\n$12\r\ntenant:a@0:z\r\n\
              $13\r\ntenant:a@01:z\r\n$13\r\ntenant:ab@1:z\r\n",
        );
        assert_eq!(
            &strip(&f, &Shape::Keys, P)[..],
            &b"*5\r\n$1\r\nx\r\n$1\r\ny\r\n$12\r\ntenant:a@0:z\r\n$13\r\ntenant:a@01:z\r\n\
               $13\r\ntenant:ab@1:z\r\n"[..]
        );
        // A keyspace notification of database 3's key comes on database 3's channel.
        let m =
            frame(b"*3\r\n$7\r\nmessage\r\n$27\r\n__keyspace@0__:tenant:a@3:k\r\n$3\r\nset\r\n");
        assert_eq!(
            &strip_push(&m, P)[..],
            b"*3\r\n$7\r\nmessage\r\n$16\r\n__keyspace@3__:k\r\n$3\r\nset\r\n"
        );
        let e = strip_error(
            Bytes::from_static(b"-ERR key 'tenant:a@2:k' and 'tenant:b@2:k'\r\n"),
            P,
        );
        assert_eq!(&e[..], b"-ERR key 'k' and 'tenant:b@2:k'\r\n");
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let mut buf = BytesMut::from(&b"$5\r\nhel"[..]);
        assert!(next_frame(&mut buf, 2).unwrap().is_none());
        assert_eq!(buf.len(), 7);
    }

    #[test]
    fn scan_keys_lose_their_prefix() {
        let f = frame(b"*2\r\n$1\r\n0\r\n*2\r\n$10\r\ntenant:a:x\r\n$12\r\ntenant:a:abc\r\n");
        assert_eq!(
            &strip(&f, &Shape::Scan, P)[..],
            b"*2\r\n$1\r\n0\r\n*2\r\n$1\r\nx\r\n$3\r\nabc\r\n"
        );
    }

    #[test]
    fn blocking_pop_and_nil() {
        let f = frame(b"*2\r\n$10\r\ntenant:a:q\r\n$1\r\nv\r\n");
        assert_eq!(
            &strip(&f, &Shape::FirstKey, P)[..],
            b"*2\r\n$1\r\nq\r\n$1\r\nv\r\n"
        );
        let nil = frame(b"*-1\r\n");
        assert_eq!(&strip(&nil, &Shape::FirstKey, P)[..], b"*-1\r\n");
    }

    #[test]
    fn resp3_stream_map_keeps_order_and_values() {
        let raw = b"%2\r\n$10\r\ntenant:a:s\r\n*0\r\n$10\r\ntenant:a:t\r\n,1.50\r\n";
        let f = frame(raw);
        assert_eq!(
            &strip(&f, &Shape::Streams, P)[..],
            b"%2\r\n$1\r\ns\r\n*0\r\n$1\r\nt\r\n,1.50\r\n"
        );
    }

    #[test]
    fn pushes_are_classified_and_stripped() {
        let m = frame(b"*3\r\n$7\r\nmessage\r\n$11\r\ntenant:a:ch\r\n$2\r\nhi\r\n");
        assert_eq!(classify(&m, false), Kind::Reply);
        assert_eq!(classify(&m, true), Kind::Message);
        assert_eq!(
            &strip_push(&m, P)[..],
            b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"
        );
        let c = frame(b">3\r\n$9\r\nsubscribe\r\n$11\r\ntenant:a:ch\r\n:1\r\n");
        assert_eq!(
            classify(&c, false),
            Kind::Confirmation {
                kind: SubKind::Channel,
                subscribe: true,
                count: 1
            }
        );
    }

    #[test]
    fn exec_splices_local_results() {
        let f = frame(b"*2\r\n+OK\r\n*1\r\n$10\r\ntenant:a:k\r\n");
        let items = vec![
            ExecItem::Upstream(Shape::Plain),
            ExecItem::Local(Bytes::from_static(b":7\r\n")),
            ExecItem::Upstream(Shape::Keys),
        ];
        assert_eq!(
            &strip(&f, &Shape::Exec(Box::new(items)), P)[..],
            b"*3\r\n+OK\r\n:7\r\n*1\r\n$1\r\nk\r\n"
        );
    }
}
