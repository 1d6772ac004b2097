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
/// `tenant:<id>:`, database 0's): the prefix's length and its database. Only the forms
/// `Tenant::db_prefix` writes count (`@1:`, never `@01:` or `@0:`), so a name is read back
/// the one way it was written.
pub fn own_prefix(base: &[u8], name: &[u8]) -> Option<(usize, u32)> {
    if base.is_empty() {
        return None;
    }
    if name.starts_with(base) {
        return Some((base.len(), 0));
    }
    let stem = &base[..base.len() - 1];
    let rest = name.strip_prefix(stem)?.strip_prefix(b"@")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || rest[0] == b'0' || rest.get(digits) != Some(&b':') {
        return None;
    }
    let db = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    Some((stem.len() + 1 + digits + 1, db))
}

pub use reply::{ExecItem, Kind, Shape, SubKind};
pub(crate) use request::reply_shape;
pub use request::{key_error, request, tracking_redirect, Expect, Forward, GUARD_REFUSALS};
