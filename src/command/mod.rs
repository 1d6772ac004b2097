//! The command table: from a request's name to what Redis says about the command (arity,
//! flags, ACL categories) and where its keys are.
//!
//! The table is generated from a real redis-server by `scripts/gen-command-table.py` (see
//! `table.rs`), so key positions are Redis' own key specifications, not a hand-written list.
//! [`key_positions`] follows the same algorithm as Redis' `getKeysUsingKeySpecs`.

pub mod grammar;
mod spec;
#[rustfmt::skip]
#[allow(dead_code)]
pub mod table;

use bytes::Bytes;

pub use spec::{BeginSearch, CommandSpec, FindKeys, KeySpec};
pub use table::*;

/// What a request names, resolved against the table.
#[derive(Debug, Clone, Copy)]
pub struct Command {
    /// The command, or for a container (CLIENT, CONFIG, ...) its subcommand.
    pub spec: &'static CommandSpec,
    /// The container when `spec` is a subcommand.
    pub parent: Option<&'static CommandSpec>,
}

impl Command {
    pub fn has(&self, flag: u32) -> bool {
        self.spec.flags & flag != 0
    }

    pub fn in_category(&self, acl: u32) -> bool {
        self.spec.acl & acl != 0
    }

    /// (command, subcommand): `(b"get", None)`, `(b"client", Some(b"setname"))`.
    pub fn names(&self) -> (&'static [u8], Option<&'static [u8]>) {
        match self.parent {
            Some(p) => (p.name, Some(self.spec.name)),
            None => (self.spec.name, None),
        }
    }

    /// Redis' full name: `get`, or `client|setname` for a subcommand.
    pub fn full_name(&self) -> String {
        let name = String::from_utf8_lossy(self.spec.name);
        match self.parent {
            Some(p) => format!("{}|{}", String::from_utf8_lossy(p.name), name),
            None => name.into_owned(),
        }
    }

    /// The flags of the one key at argument 1, for the many commands whose only key spec
    /// says just that (GET, SET, HSET, LPUSH, INCR, ...): their keys need no spec walk.
    pub fn lone_key(&self) -> Option<u16> {
        match self.spec.key_specs {
            [KeySpec {
                flags,
                begin: BeginSearch::Index(1),
                find:
                    FindKeys::Range {
                        last_key: 0,
                        key_step: 1,
                        ..
                    },
            }] => Some(*flags),
            _ => None,
        }
    }

    /// Does it change keys its key specs call read-only? XREADGROUP creates consumers and
    /// moves entries into the group's pending list of a stream its spec says it only reads.
    pub fn writes_read_keys(&self) -> bool {
        self.parent.is_none() && self.spec.name == b"xreadgroup"
    }

    /// A write Redis does not flag `denyoom` that can still grow what a tenant holds: a
    /// rename's new name, SMOVE's member in its new set, XREADGROUP's consumer.
    pub fn grows_without_denyoom(&self) -> bool {
        self.parent.is_none()
            && matches!(
                self.spec.name,
                b"rename" | b"renamenx" | b"smove" | b"xreadgroup"
            )
    }

    /// Does the argument count satisfy the command's arity?
    pub fn arity_ok(&self, argc: usize) -> bool {
        let arity = self.spec.arity;
        if arity >= 0 {
            argc == arity as usize
        } else {
            argc >= arity.unsigned_abs() as usize
        }
    }
}

/// Why a request could not be resolved to a command.
#[derive(Debug, Clone, Copy)]
pub enum Unknown {
    Command,
    /// The container is known, its subcommand is not (`CLIENT FOO`).
    Subcommand(&'static CommandSpec),
}

/// Folds `name` to lowercase (as the table's names are) on the stack; `None` if it is longer
/// than any command name.
fn folded<'b>(name: &[u8], buf: &'b mut [u8; 32]) -> Option<&'b [u8]> {
    let folded = buf.get_mut(..name.len())?;
    for (d, s) in folded.iter_mut().zip(name) {
        *d = s.to_ascii_lowercase();
    }
    Some(folded)
}

