//! Which arguments of a request go to Redis behind the tenant's prefix, and the prefix
//! itself: the bytes of the namespace, without knowing what a tenant is.

use bytes::{Bytes, BytesMut};

/// The arguments of a request that Redis gets behind the tenant's prefix: a bit per argument
/// for the first 64 (every common command), a sorted list beyond.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Marks {
    low: u64,
    high: Vec<usize>,
}

impl Marks {
    pub fn set(&mut self, i: usize) {
        match i {
            0..64 => self.low |= 1 << i,
            _ => {
                if let Err(at) = self.high.binary_search(&i) {
                    self.high.insert(at, i);
                }
            }
        }
    }

    pub fn has(&self, i: usize) -> bool {
        match i {
            0..64 => self.low & (1 << i) != 0,
            _ => self.high.binary_search(&i).is_ok(),
        }
    }

    /// How many arguments are marked.
    pub fn count(&self) -> usize {
        self.low.count_ones() as usize + self.high.len()
    }

    pub fn set_from(&mut self, from: usize, to: usize) {
        for i in from..to {
            self.set(i);
        }
    }
}

/// `tenant:<id>:<name>`.
pub fn namespaced(prefix: &[u8], name: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(prefix.len() + name.len());
    b.extend_from_slice(prefix);
    b.extend_from_slice(name);
    b.freeze()
}

/// The tenant, database and prefix length of a name in a tenant's namespace:
/// `tenant:<id>:` (database 0) or `tenant:<id>@<db>:`, only as `Tenant::db_prefix` writes
/// them (`@1:`, never `@01:` or `@0:`: a name is read back the one way it was written).
pub fn tenant_of(name: &[u8]) -> Option<(&[u8], u32, usize)> {
    let rest = name.strip_prefix(b"tenant:")?;
    let end = rest.iter().position(|&b| b == b':' || b == b'@')?;
    let id = &rest[..end];
    if id.is_empty() {
        return None;
    }
    let stem = b"tenant:".len() + end;
    if rest[end] == b':' {
        return Some((id, 0, stem + 1));
    }
    let (db, n) = database_number(&rest[end + 1..])?;
    if db == 0 || rest.get(end + 1 + n) != Some(&b':') {
        return None;
    }
    Some((id, db, stem + 1 + n + 1))
}

/// A database number at the start of `text`, written as Redis writes it (decimal, no
/// leading zero but `0` itself): the number and how many bytes it took.
pub fn database_number(text: &[u8]) -> Option<(u32, usize)> {
    let n = text.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || (text[0] == b'0' && n > 1) {
        return None;
    }
    let db = std::str::from_utf8(&text[..n]).ok()?.parse().ok()?;
    Some((db, n))
}

/// The tenant's whole namespace as a glob pattern: `tenant:<id>:*`.
pub fn all_keys(prefix: &[u8]) -> Bytes {
    namespaced(prefix, b"*")
}
