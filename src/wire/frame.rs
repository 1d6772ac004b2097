//! Framing Redis' replies: one complete RESP2 or RESP3 frame at a time, as byte ranges into
//! the bytes Redis sent.
//!
//! Frames are found with redis-protocol's `decode_range` for the connection's protocol; RESP2
//! frames are lifted into the RESP3 frame type (its RESP3 decoder reads RESP2's `*-1` / `$-1`
//! nulls as streamed aggregates), so everything after framing is one code path.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::decode::decode_range as decode_range2;
use redis_protocol::resp2::types::RangeFrame as Range2;
use redis_protocol::resp3::decode::complete::decode_range;
use redis_protocol::resp3::types::RangeFrame;

/// One complete frame from Redis.
pub struct Frame {
    pub raw: Bytes,
    /// Ranges into `raw`; read it with [`Frame::tree`].
    tree: Tree,
    /// The protocol it was read in (2 or 3).
    pub protocol: u8,
}

/// A frame's tree, kept small: most replies are one string, number or nil, and a frame is
/// moved several times on its way to the client (from the connection's task, through the
/// session's channel, into its slot), where a full `RangeFrame` would be 160 bytes copied
/// each time. Anything else is boxed whole.
enum Tree {
    Blob(usize, usize),
    Simple(usize, usize),
    Error(usize, usize),
    Number(i64),
    Null,
    Other(Box<RangeFrame>),
}

impl Tree {
    fn of(tree: RangeFrame) -> Tree {
        match tree {
            RangeFrame::BlobString {
                data: (a, b),
                attributes: None,
            } => Tree::Blob(a, b),
            RangeFrame::SimpleString {
                data: (a, b),
                attributes: None,
            } => Tree::Simple(a, b),
            RangeFrame::SimpleError {
                data: (a, b),
                attributes: None,
            } => Tree::Error(a, b),
            RangeFrame::Number {
                data,
                attributes: None,
            } => Tree::Number(data),
            RangeFrame::Null => Tree::Null,
            other => Tree::Other(Box::new(other)),
        }
    }
}

impl Frame {
    /// The frame's tree (ranges into `raw`): made on the spot for a string, number or nil.
    pub fn tree(&self) -> Cow<'_, RangeFrame> {
        let attributes = None;
        Cow::Owned(match self.tree {
            Tree::Blob(a, b) => RangeFrame::BlobString {
                data: (a, b),
                attributes,
            },
            Tree::Simple(a, b) => RangeFrame::SimpleString {
                data: (a, b),
                attributes,
            },
            Tree::Error(a, b) => RangeFrame::SimpleError {
                data: (a, b),
                attributes,
            },
            Tree::Number(data) => RangeFrame::Number { data, attributes },
            Tree::Null => RangeFrame::Null,
            Tree::Other(ref tree) => return Cow::Borrowed(tree),
        })
    }

    pub fn is_error(&self) -> bool {
        match &self.tree {
            Tree::Error(..) => true,
            Tree::Other(tree) => matches!(**tree, RangeFrame::BlobError { .. }),
            _ => false,
        }
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

    /// The bytes of this frame, if it is a string.
    pub fn text(&self) -> Option<&[u8]> {
        self.str_at(&self.tree())
    }

    /// The elements of an array, set or push frame.
    pub fn elements(&self) -> Option<&[RangeFrame]> {
        elements(self.aggregate()?)
    }

    /// The tree of anything but a string, number or nil (an aggregate, mostly), without
    /// making one for those.
    pub fn aggregate(&self) -> Option<&RangeFrame> {
        match &self.tree {
            Tree::Other(tree) => Some(tree),
            _ => None,
        }
    }
}

/// Did a read find something? Nil and empty collections are misses (the metrics' hit rate).
pub fn found(frame: &Frame) -> bool {
    let tree = match &frame.tree {
        Tree::Null => return false,
        Tree::Other(tree) => tree,
        _ => return true,
    };
    match &**tree {
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
    } else if let Some(simple) = simple2(buf) {
        Ok(simple)
    } else {
        decode_range2(buf).map(|f| f.map(|(tree, amt)| (lift(tree), amt)))
    };
    match decoded {
        Ok(Some((tree, amt))) => Ok(Some(Frame {
            raw: buf.split_to(amt).freeze(),
            tree: Tree::of(tree),
            protocol,
        })),
        Ok(None) => Ok(None),
        Err(e) => Err(e.details().to_string()),
    }
}

