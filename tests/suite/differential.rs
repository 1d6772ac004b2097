//! Isolation proven against Redis itself: for every command in respite's table, argument lists
//! are generated from the command's own argument specification (`COMMAND DOCS`: tokens,
//! options, repeats, numkeys), with the keywords of other commands (`limit`, `store`, `by`,
//! `get`, `streams`, ...) thrown in as key names, values and stray options. Each is rewritten
//! as tenant `t` by respite's own stages, and a real redis-server is asked which keys the
//! rewritten command touches (`COMMAND GETKEYSANDFLAGS`). Every such key must be the tenant's
//! (`tenant:t:...`) or, only for reading, a shared one, and respite's own view of the keys
//! must be Redis' view.
//!
//! The generator is a proptest strategy sampled with a fixed seed, so CI runs the same cases
//! every time. `RESPITE_DIFF_CASES` (cases per command, default 200) and `RESPITE_DIFF_SEED`
//! make a longer run:
//!
//! ```text
//! RESPITE_DIFF_CASES=5000 cargo test --release --test suite differential -- --nocapture
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as RunnerConfig, RngAlgorithm, TestRng, TestRunner};
use redis::Value;
use respite::command::{self, grammar, CommandSpec, COMMANDS};
use respite::tenant::Tenant;
use respite::wire::{encode_marked, parse_request, Limits};

use crate::harness::*;

const SHARED: &str = "shared:market:";
const PREFIX: &str = "tenant:t:";

/// Words that are keywords somewhere in Redis' grammar, used wherever a name or value goes.
const WORDS: &[&str] = &[
    "k",
    "x",
    "limit",
    "store",
    "storedist",
    "by",
    "get",
    "streams",
    "count",
    "group",
    "block",
    "noack",
    "keys",
    "match",
    "type",
    "asc",
    "desc",
    "alpha",
    "nosort",
    "#",
    "*",
    "w_*",
    "h_*->f",
    "weights",
    "aggregate",
    "withscores",
    "left",
    "right",
    "any",
    "withdist",
    "db",
    "replace",
    "prefix",
    "bcast",
    "redirect",
    "0",
    "1",
    "2",
    "-1",
    "3",
    "shared:market:p:price",
    "respite:quota:{t}:used",
    "tenant:v:x",
    "{tag}k",
];

/// One argument of a command, as `COMMAND DOCS` describes it.
#[derive(Debug, Clone, Default)]
struct Arg {
    kind: String,
    token: Option<String>,
    optional: bool,
    multiple: bool,
    multiple_token: bool,
    children: Vec<Arg>,
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn items(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) => a,
        _ => &[],
    }
}

/// A RESP2 map (a flat array of key, value, ...).
fn map(v: &Value) -> BTreeMap<String, &Value> {
    items(v)
        .chunks(2)
        .filter_map(|p| Some((text(&p[0])?, p.get(1)?)))
        .collect()
}

fn parse_arg(v: &Value) -> Arg {
    let m = map(v);
    let flags: Vec<String> = m.get("flags").map_or(vec![], |f| {
        items(f).iter().filter_map(text).collect::<Vec<_>>()
    });
    Arg {
        kind: m.get("type").and_then(|t| text(t)).unwrap_or_default(),
        token: m.get("token").and_then(|t| text(t)),
        optional: flags.iter().any(|f| f == "optional"),
        multiple: flags.iter().any(|f| f == "multiple"),
        multiple_token: flags.iter().any(|f| f == "multiple_token"),
        children: m
            .get("arguments")
            .map_or(vec![], |a| items(a).iter().map(parse_arg).collect()),
    }
}

