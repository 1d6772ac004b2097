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

/// Above this, an emptied buffer's memory is let go ([`release_if_huge`]).
const KEEP_AT_MOST: usize = 1 << 20;

/// An emptied buffer that one huge message grew past 1 MiB is let go, and starts again at
/// `size`: a long-lived connection's buffer stays the size of its usual traffic, not of its
/// biggest message.
pub fn release_if_huge(buf: &mut bytes::BytesMut, size: usize) {
    if buf.is_empty() && buf.capacity() > KEEP_AT_MOST {
        *buf = bytes::BytesMut::with_capacity(size);
    }
}