/// The commonest RESP2 replies (a bulk string or nil, a status, an error, an integer)
/// framed by hand, as `decode_range2` then `lift` frame them: the library's general parser
/// costs several hundred instructions for a `$5\r\nhello\r\n`, on every reply. `None`
/// when this cannot tell (an aggregate, anything unusual): the library decides those.
/// `Some(None)`: a bulk string whose header is whole and whose data is not there yet.
fn simple2(buf: &[u8]) -> Option<Option<(RangeFrame, usize)>> {
    let attributes = None;
    // The first CRLF, as the library's take_until finds it: the first `\n`, preceded by `\r`.
    let nl = memchr(b'\n', buf)?;
    if nl < 2 || buf[nl - 1] != b'\r' {
        return None;
    }
    let line = &buf[1..nl - 1];
    let header = nl + 1;
    let frame = match buf[0] {
        b'+' => RangeFrame::SimpleString {
            data: (1, nl - 1),
            attributes,
        },
        b'-' => RangeFrame::SimpleError {
            data: (1, nl - 1),
            attributes,
        },
        b':' => RangeFrame::Number {
            data: decimal(line)?,
            attributes,
        },
        b'$' if line == b"-1" => return Some(Some((RangeFrame::Null, header))),
        b'$' => {
            let len = usize::try_from(decimal(line)?).ok()?;
            // The data, then two bytes the library takes without looking at them.
            let end = header.checked_add(len)?.checked_add(2)?;
            if buf.len() < end {
                return Some(None);
            }
            return Some(Some((
                RangeFrame::BlobString {
                    data: (header, header + len),
                    attributes,
                },
                end,
            )));
        }
        _ => return None,
    };
    Some(Some((frame, header)))
}

/// Plain decimal digits with an optional `-`, within i64; `None` for anything else (a `+`,
/// an empty text), which the library then reads.
fn decimal(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text.split_first()? {
        (b'-', rest) => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
    Some(if negative { -n } else { n })
}

fn memchr(byte: u8, buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == byte)
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Bytes shaped like the replies `simple2` frames, and near misses of them.
    fn reply_ish() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"$".to_vec()),
            Just(b"+".to_vec()),
            Just(b"-".to_vec()),
            Just(b":".to_vec()),
            Just(b"*".to_vec()),
            Just(b"-1".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\r".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"+1".to_vec()),
            Just(b"9223372036854775807".to_vec()),
            (0u32..40).prop_map(|n| n.to_string().into_bytes()),
            proptest::collection::vec(any::<u8>(), 0..6),
        ];
        proptest::collection::vec(piece, 0..12).prop_map(|p| p.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        /// Where the hand-made framer decides, it decides as the library does: the same
        /// frame and length, the same wait for more; it never frames what the library
        /// refuses.
        #[test]
        fn simple_replies_are_framed_as_the_library_frames_them(bytes in reply_ish()) {
            if let Some(fast) = simple2(&bytes) {
                let slow = decode_range2(&bytes).map(|f| f.map(|(t, n)| (lift(t), n)));
                prop_assert_eq!(Ok(fast), slow.map_err(|_| ()), "{:?}", bytes);
            }
        }
    }

    #[test]
    fn the_commonest_replies_take_the_quick_way() {
        let framed = |b: &[u8]| simple2(b).expect("decided by hand");
        assert_eq!(
            framed(b"$5\r\nhello\r\n$"),
            Some((
                RangeFrame::BlobString {
                    data: (4, 9),
                    attributes: None
                },
                11
            ))
        );
        assert_eq!(framed(b"$-1\r\n"), Some((RangeFrame::Null, 5)));
        assert_eq!(framed(b"$5\r\nhel"), None);
        assert_eq!(
            framed(b":-42\r\n"),
            Some((
                RangeFrame::Number {
                    data: -42,
                    attributes: None
                },
                6
            ))
        );
        assert_eq!(
            framed(b"+OK\r\n"),
            Some((
                RangeFrame::SimpleString {
                    data: (1, 3),
                    attributes: None
                },
                5
            ))
        );
        assert!(simple2(b"*1\r\n$1\r\na\r\n").is_none());
        assert!(simple2(b"$+5\r\nhello\r\n").is_none());
    }
}
