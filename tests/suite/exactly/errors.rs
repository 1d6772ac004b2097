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