/// Every command's and subcommand's arguments, by full name (`get`, `client|list`).
fn docs(all: &Value) -> BTreeMap<String, Vec<Arg>> {
    let mut out = BTreeMap::new();
    fn walk(name: String, doc: &Value, out: &mut BTreeMap<String, Vec<Arg>>) {
        let m = map(doc);
        let args = m
            .get("arguments")
            .map_or(vec![], |a| items(a).iter().map(parse_arg).collect());
        out.insert(name.to_lowercase(), args);
        if let Some(subs) = m.get("subcommands") {
            for p in items(subs).chunks(2) {
                walk(text(&p[0]).unwrap(), &p[1], out);
            }
        }
    }
    for p in items(all).chunks(2) {
        walk(text(&p[0]).unwrap(), &p[1], &mut out);
    }
    out
}

fn word() -> BoxedStrategy<String> {
    prop_oneof![
        4 => proptest::sample::select(WORDS).prop_map(str::to_string),
        1 => "[a-z]{1,3}",
    ]
    .boxed()
}

fn number() -> BoxedStrategy<String> {
    prop_oneof![
        6 => (0..4i64).prop_map(|n| n.to_string()),
        1 => Just("-1".to_string()),
        1 => word(),
    ]
    .boxed()
}

/// Argument lists for one argument of the docs.
fn strategy(arg: &Arg) -> BoxedStrategy<Vec<String>> {
    let one = match arg.kind.as_str() {
        "pure-token" => Just(vec![]).boxed(),
        "integer" | "unix-time" => number().prop_map(|n| vec![n]).boxed(),
        "double" => prop_oneof![Just("1.5".to_string()), number()]
            .prop_map(|n| vec![n])
            .boxed(),
        "oneof" if !arg.children.is_empty() => {
            proptest::strategy::Union::new(arg.children.iter().map(strategy)).boxed()
        }
        "block" => {
            let parts: Vec<_> = arg.children.iter().map(strategy).collect();
            parts
                .prop_map(|ps| ps.into_iter().flatten().collect())
                .boxed()
        }
        _ => word().prop_map(|w| vec![w]).boxed(),
    };
    let token = arg.token.clone();
    let each_token = arg.multiple_token;
    let repeats = if arg.multiple { 1..4 } else { 1..2 };
    let repeated = proptest::collection::vec(one, repeats)
        .prop_map(move |vs| {
            let mut out = Vec::new();
            for (i, v) in vs.into_iter().enumerate() {
                // The token stands before each repeat only with multiple_token.
                if let Some(t) = token.as_ref().filter(|_| i == 0 || each_token) {
                    out.push(t.clone());
                }
                out.extend(v);
            }
            out
        })
        .boxed();
    if arg.optional {
        // Options are sometimes given twice: the last one wins in Redis.
        prop_oneof![
            2 => Just(vec![]),
            3 => repeated.clone(),
            1 => (repeated.clone(), repeated).prop_map(|(a, b)| [a, b].concat()),
        ]
        .boxed()
    } else {
        repeated
    }
}

/// A whole request: the name(s), the documented arguments, then sometimes stray words.
fn request(names: Vec<String>, args: &[Arg]) -> BoxedStrategy<Vec<String>> {
    let parts: Vec<_> = args.iter().map(strategy).collect();
    (
        parts,
        proptest::collection::vec(word(), 0..3),
        proptest::bool::weighted(0.15),
    )
        .prop_map(move |(ps, stray, add_stray)| {
            let mut out = names.clone();
            out.extend(ps.into_iter().flatten());
            if add_stray {
                out.extend(stray);
            }
            out
        })
        .boxed()
}

/// What happened to one generated request.
#[derive(Default, Debug)]
struct Tally {
    generated: u64,
    refused: u64,
    redis_keys: u64,
    with_keys: u64,
    /// Requests Redis found no keys in (a key count of 0): run to see Redis refuse them.
    refused_by_redis: Vec<Vec<Bytes>>,
    unjudged: BTreeMap<String, u64>,
}

fn tenant() -> Tenant {
    let mut t = Tenant::new("t", Default::default());
    t.shared = Arc::new([Bytes::from_static(SHARED.as_bytes())]);
    t
}

