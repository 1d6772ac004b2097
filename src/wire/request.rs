//! The client side of the wire: splitting a client's bytes into requests, and encoding the
//! replies respite writes itself.
//!
//! Requests are parsed here rather than with redis-protocol because a proxy must enforce
//! Redis' request limits *before* it buffers a huge length, must accept inline commands
//! (`PING` typed into nc), and must answer malformed input with the very error text Redis
//! uses (clients and tests match on it). Replies from Redis are framed with redis-protocol in
//! `frame.rs`.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::Marks;

/// Longest inline request or `*`/`$` header line, as Redis' PROTO_INLINE_MAX_SIZE.
pub const MAX_INLINE: usize = 64 * 1024;
/// Before AUTH, Redis allows no more than this many arguments and bytes per argument, so that
/// an unauthenticated peer cannot make the server buffer much.
const UNAUTH_MAX_ARRAY: usize = 10;
const UNAUTH_MAX_BULK: usize = 16 * 1024;

/// Per-request size limits (from `[server]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bulk_bytes: usize,
    pub max_array_len: usize,
}

/// A client request: its arguments, the command name first. Arguments are slices of the
/// read buffer (no copies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub args: Vec<Bytes>,
}

impl Request {
    pub fn name(&self) -> &[u8] {
        &self.args[0]
    }

    /// The argument at `i`, if any, compared ASCII case-insensitively.
    pub fn arg_is(&self, i: usize, word: &[u8]) -> bool {
        self.args
            .get(i)
            .is_some_and(|a| a.eq_ignore_ascii_case(word))
    }
}

/// A request that violates the protocol; the text follows `-ERR Protocol error: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProtocolError(pub String);

fn perr(msg: impl Into<String>) -> ProtocolError {
    ProtocolError(msg.into())
}

/// Takes the next complete request off the front of `buf`. `Ok(None)` means more bytes are
/// needed (and `buf` has been reserved for the rest of a large argument).
pub fn parse_request(
    buf: &mut BytesMut,
    limits: &Limits,
    authenticated: bool,
) -> Result<Option<Request>, ProtocolError> {
    parse_request_reusing(buf, limits, authenticated, &mut Vec::new())
}

/// [`parse_request`], with the argument vector of a request already handled (`spare`,
/// emptied): its allocation is taken for the next request's arguments instead of a new one.
pub fn parse_request_reusing(
    buf: &mut BytesMut,
    limits: &Limits,
    authenticated: bool,
    spare: &mut Vec<Bytes>,
) -> Result<Option<Request>, ProtocolError> {
    loop {
        if buf.is_empty() {
            return Ok(None);
        }
        let parsed = if buf[0] == b'*' {
            parse_multibulk(buf, limits, authenticated, spare)?
        } else {
            parse_inline(buf)?
        };
        match parsed {
            // An empty request (`*0`, a blank line) is skipped, as Redis does.
            Some(r) if r.args.is_empty() => continue,
            other => return Ok(other),
        }
    }
}

/// Position of the `\r` of the first `\r\n` at or after `from`.
fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(off) = buf[i..].iter().position(|&b| b == b'\r') {
        let at = i + off;
        if at + 1 >= buf.len() {
            return None;
        }
        if buf[at + 1] == b'\n' {
            return Some(at);
        }
        i = at + 1;
    }
    None
}

/// Is the `*`/`$` header line from `start`, whose CRLF is not all here yet, already longer
/// than [`MAX_INLINE`], measured to its `\r` as once it is whole? A `\r` at the very end may
/// be the line's own, its `\n` in the next read: not counted, so that where the reads split
/// the bytes decides neither whether a header is refused nor with which error.
fn too_long_so_far(buf: &[u8], start: usize) -> bool {
    let held = buf.len() - start - usize::from(buf.last() == Some(&b'\r'));
    held > MAX_INLINE
}

/// A decimal integer as Redis reads lengths: optional `-`, digits, nothing else.
fn parse_int(digits: &[u8]) -> Option<i64> {
    let (negative, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + (d - b'0') as i64;
    }
    Some(if negative { -n } else { n })
}

