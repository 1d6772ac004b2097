//! Rewrite: a request as the tenant wrote it becomes the request Redis runs, with every key,
//! channel and pattern moved under `tenant:<id>:`; alongside it, the [`Shape`] that tells
//! `reply` which names to move back out of the answer.
//!
//! Keys come from the request's key map (`command::KeyMap`: Redis' key specs, and the
//! commands' own grammar where the specs do not say). What is not a key is handled here by
//! name: pub/sub channels and patterns, SCAN/KEYS match patterns, CLIENT TRACKING prefixes,
//! SORT's BY/GET patterns. A last guard checks every key before the request leaves.
//!
//! Names are not copied here: the request keeps the tenant's own arguments, and [`Marks`]
//! says which of them go to Redis behind the prefix, which is written in front of them as
//! the request is encoded (`wire::encode_marked`). A key costs no allocation.

use bytes::Bytes;

use super::reply::{Shape, SubKind};
use crate::command::{self, Command, KeyError, KeyMap, CMD_BLOCKING};
use crate::error::Error;
use crate::tenant::Tenant;
use crate::wire::Marks;

/// A request ready for Redis: `args` as the tenant wrote them (plus any respite adds), the
/// `prefixed` ones to be sent as `tenant:<id>:<arg>`.
#[derive(Debug)]
pub struct Forward {
    pub args: Vec<Bytes>,
    pub prefixed: Marks,
    /// The marked arguments are channels (pub/sub), which go behind the tenant's prefix
    /// whatever database is selected (Redis' pub/sub has no databases); else keys, behind
    /// the selected database's.
    pub channels: bool,
    pub expect: Expect,
    /// May legitimately wait longer than `command_timeout_ms` (BLPOP 0, XREAD BLOCK, WAIT).
    pub blocking: bool,
    /// Cluster mode: the slot of the request's first key as Redis gets it, and whether the
    /// command only reads (a replica may serve it); set by the session, which knows the
    /// upstream is a cluster.
    pub slot: Option<u16>,
    pub read_only: bool,
}

/// What Redis answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// One reply, of this shape.
    Reply(Shape),
    /// (Un)subscribe confirmations, one per channel; `None` when the command names no channel
    /// (UNSUBSCRIBE alone answers once per current subscription).
    Confirm { kind: SubKind, count: Option<usize> },
}

/// The shape of replies that carry key names, by command.
pub(crate) fn reply_shape(name: &[u8]) -> Shape {
    match name {
        b"blpop" | b"brpop" | b"bzpopmin" | b"bzpopmax" | b"lmpop" | b"blmpop" | b"zmpop"
        | b"bzmpop" => Shape::FirstKey,
        b"xread" | b"xreadgroup" => Shape::Streams,
        _ => Shape::Plain,
    }
}

