//! Property tests (proptest) of the parts every byte from a client or from Redis goes
//! through: the request parser, the reply framer, and the namespace's rewrite and strip.
//! Each runs proptest's default 256 generated cases (fixed by proptest's own seed per run,
//! a failure is shrunk and printed).

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use respite::wire::{encode_request, next_frame, parse_request, Limits};

const LIMITS: Limits = Limits {
    max_bulk_bytes: 512,
    max_array_len: 64,
};

/// Bytes that look like RESP often enough to reach deep into the parsers: RESP's own
/// markers, digits, CRLFs, and anything else.
fn resp_ish() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"*".to_vec()),
        Just(b"$".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"-1".to_vec()),
        Just(b"+OK\r\n".to_vec()),
        Just(b"%1\r\n".to_vec()),
        Just(b">2\r\n".to_vec()),
        Just(b":".to_vec()),
        (0u32..100_000).prop_map(|n| n.to_string().into_bytes()),
        proptest::collection::vec(any::<u8>(), 0..8),
    ];
    proptest::collection::vec(piece, 0..40).prop_map(|p| p.concat())
}

/// Feeds `input` to the request parser `chunk` bytes at a time, as reads would deliver
/// it: every call ends in a request, a wait for more, or an error (after which the
/// connection closes), never a panic; a request consumes bytes; a wait consumes none.
fn parse_in_chunks(input: &[u8], chunk: usize) -> Result<Vec<Vec<Bytes>>, ()> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for part in input.chunks(chunk.max(1)) {
        buf.extend_from_slice(part);
        loop {
            let before = buf.len();
            match parse_request(&mut buf, &LIMITS, true) {
                Ok(Some(r)) => {
                    assert!(buf.len() < before, "a request consumed nothing");
                    out.push(r.args);
                }
                Ok(None) => {
                    // What is held waiting is bounded by the limits, not by what was sent.
                    assert!(buf.len() <= before);
                    break;
                }
                Err(_) => return Err(()),
            }
        }
    }
    Ok(out)
}

proptest! {
    /// Any byte stream: requests, a wait, or a clean error; never a panic, whatever the
    /// chunking.
    #[test]
    fn the_request_parser_takes_any_bytes(input in resp_ish(), chunk in 1usize..64) {
        let whole = parse_in_chunks(&input, input.len().max(1));
        let chunked = parse_in_chunks(&input, chunk);
        // Read in pieces or at once, the same requests (or the same failure).
        prop_assert_eq!(whole.is_ok(), chunked.is_ok());
        if let (Ok(a), Ok(b)) = (whole, chunked) {
            prop_assert_eq!(a, b);
        }
    }

    /// Requests encoded as clients encode them come back argument for argument, however
    /// the bytes are split.
    #[test]
    fn encoded_requests_parse_back(
        requests in proptest::collection::vec(
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..8),
            1..6,
        ),
        chunk in 1usize..50,
    ) {
        let mut wire = BytesMut::new();
        for r in &requests {
            encode_request(&mut wire, r.iter().map(|a| &a[..]));
        }
        let parsed = parse_in_chunks(&wire, chunk).expect("valid requests");
        let want: Vec<Vec<Bytes>> = requests
            .iter()
            .map(|r| r.iter().map(|a| Bytes::copy_from_slice(a)).collect())
            .collect();
        prop_assert_eq!(parsed, want);
    }

    /// A length past the limits is refused as soon as its header is read: the parser never
    /// waits for (or holds) bytes the limits would refuse.
    #[test]
    fn lengths_past_the_limits_are_refused_at_once(
        bulk in 513u64..u64::MAX / 2,
        array in 65u64..u64::MAX / 2,
    ) {
        for header in [format!("*1\r\n${bulk}\r\n"), format!("*{array}\r\n")] {
            let mut buf = BytesMut::from(header.as_bytes());
            prop_assert!(parse_request(&mut buf, &LIMITS, true).is_err(), "{}", header);
        }
    }

    /// The reply framer on any bytes, RESP2 and RESP3: a frame, a wait, or an error; a frame
    /// is exactly the bytes it took from the buffer.
    #[test]
    fn the_reply_framer_takes_any_bytes(input in resp_ish(), protocol in 2u8..=3) {
        let mut buf = BytesMut::from(&input[..]);
        let mut taken = 0;
        loop {
            let before = buf.len();
            match next_frame(&mut buf, protocol) {
                Ok(Some(frame)) => {
                    prop_assert_eq!(before - buf.len(), frame.raw.len());
                    prop_assert_eq!(&frame.raw[..], &input[taken..taken + frame.raw.len()]);
                    taken += frame.raw.len();
                }
                Ok(None) => {
                    prop_assert_eq!(buf.len(), before);
                    break;
                }
                Err(_) => break,
            }
        }
    }
}

