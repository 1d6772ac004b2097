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