fn parse_multibulk(
    buf: &mut BytesMut,
    limits: &Limits,
    authenticated: bool,
    spare: &mut Vec<Bytes>,
) -> Result<Option<Request>, ProtocolError> {
    let Some(eol) = find_crlf(buf, 1) else {
        if too_long_so_far(buf, 0) {
            return Err(perr("too big mbulk count string"));
        }
        return Ok(None);
    };
    if eol > MAX_INLINE {
        return Err(perr("too big mbulk count string"));
    }
    let count = parse_int(&buf[1..eol]).ok_or_else(|| perr("invalid multibulk length"))?;
    let max_array = if authenticated {
        limits.max_array_len
    } else {
        limits.max_array_len.min(UNAUTH_MAX_ARRAY)
    };
    if count > max_array as i64 {
        return Err(perr(if authenticated {
            "invalid multibulk length"
        } else {
            "unauthenticated multibulk length"
        }));
    }
    if count <= 0 {
        let _ = buf.split_to(eol + 2);
        return Ok(Some(Request { args: Vec::new() }));
    }
    let max_bulk = if authenticated {
        limits.max_bulk_bytes
    } else {
        limits.max_bulk_bytes.min(UNAUTH_MAX_BULK)
    };

    // First pass: check that the whole request is here and well-formed, noting where the
    // first arguments are, so that most requests' headers are read once.
    let args_start = eol + 2;
    let mut noted = [(0, 0); NOTED];
    let mut pos = args_start;
    for i in 0..count as usize {
        match bulk(buf, pos, max_bulk, authenticated)? {
            Some((data, len)) => {
                if let Some(n) = noted.get_mut(i) {
                    *n = (data, len);
                }
                pos = data + len + 2;
            }
            None => return Ok(None),
        }
    }
    // Second pass: slice the arguments out of the frame (past the noted ones, from their
    // validated headers).
    let mut frame = buf.split_to(pos).freeze();
    let mut args = std::mem::take(spare);
    args.clear();
    args.reserve(count as usize);
    let mut pos = args_start;
    for i in 0..count as usize {
        let (data, len) = match noted.get(i) {
            Some(&n) => n,
            None => {
                let eol = pos
                    + 1
                    + frame[pos + 1..]
                        .iter()
                        .position(|&b| b == b'\r')
                        .unwrap_or(0);
                (
                    eol + 2,
                    parse_int(&frame[pos + 1..eol]).unwrap_or(0) as usize,
                )
            }
        };
        if i + 1 == count as usize {
            // The last argument is the frame itself, cut down: one reference count less
            // to take and drop (an atomic operation each) per request.
            frame.truncate(data + len);
            frame.advance(data);
            args.push(frame);
            break;
        }
        args.push(frame.slice(data..data + len));
        pos = data + len + 2;
    }
    Ok(Some(Request { args }))
}

/// How many arguments' places the parser's first pass keeps for the second: a request
/// with more has the rest's headers read again.
const NOTED: usize = 8;

/// Checks the bulk string at `pos`: where its data starts and its length, or `None` until
/// it is all here (room for it reserved at once, rather than growing step by step).
#[inline]
fn bulk(
    buf: &mut BytesMut,
    pos: usize,
    max_bulk: usize,
    authenticated: bool,
) -> Result<Option<(usize, usize)>, ProtocolError> {
    if pos >= buf.len() {
        return Ok(None);
    }
    if buf[pos] != b'$' {
        return Err(perr(format!(
            "expected '$', got '{}'",
            char::from(buf[pos])
        )));
    }
    let Some(eol) = find_crlf(buf, pos + 1) else {
        if too_long_so_far(buf, pos) {
            return Err(perr("too big bulk count string"));
        }
        return Ok(None);
    };
    if eol - pos > MAX_INLINE {
        return Err(perr("too big bulk count string"));
    }
    let len = parse_int(&buf[pos + 1..eol])
        .filter(|&l| l >= 0 && l <= max_bulk as i64)
        .ok_or_else(|| {
            perr(if authenticated {
                "invalid bulk length"
            } else {
                "unauthenticated bulk length"
            })
        })? as usize;
    let end = eol + 2 + len;
    if buf.len() < end + 2 {
        buf.reserve(end + 2 - buf.len());
        return Ok(None);
    }
    Ok(Some((eol + 2, len)))
}