/// Lines of a config file, right and wrong: sections, settings respite knows with values of
/// every type, broken TOML.
fn config_text() -> impl Strategy<Value = String> {
    let section = prop_oneof![
        Just("[server]"),
        Just("[upstream]"),
        Just("[defaults]"),
        Just("[quota]"),
        Just("[[tenants]]"),
        Just("[plans.pro]"),
        Just("[auth.jwt]"),
        Just("[shared]"),
        Just("[admin]"),
    ]
    .prop_map(str::to_string);
    let key = prop_oneof![
        Just("id"),
        Just("password"),
        Just("quota_bytes"),
        Just("databases"),
        Just("max_clients"),
        Just("threads"),
        Just("listen"),
        Just("url"),
        Just("role"),
        Just("plan"),
        Just("prefixes"),
        Just("default_tenant"),
        Just("hs256_secret"),
        Just("rate_limit"),
    ];
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        "[a-z0-9@:/._-]{0,12}".prop_map(|v| format!("{v:?}")),
        Just("true".to_string()),
        Just("[\"shared:x:\", \"tenant:\"]".to_string()),
        Just("{ a = 1 }".to_string()),
        "[^\n]{0,10}",
    ];
    let setting = (key, value).prop_map(|(k, v)| format!("{k} = {v}"));
    let line = prop_oneof![section, setting];
    proptest::collection::vec(line, 0..20).prop_map(|l| l.join("\n"))
}

proptest! {
    /// Any config text: a config or the errors, never a panic; a config that parses has
    /// passed every check (a second parse of the same text agrees).
    #[test]
    fn the_config_parser_takes_any_text(text in config_text()) {
        let first = respite::config::Config::parse(&text);
        let second = respite::config::Config::parse(&text);
        prop_assert_eq!(first.is_ok(), second.is_ok());
    }
}

mod namespace {
    use super::*;
    use respite::command::{lookup, KeyMap};
    use respite::namespace::{own_prefix, reply::strip, request, Shape};
    use respite::tenant::Tenant;

    fn id() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_-]{1,12}"
    }

    /// The request as Redis gets it (encoded with `prefix`, parsed back).
    fn as_redis_gets_it(args: &[Bytes], prefix: &[u8], marks: &respite::wire::Marks) -> Vec<Bytes> {
        let mut out = BytesMut::new();
        respite::wire::encode_marked(&mut out, args, prefix, marks);
        let limits = Limits {
            max_bulk_bytes: 1 << 20,
            max_array_len: 1 << 20,
        };
        parse_request(&mut out, &limits, true)
            .unwrap()
            .unwrap()
            .args
    }

    proptest! {
        /// Every key of a multi-key command reaches Redis behind the tenant's prefix, in
        /// any of its databases, and a KEYS-shaped reply naming them strips back to the
        /// names the tenant wrote.
        #[test]
        fn rewrite_then_strip_gives_the_tenants_names_back(
            tenant in id(),
            db in 0u32..20,
            keys in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..24), 1..6),
        ) {
            let t = Tenant::new(&tenant, Default::default());
            let prefix = t.db_prefix(db);
            let mut args = vec![Bytes::from_static(b"DEL")];
            args.extend(keys.iter().map(|k| Bytes::copy_from_slice(k)));
            let cmd = lookup(&args).unwrap();
            let map = KeyMap::find(&cmd, &args).unwrap();
            let fwd = request(&cmd, args.clone(), &map, &t).unwrap();
            let sent = as_redis_gets_it(&fwd.args, &prefix, &fwd.prefixed);
            for (i, k) in keys.iter().enumerate() {
                prop_assert_eq!(&sent[i + 1][..], &[&prefix[..], &k[..]].concat()[..]);
                prop_assert_eq!(own_prefix(&t.prefix, &sent[i + 1]), Some((prefix.len(), db)));
            }
            // Redis' reply naming them (as KEYS would), stripped for the tenant.
            let mut reply = BytesMut::new();
            encode_request(&mut reply, sent[1..].iter().map(|k| &k[..]));
            let frame = next_frame(&mut reply, 2).unwrap().unwrap();
            let mut back = BytesMut::from(&strip(&frame, &Shape::Keys, &t.prefix)[..]);
            let stripped = parse_request(&mut back, &Limits { max_bulk_bytes: 1 << 20, max_array_len: 64 }, true)
                .unwrap()
                .unwrap()
                .args;
            prop_assert_eq!(stripped, args[1..].to_vec());
        }

        /// No name in another tenant's namespace (any database) reads as this tenant's,
        /// whatever the two ids are: a reply is never stripped into another tenant's view.
        #[test]
        fn another_tenants_names_are_never_ones_own(
            a in id(),
            b in id(),
            db in 0u32..1000,
            key in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            prop_assume!(a != b);
            let (ta, tb) = (Tenant::new(&a, Default::default()), Tenant::new(&b, Default::default()));
            let name = [&tb.db_prefix(db)[..], &key[..]].concat();
            prop_assert_eq!(own_prefix(&ta.prefix, &name), None);
            prop_assert!(own_prefix(&tb.prefix, &name).is_some());
        }
    }
}
