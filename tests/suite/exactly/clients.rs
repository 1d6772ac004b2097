//! CLIENT LIST, INFO and KILL: respite answers them itself over the tenant's own
//! connections, with Redis' fields, filters and error texts.

use super::{Pair, Sides};

/// The `name=value` fields of a CLIENT INFO / LIST line, from its reply (bulk or verbatim).
fn fields(reply: &str) -> Vec<(String, String)> {
    let body = reply.split_once("\r\n").map_or(reply, |(_, b)| b);
    let body = body.strip_prefix("txt:").unwrap_or(body);
    let line = body.lines().next().unwrap_or_default();
    line.split(' ')
        .filter_map(|f| f.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn names(fields: &[(String, String)]) -> Vec<&str> {
    fields.iter().map(|(k, _)| k.as_str()).collect()
}

fn value<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    let found = fields.iter().find(|(k, _)| k == name);
    found.map_or("", |(_, v)| v.as_str())
}

/// The ids of a CLIENT LIST reply's lines, in order.
fn ids(reply: &str) -> Vec<String> {
    let body = reply.split_once("\r\n").map_or(reply, |(_, b)| b);
    body.lines()
        .filter_map(|l| l.strip_prefix("id="))
        .map(|l| l.split(' ').next().unwrap_or_default().to_string())
        .collect()
}

/// The values that say nothing of one connection's figures or of which server answers.
const SAME_VALUES: &[&str] = &[
    "name",
    "flags",
    "db",
    "sub",
    "psub",
    "ssub",
    "multi",
    "multi-mem",
    "obl",
    "oll",
    "omem",
    "events",
    "cmd",
    "redir",
    "resp",
];

/// Both sides' CLIENT INFO and their own line of CLIENT LIST: the same field names in the
/// same order, and the same values where they are not the connection's own figures.
async fn compare_info(p: &mut Pair, args: &[&str]) {
    let (redis, respite) = p.both(args).await;
    let (redis, respite) = (fields(&redis), fields(&respite));
    assert_eq!(names(&respite), names(&redis), "fields of {args:?}");
    for name in SAME_VALUES {
        assert_eq!(
            value(&respite, name),
            value(&redis, name),
            "{name} in {args:?}"
        );
    }
}

/// The fields of Redis 7.0 (no lib-name / lib-ver of 7.2), in its order, with values as
/// Redis gives them; in RESP2 and RESP3, with a name set.
#[tokio::test]
async fn info_and_list_have_redis_fields() {
    let sides = Sides::start().await;
    let mut p = sides.pair().await;
    compare_info(&mut p, &["CLIENT", "INFO"]).await;
    p.same(&["CLIENT", "SETNAME", "worker"]).await;
    compare_info(&mut p, &["CLIENT", "INFO"]).await;
    let (redis_id, respite_id) = p.both(&["CLIENT", "ID"]).await;
    let id = |r: &str| r.trim_start_matches(':').trim().to_string();
    let (redis, respite) = (
        p.redis.cmd(&["CLIENT", "LIST", "ID", &id(&redis_id)]).await,
        p.respite
            .cmd(&["CLIENT", "LIST", "ID", &id(&respite_id)])
            .await,
    );
    let (redis, respite) = (fields(&redis), fields(&respite));
    assert_eq!(names(&respite), names(&redis));
    assert_eq!(value(&respite, "cmd"), "client|list");
    p.hello(3).await;
    compare_info(&mut p, &["CLIENT", "INFO"]).await;
}

/// CLIENT LIST's filters as Redis reads them: TYPE or ID, never both; ids that are numbers
/// but no connection's are no error; an unknown type is.
#[tokio::test]
async fn list_filters() {
    let sides = Sides::start().await;
    let mut p = sides.pair().await;
    for args in [
        &["CLIENT", "LIST", "TYPE", "wrong_type"][..],
        &["CLIENT", "LIST", "TYPE", "normal", "ID", "1"],
        &["CLIENT", "LIST", "ID"],
        &["CLIENT", "LIST", "ID", "abc"],
        &["CLIENT", "LIST", "ID", "05"],
        &["CLIENT", "LIST", "ID", "0", "-1"],
        &["CLIENT", "LIST", "ID", "999999"],
        &["CLIENT", "LIST", "FOO"],
        &["CLIENT", "LIST", "TYPE"],
        &["CLIENT", "LIST", "TYPE", "master"],
        &["CLIENT", "LIST", "TYPE", "replica"],
        &["CLIENT", "LIST", "TYPE", "slave"],
        &["CLIENT", "LIST", "TYPE", "pubsub"],
    ] {
        p.same(args).await;
    }
}

/// CLIENT LIST ID answers in the order the ids were asked, once per time asked.
#[tokio::test]
async fn list_ids_in_the_order_asked() {
    let sides = Sides::start().await;
    let mut p = sides.pair().await;
    let mut q = sides.pair().await;
    let (a_redis, a_respite) = p.both(&["CLIENT", "ID"]).await;
    let (b_redis, b_respite) = q.both(&["CLIENT", "ID"]).await;
    let id = |r: &str| r.trim_start_matches(':').trim().to_string();
    for (side, a, b) in [
        (&mut p.redis, id(&a_redis), id(&b_redis)),
        (&mut p.respite, id(&a_respite), id(&b_respite)),
    ] {
        let list = side.cmd(&["CLIENT", "LIST", "ID", &b, &a, &b]).await;
        assert_eq!(ids(&list), [b.clone(), a.clone(), b.clone()], "{list}");
    }
}

/// Bad CLIENT KILL arguments get Redis' errors, in the order Redis finds them; filters that
/// match no connection answer 0, the old form an error.
#[tokio::test]
async fn kill_refuses_bad_arguments() {
    let sides = Sides::start().await;
    let mut p = sides.pair().await;
    for args in [
        &["CLIENT", "KILL", "ID", "0"][..],
        &["CLIENT", "KILL", "ID", "-1"],
        &["CLIENT", "KILL", "ID", "abc"],
        &["CLIENT", "KILL", "ID", "05"],
        &["CLIENT", "KILL", "TYPE", "wrong_type"],
        &["CLIENT", "KILL", "USER", "wrong_user"],
        &["CLIENT", "KILL", "SKIPME", "maybe"],
        &["CLIENT", "KILL", "FOO", "bar"],
        &["CLIENT", "KILL", "FOO", "bar", "ID", "0"],
        &["CLIENT", "KILL", "ID", "0", "SKIPME"],
        &["CLIENT", "KILL", "ID", "999999", "SKIPME"],
        &["CLIENT", "KILL", "TYPE", "wrong_type", "USER", "wrong_user"],
        // MAXAGE came with Redis 7.4.
        &["CLIENT", "KILL", "MAXAGE", "10"],
        &["CLIENT", "KILL"],
        &["CLIENT", "KILL", "1.2.3.4:5"],
        &["CLIENT", "KILL", "ID", "999999"],
        &["CLIENT", "KILL", "ADDR", "1.2.3.4:5"],
        &["CLIENT", "KILL", "LADDR", "1.2.3.4:5"],
        &["CLIENT", "KILL", "TYPE", "master"],
        &["CLIENT", "KILL", "TYPE", "replica"],
        &["CLIENT", "KILL", "TYPE", "pubsub"],
        &["CLIENT", "KILL", "ID", "999999", "SKIPME", "no"],
    ] {
        p.same(args).await;
    }
}

/// The filters pick among the tenant's connections as Redis' do: the last ID given counts,
/// USER is the tenant's own name, and no other tenant's user exists.
#[tokio::test]
async fn kill_filters_pick_the_tenants_connections() {
    let sides = Sides::start_with(&[], "[[tenants]]\nid = \"other\"\npassword = \"po\"\n").await;
    let mut me = sides.proxy.raw().await;
    let mut b = sides.proxy.raw().await;
    let mut c = sides.proxy.raw().await;
    let mut other = sides.proxy.raw_as("other", "po").await;
    let id = |r: String| r.trim_start_matches(':').trim().to_string();
    let b_id = id(b.cmd(&["CLIENT", "ID"]).await);
    let c_id = id(c.cmd(&["CLIENT", "ID"]).await);
    assert_eq!(
        me.cmd(&["CLIENT", "KILL", "USER", "other"]).await,
        "-ERR No such user 'other'\r\n"
    );
    assert_eq!(
        me.cmd(&["CLIENT", "KILL", "ID", &b_id, "ID", &c_id]).await,
        ":1\r\n"
    );
    assert!(c.closed().await);
    assert_eq!(b.cmd(&["PING"]).await, "+PONG\r\n");
    let b_addr = b.stream.local_addr().unwrap().to_string();
    assert_eq!(me.cmd(&["CLIENT", "KILL", &b_addr]).await, "+OK\r\n");
    assert!(b.closed().await);
    // Only the caller is left, and SKIPME spares it.
    assert_eq!(me.cmd(&["CLIENT", "KILL", "USER", "suite"]).await, ":0\r\n");
    assert_eq!(
        me.cmd(&["CLIENT", "KILL", "TYPE", "normal"]).await,
        ":0\r\n"
    );
    assert_eq!(other.cmd(&["PING"]).await, "+PONG\r\n");
    assert_eq!(
        me.cmd(&["CLIENT", "KILL", "USER", "suite", "SKIPME", "no"])
            .await,
        ":1\r\n"
    );
    assert!(me.closed().await);
    assert_eq!(other.cmd(&["PING"]).await, "+PONG\r\n");
}
