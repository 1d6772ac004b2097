//! What a write may cost: from a request's arguments, a bound on the bytes it can add to
//! the tenant's usage (key and value lengths plus Redis' overheads, offsets' reach, the sources
//! a copy copies).

use super::*;
use crate::command::grammar::redis_int;

/// The keys a write touches, as the tenant names them (without `tenant:<id>:`). A single key
/// (the common case) is taken out of the request once it has been encoded for Redis: no
/// copy, no allocation.
#[derive(Debug, Default, PartialEq, Eq)]
pub enum Keys {
    #[default]
    None,
    /// The request's argument at this index, not taken yet.
    Arg(usize),
    One(Bytes),
    Many(Vec<Bytes>),
}

impl Keys {
    pub(super) fn add(&mut self, args: &[Bytes], i: usize) {
        *self = match std::mem::take(self) {
            Keys::None => Keys::Arg(i),
            Keys::Arg(j) => Keys::Many(vec![args[j].clone(), args[i].clone()]),
            Keys::One(k) => Keys::Many(vec![k, args[i].clone()]),
            Keys::Many(mut v) => {
                v.push(args[i].clone());
                Keys::Many(v)
            }
        }
    }

    /// Takes the key out of the request (sent, about to be dropped).
    pub fn take_from(&mut self, args: &mut [Bytes]) {
        if let Keys::Arg(i) = *self {
            *self = Keys::One(std::mem::take(&mut args[i]));
        }
    }

    /// Copies the key out of the request (which is still to be sent).
    pub fn clone_from(&mut self, args: &[Bytes]) {
        if let Keys::Arg(i) = *self {
            *self = Keys::One(args[i].clone());
        }
    }

    pub(super) fn append(&mut self, other: Keys) {
        let mut all = match std::mem::take(self) {
            Keys::One(k) => vec![k],
            Keys::Many(v) => v,
            Keys::None | Keys::Arg(_) => Vec::new(),
        };
        match other {
            Keys::One(k) => all.push(k),
            Keys::Many(v) => all.extend(v),
            Keys::None | Keys::Arg(_) => {}
        }
        *self = Keys::Many(all);
    }