fn parse_inline(buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_INLINE {
            return Err(perr("too big inline request"));
        }
        return Ok(None);
    };
    if nl > MAX_INLINE {
        return Err(perr("too big inline request"));
    }
    let line = buf.split_to(nl + 1);
    let mut line = &line[..nl];
    if line.last() == Some(&b'\r') {
        line = &line[..line.len() - 1];
    }
    let args = split_args(line).ok_or_else(|| perr("unbalanced quotes in request"))?;
    Ok(Some(Request { args }))
}

/// Splits an inline command like Redis' `sdssplitargs`: blanks separate arguments, double
/// quotes take `\n \r \t \b \a \\ \" \xHH` escapes, single quotes take `\'`, and a closing
/// quote must be followed by a blank.
pub fn split_args(line: &[u8]) -> Option<Vec<Bytes>> {
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= line.len() {
            return Some(args);
        }
        let mut cur = Vec::new();
        let (mut in_dq, mut in_sq) = (false, false);
        loop {
            if in_dq {
                let c = *line.get(i)?;
                if c == b'\\' && line.get(i + 1) == Some(&b'x') && is_hex_pair(&line[i + 2..]) {
                    cur.push(hex_value(line[i + 2]) << 4 | hex_value(line[i + 3]));
                    i += 3;
                } else if c == b'\\' && i + 1 < line.len() {
                    i += 1;
                    cur.push(match line[i] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        other => other,
                    });
                } else if c == b'"' {
                    if line.get(i + 1).is_some_and(|b| !b.is_ascii_whitespace()) {
                        return None;
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(c);
                }
            } else if in_sq {
                let c = *line.get(i)?;
                if c == b'\\' && line.get(i + 1) == Some(&b'\'') {
                    i += 1;
                    cur.push(b'\'');
                } else if c == b'\'' {
                    if line.get(i + 1).is_some_and(|b| !b.is_ascii_whitespace()) {
                        return None;
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(c);
                }
            } else {
                match line.get(i) {
                    None => break,
                    Some(c) if c.is_ascii_whitespace() => break,
                    Some(b'"') => in_dq = true,
                    Some(b'\'') => in_sq = true,
                    Some(&c) => cur.push(c),
                }
            }
            i += 1;
        }
        args.push(Bytes::from(cur));
    }
}

fn is_hex_pair(s: &[u8]) -> bool {
    s.len() >= 2 && s[0].is_ascii_hexdigit() && s[1].is_ascii_hexdigit()
}

fn hex_value(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => c - b'A' + 10,
    }
}

