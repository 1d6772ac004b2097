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
