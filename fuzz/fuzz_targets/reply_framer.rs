//! The reply framer on any bytes, in RESP2 and RESP3 (the properties of
//! `tests/suite/properties.rs`, run for as long as one likes).
//!
//! The input: two header bytes, then the bytes Redis sends.
//! - byte 0: bit 0 set = RESP3, else RESP2;
//! - byte 1: the chunk size reads deliver the bytes in (0 reads as 1).
//!
//! Checked: a frame, a wait, or an error, never a panic; a frame is exactly the bytes it
//! took from the buffer, and a wait takes none; read whole or in chunks, the same frames.
//! Each frame then goes through what replies go through on the way back to a tenant
//! (`classify`, `strip` in every shape, `strip_push`), which must not panic either.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use respite::namespace::reply::{classify, confirmation_channel, strip, strip_push};
use respite::namespace::{ExecItem, Shape};
use respite::wire::{next_frame, Frame};

/// What a stream framed into: the frames' bytes, and whether an error ended it.
#[derive(Debug, PartialEq, Eq)]
struct Framed {
    frames: Vec<Bytes>,
    error: bool,
}

fn frame_in_chunks(input: &[u8], chunk: usize, protocol: u8, each: impl Fn(&Frame)) -> Framed {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut taken = 0;
    for part in input.chunks(chunk) {
        buf.extend_from_slice(part);
        loop {
            let before = buf.len();
            match next_frame(&mut buf, protocol) {
                Ok(Some(frame)) => {
                    assert_eq!(before - buf.len(), frame.raw.len());
                    assert!(!frame.raw.is_empty(), "a frame of no bytes");
                    assert_eq!(&frame.raw[..], &input[taken..taken + frame.raw.len()]);
                    assert_eq!(frame.protocol, protocol);
                    taken += frame.raw.len();
                    each(&frame);
                    frames.push(frame.raw);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "a wait took bytes");
                    break;
                }
                Err(_) => {
                    return Framed {
                        frames,
                        error: true,
                    }
                }
            }
        }
    }
    Framed {
        frames,
        error: false,
    }
}

/// A reply on its way back to the tenant `tenant:a:`: every shape it could be read as.
fn back_to_the_tenant(frame: &Frame) {
    const PREFIX: &[u8] = b"tenant:a:";
    let _ = classify(frame, true);
    let _ = classify(frame, false);
    let _ = confirmation_channel(frame);
    let _ = strip_push(frame, PREFIX);
    let shapes = [
        Shape::Plain,
        Shape::Scan,
        Shape::Keys,
        Shape::FirstKey,
        Shape::Streams,
        Shape::EveryOther,
        Shape::TrackingInfo(Box::new(vec![(1, 7)])),
        Shape::GetRedir(Box::new(vec![(1, 7)])),
        Shape::Exec(Box::new(vec![
            ExecItem::Upstream(Shape::Keys),
            ExecItem::Local(Bytes::from_static(b"+OK\r\n")),
            ExecItem::Hidden,
            ExecItem::Upstream(Shape::Scan),
        ])),
        Shape::Script(Box::new([b'x'; 80])),
    ];
    for shape in &shapes {
        let _ = strip(frame, shape, PREFIX);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(([flags, chunk], input)) = data.split_first_chunk::<2>().map(|(h, r)| (*h, r)) else {
        return;
    };
    let protocol = if flags & 1 == 1 { 3 } else { 2 };
    let chunk = (chunk as usize).max(1);
    let whole = frame_in_chunks(input, input.len().max(1), protocol, back_to_the_tenant);
    let chunked = frame_in_chunks(input, chunk, protocol, |_| {});
    assert_eq!(whole, chunked, "whole and in chunks of {chunk}");
});