/// Encodes a request for Redis: a RESP array of bulk strings.
pub fn encode_request<'a, I>(out: &mut BytesMut, args: I)
where
    I: ExactSizeIterator<Item = &'a [u8]> + Clone,
{
    // One capacity check for the whole request: a header is at most 1 + 20 digits + CRLF.
    out.reserve(args.clone().map(|a| a.len() + 2 + 23).sum::<usize>() + 23);
    out.put_u8(b'*');
    put_int(out, args.len() as i64);
    for a in args {
        out.put_u8(b'$');
        put_int(out, a.len() as i64);
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Encodes a rewritten request: the `marked` arguments with `prefix` written in front of
/// them (so `tenant:<id>:` + key is never built as a name of its own).
pub fn encode_marked(out: &mut BytesMut, args: &[Bytes], prefix: &[u8], marked: &Marks) {
    let size =
        args.iter().map(|a| a.len() + 2 + 23).sum::<usize>() + marked.count() * prefix.len() + 23;
    out.reserve(size);
    out.put_u8(b'*');
    put_int(out, args.len() as i64);
    for (i, a) in args.iter().enumerate() {
        out.put_u8(b'$');
        if marked.has(i) {
            put_int(out, (prefix.len() + a.len()) as i64);
            out.extend_from_slice(prefix);
        } else {
            put_int(out, a.len() as i64);
        }
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Writes a length or integer followed by CRLF.
pub fn put_int(out: &mut BytesMut, n: i64) {
    // On the hot path for every length header: no fmt machinery, and one copy.
    if (0..10).contains(&n) {
        return out.extend_from_slice(&[b'0' + n as u8, b'\r', b'\n']);
    }
    // Most keys and values are under 100 bytes long.
    if (10..100).contains(&n) {
        let n = n as u8;
        return out.extend_from_slice(&[b'0' + n / 10, b'0' + n % 10, b'\r', b'\n']);
    }
    let mut buf = [0u8; 24];
    let mut i = buf.len() - 2;
    buf[i..].copy_from_slice(b"\r\n");
    let negative = n < 0;
    let mut v = n.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if negative {
        i -= 1;
        buf[i] = b'-';
    }
    out.extend_from_slice(&buf[i..]);
}

/// Builds replies in the protocol a client speaks (2 or 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resp(pub u8);

impl Resp {
    pub fn ok() -> Bytes {
        Bytes::from_static(b"+OK\r\n")
    }

    pub fn simple(s: &str) -> Bytes {
        Bytes::from(format!("+{s}\r\n"))
    }

    /// An error reply; `msg` starts with its code (`ERR`, `NOPERM`, ...).
    pub fn error(msg: &str) -> Bytes {
        // A CR or LF would end the error line early and desynchronise the client.
        let clean: String = msg
            .chars()
            .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
            .collect();
        Bytes::from(format!("-{clean}\r\n"))
    }

    pub fn int(n: i64) -> Bytes {
        Bytes::from(format!(":{n}\r\n"))
    }

    pub fn bulk(data: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(data.len() + 16);
        Self::put_bulk(&mut out, data);
        out.freeze()
    }

    pub fn put_bulk(out: &mut BytesMut, data: &[u8]) {
        out.put_u8(b'$');
        put_int(out, data.len() as i64);
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }

    pub fn null(self) -> Bytes {
        Bytes::from_static(if self.0 == 3 { b"_\r\n" } else { b"$-1\r\n" })
    }

    pub fn put_array_len(out: &mut BytesMut, n: usize) {
        out.put_u8(b'*');
        put_int(out, n as i64);
    }

    /// A map header: `%n` in RESP3, an array of 2n in RESP2.
    pub fn put_map_len(self, out: &mut BytesMut, n: usize) {
        if self.0 == 3 {
            out.put_u8(b'%');
            put_int(out, n as i64);
        } else {
            Self::put_array_len(out, n * 2);
        }
    }

    /// Free text for a human (INFO, CLIENT LIST): a verbatim string in RESP3, as Redis does.
    pub fn text(self, text: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(text.len() + 16);
        if self.0 == 3 {
            out.put_u8(b'=');
            put_int(&mut out, text.len() as i64 + 4);
            out.extend_from_slice(b"txt:");
            out.extend_from_slice(text);
            out.extend_from_slice(b"\r\n");
        } else {
            Self::put_bulk(&mut out, text);
        }
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_bulk_bytes: 1024,
        max_array_len: 100,
    };

    #[test]
    fn integers_and_requests_encode_as_resp() {
        for (n, text) in [
            (0, "0"),
            (9, "9"),
            (10, "10"),
            (42, "42"),
            (99, "99"),
            (100, "100"),
            (-1, "-1"),
            (1234567, "1234567"),
            (i64::MAX, "9223372036854775807"),
            (i64::MIN, "-9223372036854775808"),
        ] {
            let mut out = BytesMut::new();
            put_int(&mut out, n);
            assert_eq!(&out[..], format!("{text}\r\n").as_bytes());
        }
        let mut out = BytesMut::new();
        let args: [&[u8]; 3] = [b"SET", b"k", b"0123456789"];
        encode_request(&mut out, args.into_iter());
        assert_eq!(
            &out[..],
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10\r\n0123456789\r\n"
        );
    }

    fn parse_all(input: &[u8]) -> Result<Vec<Vec<&'static str>>, ProtocolError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(r) = parse_request(&mut buf, &LIMITS, true)? {
            out.push(
                r.args
                    .iter()
                    .map(|a| &*String::from_utf8(a.to_vec()).unwrap().leak())
                    .collect(),
            );
        }
        Ok(out)
    }

    #[test]
    fn multibulk_pipelined_and_partial() {
        let input = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPI";
        assert_eq!(
            parse_all(input).unwrap(),
            vec![vec!["GET", "k"], vec!["PING"]]
        );
    }

    /// Generated pipelines: requests of 1 to 20 arguments (across the eight the first pass
    /// notes), arguments of 0 to 40 bytes drawn from the bytes RESP gives meaning to, fed in
    /// reads of random sizes. Each request comes back whole and in order, none early.
    #[test]
    fn generated_pipelines_parse_back_whatever_the_reads() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        const BYTES: &[u8] = b"\r\n$*:+-0123456789abcXYZ \x00\xff";
        for _ in 0..200 {
            let mut want: Vec<Vec<Vec<u8>>> = Vec::new();
            let mut all = BytesMut::new();
            for _ in 0..1 + next(6) {
                let args: Vec<Vec<u8>> = (0..1 + next(20))
                    .map(|_| {
                        (0..next(41))
                            .map(|_| BYTES[next(BYTES.len() as u64) as usize])
                            .collect()
                    })
                    .collect();
                encode_request(&mut all, args.iter().map(|a| &a[..]));
                want.push(args);
            }
            let (mut buf, mut got, mut spare) = (BytesMut::new(), Vec::new(), Vec::new());
            let mut at = 0;
            while at < all.len() {
                let end = (at + 1 + next(64) as usize).min(all.len());
                buf.extend_from_slice(&all[at..end]);
                at = end;
                while let Some(r) =
                    parse_request_reusing(&mut buf, &LIMITS, true, &mut spare).unwrap()
                {
                    got.push(r.args.iter().map(|a| a.to_vec()).collect::<Vec<_>>());
                    assert!(
                        got.len() <= want.len(),
                        "a request parsed before it was whole"
                    );
                    spare = r.args;
                }
            }
            assert_eq!(got, want);
            assert!(buf.is_empty());
        }
    }

    /// The last argument, cut from the frame itself, is exactly what a slice was:
    /// empty (`$0`), a lone argument (count 1), with CR/LF inside, at the size limit, past
    /// the arguments the first pass notes, in a pipeline and read byte by byte; the buffer
    /// is left at the next request.
    #[test]
    fn the_last_argument_is_what_a_slice_would_be() {
        let big = "x".repeat(LIMITS.max_bulk_bytes);
        let cases: Vec<Vec<&[u8]>> = [
            &[""][..],
            &["PING"],
            &["SET", "k", ""],
            &["SET", "", ""],
            &["SET", "k", "a\r\nb\r\n"],
            &["ECHO", big.as_str()],
            &["\r\n"],
            // As many as the first pass notes, one more, and more again with the empty and
            // CR/LF arguments past the noted ones.
            &["DEL", "a", "bb", "", "c", "dddd", "e", "f"],
            &["DEL", "a", "bb", "", "c", "dddd", "e", "f", "g\r\n"],
            &[
                "MSET", "a", "1", "b", "2", "c", "3", "d", "4", "e", "", "\r\n", "x",
            ],
        ]
        .iter()
        .map(|a| a.iter().map(|x| x.as_bytes()).collect())
        .collect();
        let mut all = BytesMut::new();
        for args in &cases {
            encode_request(&mut all, args.iter().copied());
        }
        all.extend_from_slice(b"*1\r\n$4\r\nPI");
        // Whole, and fed one byte at a time.
        for step in [all.len(), 1] {
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut spare = Vec::new();
            for chunk in all.chunks(step) {
                buf.extend_from_slice(chunk);
                while let Some(r) =
                    parse_request_reusing(&mut buf, &LIMITS, true, &mut spare).unwrap()
                {
                    got.push(r.args.iter().map(|a| a.to_vec()).collect::<Vec<_>>());
                    spare = r.args;
                }
            }
            let want: Vec<Vec<Vec<u8>>> = cases
                .iter()
                .map(|a| a.iter().map(|x| x.to_vec()).collect())
                .collect();
            assert_eq!(got, want, "step {step}");
            assert_eq!(&buf[..], b"*1\r\n$4\r\nPI");
        }
        // One past the limit is still refused.
        let mut buf = BytesMut::new();
        let over = "x".repeat(LIMITS.max_bulk_bytes + 1);
        encode_request(&mut buf, [over.as_bytes()].into_iter());
        assert!(parse_request(&mut buf, &LIMITS, true).is_err());
    }

    #[test]
    fn binary_safe_arguments() {
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nSET\r\n$4\r\na\r\n\0\r\n"[..]);
        let r = parse_request(&mut buf, &LIMITS, true).unwrap().unwrap();
        assert_eq!(&r.args[1][..], b"a\r\n\0");
    }

    #[test]
    fn inline_commands_with_quotes() {
        assert_eq!(
            parse_all(b"set k \"a b\\x41\\n\"\r\nPING\n\r\n").unwrap(),
            vec![vec!["set", "k", "a bA\n"], vec!["PING"]]
        );
        assert_eq!(
            parse_all(b"echo 'it\\'s'\n").unwrap(),
            vec![vec!["echo", "it's"]]
        );
        assert_eq!(
            parse_all(b"set k \"abc\n").unwrap_err().0,
            "unbalanced quotes in request"
        );
        assert_eq!(
            parse_all(b"set k \"a\"b\n").unwrap_err().0,
            "unbalanced quotes in request"
        );
    }

    #[test]
    fn redis_error_texts() {
        assert_eq!(
            parse_all(b"*x\r\n").unwrap_err().0,
            "invalid multibulk length"
        );
        assert_eq!(
            parse_all(b"*101\r\n").unwrap_err().0,
            "invalid multibulk length"
        );
        assert_eq!(
            parse_all(b"*1\r\n:3\r\n").unwrap_err().0,
            "expected '$', got ':'"
        );
        assert_eq!(
            parse_all(b"*1\r\n$-1\r\n").unwrap_err().0,
            "invalid bulk length"
        );
        assert_eq!(
            parse_all(b"*1\r\n$1025\r\n").unwrap_err().0,
            "invalid bulk length"
        );
        let long = vec![b'a'; MAX_INLINE + 1];
        assert_eq!(parse_all(&long).unwrap_err().0, "too big inline request");
    }

    /// Found by `fuzz/` (request_parser): a header line of exactly MAX_INLINE bytes was
    /// "too big" when a read ended between its CR and LF, and read on when not.
    #[test]
    fn a_header_at_the_inline_limit_is_judged_alike_however_the_reads_split_it() {
        let count = [b"*".as_slice(), &[b'1'; MAX_INLINE - 1], b"\r\n"].concat();
        let bulk = [b"*1\r\n$".as_slice(), &[b'1'; MAX_INLINE - 1], b"\r\n"].concat();
        for (stream, error) in [
            (count, "invalid multibulk length"),
            (bulk, "invalid bulk length"),
        ] {
            assert_eq!(parse_all(&stream).unwrap_err().0, error, "whole");
            // Up to the CR, then the LF.
            let mut buf = BytesMut::from(&stream[..stream.len() - 1]);
            assert_eq!(
                parse_request(&mut buf, &LIMITS, true),
                Ok(None),
                "up to the CR"
            );
            buf.extend_from_slice(b"\n");
            assert_eq!(parse_request(&mut buf, &LIMITS, true).unwrap_err().0, error);
            // One byte more is too big, whole or not.
            let mut longer = stream.clone();
            longer.insert(longer.len() - 2, b'1');
            let too_big = parse_all(&longer).unwrap_err().0;
            assert!(too_big.starts_with("too big"), "{too_big}");
            let mut buf = BytesMut::from(&longer[..longer.len() - 1]);
            assert_eq!(
                parse_request(&mut buf, &LIMITS, true).unwrap_err().0,
                too_big
            );
        }
    }

    #[test]
    fn unauthenticated_limits_are_tighter() {
        let mut buf = BytesMut::from(&b"*11\r\n"[..]);
        assert_eq!(
            parse_request(&mut buf, &LIMITS, false).unwrap_err().0,
            "unauthenticated multibulk length"
        );
    }

    #[test]
    fn integers_round_trip() {
        for n in [0i64, 7, 10, 99, 12345, -1, -42, i64::MAX, i64::MIN] {
            let mut b = BytesMut::new();
            put_int(&mut b, n);
            assert_eq!(&b[..], format!("{n}\r\n").as_bytes());
        }
        assert_eq!(parse_int(b"123"), Some(123));
        assert_eq!(parse_int(b"-1"), Some(-1));
        for bad in [&b""[..], b"-", b"1x", b"+1", b" 1", b"9999999999999999999"] {
            assert_eq!(parse_int(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn empty_requests_are_skipped() {
        assert_eq!(
            parse_all(b"*0\r\n\r\n*1\r\n$4\r\nPING\r\n").unwrap(),
            vec![vec!["PING"]]
        );
    }
}