/// A subcommand, by binary search of its container's (short) list.
fn find(list: &'static [CommandSpec], name: &[u8]) -> Option<&'static CommandSpec> {
    let mut buf = [0u8; 32];
    let folded = folded(name, &mut buf)?;
    list.binary_search_by(|c| c.name.cmp(folded))
        .ok()
        .map(|i| &list[i])
}

type Index =
    std::collections::HashMap<&'static [u8], &'static CommandSpec, foldhash::fast::FixedState>;

/// A top-level command, by hash: every request does this once, and a binary search of the
/// ~240 names costs 8 string comparisons (BENCHMARKS.md has what that cost).
fn find_command(name: &[u8]) -> Option<&'static CommandSpec> {
    static INDEX: std::sync::OnceLock<Index> = std::sync::OnceLock::new();
    let index = INDEX.get_or_init(|| COMMANDS.iter().map(|c| (c.name, c)).collect());
    let mut buf = [0u8; 32];
    index.get(folded(name, &mut buf)?).copied()
}

/// Resolves `args` (name first) against the table, subcommand included.
pub fn lookup(args: &[Bytes]) -> Result<Command, Unknown> {
    let spec = args
        .first()
        .and_then(|n| find_command(n))
        .ok_or(Unknown::Command)?;
    if spec.subcommands.is_empty() {
        return Ok(Command { spec, parent: None });
    }
    // A container needs its subcommand; with none, Redis answers with an arity error.
    let Some(sub) = args.get(1) else {
        return Ok(Command { spec, parent: None });
    };
    match find(spec.subcommands, sub) {
        Some(s) => Ok(Command {
            spec: s,
            parent: Some(spec),
        }),
        None => Err(Unknown::Subcommand(spec)),
    }
}

/// The request's keys cannot be found: Redis would answer with an error, or respite cannot
/// tell for sure which arguments are keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// A key count (or another number the grammar needs) is not an integer Redis accepts.
    BadKeyCount,
    /// Keys would lie past the arguments.
    OutOfRange,
    /// The command's own parser would refuse the arguments.
    Syntax,
    /// The command's own parser would refuse the arguments with this text (after `ERR `).
    Refused(&'static str),
    /// The command and its key specs would read different arguments as keys (a repeated
    /// option, a keyword used as a value): refused rather than guessed.
    Ambiguous,
    /// A spec Redis itself cannot follow (`BeginSearch::Unknown`).
    Unknowable,
}

/// Where one request's keys are and what it does to each: found once, when the request is
/// decided, and read by every later stage (policy, rewrite, quota, the shared cache), so
/// that no stage walks the key specs again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyMap {
    /// No keys.
    None,
    /// One key, at argument 1 (GET, SET, HSET, ...): no list to build.
    Lone([(usize, u16); 1]),
    /// Every key in spec order, with its spec's flags; an argument may stand twice.
    Many(Vec<(usize, u16)>),
}

impl KeyMap {
    /// The keys of `cmd` in `args`, as Redis finds them ([`for_each_key`]).
    pub fn find(cmd: &Command, args: &[Bytes]) -> Result<KeyMap, KeyError> {
        if let Some(flags) = cmd.lone_key() {
            return match args.len() {
                0 | 1 => Err(KeyError::OutOfRange),
                _ => Ok(KeyMap::Lone([(1, flags)])),
            };
        }
        let mut keys = Vec::new();
        for_each_key(cmd, args, |i, flags| keys.push((i, flags)))?;
        Ok(match keys.is_empty() {
            true => KeyMap::None,
            false => KeyMap::Many(keys),
        })
    }

    /// (argument index, flags) of every key, in spec order.
    pub fn iter(&self) -> std::iter::Copied<std::slice::Iter<'_, (usize, u16)>> {
        let keys: &[(usize, u16)] = match self {
            KeyMap::None => &[],
            KeyMap::Lone(key) => key,
            KeyMap::Many(keys) => keys,
        };
        keys.iter().copied()
    }
}

/// Pushes the argument index of every key of `cmd` in `args` onto `out`, in spec order, as
/// Redis' `getKeysUsingKeySpecs` does. A spec whose keyword is absent contributes nothing.
pub fn key_positions(cmd: &Command, args: &[Bytes], out: &mut Vec<usize>) -> Result<(), KeyError> {
    for_each_key(cmd, args, |i, _| out.push(i))
}

