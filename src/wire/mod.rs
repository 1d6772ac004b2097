//! The wire: bytes only. Requests parsed from a client (with Redis' limits and error texts),
//! requests encoded for Redis with the namespace prefix written in front of the marked
//! arguments, replies respite writes itself, and Redis' replies framed. Imports nothing else
//! of the crate: every layer above speaks to the network through it.

mod frame;
mod glob;
mod marks;
mod request;
mod slot;

pub use frame::{element_spans, elements, found, next_frame, Frame};
pub use glob::glob_match;
pub use marks::{all_keys, database_number, namespaced, tenant_of, Marks};
pub use request::*;
pub use slot::{key_slot, SLOTS};

/// Above this, an emptied buffer's memory is let go ([`reuse_emptied`]).
const KEEP_AT_MOST: usize = 1 << 20;

/// An emptied buffer is written again from the start of its memory, and one that a huge
/// message grew past 1 MiB is let go and starts again at `size`. Without the first, a
/// buffer consumed from the front (`advance`) goes on writing further into its memory until
/// the end, so that every line it writes is one the cache has long let go. Without the
/// second, a long-lived connection's buffer would stay the size of its biggest message.
pub fn reuse_emptied(buf: &mut bytes::BytesMut, size: usize) {
    if !buf.is_empty() {
        return;
    }
    // Moves back to the start, copying nothing, when the buffer is its memory's only
    // owner; allocates nothing either way.
    let _ = buf.try_reclaim(buf.capacity() + 1);
    if buf.capacity() > KEEP_AT_MOST {
        *buf = bytes::BytesMut::with_capacity(size);
    }
}

#[cfg(test)]
mod tests {
    use bytes::{Buf, BytesMut};

    #[test]
    fn an_emptied_buffer_is_written_again_from_its_start() {
        let mut buf = BytesMut::with_capacity(4096);
        let start = buf.as_ptr();
        buf.extend_from_slice(&[b'x'; 1000]);
        buf.advance(600);
        super::reuse_emptied(&mut buf, 4096);
        assert_eq!(buf.len(), 400, "not empty: left as it is");
        buf.advance(400);
        super::reuse_emptied(&mut buf, 4096);
        buf.extend_from_slice(b"next");
        assert_eq!(buf.as_ptr(), start);
        assert_eq!(buf.capacity(), 4096);
        // Still shared with a slice cut from it: nothing to reuse, and nothing allocated.
        let mut buf = BytesMut::with_capacity(4096);
        buf.extend_from_slice(&[b'y'; 100]);
        let cut = buf.split_to(100).freeze();
        let at = buf.as_ptr();
        super::reuse_emptied(&mut buf, 4096);
        assert_eq!((buf.as_ptr(), &cut[..3]), (at, &b"yyy"[..]));
    }

    #[test]
    fn an_emptied_huge_buffer_is_let_go() {
        let mut buf = BytesMut::with_capacity(super::KEEP_AT_MOST + 1);
        buf.extend_from_slice(b"big");
        buf.advance(3);
        super::reuse_emptied(&mut buf, 1024);
        assert_eq!(buf.capacity(), 1024);
    }
}
