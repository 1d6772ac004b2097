//! Review 18: a stranger with a Redis client against today's new paths (keyspace
//! notifications, CLIENT TRACKING ... REDIRECT, CONFIG GET for tenants, errors with the
//! prefix stripped, PING/MODULE LIST/CLIENT/INFO). Each test is one attack; those that
//! fail show a hole, those that pass guard something that held.

use std::time::Duration;

use crate::harness::{Proxy, Raw, Redis};

/// How long a connection is given to receive what it must not.
const QUIET: Duration = Duration::from_millis(300);

/// Tenants `a` and `ab` (one's id a prefix of the other's), `c`, a publisher, and the
/// shared `shared:market:` keys.
fn tenants(extra: &str) -> String {
    format!(
        "[[tenants]]\nid = \"a\"\npassword = \"pa\"\n\
         [[tenants]]\nid = \"ab\"\npassword = \"pab\"\n\
         [[tenants]]\nid = \"c\"\npassword = \"pc\"\nallow_scripts = true\n\
         [[tenants]]\nid = \"pub\"\npassword = \"ppub\"\nrole = \"publisher\"\n\
         [shared]\nprefixes = [\"shared:market:\"]\n{extra}"
    )
}

async fn start() -> (Redis, Proxy) {
    let redis = Redis::start_with(&["--notify-keyspace-events", "KEA"]);
    let proxy = Proxy::start(&redis, &tenants("")).await;
    (redis, proxy)
}

async fn direct(redis: &Redis) -> Raw {
    Raw::connect(format!("127.0.0.1:{}", redis.port).parse().unwrap()).await
}

fn int(reply: &str) -> String {
    reply.trim_start_matches(':').trim_end().to_string()
}

/// Everything that arrives within `QUIET`.
async fn drain(r: &mut Raw) -> Vec<String> {
    let mut got = Vec::new();
    while let Some(f) = r.try_reply(QUIET).await {
        got.push(f);
    }
    got
}