/// The request as respite would send it to Redis, with respite's view of its keys (as sent),
/// or `None` when respite refuses it.
fn through_respite(t: &Tenant, args: &[String]) -> Option<(Vec<Bytes>, Vec<Vec<u8>>)> {
    let args: Vec<Bytes> = args.iter().map(|a| Bytes::from(a.clone())).collect();
    let cmd = command::lookup(&args).ok()?;
    if !cmd.arity_ok(args.len()) {
        return None;
    }
    let keys = command::KeyMap::find(&cmd, &args);
    let facts = respite::upstream::Facts::default();
    respite::policy::check(&cmd, &args, keys.as_ref().ok(), t, &facts).ok()?;
    let keys = keys.ok()?;
    // Shard channels are NOT_KEY "keys": namespaced, but not keys to Redis.
    let positions: Vec<usize> = keys
        .iter()
        .filter(|&(_, flags)| flags & command::KS_NOT_KEY == 0)
        .map(|(i, _)| i)
        .collect();
    let fwd = respite::namespace::request(&cmd, args, &keys, t).ok()?;
    let mut out = BytesMut::new();
    encode_marked(&mut out, &fwd.args, &t.prefix, &fwd.prefixed);
    let limits = Limits {
        max_bulk_bytes: 1 << 20,
        max_array_len: 1 << 20,
    };
    let sent = parse_request(&mut out, &limits, true)
        .unwrap()
        .unwrap()
        .args;
    let mut keys: Vec<Vec<u8>> = positions.iter().map(|&i| sent[i].to_vec()).collect();
    keys.sort();
    keys.dedup();
    Some((sent, keys))
}