    pub(super) fn to_vec(&self) -> Vec<Bytes> {
        match self {
            Keys::One(k) => vec![k.clone()],
            Keys::Many(v) => v.clone(),
            Keys::None | Keys::Arg(_) => Vec::new(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        matches!(self, Keys::None)
    }
}

/// What a write may do to the tenant's bytes, as far as the request tells.
#[derive(Debug, PartialEq, Eq)]
pub struct WriteCost {
    /// The keys it writes.
    pub(super) keys: Keys,
    pub(super) growth: Growth,
    /// The TTL it sets: the keys are measured again when it runs out.
    pub(super) expires_in: Option<Duration>,
    /// The prefix of its keys' database, when not database 0 (whose prefix is the
    /// ledger's).
    pub(super) db: Option<Bytes>,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Growth {
    /// Cannot grow anything (DEL, EXPIRE, LPOP, ...): measured afterwards, never refused.
    None,
    /// At most this many bytes.
    Bytes(u64),
    /// Copies these keys (COPY, SUNIONSTORE, ...): at most their size, plus this.
    CopyOf(Vec<Source>, u64),
}

impl WriteCost {
    /// `bytes` more for a write already admitted, whose keys its first charge names: what
    /// Redis measured beyond the estimate (RESTORE's payload is compressed).
    pub fn more(bytes: u64) -> WriteCost {
        WriteCost {
            keys: Keys::None,
            growth: Growth::Bytes(bytes),
            expires_in: None,
            db: None,
        }
    }

    /// A write that moves a key between the tenant's databases (MOVE): `keys` by their
    /// names in Redis, both measured afterwards; it adds nothing, so it is never refused.
    pub fn moved(keys: Vec<Bytes>) -> WriteCost {
        WriteCost {
            keys: Keys::Many(keys),
            growth: Growth::None,
            expires_in: None,
            db: Some(Bytes::new()),
        }
    }

    /// Its keys are in the database of `prefix` (`Tenant::db_prefix`), not database 0.
    pub fn in_database(mut self, prefix: Bytes) -> WriteCost {
        self.db = Some(prefix);
        self
    }
}

/// A key a write copies from: the tenant's own (`mine`, named in Redis behind its prefix)
/// or a shared key.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Source {
    pub(super) name: Bytes,
    pub(super) mine: bool,
}

/// The cost of a request respite is about to forward: `args` as the tenant wrote them, the
/// `prefixed` ones its keys (which Redis names with a prefix of `prefix_len` bytes). `None`
/// when it writes none of the tenant's keys. (A publisher's writes to shared keys, which are
/// not prefixed, are not the tenant's usage.)
pub fn cost(
    cmd: &Command,
    args: &[Bytes],
    keys: &KeyMap,
    prefixed: &Marks,
    prefix_len: usize,
    proto_max_bulk: u64,
) -> Option<WriteCost> {
    let name = cmd.spec.name;
    let top = cmd.parent.is_none();
    let script = top && matches!(name, b"eval" | b"evalsha" | b"fcall");
    if !cmd.has(CMD_WRITE) && !script {
        return None;
    }
    if top && beyond_reach(name, args, proto_max_bulk) {
        // Redis refuses it as invalid, before it writes anything: its error, not -OOM.
        return None;
    }
    let prefix_len = prefix_len as u64;
    match keys {
        KeyMap::Lone([(_, flags)]) if !script => {
            lone_key_cost(cmd, args, prefixed, prefix_len, *flags)
        }
        _ => keyed_cost(cmd, args, keys, prefixed, prefix_len, script),
    }
}

/// [`cost`] from the key map, for any command.
pub(super) fn keyed_cost(
    cmd: &Command,
    args: &[Bytes],
    keys_found: &KeyMap,
    prefixed: &Marks,
    prefix_len: u64,
    script: bool,
) -> Option<WriteCost> {
    let name = cmd.spec.name;
    let mut keys = Keys::None;
    let mut sources = Vec::new();
    // Written keys' names are stored; source keys' names are not.
    let (mut key_bytes, mut key_weight) = (0, 0);
    let mut take = |i: usize, written: bool| {
        let a = &args[i];
        key_weight += stored(a.len() as u64);
        let mine = prefixed.has(i);
        if written && mine {
            key_bytes += stored(prefix_len + a.len() as u64);
            keys.add(args, i);
        } else if !written {
            sources.push(Source {
                name: a.clone(),
                mine,
            });
        }
    };
    // A script may write any key it declares.
    let all_written = script || cmd.writes_read_keys();
    for (i, flags) in keys_found.iter() {
        take(i, flags & KS_RO == 0 || all_written);
    }
    if keys.is_empty() && !script {
        // e.g. GEORADIUS without STORE. A script is charged all the same: it may write keys
        // it builds itself, so a tenant past its limit cannot run one.
        return None;
    }
    let growth = if !cmd.has(CMD_DENYOOM) && !script && !cmd.grows_without_denyoom() {
        Growth::None
    } else if !sources.is_empty() && name != b"pfmerge" {
        Growth::CopyOf(sources, key_bytes)
    } else {
        let values = args[1..]
            .iter()
            .map(|a| stored(a.len() as u64))
            .sum::<u64>()
            - key_weight;
        Growth::Bytes((key_bytes + estimate(name, args, values)).max(u64::from(script)))
    };
    Some(WriteCost {
        keys,
        growth,
        expires_in: ttl(name, args),
        db: None,
    })
}

/// [`cost`] of a command whose one key is argument 1 (SET, HSET, LPUSH, APPEND, ...): the
/// common write, without a list of keys.
pub(super) fn lone_key_cost(
    cmd: &Command,
    args: &[Bytes],
    prefixed: &Marks,
    prefix_len: u64,
    flags: u16,
) -> Option<WriteCost> {
    if flags & KS_RO != 0 || !prefixed.has(1) {
        return None;
    }
    let name = cmd.spec.name;
    let growth = if cmd.has(CMD_DENYOOM) {
        let values = args[2..].iter().map(|a| stored(a.len() as u64)).sum();
        Growth::Bytes(stored(prefix_len + args[1].len() as u64) + estimate(name, args, values))
    } else {
        Growth::None
    };
    Some(WriteCost {
        keys: Keys::Arg(1),
        growth,
        expires_in: ttl(name, args),
        db: None,
    })
}

/// The TTL a request sets, from SET/GETEX options, SETEX/PSETEX or the EXPIRE family.
pub(super) fn ttl(name: &[u8], args: &[Bytes]) -> Option<Duration> {
    let number = |i: usize| -> Option<u64> { std::str::from_utf8(args.get(i)?).ok()?.parse().ok() };
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    };
    let ms = |unit: &[u8], value: u64| -> u64 {
        match unit {
            b"ex" | b"expire" | b"setex" => value.saturating_mul(1000),
            b"px" | b"pexpire" | b"psetex" => value,
            b"exat" | b"expireat" => value.saturating_mul(1000).saturating_sub(now_ms()),
            _ => value.saturating_sub(now_ms()),
        }
    };
    let ms = match name {
        b"expire" | b"pexpire" | b"expireat" | b"pexpireat" | b"setex" | b"psetex" => {
            ms(name, number(2)?)
        }
        b"set" | b"getex" => (3..args.len()).find_map(|i| {
            let opt = &args[i - 1];
            if opt.len() > 4 {
                return None;
            }
            let opt = opt.to_ascii_lowercase();
            matches!(opt.as_slice(), b"ex" | b"px" | b"exat" | b"pxat")
                .then(|| number(i).map(|v| ms(&opt, v)))
                .flatten()
        })?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

/// An upper bound of what a write adds, from its arguments.
/// What Redis' allocator (jemalloc) gives for `n` bytes: four size classes per doubling
/// (…, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, …), at least 16 bytes apart.
pub(super) fn alloc_class(n: u64) -> u64 {
    if n <= 8 {
        return 8;
    }
    let k = 63 - (n - 1).leading_zeros();
    let step = (1u64 << k.saturating_sub(2)).max(16);
    n.div_ceil(step) * step
}

/// An upper bound of what Redis holds for a stored string of `len` bytes.
pub(super) fn stored(len: u64) -> u64 {
    alloc_class(len + 10) + OVERHEAD
}

/// What a write adds beyond its keys' names and overheads; `values` weighs its other
/// arguments as stored elements.
pub(super) fn estimate(name: &[u8], args: &[Bytes], values: u64) -> u64 {
    let len = |i: usize| args.get(i).map_or(0, |a| a.len() as u64);
    let number = |i: usize| {
        args.get(i)
            .and_then(|a| std::str::from_utf8(a).ok())
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
    };
    match name {
        // Growth reaches the offset, whatever the value's length.
        b"setrange" => stored(number(2) + len(3)),
        b"setbit" => stored(number(2) / 8 + 1),
        b"bitfield" => bitfield_reach(args) + values,
        b"xadd" => values + STREAM_NODE,
        b"pfadd" | b"pfmerge" => values + DENSE_HLL,
        _ => values,
    }
}

/// Whether Redis refuses a SETRANGE, SETBIT or BITFIELD for the offset it names (not an
/// integer, negative, or past `proto-max-bulk-len` bytes), as `setrangeCommand` and
/// `getBitOffsetFromArgument` judge it.
pub(super) fn beyond_reach(name: &[u8], args: &[Bytes], proto_max_bulk: u64) -> bool {
    let int = |i: usize| args.get(i).and_then(|a| redis_int(a));
    // A bit offset: `#n` counts in fields of `bits` (BITFIELD), else bits.
    let bit_offset_bad = |i: usize, bits: Option<i64>| {
        let a = args.get(i).map_or(&b""[..], |a| &a[..]);
        let offset = match (a.strip_prefix(b"#"), bits) {
            (Some(n), Some(bits)) if bits > 0 => redis_int(n).and_then(|n| n.checked_mul(bits)),
            _ => redis_int(a),
        };
        offset.is_none_or(|o| o < 0 || (o >> 3) as u64 >= proto_max_bulk)
    };
    match name {
        b"setrange" => match int(2) {
            None => true,
            Some(offset) if offset < 0 => true,
            Some(offset) => {
                let len = args.get(3).map_or(0, |v| v.len() as u64);
                len > 0 && offset as u64 + len > proto_max_bulk
            }
        },
        b"setbit" => bit_offset_bad(2, None),
        b"bitfield" => {
            let mut i = 2;
            while i < args.len() {
                let op = args[i].to_ascii_lowercase();
                let field = match op.as_slice() {
                    b"get" | b"set" | b"incrby" => args.get(i + 1),
                    b"overflow" => {
                        i += 2;
                        continue;
                    }
                    // Redis' syntax error, which needs no quota either.
                    _ => return true,
                };
                // The field's width, as in `i8`/`u16`: `#n` offsets count in it.
                let bits = field.and_then(|f| redis_int(f.get(1..)?));
                if bit_offset_bad(i + 2, bits) {
                    return true;
                }
                i += if op.as_slice() == b"get" { 3 } else { 4 };
            }
            false
        }
        _ => false,
    }
}

/// The furthest byte a BITFIELD's SET/INCRBY operations can write.
pub(super) fn bitfield_reach(args: &[Bytes]) -> u64 {
    let mut reach = 0;
    let mut i = 2;
    while i < args.len() {
        let op = args[i].to_ascii_lowercase();
        match op.as_slice() {
            b"get" => i += 3,
            b"overflow" => i += 2,
            b"set" | b"incrby" => {
                let text = |j: usize| {
                    args.get(j)
                        .and_then(|a| std::str::from_utf8(a).ok())
                        .unwrap_or("")
                };
                let bits: u64 = text(i + 1)
                    .get(1..)
                    .and_then(|b| b.parse().ok())
                    .unwrap_or(64);
                let offset = text(i + 2);
                let offset: u64 = match offset.strip_prefix('#') {
                    Some(n) => n.parse::<u64>().unwrap_or(0).saturating_mul(bits),
                    None => offset.parse().unwrap_or(0),
                };
                reach = reach.max(offset.saturating_add(bits) / 8 + 1);
                i += 4;
            }
            _ => break,
        }
    }
    reach
}
