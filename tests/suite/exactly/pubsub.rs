//! Pushes: pub/sub confirmations and messages under CLIENT REPLY OFF and SKIP, and the
//! invalidations of a tracking connection.

use std::time::Duration;

use super::Sides;

/// How long a side is given to send what it should not.
const QUIET: Duration = Duration::from_millis(300);

/// CLIENT REPLY OFF mutes replies, not pushes: every (un)subscribe confirmation and every
/// message still comes, while an error in place of confirmations (wrong arity) and PING's
/// reply (in subscribed RESP2 mode too) do not.
#[tokio::test]
async fn confirmations_under_reply_off() {
    let sides = Sides::start().await;
    for v in [2, 3] {
        let mut p = sides.pair().await;
        let mut publisher = sides.pair().await;
        p.hello(v).await;
        p.send(&["CLIENT", "REPLY", "OFF"]).await;
        // Nothing subscribed yet: one confirmation, with no channel.
        p.same_frames(&["UNSUBSCRIBE"], 1).await;
        p.same_frames(&["PUNSUBSCRIBE"], 1).await;
        p.same_frames(&["SUBSCRIBE", "ch", "ch2"], 2).await;
        p.send(&["SUBSCRIBE"]).await;
        p.send(&["PING"]).await;
        p.same_frames(&["PSUBSCRIBE", "p*"], 1).await;
        p.same_frames(&["SSUBSCRIBE", "s"], 1).await;
        publisher.same(&["PUBLISH", "ch", "hi"]).await;
        publisher.same(&["PUBLISH", "pa", "ho"]).await;
        p.next_same().await;
        p.next_same().await;
        p.same_frames(&["UNSUBSCRIBE", "ch", "ch2"], 2).await;
        p.same_frames(&["PUNSUBSCRIBE", "p*"], 1).await;
        p.same_frames(&["SUNSUBSCRIBE", "s"], 1).await;
        p.send(&["PING"]).await;
        p.silent(QUIET).await;
        // The first reply since OFF: nothing muted came out late.
        assert_eq!(p.same(&["CLIENT", "REPLY", "ON"]).await, "+OK\r\n");
        p.same(&["PING"]).await;
    }
}

/// CLIENT REPLY SKIP is spent on the next command even when that is a (un)subscribe, whose
/// confirmations still come: the command after it is answered.
#[tokio::test]
async fn skip_is_spent_on_a_subscribe() {
    let sides = Sides::start().await;
    for v in [2, 3] {
        let mut p = sides.pair().await;
        p.hello(v).await;
        p.send(&["CLIENT", "REPLY", "SKIP"]).await;
        p.same_frames(&["UNSUBSCRIBE"], 1).await;
        p.same(&["PING"]).await;
        for (subscribe, unsubscribe, frames) in [
            (
                &["SUBSCRIBE", "ch", "ch2"][..],
                &["UNSUBSCRIBE", "ch", "ch2"][..],
                2,
            ),
            (&["PSUBSCRIBE", "p*"], &["PUNSUBSCRIBE", "p*"], 1),
            (&["SSUBSCRIBE", "s"], &["SUNSUBSCRIBE", "s"], 1),
        ] {
            p.send(&["CLIENT", "REPLY", "SKIP"]).await;
            p.same_frames(subscribe, frames).await;
            p.same(&["PING"]).await;
            // RESP2's subscribed mode refuses CLIENT.
            if v == 3 {
                p.send(&["CLIENT", "REPLY", "SKIP"]).await;
            }
            p.same_frames(unsubscribe, frames).await;
            p.same(&["PING"]).await;
        }
        // An error in place of the confirmations is what SKIP mutes.
        p.send(&["CLIENT", "REPLY", "SKIP"]).await;
        p.send(&["SUBSCRIBE"]).await;
        assert_eq!(p.same(&["PING"]).await, "+PONG\r\n");
    }
}

/// respite's own reads for INFO keyspace, DBSIZE, KEYS and RANDOMKEY (PTTL of every key,
/// SCAN) do not make a tracking connection track the keys they read: a write by another
/// connection sends it nothing, as in Redis; a key it reads itself is still tracked.
#[tokio::test]
async fn own_reads_do_not_track_keys() {
    let sides = Sides::start().await;
    let mut w = sides.pair().await;
    w.same(&["SET", "k", "v1"]).await;
    w.same(&["SET", "t", "v1", "PX", "100000"]).await;
    let mut r = sides.pair().await;
    r.hello(3).await;
    r.same(&["CLIENT", "TRACKING", "ON"]).await;
    // Their replies differ (one Redis holds both sides' keys): what they leave behind is
    // compared.
    for args in [
        &["INFO", "keyspace"][..],
        &["DBSIZE"],
        &["KEYS", "*"],
        &["RANDOMKEY"],
    ] {
        r.both(args).await;
    }
    w.same(&["SET", "k", "v2"]).await;
    w.same(&["SET", "t", "v2"]).await;
    r.silent(QUIET).await;
    assert_eq!(r.same(&["GET", "k"]).await, "$2\r\nv2\r\n");
    w.same(&["SET", "k", "v3"]).await;
    r.next_same().await;
    r.silent(QUIET).await;
}

