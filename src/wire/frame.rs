//! Framing Redis' replies: one complete RESP2 or RESP3 frame at a time, as byte ranges into
//! the bytes Redis sent.
//!
//! Frames are found with redis-protocol's `decode_range` for the connection's protocol; RESP2
//! frames are lifted into the RESP3 frame type (its RESP3 decoder reads RESP2's `*-1` / `$-1`
//! nulls as streamed aggregates), so everything after framing is one code path.

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::decode::decode_range as decode_range2;
use redis_protocol::resp2::types::RangeFrame as Range2;
use redis_protocol::resp3::decode::complete::decode_range;
use redis_protocol::resp3::types::RangeFrame;

/// One complete frame from Redis.
pub struct Frame {
    pub raw: Bytes,
    /// Ranges into `raw`.
    pub tree: RangeFrame,
    /// The protocol it was read in (2 or 3).
    pub protocol: u8,
}

impl Frame {
    pub fn is_error(&self) -> bool {
        matches!(
            self.tree,
            RangeFrame::SimpleError { .. } | RangeFrame::BlobError { .. }
        )
    }

    /// The bytes of a string frame (simple or blob).
    pub fn str_at<'a>(&'a self, f: &RangeFrame) -> Option<&'a [u8]> {
        match f {
            RangeFrame::BlobString { data, .. }
            | RangeFrame::SimpleString { data, .. }
            | RangeFrame::SimpleError { data, .. }
            | RangeFrame::BlobError { data, .. }
            | RangeFrame::VerbatimString { data, .. } => Some(&self.raw[data.0..data.1]),
            _ => None,
        }
    }

    /// The elements of an array, set or push frame.
    pub fn elements(&self) -> Option<&[RangeFrame]> {
        elements(&self.tree)
    }
}

/// Did a read find something? Nil and empty collections are misses (the metrics' hit rate).
pub fn found(frame: &Frame) -> bool {
    match &frame.tree {
        RangeFrame::Null => false,
        RangeFrame::Array { data, .. } | RangeFrame::Push { data, .. } => !data.is_empty(),
        RangeFrame::Set { data, .. } => !data.is_empty(),
        RangeFrame::Map { data, .. } => !data.is_empty(),
        _ => true,
    }
}

pub fn elements(f: &RangeFrame) -> Option<&[RangeFrame]> {
    match f {
        RangeFrame::Array { data, .. } | RangeFrame::Push { data, .. } => Some(data),
        _ => None,
    }
}

/// Takes the next complete frame, in `protocol` (2 or 3), off the front of `buf`.
pub fn next_frame(buf: &mut BytesMut, protocol: u8) -> Result<Option<Frame>, String> {
    if buf.is_empty() {
        return Ok(None);
    }
    let decoded = if protocol == 3 {
        decode_range(buf)
    } else {
        decode_range2(buf).map(|f| f.map(|(tree, amt)| (lift(tree), amt)))
    };
    match decoded {
        Ok(Some((tree, amt))) => Ok(Some(Frame {
            raw: buf.split_to(amt).freeze(),
            tree,
            protocol,
        })),
        Ok(None) => Ok(None),
        Err(e) => Err(e.details().to_string()),
    }
}

/// A RESP2 frame as the equivalent RESP3 frame.
fn lift(f: Range2) -> RangeFrame {
    let attributes = None;
    match f {
        Range2::SimpleString(data) => RangeFrame::SimpleString { data, attributes },
        Range2::Error(data) => RangeFrame::SimpleError { data, attributes },
        Range2::Integer(data) => RangeFrame::Number { data, attributes },
        Range2::BulkString(data) => RangeFrame::BlobString { data, attributes },
        Range2::Array(items) => RangeFrame::Array {
            data: items.into_iter().map(lift).collect(),
            attributes,
        },
        Range2::Null => RangeFrame::Null,
    }
}

/// Byte spans of each element of an aggregate, found by re-decoding from the element starts.
pub fn element_spans(frame: &Frame, elements: &[RangeFrame]) -> Vec<std::ops::Range<usize>> {
    // The aggregate header is `*<n>\r\n`; elements follow back to back.
    let mut pos = frame
        .raw
        .iter()
        .position(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let mut spans = Vec::with_capacity(elements.len());
    for _ in elements {
        let rest = &frame.raw[pos..];
        let amt = if frame.protocol == 3 {
            decode_range(rest).map(|f| f.map(|(_, n)| n))
        } else {
            decode_range2(rest).map(|f| f.map(|(_, n)| n))
        };
        match amt {
            Ok(Some(amt)) => {
                spans.push(pos..pos + amt);
                pos += amt;
            }
            _ => break,
        }
    }
    spans
}
