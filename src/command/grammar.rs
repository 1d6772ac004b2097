//! Keys of the commands whose key specs do not say where their keys are: Redis finds them by
//! parsing the arguments (`sortGetKeys`, `georadiusGetKeys`, `xreadGetKeys`, ...) and the
//! command itself parses them again, sometimes differently (a repeated `STORE`: the spec
//! finds the first, the command writes the last).
//!
//! Each parser here follows the command's own implementation, token for token, because what
//! the command does is what reaches Redis' data. Where the key specs describe the keys too,
//! [`Found::Confirm`] asks the caller to check that both views agree, and a request on which
//! they disagree is refused with Redis' syntax error: respite never guesses which argument is
//! a key.

use bytes::Bytes;

use super::{KeyError, KS_ACCESS, KS_OW, KS_RO, KS_UPDATE};

/// What a grammar found.
pub enum Found {
    /// The keys, with their flags; the key specs cannot say (SORT's STORE).
    Exact(Vec<(usize, u16)>),
    /// The key positions the command will use; the key specs must find the same ones.
    Confirm(Vec<usize>),
}

/// The keys of `name` (a top-level command) by its own grammar, or `None` when its key specs
/// are the whole truth.
pub fn keys(name: &[u8], args: &[Bytes]) -> Option<Result<Found, KeyError>> {
    Some(match name {
        b"sort" => sort(args, false).and_then(|s| {
            // COMMAND GETKEYS (and so ACLs and cluster routing) reads STORE its own way.
            if s.store != sort_get_keys_store(args) {
                return Err(KeyError::Ambiguous);
            }
            Ok(Found::Exact(s.keys()))
        }),
        b"sort_ro" => sort(args, true).map(|s| Found::Exact(s.keys())),
        b"georadius" => georadius(args, 6).map(Found::Confirm),
        b"georadiusbymember" => georadius(args, 5).map(Found::Confirm),
        b"xread" => xread(args, false).map(Found::Confirm),
        b"xreadgroup" => xread(args, true).map(Found::Confirm),
        b"debug" => debug(args).map(Found::Exact),
        _ => return None,
    })
}

/// An integer as Redis' `string2ll` reads one: no sign but `-`, no leading zeros, no spaces.
pub fn redis_int(a: &[u8]) -> Option<i64> {
    let digits = a.strip_prefix(b"-").unwrap_or(a);
    let canonical = match digits {
        [] => false,
        [b'0'] => a.len() == 1,
        [first, ..] => (b'1'..=b'9').contains(first) && digits.iter().all(u8::is_ascii_digit),
    };
    if !canonical {
        return None;
    }
    std::str::from_utf8(a).ok()?.parse().ok()
}

fn is(a: &[u8], word: &[u8]) -> bool {
    a.eq_ignore_ascii_case(word)
}

/// SORT's arguments as `sortCommandGeneric` reads them.
pub struct Sort {
    /// The last STORE's destination (last one wins, as in Redis).
    pub store: Option<usize>,
    /// Arguments that are BY or GET patterns (`GET #` excluded: it names no key).
    pub patterns: Vec<usize>,
}

impl Sort {
    fn keys(&self) -> Vec<(usize, u16)> {
        let mut keys = vec![(1, KS_RO | KS_ACCESS)];
        keys.extend(self.store.map(|i| (i, KS_OW | KS_UPDATE)));
        keys
    }
}

/// Parses SORT / SORT_RO's options; any argument SORT itself would refuse is refused.
pub fn sort(args: &[Bytes], readonly: bool) -> Result<Sort, KeyError> {
    let mut out = Sort {
        store: None,
        patterns: Vec::new(),
    };
    let mut j = 2;
    while j < args.len() {
        let left = args.len() - j - 1;
        let a = &args[j];
        if is(a, b"asc") || is(a, b"desc") || is(a, b"alpha") {
        } else if is(a, b"limit") && left >= 2 {
            if redis_int(&args[j + 1]).is_none() || redis_int(&args[j + 2]).is_none() {
                return Err(KeyError::BadKeyCount);
            }
            j += 2;
        } else if !readonly && is(a, b"store") && left >= 1 {
            out.store = Some(j + 1);
            j += 1;
        } else if (is(a, b"by") || is(a, b"get")) && left >= 1 {
            if &args[j + 1][..] != b"#" || is(a, b"by") {
                out.patterns.push(j + 1);
            }
            j += 1;
        } else {
            return Err(KeyError::Syntax);
        }
        j += 1;
    }
    Ok(out)
}

