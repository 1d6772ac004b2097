//! CONFIG GET: Redis' real values of the settings clients depend on, nothing else.

use super::Sides;
use crate::harness::q;

/// Settings a tenant may read answer byte for byte as Redis; the rest are not there.
#[tokio::test]
async fn config_get_shows_what_clients_depend_on() {
    let sides = Sides::start_with(&["--notify-keyspace-events", "KEA"], "").await;
    let mut p = sides.pair().await;
    for line in [
        "CONFIG GET maxmemory-policy",
        "CONFIG GET MAXMEMORY",
        "CONFIG GET notify-keyspace-events databases timeout",
        "CONFIG GET hash-max-ziplist-entries",
        "CONFIG GET nosuchsetting",
        "CONFIG GET",
    ] {
        p.same(&line.split(' ').collect::<Vec<_>>()).await;
    }
    // A pattern: the same settings and values as Redis' (Redis orders them by a hash
    // table's walk, which differs between two asks).
    let (redis, respite) = p.both(&["CONFIG", "GET", "maxmemory*"]).await;
    assert_eq!(pairs(&respite), pairs(&redis));
    assert_eq!(pairs(&redis).len(), 5, "{redis}");
    // Redis would show these; a tenant sees nothing of them.
    for line in [
        "CONFIG GET requirepass",
        "CONFIG GET dir port bind",
        "CONFIG GET *pass*",
    ] {
        let args: Vec<&str> = line.split(' ').collect();
        let (redis, respite) = p.both(&args).await;
        assert_ne!(redis, "*0\r\n", "{line}");
        assert_eq!(respite, "*0\r\n", "{line}");
    }
    p.hello(3).await;
    p.same(&["CONFIG", "GET", "maxmemory-policy"]).await;
    assert_eq!(p.respite.cmd(&["CONFIG", "GET", "dir"]).await, "%0\r\n");
    // Inside MULTI too.
    for line in ["MULTI", "CONFIG GET maxmemory-policy", "EXEC"] {
        p.same(&line.split(' ').collect::<Vec<_>>()).await;
    }
}

/// Everything `CONFIG GET *` shows a tenant has Redis' value; nothing that locates or
/// unlocks Redis is among it; CONFIG SET, RESETSTAT and REWRITE stay refused.
#[tokio::test]
async fn config_get_all_is_the_tenant_view() {
    let sides = Sides::start().await;
    let mut direct = redis::Client::open(sides.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut c = sides
        .proxy
        .client_url(&format!("redis://{}/", sides.proxy.addr))
        .await;
    let seen: Vec<(String, String)> = q(&mut c, &["CONFIG", "GET", "*"]).await.unwrap();
    assert!(seen.len() > 20, "{seen:?}");
    for (name, value) in &seen {
        assert!(
            ![
                "dir",
                "port",
                "bind",
                "requirepass",
                "masterauth",
                "dbfilename",
                "logfile"
            ]
            .contains(&name.as_str()),
            "{name}"
        );
        let real: Vec<(String, String)> = q(&mut direct, &["CONFIG", "GET", name]).await.unwrap();
        assert_eq!(real, vec![(name.clone(), value.clone())]);
    }
    assert!(seen.iter().any(|(n, _)| n == "maxmemory-policy"));
    for args in [
        &["CONFIG", "SET", "maxmemory", "1"][..],
        &["CONFIG", "RESETSTAT"],
        &["CONFIG", "REWRITE"],
    ] {
        let e = q::<()>(&mut c, args).await.unwrap_err();
        assert_eq!(e.code(), Some("NOPERM"), "{args:?}: {e}");
    }
}

/// A flat RESP2 array of bulk strings as sorted (name, value) pairs.
fn pairs(reply: &str) -> Vec<(String, String)> {
    let strings: Vec<&str> = reply.split("\r\n").skip(1).skip(1).step_by(2).collect();
    let mut pairs: Vec<(String, String)> = strings
        .chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| (c[0].to_string(), c[1].to_string()))
        .collect();
    pairs.sort();
    pairs
}