/// Redis' ids of its clients whose CLIENT LIST line has `needle`.
async fn redis_ids(d: &mut Raw, needle: &str) -> Vec<String> {
    let list = d.cmd(&["CLIENT", "LIST"]).await;
    list.lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(|s| {
            s.trim_start_matches(|c: char| !c.is_ascii_digit())
                .to_string()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// 1. Keyspace notifications
// ---------------------------------------------------------------------------------------

/// Tenant `a` subscribed every way it can to keyspace and keyevent channels (RESP2 and
/// RESP3) hears nothing of `ab`'s keys (whose prefix `tenant:ab:` is not `tenant:a:`),
/// of shared keys a publisher writes, of respite's own keys, nor of forged messages
/// another tenant (or its script) publishes to channels named like Redis' notifications.
#[tokio::test]
async fn keyspace_notifications_stay_in_the_tenant() {
    let (redis, proxy) = start().await;
    for v in [2u8, 3] {
        let mut a = proxy.raw_as("a", "pa").await;
        if v == 3 {
            a.protocol = 3;
            assert!(a.cmd(&["HELLO", "3"]).await.starts_with('%'));
        }
        a.send_cmd(&[
            "SUBSCRIBE",
            "__keyevent@0__:set",
            "__keyevent@0__:del",
            "__keyevent@0__:expired",
            "__keyspace@0__:",
            "__keyspace@0__:b:k",
            "__keyevent@0__:",
        ])
        .await;
        for _ in 0..6 {
            a.reply().await;
        }
        a.send_cmd(&[
            "PSUBSCRIBE",
            "__keyevent@0__:*",
            "__keyspace@0__:*",
            "__key*",
            "*",
            "__keyspace@0__:[a-z]*",
            "__keyspace@0__:\\",
            "__keyevent@0__:*:*",
        ])
        .await;
        for _ in 0..7 {
            a.reply().await;
        }
        let mut ab = proxy.raw_as("ab", "pab").await;
        assert_eq!(ab.cmd(&["SET", "k", "secret-ab"]).await, "+OK\r\n");
        assert_eq!(ab.cmd(&["SET", "b:k", "x"]).await, "+OK\r\n");
        assert_eq!(ab.cmd(&["DEL", "k"]).await, ":1\r\n");
        assert_eq!(ab.cmd(&["SET", "e", "1", "PX", "1"]).await, "+OK\r\n");
        let mut publisher = proxy.raw_as("pub", "ppub").await;
        assert_eq!(
            publisher.cmd(&["SET", "shared:market:x", "1"]).await,
            "+OK\r\n"
        );
        // Forged notifications: another tenant publishes to their names, directly and
        // from a script.
        let mut c = proxy.raw_as("c", "pc").await;
        for ch in [
            "__keyevent@0__:set",
            "__keyspace@0__:k",
            "__keyspace@0__:tenant:a:k",
        ] {
            c.cmd(&["PUBLISH", ch, "tenant:a:forged"]).await;
        }
        c.cmd(&[
            "EVAL",
            "return redis.call('PUBLISH', '__keyevent@0__:set', 'tenant:a:forged')",
            "0",
        ])
        .await;
        // respite's own keys and Redis' own events on them.
        let mut d = direct(&redis).await;
        d.cmd(&["SET", "respite:probe", "1"]).await;
        d.cmd(&["SET", "tenant:abc:k", "1"]).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let got = drain(&mut a).await;
        assert!(
            got.is_empty(),
            "RESP{v}: tenant a heard others' activity: {got:?}"
        );
        // Its own key: heard, named as it names it.
        let mut a2 = proxy.raw_as("a", "pa").await;
        assert_eq!(a2.cmd(&["SET", "b:k", "mine"]).await, "+OK\r\n");
        let got = drain(&mut a).await;
        assert!(!got.is_empty(), "RESP{v}: own event missing");
        for m in &got {
            assert!(!m.contains("tenant:"), "RESP{v}: prefix shown: {m}");
        }
        a2.cmd(&["DEL", "b:k"]).await;
    }
}

/// PUBSUB NUMSUB / CHANNELS / NUMPAT of notification channels count only the tenant's
/// subscriptions (Redis' raw counts would tell one tenant another's subscribers).
#[tokio::test]
async fn pubsub_counts_of_notification_channels_are_the_tenant_own() {
    let (_redis, proxy) = start().await;
    let mut ab = proxy.raw_as("ab", "pab").await;
    ab.send_cmd(&["SUBSCRIBE", "__keyevent@0__:set", "__keyspace@0__:k"])
        .await;
    ab.reply().await;
    ab.reply().await;
    ab.send_cmd(&["PSUBSCRIBE", "__keyevent@0__:*"]).await;
    ab.reply().await;
    let mut a = proxy.raw_as("a", "pa").await;
    assert_eq!(
        a.cmd(&[
            "PUBSUB",
            "NUMSUB",
            "__keyevent@0__:set",
            "__keyspace@0__:k",
            "__redis__:invalidate"
        ])
        .await,
        "*6\r\n$18\r\n__keyevent@0__:set\r\n:0\r\n$16\r\n__keyspace@0__:k\r\n:0\r\n\
         $20\r\n__redis__:invalidate\r\n:0\r\n"
    );
    assert_eq!(a.cmd(&["PUBSUB", "CHANNELS"]).await, "*0\r\n");
    assert_eq!(a.cmd(&["PUBSUB", "CHANNELS", "__key*"]).await, "*0\r\n");
    assert_eq!(a.cmd(&["PUBSUB", "NUMPAT"]).await, ":0\r\n");
}

/// UNSUBSCRIBE / PUNSUBSCRIBE with raw names: what `a` unsubscribes is its own; `ab`'s
/// subscriptions to the same names keep their messages.
#[tokio::test]
async fn unsubscribing_notification_channels_touches_only_the_caller() {
    let (_redis, proxy) = start().await;
    let mut ab = proxy.raw_as("ab", "pab").await;
    ab.send_cmd(&["SUBSCRIBE", "__keyevent@0__:set"]).await;
    ab.reply().await;
    let mut a = proxy.raw_as("a", "pa").await;
    a.send_cmd(&["SUBSCRIBE", "__keyevent@0__:set"]).await;
    a.reply().await;
    a.send_cmd(&["UNSUBSCRIBE", "__keyevent@0__:set", "tenant:ab:x"])
        .await;
    let r1 = a.reply().await;
    let r2 = a.reply().await;
    assert!(
        r1.contains("__keyevent@0__:set") && r1.ends_with(":0\r\n"),
        "{r1}"
    );
    assert!(r2.contains("tenant:ab:x") && r2.ends_with(":0\r\n"), "{r2}");
    let mut w = proxy.raw_as("ab", "pab").await;
    w.cmd(&["SET", "k", "v"]).await;
    let m = ab.reply().await;
    assert!(m.ends_with("$1\r\nk\r\n"), "{m}");
}

// ---------------------------------------------------------------------------------------
// 2. CLIENT TRACKING ... REDIRECT
// ---------------------------------------------------------------------------------------

/// A tenant's own subscribed target, by respite's id; also the target connection.
async fn target(proxy: &Proxy, user: &str, pass: &str) -> (Raw, String) {
    let mut t = proxy.raw_as(user, pass).await;
    let id = int(&t.cmd(&["CLIENT", "ID"]).await);
    t.send_cmd(&["SUBSCRIBE", "__redis__:invalidate"]).await;
    t.reply().await;
    (t, id)
}

/// Once a hole: with two REDIRECTs only the last was translated; the first went to Redis as
/// the tenant wrote it, and Redis looks that id up before refusing the second REDIRECT. The
/// two errors differ, so any tenant could ask whether Redis has a client with any id: which
/// of other tenants' connections (and respite's own) are open, and when they close.
#[tokio::test]
async fn a_second_redirect_does_not_probe_redis_client_ids() {
    let (redis, proxy) = start().await;
    let (_t, own) = target(&proxy, "a", "pa").await;
    // Another tenant's pinned connection, and its id in Redis (which the attacker would
    // find by counting).
    let mut d = direct(&redis).await;
    let before = redis_ids(&mut d, "cmd=subscribe").await;
    let mut stranger = proxy.raw_as("ab", "pab").await;
    stranger.send_cmd(&["SUBSCRIBE", "news"]).await;
    stranger.reply().await;
    let after = redis_ids(&mut d, "cmd=subscribe").await;
    let theirs = after
        .into_iter()
        .find(|i| !before.contains(i))
        .expect("the stranger's pinned connection");
    let mut a = proxy.raw_as("a", "pa").await;
    let open = a
        .cmd(&[
            "CLIENT", "TRACKING", "on", "REDIRECT", &theirs, "REDIRECT", &own,
        ])
        .await;
    let none = a
        .cmd(&[
            "CLIENT", "TRACKING", "on", "REDIRECT", "987654", "REDIRECT", &own,
        ])
        .await;
    assert_eq!(
        open, none,
        "REDIRECT <id> REDIRECT <own> answers differently for an open Redis client \
         ({open:?}) and a missing one ({none:?})"
    );
    // And when the stranger leaves, the same probe tells that too.
    drop(stranger);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let gone = a
        .cmd(&[
            "CLIENT", "TRACKING", "on", "REDIRECT", &theirs, "REDIRECT", &own,
        ])
        .await;
    assert_eq!(
        open, gone,
        "the probe saw another tenant's connection close"
    );
}

/// Once a hole (small): a CLIENT TRACKING that Redis refused still made respite forget the
/// redirect it translates, so CLIENT TRACKINGINFO then showed Redis' own id of the target's
/// upstream connection (and GETREDIR said 0 while Redis still redirected).
#[tokio::test]
async fn trackinginfo_never_shows_redis_ids() {
    let (_redis, proxy) = start().await;
    let (_t, own) = target(&proxy, "a", "pa").await;
    let mut a = proxy.raw_as("a", "pa").await;
    assert_eq!(
        a.cmd(&["CLIENT", "TRACKING", "on", "REDIRECT", &own]).await,
        "+OK\r\n"
    );
    let info = a.cmd(&["CLIENT", "TRACKINGINFO"]).await;
    assert!(info.contains(&format!("redirect\r\n:{own}\r\n")), "{info}");
    // Redis refuses a switch to BCAST while tracking; respite drops its redirect anyway.
    let r = a.cmd(&["CLIENT", "TRACKING", "on", "BCAST"]).await;
    assert!(r.starts_with("-ERR"), "{r}");
    let info = a.cmd(&["CLIENT", "TRACKINGINFO"]).await;
    assert!(
        info.contains(&format!("redirect\r\n:{own}\r\n")),
        "TRACKINGINFO after a refused switch shows another id than the tenant's {own}: {info}"
    );
    assert_eq!(
        a.cmd(&["CLIENT", "GETREDIR"]).await,
        format!(":{own}\r\n"),
        "GETREDIR forgot a redirect Redis still has"
    );
}

/// A target that logs in as another tenant (a second AUTH), RESETs, or says HELLO 3 gets
/// none of the first tenant's invalidations afterwards; a tracker that logs in as
/// another tenant, or leaves, leaves no tracking on a connection another tenant pins.
#[tokio::test]
async fn redirected_invalidations_never_cross_a_tenant_switch() {
    let (_redis, proxy) = start().await;
    for how in ["auth", "hello-auth", "reset"] {
        // RESP2's subscribed mode refuses AUTH and HELLO (as Redis): a RESP3 target.
        let (mut t, own) = match how {
            "reset" => target(&proxy, "a", "pa").await,
            _ => {
                let mut t = proxy.raw_as("a", "pa").await;
                t.protocol = 3;
                assert!(t.cmd(&["HELLO", "3"]).await.starts_with('%'));
                let id = int(&t.cmd(&["CLIENT", "ID"]).await);
                t.cmd(&["SUBSCRIBE", "__redis__:invalidate"]).await;
                (t, id)
            }
        };
        let mut tracker = proxy.raw_as("a", "pa").await;
        assert_eq!(
            tracker
                .cmd(&["CLIENT", "TRACKING", "on", "REDIRECT", &own])
                .await,
            "+OK\r\n"
        );
        tracker.cmd(&["GET", "secret"]).await;
        match how {
            "auth" => assert_eq!(t.cmd(&["AUTH", "ab", "pab"]).await, "+OK\r\n"),
            "hello-auth" => {
                let r = t.cmd(&["HELLO", "3", "AUTH", "ab", "pab"]).await;
                assert!(r.starts_with('%'), "{r}");
            }
            _ => {
                assert_eq!(t.cmd(&["RESET"]).await, "+RESET\r\n");
                assert_eq!(t.cmd(&["AUTH", "ab", "pab"]).await, "+OK\r\n");
            }
        }
        // The new tenant subscribes on the same client connection (a new pinned one).
        t.send_cmd(&["SUBSCRIBE", "__redis__:invalidate"]).await;
        t.reply().await;
        let mut w = proxy.raw_as("a", "pa").await;
        w.cmd(&["SET", "secret", "v"]).await;
        let got = drain(&mut t).await;
        assert!(
            got.is_empty(),
            "{how}: tenant ab got a's invalidation: {got:?}"
        );
    }
    // The tracker's side: it leaves with tracking on; other tenants pin connections.
    let (mut t, own) = target(&proxy, "a", "pa").await;
    let mut tracker = proxy.raw_as("a", "pa").await;
    tracker
        .cmd(&["CLIENT", "TRACKING", "on", "REDIRECT", &own])
        .await;
    drop(tracker);
    let mut tracker2 = proxy.raw_as("a", "pa").await;
    tracker2
        .cmd(&["CLIENT", "TRACKING", "on", "REDIRECT", &own])
        .await;
    assert_eq!(tracker2.cmd(&["AUTH", "ab", "pab"]).await, "+OK\r\n");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut strangers = Vec::new();
    for _ in 0..4 {
        let mut s = proxy.raw_as("ab", "pab").await;
        assert_eq!(s.cmd(&["WATCH", "theirs"]).await, "+OK\r\n");
        assert_eq!(s.cmd(&["GET", "theirs"]).await, "$-1\r\n");
        strangers.push(s);
    }
    assert_eq!(tracker2.cmd(&["GET", "theirs"]).await, "$-1\r\n");
    let mut w = proxy.raw_as("ab", "pab").await;
    w.cmd(&["SET", "theirs", "v"]).await;
    let got = drain(&mut t).await;
    assert!(got.is_empty(), "tenant a got ab's invalidation: {got:?}");
}

/// RESP3 connections get `invalidate` pushes whether subscribed or not: one that never
/// subscribed to `__redis__:invalidate` (of the tenant or not) cannot be named, and a
/// subscribed RESP2 target of another tenant cannot either.
#[tokio::test]
async fn redirect_reaches_no_unsubscribed_or_foreign_connection() {
    let (_redis, proxy) = start().await;
    let mut r3 = proxy.raw_as("a", "pa").await;
    r3.protocol = 3;
    r3.cmd(&["HELLO", "3"]).await;
    let id = int(&r3.cmd(&["CLIENT", "ID"]).await);
    r3.cmd(&["SUBSCRIBE", "news"]).await;
    let mut tracker = proxy.raw_as("a", "pa").await;
    let r = tracker
        .cmd(&["CLIENT", "TRACKING", "on", "REDIRECT", &id])
        .await;
    assert!(r.starts_with("-"), "{r}");
    // Another tenant's subscribed target, with the same shown id as one of a's.
    let (_x, theirs) = target(&proxy, "ab", "pab").await;
    let r = tracker
        .cmd(&["CLIENT", "TRACKING", "on", "REDIRECT", &theirs, "BCAST"])
        .await;
    assert!(r.starts_with("-"), "{r}");
    let r = tracker
        .cmd(&["CLIENT", "TRACKING", "on", "REDIRECT", "0"])
        .await;
    assert!(r.starts_with("-"), "{r}");
    let r = tracker
        .cmd(&["CLIENT", "TRACKING", "on", "REDIRECT", "-1"])
        .await;
    assert!(r.starts_with("-"), "{r}");
}

// ---------------------------------------------------------------------------------------
// 3. CONFIG GET
// ---------------------------------------------------------------------------------------

/// Settings no tenant may read, whatever pattern, case, alias or wrapping asks for them.
const SECRET_SETTINGS: &[&str] = &[
    "requirepass",
    "masterauth",
    "masteruser",
    "dir",
    "dbfilename",
    "bind",
    "port",
    "logfile",
    "unixsocket",
    "aclfile",
    "pidfile",
    "replicaof",
    "slaveof",
    "rename-command",
    "tls-key-file",
    "enable-debug-command",
    "maxclients",
    "notify-keyspace-events-x",
];

#[tokio::test]
async fn config_get_shows_only_the_tenant_settings() {
    let (_redis, proxy) = start().await;
    let mut a = proxy.raw_as("c", "pc").await;
    let mut replies = Vec::new();
    for args in [
        &["CONFIG", "GET", "*"][..],
        &["CONFIG", "GET", "*", "*", "*"],
        &["CONFIG", "GET", "REQUIREPASS"],
        &["CONFIG", "GET", "RequirePass"],
        &["CONFIG", "GET", "requirepass\0"],
        &["CONFIG", "GET", "dir"],
        &["CONFIG", "GET", "d?r"],
        &["CONFIG", "GET", "[d]ir"],
        &["CONFIG", "GET", "\\dir"],
        &["CONFIG", "GET", "*pass*"],
        &["CONFIG", "GET", "*[^a]*"],
        &["CONFIG", "GET", "[a-z]*"],
        &["CONFIG", "GET", "slaveof"],
        &["CONFIG", "GET", "maxmemory", "dir"],
        &["CONFIG", "GET", "maxmemory*", "port"],
        &["CONFIG", "GET"],
        &["config", "get", "*", "bind"],
    ] {
        replies.push((args.join(" "), a.cmd(args).await));
    }
    // Inside MULTI.
    assert_eq!(a.cmd(&["MULTI"]).await, "+OK\r\n");
    a.cmd(&["CONFIG", "GET", "*"]).await;
    a.cmd(&["CONFIG", "GET", "dir"]).await;
    replies.push(("EXEC".into(), a.cmd(&["EXEC"]).await));
    // From a script: Redis refuses CONFIG there (noscript), and the tenant's user too.
    for script in [
        "return redis.call('config','get','*')",
        "return redis.pcall('CONFIG','GET','dir')",
        "return redis.call('Config','Get','requirepass')",
    ] {
        replies.push((script.into(), a.cmd(&["EVAL", script, "0"]).await));
    }
    for (asked, reply) in &replies {
        for secret in SECRET_SETTINGS {
            assert!(
                !reply.contains(&format!("\r\n{secret}\r\n")),
                "{asked}: {secret} in {reply:?}"
            );
        }
        assert!(!reply.contains("respite-no-such"), "{asked}: {reply}");
    }
    // CONFIG SET and friends stay refused.
    for args in [
        &["CONFIG", "SET", "maxmemory", "1"][..],
        &["CONFIG", "RESETSTAT"],
        &["CONFIG", "REWRITE"],
    ] {
        let r = a.cmd(args).await;
        assert!(r.starts_with("-NOPERM"), "{args:?}: {r}");
    }
}

// ---------------------------------------------------------------------------------------
// 4. Errors with the prefix stripped
// ---------------------------------------------------------------------------------------

/// Once a hole (small, an error that lied): the tenant's key ` tenant:a:s` (sent as
/// `tenant:a: tenant:a:s`) was named `' s'`: the prefix was cut after a space inside the name.
/// Errors naming keys lose the caller's prefix only; a key of the tenant named like
/// another tenant's prefix keeps its name, another tenant's prefix in the text is never
/// stripped (nor could it get there), and RESP3 errors stay one frame.
#[tokio::test]
async fn stripped_errors_name_only_the_tenant_keys() {
    let (_redis, proxy) = start().await;
    for v in [2u8, 3] {
        let mut a = proxy.raw_as("a", "pa").await;
        if v == 3 {
            a.protocol = 3;
            a.cmd(&["HELLO", "3"]).await;
        }
        a.cmd(&["DEL", "s", "tenant:ab:s", "tenant:a:s"]).await;
        for key in [
            "s",
            "tenant:ab:s",
            "tenant:a:s",
            " tenant:a:s",
            "'tenant:a:",
        ] {
            let r = a
                .cmd(&["XREADGROUP", "GROUP", "g", "c", "STREAMS", key, ">"])
                .await;
            assert!(r.starts_with('-'), "{r}");
            assert!(
                r.contains(&format!("'{key}'")),
                "RESP{v}: error for key {key:?} names another: {r:?}"
            );
            // One frame: the connection still answers in order.
            assert_eq!(a.cmd(&["PING"]).await, "+PONG\r\n");
        }
        // A script's error text that starts with the prefix: stripped, still one frame.
        let mut c = proxy.raw_as("c", "pc").await;
        let r = c
            .cmd(&[
                "EVAL",
                "return redis.error_reply('tenant:a:ERR x tenant:c:y')",
                "0",
            ])
            .await;
        assert!(r.starts_with('-') && r.ends_with("\r\n"), "{r}");
        assert!(r.contains("tenant:a:ERR"), "{r}");
        assert_eq!(c.cmd(&["PING"]).await, "+PONG\r\n");
    }
}

// ---------------------------------------------------------------------------------------
// 5. Before AUTH, MODULE LIST, CLIENT LIST/KILL, INFO
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn nothing_before_auth_and_nothing_of_others_after() {
    let (_redis, proxy) = start().await;
    let mut anon = proxy.raw().await;
    for args in [
        &["PING"][..],
        &["PING", "x"],
        &["GET", "k"],
        &["CLIENT", "LIST"],
        &["CONFIG", "GET", "*"],
        &["MODULE", "LIST"],
        &["INFO"],
        &["SUBSCRIBE", "__keyevent@0__:set"],
        &["PSUBSCRIBE", "*"],
    ] {
        let r = anon.cmd(args).await;
        assert!(r.starts_with("-NOAUTH"), "{args:?}: {r}");
    }
    assert!(anon
        .cmd(&["NOSUCHCMD"])
        .await
        .starts_with("-ERR unknown command"));
    // Others' connections are there; tenant a sees none of them.
    let mut others = Vec::new();
    for (u, p) in [("ab", "pab"), ("c", "pc")] {
        let mut o = proxy.raw_as(u, p).await;
        o.cmd(&["CLIENT", "SETNAME", "other-tenant-conn"]).await;
        others.push(o);
    }
    let mut a = proxy.raw_as("a", "pa").await;
    assert_eq!(a.cmd(&["MODULE", "LIST"]).await, "*0\r\n");
    let list = a.cmd(&["CLIENT", "LIST"]).await;
    assert!(
        !list.contains("other-tenant-conn") && !list.contains("user=ab"),
        "{list}"
    );
    assert_eq!(list.matches("id=").count(), 1, "{list}");
    for id in 1..6 {
        let r = a.cmd(&["CLIENT", "LIST", "ID", &id.to_string()]).await;
        assert!(!r.contains("other-tenant-conn"), "{r}");
    }
    // CLIENT KILL reaches none of them, by any filter, and tells nothing of who exists.
    for args in [
        &["CLIENT", "KILL", "USER", "ab"][..],
        &["CLIENT", "KILL", "USER", "nosuch"],
    ] {
        assert_eq!(
            a.cmd(args).await,
            format!("-ERR No such user '{}'\r\n", args[3])
        );
    }
    for args in [
        &["CLIENT", "KILL", "TYPE", "normal"][..],
        &["CLIENT", "KILL", "ID", "1"],
        &["CLIENT", "KILL", "ID", "2"],
        &["CLIENT", "KILL", "SKIPME", "yes"],
    ] {
        a.cmd(args).await;
    }
    for o in &mut others {
        assert_eq!(
            o.cmd(&["PING"]).await,
            "+PONG\r\n",
            "another tenant was killed"
        );
    }
    let info = a.cmd(&["INFO", "memory"]).await;
    for field in [
        "used_memory:",
        "used_memory_rss",
        "used_memory_peak",
        "mem_fragmentation",
    ] {
        assert!(!info.contains(&format!("\n{field}")), "{field} in {info}");
    }
    let info = a.cmd(&["INFO", "clients"]).await;
    assert!(info.contains("connected_clients:1\r\n"), "{info}");
    for field in ["blocked_clients", "pubsub_clients", "tracking_clients"] {
        assert!(!info.contains(field), "{field} in {info}");
    }
}

// ---------------------------------------------------------------------------------------
// Found on the way: a reply that looks like a push
// ---------------------------------------------------------------------------------------

// Once a hole: a RESP3 connection with a subscription still runs every command, and its
// replies are arrays (`*`), not pushes (`>`); respite classified any array starting with
// `message` as a push once subscribed. A list holding just `message` then reached
// `strip_push`, whose keyevent check took `elems.len() - 2` of a one-element frame: the
// session task panicked (its client saw the connection drop, its registry entry and
// pattern counts were never cleaned up). With three elements naming `__keyevent@0__:`
// the reply was dropped and every later reply answered the wrong request.
async fn subscribed_resp3(proxy: &Proxy) -> Raw {
    let mut a = proxy.raw_as("a", "pa").await;
    a.protocol = 3;
    assert!(a.cmd(&["HELLO", "3"]).await.starts_with('%'));
    a.cmd(&["SUBSCRIBE", "news"]).await;
    a
}

#[tokio::test]
async fn a_one_element_message_reply_does_not_kill_the_session() {
    let (_redis, proxy) = start().await;
    let mut a = subscribed_resp3(&proxy).await;
    assert_eq!(a.cmd(&["RPUSH", "l1", "message"]).await, ":1\r\n");
    a.send_cmd(&["LRANGE", "l1", "0", "-1"]).await;
    let reply = a.try_reply(Duration::from_secs(3)).await;
    // The tenant's CLIENT LIST shows no ghost of a session that died.
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut b = proxy.raw_as("a", "pa").await;
    let list = b.cmd(&["CLIENT", "LIST"]).await;
    assert_eq!(
        reply.as_deref(),
        Some("*1\r\n$7\r\nmessage\r\n"),
        "the session died on a one-element reply (CLIENT LIST after it: {list})"
    );
    assert_eq!(list.matches("id=").count(), 1, "{list}");
}

#[tokio::test]
async fn a_keyevent_looking_reply_is_not_dropped() {
    let (_redis, proxy) = start().await;
    let mut a = subscribed_resp3(&proxy).await;
    assert_eq!(
        a.cmd(&["RPUSH", "l3", "message", "__keyevent@0__:set", "x"])
            .await,
        ":3\r\n"
    );
    assert_eq!(
        a.cmd(&["LRANGE", "l3", "0", "-1"]).await,
        "*3\r\n$7\r\nmessage\r\n$18\r\n__keyevent@0__:set\r\n$1\r\nx\r\n",
        "a reply taken for a keyevent message"
    );
}