/// Checks one request Redis has judged; panics with the request on a breach.
fn judge(tally: &mut Tally, sent: &[Bytes], ours: &[Vec<u8>], redis: &Value) {
    let show = || {
        sent.iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut theirs: Vec<Vec<u8>> = Vec::new();
    if let Value::ServerError(e) = redis {
        // Redis cannot find keys in a request it would refuse to run (a zero key count,
        // too few arguments): respite's own keys must still all be the tenant's.
        for k in ours {
            assert!(
                k.starts_with(PREFIX.as_bytes()) || k.starts_with(SHARED.as_bytes()),
                "{}: respite sends {:?} outside the namespace",
                show(),
                String::from_utf8_lossy(k)
            );
        }
        let why = e.details().unwrap_or_default();
        if why.starts_with("The command has no key arguments")
            || (sent.len() == 1 && why.starts_with("wrong number of arguments"))
        {
            assert!(ours.is_empty(), "{}: respite found keys", show());
            return;
        }
        assert_eq!(why, "Invalid arguments specified for command", "{}", show());
        let name = String::from_utf8_lossy(&sent[0]).to_lowercase();
        *tally.unjudged.entry(name).or_default() += 1;
        tally.refused_by_redis.push(sent.to_vec());
        return;
    }
    if let Value::Array(keys) = redis {
        for k in keys {
            let kf = items(k);
            let key = match &kf[0] {
                Value::BulkString(b) => b.clone(),
                other => panic!("{}: odd GETKEYSANDFLAGS reply {other:?}", show()),
            };
            let flags: Vec<String> = items(&kf[1]).iter().filter_map(text).collect();
            let read_only = flags.iter().any(|f| f == "RO")
                && !flags
                    .iter()
                    .any(|f| ["RW", "OW", "RM"].contains(&f.as_str()));
            let writes_anyway = sent[0].eq_ignore_ascii_case(b"xreadgroup");
            let mine = key.starts_with(PREFIX.as_bytes());
            let shared_read = key.starts_with(SHARED.as_bytes()) && read_only && !writes_anyway;
            assert!(
                mine || shared_read,
                "{}: Redis would touch {:?} ({flags:?}) outside tenant t's namespace",
                show(),
                String::from_utf8_lossy(&key)
            );
            theirs.push(key);
        }
        tally.redis_keys += keys.len() as u64;
        tally.with_keys += u64::from(!keys.is_empty());
    }
    theirs.sort();
    theirs.dedup();
    if sent[0].eq_ignore_ascii_case(b"sort") || sent[0].eq_ignore_ascii_case(b"sort_ro") {
        let ro = sent[0].eq_ignore_ascii_case(b"sort_ro");
        let sort = grammar::sort(sent, ro).expect("respite forwarded a SORT it cannot parse");
        for i in sort.patterns {
            assert!(
                sent[i].starts_with(PREFIX.as_bytes()),
                "{}: a SORT pattern outside the namespace",
                show()
            );
        }
    }
    assert_eq!(
        ours.iter()
            .map(|k| String::from_utf8_lossy(k))
            .collect::<Vec<_>>(),
        theirs
            .iter()
            .map(|k| String::from_utf8_lossy(k))
            .collect::<Vec<_>>(),
        "{}: respite and Redis disagree on the keys",
        show()
    );
}

fn all_commands() -> Vec<(Vec<String>, &'static CommandSpec)> {
    let mut out = Vec::new();
    for c in COMMANDS {
        let name = String::from_utf8_lossy(c.name).into_owned();
        if c.subcommands.is_empty() {
            out.push((vec![name.clone()], c));
        }
        for s in c.subcommands {
            out.push((
                vec![name.clone(), String::from_utf8_lossy(s.name).into_owned()],
                s,
            ));
        }
    }
    out
}

/// A seeded proptest runner.
fn runner(seed: u64) -> TestRunner {
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    TestRunner::new_with_rng(
        RunnerConfig::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    )
}

/// Redis' COMMAND DOCS, by command (`container|sub` for subcommands).
async fn command_docs(
    direct: &mut redis::aio::MultiplexedConnection,
) -> BTreeMap<String, Vec<Arg>> {
    let all: Value = redis::cmd("COMMAND")
        .arg("DOCS")
        .query_async(direct)
        .await
        .unwrap();
    docs(&all)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test]
async fn every_key_redis_would_touch_is_the_tenants() {
    let redis = Redis::start();
    let mut direct = redis.direct().await;
    let docs = command_docs(&mut direct).await;
    let cases = env_u64("RESPITE_DIFF_CASES", 200);
    let seed = env_u64("RESPITE_DIFF_SEED", 12);
    let t = tenant();
    let mut tally = Tally::default();
    let mut runner = runner(seed);
    let commands = all_commands();
    assert!(commands.len() > 200, "only {} commands", commands.len());
    for (names, _) in &commands {
        let full = names.join("|");
        let args = docs
            .get(&full)
            .unwrap_or_else(|| panic!("no COMMAND DOCS for {full}"));
        let strat = request(names.clone(), args);
        let mut batch = Vec::new();
        for _ in 0..cases {
            let args = strat.new_tree(&mut runner).unwrap().current();
            tally.generated += 1;
            match through_respite(&t, &args) {
                Some(s) => batch.push(s),
                None => tally.refused += 1,
            }
        }
        for chunk in batch.chunks(500) {
            let mut pipe = redis::pipe();
            for (sent, _) in chunk {
                pipe.cmd("COMMAND").arg("GETKEYSANDFLAGS");
                for a in sent {
                    pipe.arg(&a[..]);
                }
                pipe.ignore_errors();
            }
            let replies: Vec<Value> = pipe.query_async(&mut direct).await.unwrap();
            for ((sent, ours), reply) in chunk.iter().zip(&replies) {
                judge(&mut tally, sent, ours, reply);
            }
        }
    }
    eprintln!(
        "differential: {} commands, {} requests generated, {} refused by respite, {} judged \
         by Redis ({} with keys, {} keys), none outside the namespace",
        commands.len(),
        tally.generated,
        tally.refused,
        tally.generated - tally.refused,
        tally.with_keys,
        tally.redis_keys
    );
    // Requests whose keys Redis cannot find: Redis refuses to run them too.
    for sent in std::mem::take(&mut tally.refused_by_redis) {
        let mut c = redis::cmd(std::str::from_utf8(&sent[0]).unwrap());
        for a in &sent[1..] {
            c.arg(&a[..]);
        }
        let r: redis::RedisResult<Value> = c.query_async(&mut direct).await;
        assert!(
            r.is_err(),
            "{sent:?}: Redis ran a request it found no keys in: {r:?}"
        );
    }
    eprintln!(
        "differential: requests Redis found no keys in and refused to run, by command: {:?}",
        tally.unjudged
    );
    assert!(tally.with_keys > tally.generated / 4, "{tally:?}");
}

/// The script prelude finds keys as respite does: for generated requests of every command a
/// script may call, the arguments the prelude's `redis.call` puts in the namespace (run in
/// Redis' own Lua, with a `redis` whose `call` hands back what it was given) are exactly
/// those respite's rewrite prefixes (which the test above holds to Redis' own key lookup).
/// SORT is left out: respite also moves its BY/GET patterns into the namespace, while in a
/// script Redis refuses them to a user without every key.
#[tokio::test]
async fn the_script_prelude_prefixes_what_respite_prefixes() {
    let redis = Redis::start();
    let mut direct = redis.direct().await;
    let docs = command_docs(&mut direct).await;
    let cases = env_u64("RESPITE_DIFF_CASES", 200) / 5;
    let mut runner = runner(env_u64("RESPITE_DIFF_SEED", 12));
    let t = tenant();
    let prelude = respite::script::Prelude::new(&t.shared);
    let echo = format!(
        "local shadow = ({})('{PREFIX}', {{call = function(...) return {{...}} end, \
         pcall = function(...) return {{...}} end, \
         error_reply = function(m) return {{err = m}} end}}, {{}}, {{declared = {{}}}}) \
         return shadow.call(unpack(ARGV))",
        prelude.core()
    );
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(&echo)
        .query_async(&mut direct)
        .await
        .unwrap();
    let (mut compared, mut with_keys) = (0, 0);
    for (names, spec) in all_commands() {
        let parent = (names.len() == 2).then(|| {
            command::lookup(&[Bytes::from(names[0].clone())])
                .unwrap()
                .spec
        });
        let cmd = command::Command { spec, parent };
        if !respite::policy::allowed_in_scripts(&cmd) || matches!(&names[0][..], "sort" | "sort_ro")
        {
            continue;
        }
        let strat = request(names.clone(), &docs[&names.join("|")]);
        let mut batch = Vec::new();
        for _ in 0..cases {
            let args = strat.new_tree(&mut runner).unwrap().current();
            if let Some((sent, _)) = through_respite(&t, &args) {
                batch.push((args, sent));
            }
        }
        if batch.is_empty() {
            continue;
        }
        let mut pipe = redis::pipe();
        for (args, _) in &batch {
            pipe.cmd("EVALSHA").arg(&sha).arg(0).arg(args);
        }
        let replies: Vec<Value> = pipe.ignore_errors().query_async(&mut direct).await.unwrap();
        for ((args, sent), reply) in batch.iter().zip(&replies) {
            let Value::Array(lua) = reply else {
                panic!("{args:?}: the prelude answered {reply:?}");
            };
            let lua: Vec<Vec<u8>> = lua
                .iter()
                .map(|v| match v {
                    Value::BulkString(b) => b.clone(),
                    other => panic!("{args:?}: {other:?}"),
                })
                .collect();
            let ours: Vec<&[u8]> = sent.iter().map(|b| &b[..]).collect();
            let theirs: Vec<&[u8]> = lua.iter().map(|b| &b[..]).collect();
            assert_eq!(theirs, ours, "{args:?}: the prelude and respite disagree");
            compared += 1;
            with_keys += usize::from(sent.iter().zip(args).any(|(s, a)| s[..] != *a.as_bytes()));
        }
    }
    eprintln!("prelude: {compared} requests compared, {with_keys} with keys in the namespace");
    assert!(
        compared > 3000 && with_keys > compared / 4,
        "{compared} {with_keys}"
    );
}
