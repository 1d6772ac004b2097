//! The isolation boundary. `request`: a request as the tenant wrote it becomes the request
//! Redis runs, every key, channel and pattern under `tenant:<id>:`, with a last guard that no
//! key leaves outside the namespace. `reply`: names in Redis' answers move back out.

pub mod reply;
pub mod request;

/// The channels Redis publishes keyspace notifications on, for database 0 (a tenant's
/// keys live there): `__keyspace@0__:<key>` carries the event, `__keyevent@0__:<event>`
/// the key. The key moves into the namespace inside the first; the second is subscribed
/// as Redis names it, and only events on the tenant's own keys reach it.
pub const KEYSPACE: &[u8] = b"__keyspace@0__:";
pub const KEYEVENT: &[u8] = b"__keyevent@0__:";

/// The channel a RESP2 connection subscribes to for the invalidations another connection's
/// CLIENT TRACKING ... REDIRECT sends it. Subscribed as Redis names it: Redis sends on it
/// only to the connection a redirect names (no PUBLISH of a tenant reaches it: those are
/// namespaced), and the keys in each message are stripped like any invalidation's.
pub const INVALIDATE: &[u8] = b"__redis__:invalidate";

/// The tenant's own prefix at the start of `name`, in any of its databases (`base` is its
/// `tenant:<id>:`, database 0's): the prefix's length and its database
/// (`wire::tenant_of` reads the name).
pub fn own_prefix(base: &[u8], name: &[u8]) -> Option<(usize, u32)> {
    let (id, db, len) = crate::wire::tenant_of(name)?;
    let base_id = base.strip_prefix(b"tenant:")?.strip_suffix(b":")?;
    (id == base_id).then_some((len, db))
}

pub use reply::{ExecItem, Kind, Shape, SubKind};
pub(crate) use request::reply_shape;
pub use request::{key_error, request, tracking_redirect, Expect, Forward, GUARD_REFUSALS};
