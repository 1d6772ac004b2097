//! CLIENT TRACKING ... REDIRECT: RESP2 clients' invalidations, delivered to another
//! connection of the same tenant as `__redis__:invalidate` messages.

use std::time::Duration;

use super::{Pair, Sides};

/// The id each side gives `pair`'s connections (CLIENT ID).
async fn ids(p: &mut Pair) -> (String, String) {
    let id = |r: String| r.trim_start_matches(':').trim_end().to_string();
    let (redis, respite) = p.both(&["CLIENT", "ID"]).await;
    (id(redis), id(respite))
}

#[tokio::test]
async fn redirected_invalidations_reach_the_named_connection() {
    let sides = Sides::start().await;
    let (mut target, mut tracker, mut writer) =
        (sides.pair().await, sides.pair().await, sides.pair().await);
    let (redis_id, respite_id) = ids(&mut target).await;
    target
        .same_frames(&["SUBSCRIBE", "__redis__:invalidate"], 1)
        .await;
    // Each side names its own connection.
    let (a, b) = (
        tracker
            .redis
            .cmd(&["CLIENT", "TRACKING", "on", "REDIRECT", &redis_id])
            .await,
        tracker
            .respite
            .cmd(&["CLIENT", "TRACKING", "on", "REDIRECT", &respite_id])
            .await,
    );
    assert_eq!((a.as_str(), b.as_str()), ("+OK\r\n", "+OK\r\n"));
    let (a, b) = tracker.both(&["CLIENT", "GETREDIR"]).await;
    assert_eq!(a, format!(":{redis_id}\r\n"));
    assert_eq!(b, format!(":{respite_id}\r\n"));
    let (a, b) = tracker.both(&["CLIENT", "TRACKINGINFO"]).await;
    assert_eq!(
        b,
        a.replace(&format!(":{redis_id}\r\n"), &format!(":{respite_id}\r\n"))
    );
    writer.same(&["SET", "k", "v"]).await;
    tracker.same(&["GET", "k"]).await;
    writer.same(&["SET", "k", "w"]).await;
    // `message __redis__:invalidate [k]`, the key as the tenant names it.
    let m = target.next_same().await;
    assert!(
        m.contains("__redis__:invalidate") && m.ends_with("*1\r\n$1\r\nk\r\n"),
        "{m}"
    );
    // Read once, invalidated once.
    writer.same(&["SET", "k", "x"]).await;
    target.silent(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn redirect_names_only_the_tenant_own_connections() {
    let other = "[[tenants]]\nid = \"other\"\npassword = \"po\"\n";
    let sides = Sides::start_with(&[], other).await;
    let mut p = sides.pair().await;
    for line in [
        "CLIENT TRACKING on REDIRECT 99999",
        "CLIENT TRACKING on REDIRECT x",
        "CLIENT GETREDIR",
        "CLIENT TRACKING on",
        "CLIENT GETREDIR",
        "CLIENT TRACKING off",
    ] {
        p.same(&line.split(' ').collect::<Vec<_>>()).await;
    }
    // Another tenant's connection, subscribed as a target would be, does not exist here
    // (ids are counted per tenant: the third of "other" has no namesake in "suite").
    let mut strangers = Vec::new();
    for _ in 0..3 {
        strangers.push(sides.proxy.raw_as("other", "po").await);
    }
    let stranger = strangers.last_mut().unwrap();
    let id = stranger.cmd(&["CLIENT", "ID"]).await;
    let id = id.trim_start_matches(':').trim_end();
    assert_eq!(id, "3");
    stranger
        .send_cmd(&["SUBSCRIBE", "__redis__:invalidate"])
        .await;
    stranger.reply().await;
    assert_eq!(
        p.respite
            .cmd(&["CLIENT", "TRACKING", "on", "REDIRECT", id])
            .await,
        "-ERR The client ID you want redirect to does not exist\r\n"
    );
}

/// A target's pinned connection is closed when it lets it go, never handed to another
/// session: a tracker still redirecting to it reaches nobody, least of all another tenant
/// who took a pinned connection since.
#[tokio::test]
async fn a_released_target_is_never_reused() {
    let other = "[[tenants]]\nid = \"other\"\npassword = \"po\"\n";
    let sides = Sides::start_with(&[], other).await;
    let proxy = &sides.proxy;
    let mut target = proxy.raw().await;
    let id = target.cmd(&["CLIENT", "ID"]).await;
    let id = id.trim_start_matches(':').trim_end().to_string();
    target
        .send_cmd(&["SUBSCRIBE", "__redis__:invalidate"])
        .await;
    target.reply().await;
    let mut tracker = proxy.raw().await;
    assert_eq!(
        tracker
            .cmd(&["CLIENT", "TRACKING", "on", "REDIRECT", &id])
            .await,
        "+OK\r\n"
    );
    assert_eq!(tracker.cmd(&["GET", "k"]).await, "$-1\r\n");
    // The target lets its pinned connection go; another tenant pins one.
    target.send_cmd(&["UNSUBSCRIBE"]).await;
    target.reply().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut stranger = proxy.raw_as("other", "po").await;
    stranger.send_cmd(&["SUBSCRIBE", "news"]).await;
    stranger.reply().await;
    let mut writer = proxy.raw().await;
    assert_eq!(writer.cmd(&["SET", "k", "v"]).await, "+OK\r\n");
    assert_eq!(stranger.try_reply(Duration::from_millis(300)).await, None);
}
