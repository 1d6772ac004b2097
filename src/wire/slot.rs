//! Redis Cluster's key slots: CRC16 (XMODEM) of the key, or of its hash tag, modulo 16,384.

/// Slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;

const fn table() -> [u16; 256] {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut b = 0;
        while b < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            b += 1;
        }
        t[i] = crc;
        i += 1;
    }
    t
}

const TABLE: [u16; 256] = table();

fn crc16(crc: u16, bytes: &[u8]) -> u16 {
    bytes.iter().fold(crc, |crc, &b| {
        (crc << 8) ^ TABLE[(((crc >> 8) as u8) ^ b) as usize]
    })
}

/// The hash tag of a key, as Redis' `keyHashSlot` finds it: what lies between the first `{`
/// and the first `}` after it, if that is not empty.
fn tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let len = key[open + 1..].iter().position(|&b| b == b'}')?;
    (len > 0).then(|| &key[open + 1..open + 1 + len])
}

/// The slot of `prefix` + `key` without building the name. A prefix must hold no `{` (a
/// tenant's `tenant:<id>:` does not), so the key's own tag still picks the slot: a tenant's
/// `{user1}:a` and `{user1}:b` share one, as they would in Redis.
pub fn key_slot(prefix: &[u8], key: &[u8]) -> u16 {
    debug_assert!(!prefix.contains(&b'{'));
    let crc = match tag(key) {
        Some(t) => crc16(0, t),
        None => crc16(crc16(0, prefix), key),
    };
    crc % SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_redis_own() {
        // `CLUSTER KEYSLOT` of each, from Redis 7.0.
        assert_eq!(key_slot(b"", b"foo"), 12182);
        assert_eq!(key_slot(b"", b"8xjx7vWrfPq54mKfFD3Y1CcjjofpnAcQ"), 5458);
        assert_eq!(
            key_slot(b"", b"{user1000}.following"),
            key_slot(b"", b"user1000")
        );
        assert_eq!(
            key_slot(b"tenant:a:", b"{user1000}x"),
            key_slot(b"", b"user1000")
        );
        assert_eq!(key_slot(b"tenant:a:", b"k"), key_slot(b"", b"tenant:a:k"));
        // An empty tag is no tag: the whole name counts.
        assert_eq!(
            key_slot(b"tenant:a:", b"{}k"),
            key_slot(b"", b"tenant:a:{}k")
        );
        assert_eq!(key_slot(b"", b"foo{}{bar}"), key_slot(b"", b"foo{}{bar}"));
        for key in [&b"a{b}c"[..], b"{", b"}{", b"x{y}}", b"{{z}}", b"plain"] {
            assert_eq!(
                key_slot(b"p:", key),
                redis_protocol::redis_keyslot(&[b"p:", key].concat())
            );
        }
    }
}
