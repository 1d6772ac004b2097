//! The request parser on any byte stream, read whole and in chunks (the properties of
//! `tests/suite/properties.rs`, run for as long as one likes).
//!
//! The input: four header bytes, then the stream a client sends.
//! - byte 0: bit 0 set = the connection is authenticated (else Redis' tighter limits apply);
//! - byte 1: the chunk size reads deliver the stream in (0 reads as 1);
//! - byte 2: `max_array_len` - 1;
//! - byte 3: `max_bulk_bytes` / 4.
//!
//! Checked: every call ends in a request, a wait, or a clean error, never a panic; a request
//! takes bytes and stays within the limits; a wait reserves no more than one argument the
//! limits allow; chunked or whole, the same requests and the same error; a request encoded
//! again parses back to itself.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use respite::wire::{encode_request, parse_request, Limits, MAX_INLINE};

/// Before AUTH, as `wire` (and Redis) have them.
const UNAUTH_MAX_ARRAY: usize = 10;
const UNAUTH_MAX_BULK: usize = 16 * 1024;

/// What a stream parsed into: its requests, then the error that ended it (if any).
#[derive(Debug, PartialEq, Eq)]
struct Parsed {
    requests: Vec<Vec<Bytes>>,
    error: Option<String>,
}

/// Feeds `input` to the parser `chunk` bytes at a time, as reads would deliver it.
fn parse_in_chunks(input: &[u8], chunk: usize, limits: &Limits, authenticated: bool) -> Parsed {
    let (max_array, max_bulk) = match authenticated {
        true => (limits.max_array_len, limits.max_bulk_bytes),
        false => (
            limits.max_array_len.min(UNAUTH_MAX_ARRAY),
            limits.max_bulk_bytes.min(UNAUTH_MAX_BULK),
        ),
    };
    let mut buf = BytesMut::new();
    let mut requests = Vec::new();
    // The most the buffer ever had room for.
    let mut peak = 0;
    for part in input.chunks(chunk) {
        buf.extend_from_slice(part);
        loop {
            let (before, capacity) = (buf.len(), buf.capacity());
            peak = peak.max(capacity);
            // The buffer's bytes: a multibulk request's arguments are slices of them (no
            // copies), an inline request's are built anew. That tells the two apart.
            let held = buf.as_ptr() as usize..=buf.as_ptr() as usize + buf.len();
            match parse_request(&mut buf, limits, authenticated) {
                Ok(Some(r)) => {
                    assert!(buf.len() < before, "a request consumed nothing");
                    assert!(!r.args.is_empty(), "an empty request was not skipped");
                    if held.contains(&(r.args[0].as_ptr() as usize)) {
                        assert!(r.args.len() <= max_array, "{} arguments", r.args.len());
                        for a in &r.args {
                            assert!(a.len() <= max_bulk, "an argument of {} bytes", a.len());
                        }
                    } else {
                        // Inline: one line of at most MAX_INLINE bytes.
                        let bytes: usize = r.args.iter().map(|a| a.len()).sum();
                        assert!(bytes <= MAX_INLINE, "an inline request of {bytes} bytes");
                    }
                    requests.push(r.args);
                }
                Ok(None) => {
                    // What a wait holds is bounded by the limits, not by what was sent: room
                    // for the rest of one argument the limits allow. (`BytesMut` may round a
                    // reservation up to twice what it held before, or to what it once had.)
                    assert!(buf.len() <= before);
                    let room = 2 * (buf.len() + max_bulk + 4) + 64;
                    assert!(
                        buf.capacity() <= room.max(2 * peak),
                        "a wait reserved {} bytes (had {capacity}, holds {})",
                        buf.capacity(),
                        buf.len()
                    );
                    break;
                }
                Err(e) => {
                    return Parsed {
                        requests,
                        error: Some(e.0),
                    }
                }
            }
        }
    }
    Parsed {
        requests,
        error: None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((header, input)) = data.split_first_chunk::<4>() else {
        return;
    };
    let authenticated = header[0] & 1 == 1;
    let chunk = (header[1] as usize).max(1);
    let limits = Limits {
        max_array_len: header[2] as usize + 1,
        max_bulk_bytes: header[3] as usize * 4,
    };
    let whole = parse_in_chunks(input, input.len().max(1), &limits, authenticated);
    let chunked = parse_in_chunks(input, chunk, &limits, authenticated);
    // Read in pieces or at once: the same requests, and the same error.
    assert_eq!(whole, chunked, "whole and in chunks of {chunk}");
    // Each request, encoded as a client would, parses back to itself.
    let roomy = Limits {
        max_array_len: 1 << 40,
        max_bulk_bytes: 1 << 40,
    };
    for args in &whole.requests {
        let mut wire = BytesMut::new();
        encode_request(&mut wire, args.iter().map(|a| &a[..]));
        let again = parse_request(&mut wire, &roomy, true);
        assert_eq!(again.unwrap().unwrap().args, *args);
        assert!(wire.is_empty());
    }
});