/// Calls `f` with the argument index of every key, in spec order, and its spec's flags
/// (`KS_RO`, `KS_RW`, `KS_OW`, ...): the keys the command will really use, found as Redis
/// finds them (see [`grammar`] for the commands key specs do not describe alone).
pub fn for_each_key(
    cmd: &Command,
    args: &[Bytes],
    mut f: impl FnMut(usize, u16),
) -> Result<(), KeyError> {
    if let Some(flags) = cmd.lone_key() {
        if args.len() < 2 {
            return Err(KeyError::OutOfRange);
        }
        f(1, flags);
        return Ok(());
    }
    let by_grammar = match cmd.parent {
        None => grammar::keys(cmd.spec.name, args),
        Some(_) => None,
    };
    match by_grammar {
        None => walk_key_specs(cmd, args, f),
        Some(Err(e)) => Err(e),
        Some(Ok(grammar::Found::Exact(keys))) => {
            keys.into_iter().for_each(|(i, flags)| f(i, flags));
            Ok(())
        }
        Some(Ok(grammar::Found::Confirm(mut used))) => {
            let mut walked = Vec::new();
            walk_key_specs(cmd, args, |i, flags| walked.push((i, flags)))?;
            let mut specs: Vec<usize> = walked.iter().map(|&(i, _)| i).collect();
            specs.sort_unstable();
            specs.dedup();
            used.sort_unstable();
            if specs != used {
                return Err(KeyError::Ambiguous);
            }
            walked.into_iter().for_each(|(i, flags)| f(i, flags));
            Ok(())
        }
    }
}