/// In RESP2 subscribed mode, respite's own commands are refused as Redis refuses every
/// command but the (un)subscribe ones, PING, QUIT and RESET.
#[tokio::test]
async fn resp2_subscribed_mode_refuses_local_commands() {
    let sides = Sides::start().await;
    let mut p = sides.pair().await;
    p.same_frames(&["SUBSCRIBE", "ch"], 1).await;
    for line in [
        "CLIENT REPLY ON",
        "CLIENT LIST",
        "CLIENT ID",
        "INFO",
        "DBSIZE",
        "KEYS *",
        "SELECT 0",
        "MODULE LIST",
        "EVAL return 1 0",
        "GET k",
        "AUTH x",
    ] {
        p.same(&line.split(' ').collect::<Vec<_>>()).await;
    }
    p.same(&["RESET"]).await;
    p.same(&["CLIENT", "REPLY", "ON"]).await;
}

/// Keyspace notifications: a tenant subscribed to `__keyspace@0__:` and `__keyevent@0__:`
/// channels and patterns gets the events of its own keys, named as it names them, byte for
/// byte what Redis sends a client of its own; another tenant's writes send it nothing.
#[tokio::test]
async fn keyspace_notifications_of_the_tenant_own_keys() {
    use crate::harness::{Proxy, Raw, Redis};
    let events = ["--notify-keyspace-events", "KEA"];
    // Two Redis: the direct side's events must not mix with the tenants'.
    let (direct, behind) = (Redis::start_with(&events), Redis::start_with(&events));
    let other = "[[tenants]]\nid = \"other\"\npassword = \"po\"\n";
    let proxy = Proxy::start(&behind, &format!("{}{other}", super::SIDECAR)).await;
    let redis_addr = format!("127.0.0.1:{}", direct.port).parse().unwrap();
    let mut p = super::Pair {
        redis: Raw::connect(redis_addr).await,
        respite: proxy.raw().await,
    };
    let mut w = super::Pair {
        redis: Raw::connect(redis_addr).await,
        respite: proxy.raw().await,
    };
    let mut stranger = proxy.raw_as("other", "po").await;
    for (args, n) in [
        (
            &["SUBSCRIBE", "__keyspace@0__:k", "__keyevent@0__:del"][..],
            2,
        ),
        (&["PSUBSCRIBE", "__keyspace@0__:*", "__keyevent@0__:*"], 2),
    ] {
        p.same_frames(args, n).await;
    }
    // Another tenant's writes, even to a key of the same name: nothing.
    assert_eq!(stranger.cmd(&["SET", "k", "1"]).await, "+OK\r\n");
    assert_eq!(stranger.cmd(&["DEL", "k"]).await, ":1\r\n");
    p.silent(Duration::from_millis(200)).await;
    w.same(&["SET", "k", "v"]).await;
    // __keyspace@0__:k (message, pmessage), __keyevent@0__:set (pmessage).
    for _ in 0..3 {
        p.next_same().await;
    }
    w.same(&["DEL", "k"]).await;
    // __keyspace@0__:k (message, pmessage), __keyevent@0__:del (message, pmessage).
    for _ in 0..4 {
        p.next_same().await;
    }
    p.silent(Duration::from_millis(200)).await;
    // UNSUBSCRIBE alone confirms in the order of Redis' hash table of channels, which the
    // names in it decide: the same confirmations, in either order.
    // (Each names a channel and the subscriptions left: compared apart.)
    p.send(&["UNSUBSCRIBE"]).await;
    let split = |frames: [String; 2]| {
        let mut names: Vec<String> = frames
            .iter()
            .map(|f| f.split("\r\n").nth(4).unwrap().to_string())
            .collect();
        names.sort();
        let counts: Vec<String> = frames
            .iter()
            .map(|f| f.split("\r\n").nth(5).unwrap().to_string())
            .collect();
        (names, counts)
    };
    let redis = split([p.redis.reply().await, p.redis.reply().await]);
    let respite = split([p.respite.reply().await, p.respite.reply().await]);
    assert_eq!(respite, redis);
    p.same_frames(&["PUNSUBSCRIBE", "__keyspace@0__:*"], 1)
        .await;
}