/// Rewrites a request the policy has allowed; `keys` is its key map.
pub fn request(
    cmd: &Command,
    mut args: Vec<Bytes>,
    keys: &KeyMap,
    tenant: &Tenant,
) -> Result<Forward, Error> {
    let mut marks = Marks::default();
    let name = cmd.spec.name;
    let blocking = cmd.has(CMD_BLOCKING) || (cmd.parent.is_none() && name == b"wait");
    let reply = Expect::Reply;
    // Set by the arms whose marked arguments are channels.
    let mut channels = false;
    // One dispatch on the name: most requests take the last arm.
    let expect = match (cmd.parent.map(|c| c.name), name) {
        (None, b"scan") => reply(scan_match(&mut args, 2, &mut marks)),
        (None, b"keys") => {
            // `keyspace` answers KEYS in SCAN steps (and refuses it inside MULTI); should one
            // reach Redis, it matches only the namespace.
            marks.set_from(1, args.len());
            reply(Shape::Keys)
        }
        (None, b"publish") => {
            channels = true;
            marks.set(1);
            reply(Shape::Plain)
        }
        (None, b"subscribe" | b"unsubscribe" | b"psubscribe" | b"punsubscribe") => {
            channels = true;
            for (i, channel) in args.iter_mut().enumerate().skip(1) {
                if let Some(named) = keyspace_channel(channel, tenant) {
                    *channel = named;
                } else if !channel.starts_with(super::KEYEVENT) && channel != super::INVALIDATE {
                    marks.set(i);
                }
            }
            confirms(
                &args,
                if name[0] == b'p' {
                    SubKind::Pattern
                } else {
                    SubKind::Channel
                },
            )
        }
        (None, b"ssubscribe" | b"sunsubscribe") => {
            channels = true;
            // Channels are never shared, whatever their name.
            mark_keys(&args, keys, tenant, false, &mut marks);
            confirms(&args, SubKind::Shard)
        }
        (Some(b"pubsub"), b"channels" | b"shardchannels") => {
            channels = true;
            if args.len() < 3 {
                args.push(Bytes::from_static(b"*"));
            }
            marks.set(2);
            reply(Shape::Keys)
        }
        (Some(b"pubsub"), b"numsub" | b"shardnumsub") => {
            channels = true;
            marks.set_from(2, args.len());
            reply(Shape::EveryOther)
        }
        (Some(b"client"), b"tracking") => {
            client_tracking(&mut args, &mut marks)?;
            reply(Shape::Plain)
        }
        (Some(b"client"), b"trackinginfo") => reply(Shape::TrackingInfo(Box::default())),
        (Some(b"client"), b"getredir") => reply(Shape::GetRedir(Box::default())),
        // An admin reads every setting, as an operator of Redis would.
        (Some(b"config"), b"get") if !tenant.admin => {
            config_get(&mut args);
            reply(Shape::Plain)
        }
        (None, b"debug") if args[1].eq_ignore_ascii_case(b"populate") => {
            debug_populate(&mut args, &mut marks);
            reply(Shape::Plain)
        }
        (None, b"sort" | b"sort_ro") => reply(sort(cmd, &args, keys, tenant, &mut marks)?),
        _ => {
            // SPUBLISH's shard channel is a "key" too, but channels are never shared.
            channels = name == b"spublish";
            mark_keys(&args, keys, tenant, !channels, &mut marks);
            reply(reply_shape(name))
        }
    };
    guard(cmd, &args, keys, &marks, tenant)?;
    Ok(Forward {
        args,
        prefixed: marks,
        channels,
        expect,
        blocking,
        slot: None,
        read_only: false,
    })
}

/// `__keyspace@<n>__:<key>` as Redis names it: database n's key is in database 0 behind
/// the tenant's prefix for n, so its events are on `__keyspace@0__:<prefix><key>` (`reply`
/// names it back). `None` for any other channel, and for a database the tenant has not:
/// then it is one of the tenant's channels, on which nothing is published.
fn keyspace_channel(channel: &[u8], tenant: &Tenant) -> Option<Bytes> {
    let rest = channel.strip_prefix(b"__keyspace@")?;
    let (db, digits) = crate::wire::database_number(rest)?;
    let key = rest[digits..].strip_prefix(b"__:")?;
    if db >= tenant.databases {
        return None;
    }
    Some(
        [super::KEYSPACE, &tenant.db_prefix(db)[..], key]
            .concat()
            .into(),
    )
}

/// The settings of Redis a tenant may read with CONFIG GET: those clients and libraries
/// depend on (job queues check `maxmemory-policy`, client caches `tracking-table-max-keys`,
/// RESTORE users `sanitize-dump-payload`), which reveal nothing of other tenants. Everything
/// else (addresses, files, passwords, replication) stays out of sight.
const TENANT_CONFIG: &[&str] = &[
    "maxmemory",
    "maxmemory-policy",
    "maxmemory-samples",
    "maxmemory-eviction-tenacity",
    "maxmemory-clients",
    "timeout",
    "databases",
    "notify-keyspace-events",
    "proto-max-bulk-len",
    "client-query-buffer-limit",
    "lua-time-limit",
    "busy-reply-threshold",
    "lfu-log-factor",
    "lfu-decay-time",
    "hash-max-listpack-entries",
    "hash-max-listpack-value",
    "hash-max-ziplist-entries",
    "hash-max-ziplist-value",
    "list-max-listpack-size",
    "list-max-ziplist-size",
    "list-compress-depth",
    "set-max-intset-entries",
    "zset-max-listpack-entries",
    "zset-max-listpack-value",
    "zset-max-ziplist-entries",
    "zset-max-ziplist-value",
    "stream-node-max-bytes",
    "stream-node-max-entries",
    "hll-sparse-max-bytes",
    "active-expire-effort",
    "lazyfree-lazy-eviction",
    "lazyfree-lazy-expire",
    "lazyfree-lazy-server-del",
    "lazyfree-lazy-user-del",
    "lazyfree-lazy-user-flush",
    "appendonly",
    "appendfsync",
    "save",
    "cluster-enabled",
    "replica-read-only",
    "slave-read-only",
    "tracking-table-max-keys",
    "sanitize-dump-payload",
];