/// The STORE destination as Redis' `sortGetKeys` finds it: it skips LIMIT's, GET's and BY's
/// arguments but reads a STORE destination as a possible option again, so `STORE get STORE
/// x` names `get` there while SORT writes `x`.
fn sort_get_keys_store(args: &[Bytes]) -> Option<usize> {
    let mut store = None;
    let mut i = 2;
    while i < args.len() {
        let a = &args[i];
        if is(a, b"limit") {
            i += 2;
        } else if is(a, b"store") && i + 1 < args.len() {
            store = Some(i + 1);
        } else if is(a, b"get") || is(a, b"by") {
            i += 1;
        }
        i += 1;
    }
    store
}

/// GEORADIUS (`base` 6) / GEORADIUSBYMEMBER (`base` 5): the key, and the STORE or
/// STOREDIST destination, as `georadiusGeneric` reads them.
fn georadius(args: &[Bytes], base: usize) -> Result<Vec<usize>, KeyError> {
    let mut keys = vec![1];
    let mut stores = 0;
    let mut i = base;
    while i < args.len() {
        let more = i + 1 < args.len();
        let a = &args[i];
        if ["withdist", "withhash", "withcoord", "any", "asc", "desc"]
            .iter()
            .any(|w| is(a, w.as_bytes()))
        {
        } else if is(a, b"count") && more {
            if redis_int(&args[i + 1]).is_none_or(|n| n <= 0) {
                return Err(KeyError::BadKeyCount);
            }
            i += 1;
        } else if (is(a, b"store") || is(a, b"storedist")) && more {
            stores += 1;
            keys.truncate(1);
            keys.push(i + 1);
            i += 1;
        } else {
            return Err(KeyError::Syntax);
        }
        i += 1;
    }
    if stores > 1 {
        // Redis writes the last; its key specs name the first of each: ambiguous.
        return Err(KeyError::Ambiguous);
    }
    Ok(keys)
}

/// XREAD / XREADGROUP: the streams after the STREAMS option, as `xreadCommand` reads them,
/// refused in its words.
fn xread(args: &[Bytes], group: bool) -> Result<Vec<usize>, KeyError> {
    let mut i = 1;
    let mut grouped = false;
    while i < args.len() {
        let more = args.len() - i - 1;
        let a = &args[i];
        if (is(a, b"block") || is(a, b"count")) && more >= 1 {
            i += 1;
        } else if is(a, b"streams") && more >= 1 {
            let first = i + 1;
            if group && !grouped {
                return Err(KeyError::Refused("Missing GROUP option for XREADGROUP"));
            }
            if (args.len() - first) % 2 != 0 {
                // Redis names XREAD here for XREADGROUP too.
                return Err(KeyError::Refused(
                    "Unbalanced XREAD list of streams: for each stream key an ID or '$' must \
                     be specified.",
                ));
            }
            return Ok((first..first + (args.len() - first) / 2).collect());
        } else if is(a, b"group") && more >= 2 {
            if !group {
                return Err(KeyError::Refused(
                    "The GROUP option is only supported by XREADGROUP. You called XREAD instead.",
                ));
            }
            grouped = true;
            i += 2;
        } else if is(a, b"noack") {
            if !group {
                return Err(KeyError::Refused(
                    "The NOACK option is only supported by XREADGROUP. You called XREAD instead.",
                ));
            }
        } else {
            return Err(KeyError::Syntax);
        }
        i += 1;
    }
    Err(KeyError::Syntax)
}

/// Where a DEBUG subcommand's keys are.
#[derive(Clone, Copy)]
enum DebugKeys {
    None,
    /// The argument after the subcommand.
    One,
    /// Every argument after the subcommand.
    All,
}

/// DEBUG's subcommands (Redis 7.0's `debugCommand`, its HELP) whose keys respite can tell:
/// the command has no key specs, so Redis' COMMAND GETKEYS knows none. POPULATE names no key
/// but a prefix for the keys it makes, which `namespace` moves into the namespace.
/// Left out, so refused: PROTOCOL (its push and attribute replies), REPLICATE (it sends
/// replicas a command respite never sees), and any subcommand of a later Redis.
const DEBUG: &[(&str, DebugKeys)] = &[
    ("object", DebugKeys::One),
    ("sdslen", DebugKeys::One),
    ("listpack", DebugKeys::One),
    ("quicklist", DebugKeys::One),
    ("htstats-key", DebugKeys::One),
    ("digest-value", DebugKeys::All),
    ("populate", DebugKeys::None),
    ("help", DebugKeys::None),
    ("sleep", DebugKeys::None),
    ("reload", DebugKeys::None),
    ("loadaof", DebugKeys::None),
    ("digest", DebugKeys::None),
    ("htstats", DebugKeys::None),
    ("log", DebugKeys::None),
    ("error", DebugKeys::None),
    ("leak", DebugKeys::None),
    ("structsize", DebugKeys::None),
    ("stringmatch-test", DebugKeys::None),
    ("change-repl-id", DebugKeys::None),
    ("config-rewrite-force-all", DebugKeys::None),
    ("aof-flush-sleep", DebugKeys::None),
    ("set-active-expire", DebugKeys::None),
    ("set-skip-checksum-validation", DebugKeys::None),
    ("quicklist-packed-threshold", DebugKeys::None),
    ("mallctl", DebugKeys::None),
    ("mallctl-str", DebugKeys::None),
    ("client-eviction", DebugKeys::None),
    ("pause-cron", DebugKeys::None),
    ("replybuffer", DebugKeys::None),
    ("clusterlink", DebugKeys::None),
    ("drop-cluster-packet-filter", DebugKeys::None),
    ("assert", DebugKeys::None),
    ("panic", DebugKeys::None),
    ("oom", DebugKeys::None),
    ("segfault", DebugKeys::None),
    ("restart", DebugKeys::None),
    ("crash-and-recover", DebugKeys::None),
];

