//! Before the login: respite requiring AUTH answers as Redis with a password does.

use crate::harness::{Proxy, Raw, Redis};

use super::Pair;

/// PING is refused before AUTH (a health check without the password must not look
/// healthy); unknown commands and wrong arities are told first, as Redis tells them.
#[tokio::test]
async fn before_auth_as_redis_with_a_password() {
    let redis = Redis::start_with(&["--requirepass", "pw"]);
    let proxy = Proxy::start_config(&format!(
        "[upstream]\nurl = \"redis://:pw@127.0.0.1:{}\"\n[[tenants]]\nid = \"suite\"\npassword = \"pw\"\n",
        redis.port
    ))
    .await;
    let mut p = Pair {
        redis: Raw::connect(format!("127.0.0.1:{}", redis.port).parse().unwrap()).await,
        respite: proxy.raw().await,
    };
    for line in [
        "PING",
        "PING x",
        "PING a b",
        "GET",
        "GET k",
        "NOSUCHCOMMAND x",
        "CLIENT NOSUCH",
        "CLIENT REPLY OFF",
        "HELLO 3",
        "HELLO",
        "HELLO 4",
        "HELLO x",
        "AUTH a b c",
        "AUTH wrong",
        "MODULE LIST",
        "RESET",
        "AUTH pw",
        "PING",
        "MODULE LIST",
    ] {
        p.same(&line.split(' ').collect::<Vec<_>>()).await;
    }
}
