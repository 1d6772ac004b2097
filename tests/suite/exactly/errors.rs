//! Error replies: the texts Redis gives for invalid arguments, not respite's own.

use super::Sides;

/// Key counts that are not numbers, negative, zero or too large get each command's own
/// text from Redis (not a generic integer or syntax error from respite's key finding).
#[tokio::test]
async fn key_counts() {
    let sides = Sides::start().await;
    let mut p = sides.pair().await;
    for args in [
        &["EVAL", "return 1", "-1"][..],
        &["EVAL", "return 1", "5", "k"],
        &["EVAL", "return 1", "x", "k"],
        &["EVALSHA", "e0e1f9fabfc9d4800c877a703b823ac0578ff8db", "-1"],
        &["EVAL_RO", "return 1", "2", "k"],
        &["FCALL", "f", "x"],
        &["FCALL", "f", "-1"],
        &["FCALL", "f", "3", "k"],
        &["FCALL_RO", "f", "3", "k"],
        &["LMPOP", "a", "k", "LEFT"],
        &["LMPOP", "0", "k", "LEFT"],
        &["LMPOP", "3", "k", "LEFT"],
        &["BLMPOP", "0", "-1", "k", "LEFT"],
        &["ZMPOP", "-1", "k", "MIN"],
        &["BZMPOP", "0", "x", "k", "MIN"],
        &["SINTERCARD", "a", "k"],
        &["SINTERCARD", "0", "k"],
        &["SINTERCARD", "5", "k"],
        &["ZUNION", "-1", "k"],
        &["ZUNION", "0", "k"],
        &["ZUNION", "3", "k"],
        &["ZINTER", "x", "k"],
        &["ZDIFF", "0", "k"],
        &["ZUNIONSTORE", "d", "0", "k"],
        &["ZINTERSTORE", "d", "-2", "k"],
        &["ZDIFFSTORE", "d", "x", "k"],
        &["ZINTERCARD", "0", "k"],
        &["ZINTERCARD", "x", "k"],
        &["XREAD", "STREAMS", "a", "b", "c"],
        &["XREAD", "COUNT", "x", "STREAMS", "a", "0"],
    ] {
        p.same(args).await;
    }
}

/// XREAD and XREADGROUP refuse their options in their own words.
#[tokio::test]
async fn xread_options() {
    let sides = Sides::start().await;
    let mut p = sides.pair().await;
    for line in [
        "XREAD STREAMS a b c",
        "XREADGROUP GROUP g c STREAMS a b c",
        "XREADGROUP GROUP g c COUNT 1 STREAMS a",
        "XREADGROUP COUNT 1 COUNT 1 STREAMS a 0",
        "XREADGROUP NOACK NOACK NOACK STREAMS a 0",
        "XREAD GROUP g c STREAMS a 0",
        "XREAD NOACK STREAMS a 0",
        "XREAD FOO STREAMS a 0",
        "XREAD COUNT x STREAMS a 0",
        "XREAD BLOCK x STREAMS a 0",
        "XREAD BLOCK -1 STREAMS a 0",
    ] {
        p.same(&line.split(' ').collect::<Vec<_>>()).await;
    }
}

/// Offsets Redis refuses get Redis' error, not a quota refusal for the bytes they would
/// reach; an offset Redis takes is still charged (-OOM past the quota).
#[tokio::test]
async fn offsets_redis_refuses_are_not_charged() {
    let sides = Sides::start().await;
    let mut p = sides.pair().await;
    for line in [
        "SETRANGE k 9223372036854775807 A",
        "SETRANGE k 536870912 A",
        "SETRANGE k 536870911 AB",
        "SETRANGE k -1 A",
        "SETRANGE k x A",
        "SETBIT k 9223372036854775807 1",
        "SETBIT k 4294967296 1",
        "SETBIT k -1 1",
        "SETBIT k 01 1",
        "BITFIELD k SET u8 9223372036854775807 1",
        "BITFIELD k SET u8 4294967296 1",
        "BITFIELD k SET u8 #536870912 1",
        "BITFIELD k INCRBY i8 x 1",
        "BITFIELD k GET u8 -1 SET u8 0 1",
        "BITFIELD k SET u8 #-1 1",
        "BITFIELD k SET u8 0 1 FOO",
    ] {
        p.same(&line.split(' ').collect::<Vec<_>>()).await;
    }
    // Within Redis' limits but past the 10 MB quota: charged and refused.
    let r = p.respite.cmd(&["SETRANGE", "k", "20000000", "A"]).await;
    assert!(r.starts_with("-OOM "), "{r}");
    let r = p
        .respite
        .cmd(&["BITFIELD", "k", "SET", "u8", "#20000000", "1"])
        .await;
    assert!(r.starts_with("-OOM "), "{r}");
}

/// Redis' errors that name a key or a prefix name it as the tenant does.
#[tokio::test]
async fn errors_name_keys_as_the_tenant_does() {
    let sides = Sides::start().await;
    let mut p = sides.pair().await;
    p.same(&["XREADGROUP", "GROUP", "g", "c", "STREAMS", "nokey", ">"])
        .await;
    p.same(&["EVAL", "return {KEYS[1],ARGV[1]}", "1", "a", "b"])
        .await;
    p.same(&[
        "EVAL",
        "return redis.call('xgroup', 'createconsumer', KEYS[1], 'g', 'c')",
        "1",
        "nokey",
    ])
    .await;
    p.hello(3).await;
    p.same(&[
        "CLIENT", "TRACKING", "on", "BCAST", "PREFIX", "FOO", "PREFIX", "FOOBAR",
    ])
    .await;
}