/// The keys of a DEBUG request; a subcommand [`DEBUG`] does not list cannot be told.
fn debug(args: &[Bytes]) -> Result<Vec<(usize, u16)>, KeyError> {
    let (_, keys) = DEBUG
        .iter()
        .find(|(name, _)| args.get(1).is_some_and(|a| is(a, name.as_bytes())))
        .ok_or(KeyError::Unknowable)?;
    let at = match keys {
        DebugKeys::None => 2..2,
        DebugKeys::One => 2..args.len().min(3),
        DebugKeys::All => 2..args.len(),
    };
    Ok(at.map(|i| (i, KS_RO | KS_ACCESS)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<Bytes> {
        s.split(' ').map(|a| Bytes::from(a.to_string())).collect()
    }

    #[test]
    fn debug_keys_by_subcommand() {
        let found = |s: &str| debug(&args(s));
        assert_eq!(found("DEBUG OBJECT k"), Ok(vec![(2, KS_RO | KS_ACCESS)]));
        assert_eq!(found("DEBUG object k x").map(|k| k.len()), Ok(1));
        let all = found("DEBUG DIGEST-VALUE a b").unwrap();
        assert_eq!(all.iter().map(|k| k.0).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(found("DEBUG SLEEP 0"), Ok(vec![]));
        for unknown in ["DEBUG PROTOCOL push", "DEBUG REPLICATE x", "DEBUG NOSUCH k"] {
            assert_eq!(found(unknown), Err(KeyError::Unknowable), "{unknown}");
        }
    }

    #[test]
    fn integers_as_redis_reads_them() {
        for (s, v) in [("0", Some(0)), ("12", Some(12)), ("-3", Some(-3))] {
            assert_eq!(redis_int(s.as_bytes()), v, "{s}");
        }
        for s in [
            "",
            "-",
            "+1",
            "01",
            "-0",
            " 1",
            "1 ",
            "1.0",
            "-01",
            "99999999999999999999",
        ] {
            assert_eq!(redis_int(s.as_bytes()), None, "{s}");
        }
    }

    #[test]
    fn sort_keywords_used_as_values_are_values() {
        let s = sort(&args("SORT l BY limit GET tenant:v:*"), false).unwrap();
        assert_eq!((s.store, s.patterns), (None, vec![3, 5]));
        let s = sort(&args("SORT l STORE a STORE b"), false).unwrap();
        assert_eq!(s.store, Some(5));
        let s = sort(&args("SORT l GET # BY nosort LIMIT 0 1 STORE get"), false).unwrap();
        assert_eq!((s.store, s.patterns), (Some(10), vec![5]));
        assert!(sort(&args("SORT l STORE x"), true).is_err());
        assert!(matches!(
            keys(b"sort", &args("SORT l STORE get STORE x")),
            Some(Err(KeyError::Ambiguous))
        ));
        assert!(sort(&args("SORT l LIMIT 0 store"), false).is_err());
        assert!(sort(&args("SORT l GET"), false).is_err());
    }

    #[test]
    fn georadius_refuses_a_second_store() {
        assert_eq!(
            georadius(&args("GEORADIUS g 0 0 1 km STORE d"), 6),
            Ok(vec![1, 7])
        );
        assert_eq!(
            georadius(&args("GEORADIUS g 0 0 1 km STORE a STOREDIST b"), 6),
            Err(KeyError::Ambiguous)
        );
        assert_eq!(
            georadius(&args("GEORADIUSBYMEMBER g store 1 km COUNT 3 ANY"), 5),
            Ok(vec![1])
        );
    }

    #[test]
    fn xread_skips_option_values() {
        assert_eq!(
            xread(&args("XREADGROUP GROUP streams c STREAMS k 0"), true),
            Ok(vec![5])
        );
        assert_eq!(
            xread(&args("XREAD COUNT 2 STREAMS a b 0 0"), false),
            Ok(vec![4, 5])
        );
        assert!(xread(&args("XREAD STREAMS a b 0"), false).is_err());
        assert!(xread(&args("XREADGROUP STREAMS a 0"), true).is_err());
    }
}
