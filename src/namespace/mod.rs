//! The isolation boundary. `request`: a request as the tenant wrote it becomes the request
//! Redis runs, every key, channel and pattern under `tenant:<id>:`, with a last guard that no
//! key leaves outside the namespace. `reply`: names in Redis' answers move back out.

pub mod reply;
pub mod request;

pub use reply::{ExecItem, Kind, Shape, SubKind};
pub(crate) use request::reply_shape;
pub use request::{key_error, request, Expect, Forward, GUARD_REFUSALS};