/// A setting no Redis has: CONFIG GET of it answers nothing.
const NO_SETTING: &[u8] = b"respite-no-such-setting";

/// CONFIG GET asks Redis only for the [`TENANT_CONFIG`] settings the tenant's patterns
/// match (case-insensitively, as Redis matches them), so Redis answers with their real
/// values, in its own order, and nothing else. A name given exactly stays as written (Redis
/// echoes it so).
fn config_get(args: &mut Vec<Bytes>) {
    let mut names: Vec<Bytes> = Vec::new();
    for pattern in &args[2..] {
        let lower = pattern.to_ascii_lowercase();
        // Redis looks a name up directly unless it has one of these.
        let is_glob = lower.iter().any(|b| b"*?[".contains(b));
        for &name in TENANT_CONFIG {
            let matched = match is_glob {
                true => crate::wire::glob_match(&lower, name.as_bytes()),
                false => lower == name.as_bytes(),
            };
            if !matched {
                continue;
            }
            let name = match is_glob {
                true => Bytes::from_static(name.as_bytes()),
                false => pattern.clone(),
            };
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    if names.is_empty() {
        names.push(Bytes::from_static(NO_SETTING));
    }
    args.truncate(2);
    args.extend(names);
}

/// DEBUG POPULATE count [prefix] [size] makes keys `<prefix>:<n>` (`key:<n>` without one):
/// the prefix goes into the namespace, written out when the request leaves it out.
fn debug_populate(args: &mut Vec<Bytes>, marks: &mut Marks) {
    if args.len() == 3 {
        args.push(Bytes::from_static(b"key"));
    }
    if args.len() > 3 {
        marks.set(3);
    }
}

/// (Un)subscribe confirmations, one per channel named (or, with none, per subscription).
fn confirms(args: &[Bytes], kind: SubKind) -> Expect {
    Expect::Confirm {
        kind,
        count: (args.len() > 1).then(|| args.len() - 1),
    }
}

/// SORT's keys, and its BY and GET patterns: inside the namespace, whatever they say (the
/// substituted part always lands after the prefix).
fn sort(
    cmd: &Command,
    args: &[Bytes],
    keys: &KeyMap,
    tenant: &Tenant,
    marks: &mut Marks,
) -> Result<Shape, Error> {
    mark_keys(args, keys, tenant, true, marks);
    let sort = command::grammar::sort(args, cmd.spec.name == b"sort_ro")
        .map_err(|e| key_error(cmd, args, e))?;
    sort.patterns.into_iter().for_each(|i| marks.set(i));
    Ok(Shape::Plain)
}

/// Requests the namespace guard refused: each one is a bug in respite's rewriting.
pub static GUARD_REFUSALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The last check before a request leaves: every key it names goes to Redis behind the
/// tenant's prefix or is a shared key (whose prefixes `config` keeps apart from `tenant:` and
/// `respite:`). It holds whatever the branches above did; a key that fails it is a bug,
/// refused, logged and counted, never sent.
fn guard(
    cmd: &Command,
    args: &[Bytes],
    keys: &KeyMap,
    marks: &Marks,
    tenant: &Tenant,
) -> Result<(), Error> {
    let Some((stray, _)) = keys
        .iter()
        .find(|&(i, _)| !marks.has(i) && !tenant.is_shared(&args[i]))
    else {
        return Ok(());
    };
    GUARD_REFUSALS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::error!(
        tenant = %tenant.id,
        command = %cmd.full_name(),
        argument = stray,
        "bug: a key would leave the tenant's namespace; refused"
    );
    Err(Error::Isolation(cmd.full_name()))
}

/// Marks every key for the namespace, except (when `shared_ok`) shared keys, which have the
/// same name for every tenant. (A key in two specs is marked twice, to the same effect.)
fn mark_keys(args: &[Bytes], keys: &KeyMap, tenant: &Tenant, shared_ok: bool, marks: &mut Marks) {
    for (i, _) in keys.iter() {
        if !(shared_ok && tenant.is_shared(&args[i])) {
            marks.set(i);
        }
    }
}

/// The reply to a request whose keys cannot be found: Redis' own error where Redis would
/// refuse it too (a bad key count in each command's own words), its syntax error where only
/// respite cannot tell the keys apart.
pub fn key_error(cmd: &Command, args: &[Bytes], e: KeyError) -> Error {
    if let (KeyError::BadKeyCount | KeyError::OutOfRange, Some(refusal)) =
        (e, count_refusal(cmd, args))
    {
        return refusal;
    }
    match e {
        KeyError::BadKeyCount => Error::NotInteger,
        KeyError::OutOfRange | KeyError::Syntax | KeyError::Ambiguous => Error::Syntax,
        KeyError::Refused(text) => Error::Redis(format!("ERR {text}")),
        KeyError::Unknowable => Error::Unsupported(format!(
            "respite cannot tell where the keys of '{}' are in this form",
            cmd.full_name()
        )),
    }
}

/// How a command's own parser words a bad key count (Redis 7.0): not an integer, below its
/// least count, more keys than arguments. `None` in a column is Redis' generic error for it
/// (`value is not an integer or out of range`, `syntax error`).
struct CountWords {
    commands: &'static [&'static [u8]],
    /// Where the count is, after the command name.
    at: usize,
    not_integer: Option<&'static str>,
    least: i64,
    below: &'static str,
    too_many: Option<&'static str>,
}

const NEGATIVE: &str = "Number of keys can't be negative";
const MORE_THAN_ARGS: &str = "Number of keys can't be greater than number of args";
const AT_LEAST_ONE: &str = "numkeys should be greater than 0";

/// From Redis' `evalGenericCommand`, `fcallCommandGeneric`, `lmpopGenericCommand`,
/// `zsetChooseDiffAlgorithm`'s callers (`zunionInterDiffGenericCommand`) and
/// `sinterCardCommand`. ZUNION and its kin name themselves in the text (`{}`).
const COUNT_WORDS: &[CountWords] = &[
    CountWords {
        commands: &[b"eval", b"evalsha", b"eval_ro", b"evalsha_ro"],
        at: 2,
        not_integer: None,
        least: 0,
        below: NEGATIVE,
        too_many: Some(MORE_THAN_ARGS),
    },
    CountWords {
        commands: &[b"fcall", b"fcall_ro"],
        at: 2,
        not_integer: Some("Bad number of keys provided"),
        least: 0,
        below: NEGATIVE,
        too_many: Some(MORE_THAN_ARGS),
    },
    CountWords {
        commands: &[b"lmpop", b"zmpop"],
        at: 1,
        not_integer: Some(AT_LEAST_ONE),
        least: 1,
        below: AT_LEAST_ONE,
        too_many: None,
    },
    CountWords {
        commands: &[b"blmpop", b"bzmpop"],
        at: 2,
        not_integer: Some(AT_LEAST_ONE),
        least: 1,
        below: AT_LEAST_ONE,
        too_many: None,
    },
    CountWords {
        commands: &[b"sintercard"],
        at: 1,
        not_integer: Some(AT_LEAST_ONE),
        least: 1,
        below: AT_LEAST_ONE,
        too_many: Some(MORE_THAN_ARGS),
    },
    CountWords {
        commands: &[b"zunion", b"zinter", b"zdiff", b"zintercard"],
        at: 1,
        not_integer: None,
        least: 1,
        below: "at least 1 input key is needed for '{}' command",
        too_many: None,
    },
    CountWords {
        commands: &[b"zunionstore", b"zinterstore", b"zdiffstore"],
        at: 2,
        not_integer: None,
        least: 1,
        below: "at least 1 input key is needed for '{}' command",
        too_many: None,
    },
];

/// Redis' reply to `args` when their key count is what makes them invalid, by the table.
fn count_refusal(cmd: &Command, args: &[Bytes]) -> Option<Error> {
    if cmd.parent.is_some() {
        return None;
    }
    let words = COUNT_WORDS
        .iter()
        .find(|w| w.commands.contains(&cmd.spec.name))?;
    let redis = |text: &str| Error::Redis(format!("ERR {text}"));
    Some(
        match crate::command::grammar::redis_int(args.get(words.at)?) {
            None => words.not_integer.map_or(Error::NotInteger, redis),
            Some(n) if n < words.least => redis(
                &words
                    .below
                    .replace("{}", &String::from_utf8_lossy(cmd.spec.name)),
            ),
            Some(_) => words.too_many.map_or(Error::Syntax, redis),
        },
    )
}

/// The most keys one SCAN step may visit: a step walks every tenant's keys, all within one
/// Redis command. COUNT is only a hint in Redis, so a smaller one changes no answer.
const SCAN_COUNT_MAX: i64 = 10_000;

/// SCAN's MATCH pattern moves into the namespace; without one, the namespace is the pattern.
/// A COUNT above [`SCAN_COUNT_MAX`] is lowered to it.
fn scan_match(args: &mut Vec<Bytes>, options_from: usize, marks: &mut Marks) -> Shape {
    let mut found = false;
    let mut i = options_from;
    while i + 1 < args.len() {
        if args[i].eq_ignore_ascii_case(b"match") {
            marks.set(i + 1);
            found = true;
        }
        let count = args[i].eq_ignore_ascii_case(b"count");
        if count && command::grammar::redis_int(&args[i + 1]).is_some_and(|n| n > SCAN_COUNT_MAX) {
            args[i + 1] = Bytes::from(SCAN_COUNT_MAX.to_string());
        }
        i += 2;
    }
    if !found {
        args.push(Bytes::from_static(b"MATCH"));
        args.push(Bytes::from_static(b"*"));
        marks.set(args.len() - 1);
    }
    Shape::Scan
}

/// CLIENT TRACKING: PREFIX arguments move into the namespace, and BCAST without a prefix is
/// given the tenant's namespace, so that invalidations never name another tenant's keys.
/// Where CLIENT TRACKING's first REDIRECT names its client id, read as Redis reads the
/// options (a PREFIX's value is never an option), and whether another REDIRECT follows
/// (Redis refuses that, after looking up the first id).
pub fn tracking_redirect(args: &[Bytes]) -> Option<(usize, bool)> {
    let mut found: Option<(usize, bool)> = None;
    let mut i = 3;
    while i < args.len() {
        let a = &args[i];
        if a.eq_ignore_ascii_case(b"prefix") || a.eq_ignore_ascii_case(b"redirect") {
            if a.eq_ignore_ascii_case(b"redirect") && i + 1 < args.len() {
                found = match found {
                    None => Some((i + 1, false)),
                    Some((first, _)) => Some((first, true)),
                };
            }
            i += 1;
        }
        i += 1;
    }
    found
}

fn client_tracking(args: &mut Vec<Bytes>, marks: &mut Marks) -> Result<(), Error> {
    let mut bcast = false;
    let mut has_prefix = false;
    let mut i = 3;
    while i < args.len() {
        let a = args[i].to_ascii_lowercase();
        match a.as_slice() {
            b"bcast" => bcast = true,
            b"prefix" if i + 1 < args.len() => {
                marks.set(i + 1);
                has_prefix = true;
                i += 1;
            }
            // Its client id is the session's to translate (`tracking_redirect`).
            b"redirect" => i += 1,
            _ => {}
        }
        i += 1;
    }
    if bcast && !has_prefix && args[2].eq_ignore_ascii_case(b"on") {
        // The prefix alone: an empty argument behind it.
        args.push(Bytes::from_static(b"PREFIX"));
        args.push(Bytes::new());
        marks.set(args.len() - 1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::lookup;

    fn rw(line: &str) -> Forward {
        let args: Vec<Bytes> = line
            .split(' ')
            .map(|a| Bytes::from(a.to_string()))
            .collect();
        let cmd = lookup(&args).unwrap();
        let keys = KeyMap::find(&cmd, &args).unwrap();
        request(&cmd, args, &keys, &Tenant::new("a", Default::default())).unwrap()
    }

    /// The request as Redis gets it.
    fn line(f: &Forward) -> String {
        let mut out = bytes::BytesMut::new();
        crate::wire::encode_marked(&mut out, &f.args, b"tenant:a:", &f.prefixed);
        let limits = crate::wire::Limits {
            max_bulk_bytes: 1 << 20,
            max_array_len: 1 << 20,
        };
        let frame = crate::wire::parse_request(&mut out, &limits, true)
            .unwrap()
            .unwrap();
        frame
            .args
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn keys_move_into_the_namespace() {
        assert_eq!(line(&rw("SET k v")), "SET tenant:a:k v");
        assert_eq!(line(&rw("MSET a 1 b 2")), "MSET tenant:a:a 1 tenant:a:b 2");
        assert_eq!(
            line(&rw("ZUNIONSTORE d 2 x y WEIGHTS 1 2")),
            "ZUNIONSTORE tenant:a:d 2 tenant:a:x tenant:a:y WEIGHTS 1 2"
        );
        assert_eq!(line(&rw("EVAL s 1 k arg")), "EVAL s 1 tenant:a:k arg");
        assert_eq!(
            line(&rw("SORT k STORE d")),
            "SORT tenant:a:k STORE tenant:a:d"
        );
        assert_eq!(
            line(&rw("SORT l BY limit GET v_* GET # STORE x STORE y")),
            "SORT tenant:a:l BY tenant:a:limit GET tenant:a:v_* GET # STORE x STORE tenant:a:y"
        );
    }

    #[test]
    fn keys_past_the_64th_argument_move_too() {
        let pairs: Vec<String> = (0..70).map(|i| format!("k{i} v{i}")).collect();
        let expected: Vec<String> = (0..70).map(|i| format!("tenant:a:k{i} v{i}")).collect();
        assert_eq!(
            line(&rw(&format!("MSET {}", pairs.join(" ")))),
            format!("MSET {}", expected.join(" "))
        );
    }

    #[test]
    fn patterns_and_channels() {
        assert_eq!(line(&rw("SCAN 0")), "SCAN 0 MATCH tenant:a:*");
        assert_eq!(
            line(&rw("SCAN 0 MATCH u* COUNT 5")),
            "SCAN 0 MATCH tenant:a:u* COUNT 5"
        );
        assert_eq!(line(&rw("KEYS *")), "KEYS tenant:a:*");
        assert_eq!(
            line(&rw("SCAN 0 COUNT 1000000000")),
            "SCAN 0 COUNT 10000 MATCH tenant:a:*"
        );
        assert_eq!(line(&rw("PUBLISH c m")), "PUBLISH tenant:a:c m");
        let s = rw("SUBSCRIBE c d");
        assert_eq!(line(&s), "SUBSCRIBE tenant:a:c tenant:a:d");
        assert_eq!(
            s.expect,
            Expect::Confirm {
                kind: SubKind::Channel,
                count: Some(2)
            }
        );
        assert_eq!(line(&rw("PUBSUB CHANNELS")), "PUBSUB CHANNELS tenant:a:*");
        assert_eq!(line(&rw("SPUBLISH c m")), "SPUBLISH tenant:a:c m");
        assert_eq!(
            line(&rw("CLIENT TRACKING on BCAST")),
            "CLIENT TRACKING on BCAST PREFIX tenant:a:"
        );
    }

    #[test]
    fn channels_are_told_from_keys() {
        for line in [
            "PUBLISH c m",
            "SPUBLISH c m",
            "SUBSCRIBE c",
            "SSUBSCRIBE c",
            "PUNSUBSCRIBE p*",
            "PUBSUB NUMSUB c",
            "PUBSUB SHARDCHANNELS",
        ] {
            assert!(rw(line).channels, "{line}");
        }
        for line in [
            "SET k v",
            "SCAN 0",
            "CLIENT TRACKING on BCAST",
            "SORT k BY w*",
        ] {
            assert!(!rw(line).channels, "{line}");
        }
        // Database 2's keyspace channel, in database 0 behind database 2's prefix; a
        // database the tenant has not, or not written as Redis writes it: a channel of its.
        let tenant = Tenant::new("a", Default::default());
        let named = |c: &str| keyspace_channel(c.as_bytes(), &tenant);
        assert_eq!(
            named("__keyspace@2__:k").as_deref(),
            Some(&b"__keyspace@0__:tenant:a@2:k"[..])
        );
        assert_eq!(
            named("__keyspace@0__:k").as_deref(),
            Some(&b"__keyspace@0__:tenant:a:k"[..])
        );
        for other in [
            "__keyspace@16__:k",
            "__keyspace@02__:k",
            "__keyspace@*__:k",
            "x",
        ] {
            assert_eq!(named(other), None, "{other}");
        }
    }

    #[test]
    fn blocking_commands_are_marked() {
        assert!(rw("BLPOP q 0").blocking);
        assert!(rw("WAIT 0 0").blocking);
        assert!(!rw("GET k").blocking);
    }
}