/// Inside MULTI, SAVE and SHUTDOWN are refused as Redis refuses them there (before any
/// permission), and the transaction is discarded.
#[tokio::test]
async fn no_multi_commands_inside_a_transaction() {
    let sides = Sides::start().await;
    let mut p = sides.pair().await;
    for line in ["MULTI", "SET a 1", "SAVE", "SHUTDOWN", "EXEC", "GET a"] {
        p.same(&line.split(' ').collect::<Vec<_>>()).await;
    }
}

/// INFO inside MULTI is answered at queue time, inside EXEC's reply, as Redis places it.
#[tokio::test]
async fn info_inside_a_transaction() {
    let sides = Sides::start().await;
    let mut p = sides.pair().await;
    for line in ["MULTI", "INFO keyspace", "GET nothing", "INFO KEYSPACE"] {
        p.same(&line.split(' ').collect::<Vec<_>>()).await;
    }
    // (Redis' own keyspace holds respite's bookkeeping: only the shape is compared.)
    let (redis, respite) = p.both(&["EXEC"]).await;
    assert!(redis.starts_with("*3\r\n$"), "{redis}");
    assert_eq!(
        respite,
        "*3\r\n$12\r\n# Keyspace\r\n\r\n$-1\r\n$12\r\n# Keyspace\r\n\r\n"
    );
    // Tenant-wide commands stay refused there, and the transaction is discarded.
    assert_eq!(p.respite.cmd(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(
        p.respite.cmd(&["DBSIZE"]).await,
        "-ERR respite does not run this command inside MULTI\r\n"
    );
    assert!(p.respite.cmd(&["EXEC"]).await.starts_with("-EXECABORT"));
}

/// Every command Redis lists, given short generated argument lists (none, a key, a key and
/// values, a negative number, too many): where either side answers an error, respite's
/// reply is Redis' byte for byte. Left out: commands that block, end or change the
/// connection, act on the whole server (respite refuses those with -NOPERM, by design) or
/// walk the keyspace in respite's own way; and the divergences named in `KNOWN`.
#[tokio::test]
async fn generated_errors_are_redis_errors() {
    const SKIP: &[&str] = &[
        "shutdown",
        "monitor",
        "subscribe",
        "psubscribe",
        "ssubscribe",
        "unsubscribe",
        "punsubscribe",
        "sunsubscribe",
        "sync",
        "psync",
        "debug",
        "quit",
        "reset",
        "multi",
        "exec",
        "discard",
        "watch",
        "unwatch",
        "client",
        "hello",
        "auth",
        "select",
        "failover",
        "blpop",
        "brpop",
        "blmove",
        "brpoplpush",
        "bzpopmin",
        "bzpopmax",
        "blmpop",
        "bzmpop",
        "xread",
        "xreadgroup",
        "wait",
        "readonly",
        "readwrite",
        "asking",
        "dbsize",
        "keys",
        "randomkey",
        "flushdb",
        "flushall",
        "info",
        "eval",
        "evalsha",
        "eval_ro",
        "evalsha_ro",
        "fcall",
        "fcall_ro",
        "script",
        "function",
        "restore",
        "restore-asking",
        "migrate",
        "pfdebug",
        "pfselftest",
        "lolwut",
    ];
    // (command, why): where respite answers otherwise, on purpose or not yet.
    const GRAMMAR_FIRST: &str =
        "a bad option with another error: respite's grammar reads the options first";
    const KNOWN: &[(&str, &str)] = &[
        ("georadius", GRAMMAR_FIRST),
        ("georadius_ro", GRAMMAR_FIRST),
        ("georadiusbymember", GRAMMAR_FIRST),
        ("georadiusbymember_ro", GRAMMAR_FIRST),
    ];
    let sides = Sides::start().await;
    let mut p = sides.pair().await;
    let list = p.redis.cmd(&["COMMAND", "LIST"]).await;
    let names: Vec<String> = list
        .split("\r\n")
        .filter(|l| !l.is_empty() && !l.starts_with(['*', '$']))
        .map(str::to_string)
        .collect();
    assert!(names.len() > 200, "{}", names.len());
    let mut compared = 0;
    for name in &names {
        let n = name.as_str();
        if SKIP.contains(&n) || KNOWN.iter().any(|(k, _)| *k == n) {
            continue;
        }
        for extra in [
            &[][..],
            &["k"],
            &["k", "x"],
            &["k", "x", "y"],
            &["k", "-1", "x"],
            &["k", "1", "2", "3", "4", "5"],
        ] {
            let mut args = vec![n];
            args.extend_from_slice(extra);
            let (redis, respite) = p.both(&args).await;
            if respite.starts_with("-NOPERM") {
                continue;
            }
            if redis.starts_with('-') || respite.starts_with('-') {
                assert_eq!(respite, redis, "{args:?}");
                compared += 1;
            }
        }
    }
    assert!(compared > 500, "{compared}");
}
