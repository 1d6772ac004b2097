//! Pub/Sub: channels and patterns are namespaced, and messages carry the tenant's own names,
//! in RESP2 and RESP3.

use std::time::Duration;

use futures_util::StreamExt;

use crate::harness::*;

#[tokio::test]
async fn messages_stay_within_a_tenant_resp2() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, TENANTS).await;
    let mut sub_a = proxy.raw_as("a", "pa").await;
    let mut sub_b = proxy.raw_as("b", "pb").await;
    sub_a.send_cmd(&["SUBSCRIBE", "news", "other"]).await;
    assert_eq!(
        sub_a.reply().await,
        "*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n"
    );
    assert_eq!(
        sub_a.reply().await,
        "*3\r\n$9\r\nsubscribe\r\n$5\r\nother\r\n:2\r\n"
    );
    assert_eq!(
        sub_a.cmd(&["PSUBSCRIBE", "n*"]).await,
        "*3\r\n$10\r\npsubscribe\r\n$2\r\nn*\r\n:3\r\n"
    );
    assert_eq!(
        sub_b.cmd(&["SUBSCRIBE", "news"]).await,
        "*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n"
    );

    let mut pub_a = proxy.raw_as("a", "pa").await;
    let mut pub_b = proxy.raw_as("b", "pb").await;
    assert_eq!(
        pub_a
            .cmd(&["PUBSUB", "CHANNELS"])
            .await
            .matches('$')
            .count(),
        2
    );
    assert_eq!(
        pub_b.cmd(&["PUBSUB", "NUMSUB", "news", "other"]).await,
        "*4\r\n$4\r\nnews\r\n:1\r\n$5\r\nother\r\n:0\r\n"
    );
    assert_eq!(pub_a.cmd(&["PUBSUB", "NUMPAT"]).await, ":1\r\n");
    assert_eq!(pub_b.cmd(&["PUBSUB", "NUMPAT"]).await, ":0\r\n");
    // a's message reaches a's channel and pattern subscriptions, not b's.
    assert_eq!(pub_a.cmd(&["PUBLISH", "news", "hello-a"]).await, ":2\r\n");
    assert_eq!(
        sub_a.reply().await,
        "*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$7\r\nhello-a\r\n"
    );
    assert_eq!(
        sub_a.reply().await,
        "*4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$4\r\nnews\r\n$7\r\nhello-a\r\n"
    );
    assert_eq!(sub_b.try_reply(Duration::from_millis(200)).await, None);
    assert_eq!(pub_b.cmd(&["PUBLISH", "news", "hello-b"]).await, ":1\r\n");
    assert_eq!(
        sub_b.reply().await,
        "*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$7\r\nhello-b\r\n"
    );
    assert_eq!(sub_a.try_reply(Duration::from_millis(200)).await, None);

    // PING in subscribed mode, then UNSUBSCRIBE with no channels: one reply per channel.
    assert_eq!(sub_a.cmd(&["PING"]).await, "*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    sub_a.send_cmd(&["UNSUBSCRIBE"]).await;
    // Redis answers in its own (hash) order, counting down what remains (1 pattern).
    let got = [sub_a.reply().await, sub_a.reply().await];
    let names: Vec<&str> = got
        .iter()
        .map(|r| r.split("\r\n").nth(4).unwrap())
        .collect();
    assert!(
        names.contains(&"news") && names.contains(&"other"),
        "{got:?}"
    );
    assert!(
        got[0].ends_with(":2\r\n") && got[1].ends_with(":1\r\n"),
        "{got:?}"
    );
    assert_eq!(
        sub_a.cmd(&["PUNSUBSCRIBE"]).await,
        "*3\r\n$12\r\npunsubscribe\r\n$2\r\nn*\r\n:0\r\n"
    );
    // Out of subscribed mode: ordinary commands again.
    assert_eq!(sub_a.cmd(&["SET", "k", "v"]).await, "+OK\r\n");
    assert_eq!(pub_a.cmd(&["PUBSUB", "NUMPAT"]).await, ":0\r\n");
}

#[tokio::test]
async fn resp3_pushes_and_commands_interleave() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, TENANTS).await;
    let mut s = proxy.raw().await;
    s.send_cmd(&["HELLO", "3", "AUTH", "a", "pa"]).await;
    s.protocol = 3;
    s.reply().await;
    assert_eq!(
        s.cmd(&["SUBSCRIBE", "ch"]).await,
        ">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
    );
    let mut p = proxy.raw_as("a", "pa").await;
    assert_eq!(p.cmd(&["PUBLISH", "ch", "m1"]).await, ":1\r\n");
    // In RESP3 a subscribed connection runs ordinary commands too.
    s.send_cmd(&["SET", "k", "v"]).await;
    let mut got = vec![s.reply().await, s.reply().await];
    got.sort();
    assert_eq!(
        got,
        vec!["+OK\r\n", ">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nm1\r\n"]
    );
    assert_eq!(s.cmd(&["GET", "k"]).await, "$1\r\nv\r\n");
    assert_eq!(
        s.cmd(&["SSUBSCRIBE", "sh"]).await,
        ">3\r\n$10\r\nssubscribe\r\n$2\r\nsh\r\n:1\r\n"
    );
    assert_eq!(p.cmd(&["SPUBLISH", "sh", "m2"]).await, ":1\r\n");
    assert_eq!(
        s.reply().await,
        ">3\r\n$8\r\nsmessage\r\n$2\r\nsh\r\n$2\r\nm2\r\n"
    );
    let mut d = redis.direct().await;
    let chans: Vec<String> = q(&mut d, &["PUBSUB", "CHANNELS"]).await.unwrap();
    assert_eq!(chans, vec!["tenant:a:ch"]);
}

#[tokio::test]
async fn redis_crate_pubsub_client() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, TENANTS).await;
    let mut ps = proxy
        .redis_client("b", "pb")
        .get_async_pubsub()
        .await
        .unwrap();
    ps.subscribe("orders").await.unwrap();
    ps.psubscribe("ord*").await.unwrap();
    let mut a = proxy.client("a", "pa").await;
    let mut b = proxy.client("b", "pb").await;
    q::<i64>(&mut a, &["PUBLISH", "orders", "not-for-b"])
        .await
        .unwrap();
    q::<i64>(&mut b, &["PUBLISH", "orders", "for-b"])
        .await
        .unwrap();
    let mut stream = ps.on_message();
    let m1 = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap();
    let m2 = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap();
    for m in [&m1, &m2] {
        assert_eq!(m.get_channel_name(), "orders");
        assert_eq!(m.get_payload::<String>().unwrap(), "for-b");
    }
    assert!(m2.from_pattern() || m1.from_pattern());
    assert!(
        tokio::time::timeout(Duration::from_millis(200), stream.next())
            .await
            .is_err()
    );
}