/// [`for_each_key`] by Redis' algorithm, spec by spec.
fn walk_key_specs(
    cmd: &Command,
    args: &[Bytes],
    mut f: impl FnMut(usize, u16),
) -> Result<(), KeyError> {
    let argc = args.len() as i64;
    for spec in cmd.spec.key_specs {
        let first = match spec.begin {
            BeginSearch::Index(i) => i as i64,
            BeginSearch::Keyword {
                keyword,
                start_from,
            } => {
                let found = if start_from > 0 {
                    (start_from as i64..argc)
                        .find(|&i| args[i as usize].eq_ignore_ascii_case(keyword))
                } else {
                    (1..argc + start_from as i64 + 1)
                        .rev()
                        .find(|&i| args[i as usize].eq_ignore_ascii_case(keyword))
                };
                match found {
                    Some(i) => i + 1,
                    None => continue,
                }
            }
            BeginSearch::Unknown => return Err(KeyError::Unknowable),
        };
        let (first, last, step) = match spec.find {
            FindKeys::Range {
                last_key,
                key_step,
                limit,
            } => {
                let last = if last_key >= 0 {
                    first + last_key as i64
                } else if limit == 0 {
                    argc + last_key as i64
                } else {
                    first + ((argc - first) / limit as i64 + last_key as i64)
                };
                (first, last, key_step as i64)
            }
            FindKeys::KeyNum {
                key_num_idx,
                first_key,
                key_step,
            } => {
                let idx = first + key_num_idx as i64;
                let n: i64 = args
                    .get(idx as usize)
                    .and_then(|a| grammar::redis_int(a))
                    .filter(|&n| n >= 0)
                    .ok_or(KeyError::BadKeyCount)?;
                let start = first + first_key as i64;
                (start, start + (n - 1) * key_step as i64, key_step as i64)
            }
            FindKeys::Unknown => return Err(KeyError::Unknowable),
        };
        if last < first {
            // e.g. EVAL with numkeys 0: no keys, not an error.
            continue;
        }
        if last >= argc || first >= argc || step <= 0 {
            return Err(KeyError::OutOfRange);
        }
        let mut i = first;
        while i <= last {
            f(i as usize, spec.flags);
            i += step;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<Bytes> {
        s.split(' ').map(|a| Bytes::from(a.to_string())).collect()
    }

    fn keys(s: &str) -> Result<Vec<usize>, KeyError> {
        let a = args(s);
        let cmd = lookup(&a).expect("known command");
        let mut out = Vec::new();
        key_positions(&cmd, &a, &mut out).map(|_| out)
    }

    #[test]
    fn the_lone_key_shortcut_agrees_with_the_key_specs_for_every_command() {
        let all = COMMANDS.iter().flat_map(|c| {
            std::iter::once((c, None)).chain(c.subcommands.iter().map(move |s| (s, Some(c))))
        });
        let mut lone = 0;
        for (spec, parent) in all {
            let cmd = Command { spec, parent };
            if cmd.lone_key().is_none() {
                continue;
            }
            lone += 1;
            for line in ["x k", "x k v", "x k v w"] {
                let (mut short, mut walked) = (Vec::new(), Vec::new());
                let a = for_each_key(&cmd, &args(line), |i, f| short.push((i, f)));
                let b = walk_key_specs(&cmd, &args(line), |i, f| walked.push((i, f)));
                assert_eq!((a, short), (b, walked), "{} {line}", cmd.full_name());
            }
        }
        assert!(lone > 100, "only {lone} commands take the shortcut");
    }

    #[test]
    fn table_is_sorted_for_binary_search() {
        assert!(COMMANDS.windows(2).all(|w| w[0].name < w[1].name));
        for c in COMMANDS {
            assert!(c.subcommands.windows(2).all(|w| w[0].name < w[1].name));
        }
    }

    #[test]
    fn lookup_is_case_insensitive_and_finds_subcommands() {
        let c = lookup(&args("ClIeNt SetName x")).unwrap();
        assert_eq!(c.full_name(), "client|setname");
        assert!(matches!(lookup(&args("nosuch")), Err(Unknown::Command)));
        assert!(matches!(
            lookup(&args("client nosuch")),
            Err(Unknown::Subcommand(_))
        ));
    }

    #[test]
    fn key_positions_follow_redis_key_specs() {
        assert_eq!(keys("GET k").unwrap(), vec![1]);
        assert_eq!(keys("MSET a 1 b 2").unwrap(), vec![1, 3]);
        assert_eq!(keys("MGET a b c").unwrap(), vec![1, 2, 3]);
        assert_eq!(keys("BLPOP a b 0").unwrap(), vec![1, 2]);
        assert_eq!(
            keys("ZUNIONSTORE d 2 a b WEIGHTS 1 2").unwrap(),
            vec![1, 3, 4]
        );
        assert_eq!(keys("XREAD COUNT 2 STREAMS s1 s2 0 0").unwrap(), vec![4, 5]);
        assert_eq!(keys("EVAL s 2 a b x").unwrap(), vec![3, 4]);
        assert_eq!(keys("EVAL s 0").unwrap(), Vec::<usize>::new());
        assert_eq!(keys("LMPOP 2 a b LEFT").unwrap(), vec![2, 3]);
        assert_eq!(keys("OBJECT ENCODING k").unwrap(), vec![2]);
        assert_eq!(keys("GEORADIUS g 0 0 1 km STORE d").unwrap(), vec![1, 7]);
        assert_eq!(keys("MIGRATE h 1 \"\" 0 5 KEYS a b").unwrap().len(), 3);
        assert_eq!(keys("EVAL s x").unwrap_err(), KeyError::BadKeyCount);
        assert_eq!(keys("EVAL s 3 a").unwrap_err(), KeyError::OutOfRange);
        assert_eq!(keys("SORT k BY w STORE d").unwrap(), vec![1, 5]);
        assert_eq!(keys("SORT k STORE a STORE b").unwrap(), vec![1, 5]);
        assert_eq!(
            keys("GEORADIUS g 0 0 1 km STORE a STORE b").unwrap_err(),
            KeyError::Ambiguous
        );
        assert_eq!(
            keys("XREADGROUP COUNT 1 GROUP g streams STREAMS k 0").unwrap_err(),
            KeyError::Ambiguous
        );
        assert_eq!(
            keys("XREADGROUP GROUP streams c STREAMS k 0").unwrap(),
            vec![5]
        );
        assert_eq!(keys("XREADGROUP GROUP g c STREAMS k 0").unwrap(), vec![5]);
    }
}
