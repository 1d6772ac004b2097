//! respite in front of a real Redis Cluster (six redis-server processes on loopback, three
//! masters and three replicas): tenants see one plain Redis.

use std::time::{Duration, Instant};

use crate::harness::*;

/// respite in cluster mode in front of `cluster`.
async fn proxy(cluster: &Cluster, extra: &str) -> Proxy {
    Proxy::start_config(&format!(
        "[upstream]\nmode = \"cluster\"\nurl = \"{}\"\ncommand_timeout_ms = 3000\n\
         connect_timeout_ms = 500\n{TENANTS}{extra}",
        cluster.url()
    ))
    .await
}

/// respite in cluster mode for tenant `a` and `other` (password `p<other>`), scripts killed
/// past `script_ms`.
async fn script_proxy(cluster: &Cluster, command_ms: u64, script_ms: u64, other: &str) -> Proxy {
    Proxy::start_config(&format!(
        "[upstream]\nmode = \"cluster\"\nurl = \"{}\"\ncommand_timeout_ms = {command_ms}\n\
         [defaults]\nscript_timeout_ms = {script_ms}\n\
         [[tenants]]\nid = \"a\"\npassword = \"pa\"\n\
         [[tenants]]\nid = \"{other}\"\npassword = \"p{other}\"\n",
        cluster.url()
    ))
    .await
}

/// The slot of `tag`, its master, and another master to move it to.
fn moving(cluster: &Cluster, tag: &str) -> (u16, usize, usize) {
    let slot = keyslot(cluster, tag);
    let from = cluster.owner(slot);
    let to = cluster.masters().into_iter().find(|&m| m != from).unwrap();
    (slot, from, to)
}

/// Sends `commands` in one write (a pipeline).
async fn pipeline(c: &mut Raw, commands: &[Vec<&str>]) {
    let mut batch = bytes::BytesMut::new();
    for args in commands {
        respite::wire::encode_request(&mut batch, args.iter().map(|a| a.as_bytes()));
    }
    c.send(&batch).await;
}

/// GET of `k0` .. `k{n-1}`, pipelined: each answers `v<i>`, in order.
async fn pipelined_gets_answer_in_order(c: &mut Raw, n: usize) {
    let keys: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
    let commands: Vec<Vec<&str>> = keys.iter().map(|k| vec!["GET", k.as_str()]).collect();
    pipeline(c, &commands).await;
    for i in 0..n {
        let v = format!("v{i}");
        assert_eq!(c.reply().await, format!("${}\r\n{v}\r\n", v.len()));
    }
}

#[tokio::test]
async fn a_tenants_keys_spread_over_every_master_and_read_back_whole() {
    let cluster = Cluster::start();
    let p = proxy(&cluster, "").await;
    let mut a = p.raw_as("a", "pa").await;
    for i in 0..300 {
        let k = format!("k{i}");
        assert_eq!(a.cmd(&["SET", &k, &format!("v{i}")]).await, "+OK\r\n");
    }
    // Every master holds some of them, all under the tenant's prefix.
    for m in cluster.masters() {
        let keys = cluster.nodes[m].keys().await;
        assert!(keys.len() > 50, "master {m} holds {}", keys.len());
        assert!(keys.iter().all(|k| k.starts_with("tenant:a:k")), "{keys:?}");
    }
    assert_eq!(cluster.keys().await.len(), 300);
    // Pipelined reads come back in order whichever node answers.
    pipelined_gets_answer_in_order(&mut a, 300).await;
    // Multi-key commands across slots answer whole.
    assert_eq!(
        a.cmd(&["MGET", "k1", "k2", "nope", "k3"]).await,
        "*4\r\n$2\r\nv1\r\n$2\r\nv2\r\n$-1\r\n$2\r\nv3\r\n"
    );
    assert_eq!(a.cmd(&["EXISTS", "k1", "k2", "nope", "k1"]).await, ":3\r\n");
    // Keys of one slot go together, however they interleave; values come back in order.
    assert_eq!(
        a.cmd(&["MGET", "k1", "k2", "k1", "nope", "k3", "k2"]).await,
        "*6\r\n$2\r\nv1\r\n$2\r\nv2\r\n$2\r\nv1\r\n$-1\r\n$2\r\nv3\r\n$2\r\nv2\r\n"
    );
    // A huge MGET is one request per slot, not per key, and answers whole.
    let mut many = vec!["MGET".to_string()];
    many.extend((0..50_000).map(|i| format!("k{}", i % 300)));
    let many: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
    let reply = a.cmd(&many).await;
    assert!(
        reply.starts_with("*50000\r\n$2\r\nv0\r\n$2\r\nv1\r\n"),
        "{}",
        &reply[..40]
    );
    assert!(reply.ends_with("$4\r\nv199\r\n"));
    assert_eq!(
        a.cmd(&["MSET", "x1", "1", "x2", "2", "x3", "3"]).await,
        "+OK\r\n"
    );
    assert_eq!(a.cmd(&["DEL", "x1", "x2", "x3", "nope"]).await, ":3\r\n");
    assert_eq!(a.cmd(&["TOUCH", "k1", "k2"]).await, ":2\r\n");
    assert_eq!(a.cmd(&["UNLINK", "k1", "k2"]).await, ":2\r\n");
    // Anything else across slots is Redis' own CROSSSLOT.
    let crossslot = "-CROSSSLOT Keys in request don't hash to the same slot\r\n";
    assert_eq!(a.cmd(&["MSETNX", "y1", "1", "y2", "2"]).await, crossslot);
    assert_eq!(a.cmd(&["RENAME", "k3", "k4"]).await, crossslot);
    assert_eq!(a.cmd(&["SUNIONSTORE", "d", "s1", "s2"]).await, crossslot);
    // The same with one hash tag works.
    assert_eq!(a.cmd(&["MSETNX", "{u}1", "1", "{u}2", "2"]).await, ":1\r\n");
    assert_eq!(a.cmd(&["RENAME", "{u}1", "{u}3"]).await, "+OK\r\n");
    // Another tenant sees none of it.
    let mut b = p.raw_as("b", "pb").await;
    assert_eq!(b.cmd(&["GET", "k3"]).await, "$-1\r\n");
    assert_eq!(b.cmd(&["EXISTS", "k3", "k4", "k5"]).await, ":0\r\n");
}

#[tokio::test]
async fn transactions_stay_on_one_slot() {
    let cluster = Cluster::start();
    let p = proxy(&cluster, "").await;
    let mut a = p.raw_as("a", "pa").await;
    // `{tag}` keys in MULTI/EXEC.
    assert_eq!(a.cmd(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(a.cmd(&["SET", "{t}a", "1"]).await, "+QUEUED\r\n");
    assert_eq!(a.cmd(&["INCR", "{t}b"]).await, "+QUEUED\r\n");
    assert_eq!(a.cmd(&["EXEC"]).await, "*2\r\n+OK\r\n:1\r\n");
    // A transaction whose keys span slots: CROSSSLOT when queued, EXECABORT, nothing applied.
    assert_eq!(a.cmd(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(a.cmd(&["SET", "{t}c", "1"]).await, "+QUEUED\r\n");
    assert_eq!(
        a.cmd(&["SET", "other", "1"]).await,
        "-CROSSSLOT Keys in request don't hash to the same slot\r\n"
    );
    assert!(a.cmd(&["EXEC"]).await.starts_with("-EXECABORT"));
    assert_eq!(a.cmd(&["EXISTS", "{t}c", "other"]).await, ":0\r\n");
    // Commands without keys before the first with keys wait for it: every key's node works.
    for k in ["k1", "k2", "k3", "k4", "k5", "k6"] {
        assert_eq!(a.cmd(&["MULTI"]).await, "+OK\r\n");
        assert_eq!(a.cmd(&["PING"]).await, "+QUEUED\r\n");
        assert_eq!(a.cmd(&["SET", k, "1"]).await, "+QUEUED\r\n");
        assert_eq!(a.cmd(&["ECHO", "e"]).await, "+QUEUED\r\n");
        assert_eq!(a.cmd(&["EXEC"]).await, "*3\r\n+PONG\r\n+OK\r\n$1\r\ne\r\n");
    }
    // ... and a transaction of them alone runs on any master.
    assert_eq!(a.cmd(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(a.cmd(&["PING"]).await, "+QUEUED\r\n");
    assert_eq!(a.cmd(&["ECHO", "x"]).await, "+QUEUED\r\n");
    assert_eq!(a.cmd(&["EXEC"]).await, "*2\r\n+PONG\r\n$1\r\nx\r\n");
    // WATCH keeps the transaction on its key's slot.
    assert_eq!(a.cmd(&["WATCH", "{t}a"]).await, "+OK\r\n");
    assert_eq!(a.cmd(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(
        a.cmd(&["SET", "other", "1"]).await,
        "-CROSSSLOT Keys in request don't hash to the same slot\r\n"
    );
    assert!(a.cmd(&["EXEC"]).await.starts_with("-EXECABORT"));
    // Empty transactions and DISCARD.
    assert_eq!(a.cmd(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(a.cmd(&["EXEC"]).await, "*0\r\n");
    assert_eq!(a.cmd(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(a.cmd(&["SET", "{t}d", "1"]).await, "+QUEUED\r\n");
    assert_eq!(a.cmd(&["DISCARD"]).await, "+OK\r\n");
    assert_eq!(a.cmd(&["EXISTS", "{t}d"]).await, ":0\r\n");
    // WATCH: a change by another client aborts the transaction.
    assert_eq!(a.cmd(&["WATCH", "{t}a"]).await, "+OK\r\n");
    let mut b = p.raw_as("a", "pa").await;
    assert_eq!(b.cmd(&["SET", "{t}a", "2"]).await, "+OK\r\n");
    assert_eq!(a.cmd(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(a.cmd(&["SET", "{t}a", "3"]).await, "+QUEUED\r\n");
    assert_eq!(a.cmd(&["EXEC"]).await, "*-1\r\n");
    assert_eq!(a.cmd(&["GET", "{t}a"]).await, "$1\r\n2\r\n");
    let _ = Instant::now();
    let _ = Duration::ZERO;
}

/// The tenant's keys as a sorted list of names.
fn sorted(reply: &str) -> Vec<String> {
    let mut keys: Vec<String> = reply
        .split("\r\n")
        .filter(|l| !l.is_empty() && !l.starts_with(['*', '$']))
        .map(String::from)
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn tenant_wide_commands_cover_every_master() {
    let cluster = Cluster::start();
    let p = proxy(&cluster, "").await;
    let mut a = p.raw_as("a", "pa").await;
    let mut b = p.raw_as("b", "pb").await;
    let mut want = Vec::new();
    for i in 0..300 {
        let k = format!("k{i}");
        assert_eq!(a.cmd(&["SET", &k, "v"]).await, "+OK\r\n");
        want.push(k);
    }
    want.sort();
    for i in 0..50 {
        assert_eq!(b.cmd(&["SET", &format!("other{i}"), "v"]).await, "+OK\r\n");
    }
    assert_eq!(a.cmd(&["DBSIZE"]).await, ":300\r\n");
    assert_eq!(b.cmd(&["DBSIZE"]).await, ":50\r\n");
    assert_eq!(sorted(&a.cmd(&["KEYS", "*"]).await), want);
    assert_eq!(sorted(&a.cmd(&["KEYS", "k1?"]).await).len(), 10);
    // A full SCAN, cursor to cursor: every key once, none of b's.
    let mut seen = Vec::new();
    let mut cursor = "0".to_string();
    loop {
        a.send_cmd(&["SCAN", &cursor, "COUNT", "40"]).await;
        let reply = a.reply().await;
        let mut lines = reply.split("\r\n").skip(2);
        cursor = lines.next().unwrap().to_string();
        seen.extend(sorted(&lines.collect::<Vec<_>>().join("\r\n")));
        if cursor == "0" {
            break;
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen, want);
    let r = a.cmd(&["RANDOMKEY"]).await;
    assert!(r.starts_with("$") && r.contains("\r\nk"), "{r}");
    assert!(a.cmd(&["INFO", "keyspace"]).await.contains("db0:keys=300,"));
    assert_eq!(a.cmd(&["FLUSHDB"]).await, "+OK\r\n");
    assert_eq!(a.cmd(&["DBSIZE"]).await, ":0\r\n");
    assert_eq!(b.cmd(&["DBSIZE"]).await, ":50\r\n");
    assert_eq!(a.cmd(&["RANDOMKEY"]).await, "$-1\r\n");
    assert_eq!(cluster.keys().await.len(), 50);
    // Databases: prefixes, spread over the masters like database 0's keys.
    assert_eq!(a.cmd(&["SELECT", "3"]).await, "+OK\r\n");
    for i in 0..60 {
        assert_eq!(a.cmd(&["SET", &format!("d{i}"), "3"]).await, "+OK\r\n");
    }
    assert_eq!(
        a.cmd(&["MGET", "d1", "d59", "none"]).await,
        "*3\r\n$1\r\n3\r\n$1\r\n3\r\n$-1\r\n"
    );
    assert_eq!(a.cmd(&["DBSIZE"]).await, ":60\r\n");
    assert_eq!(sorted(&a.cmd(&["KEYS", "d5?"]).await).len(), 10);
    assert!(a.cmd(&["INFO", "keyspace"]).await.contains("db3:keys=60,"));
    assert_eq!(
        a.cmd(&["MOVE", "d1", "4"]).await,
        "-ERR MOVE is not allowed in cluster mode\r\n"
    );
    assert_eq!(a.cmd(&["SELECT", "0"]).await, "+OK\r\n");
    assert_eq!(a.cmd(&["DBSIZE"]).await, ":0\r\n");
    let named = cluster.keys().await;
    assert_eq!(
        named
            .iter()
            .filter(|k| k.starts_with("tenant:a@3:d"))
            .count(),
        60
    );
    assert_eq!(a.cmd(&["FLUSHALL"]).await, "+OK\r\n");
    assert_eq!(cluster.keys().await.len(), 50);
}

#[tokio::test]
async fn pubsub_and_blocking_commands_work_across_nodes() {
    let cluster = Cluster::start();
    let p = proxy(&cluster, "").await;
    let mut sub = p.raw_as("a", "pa").await;
    assert_eq!(
        sub.cmd(&["SUBSCRIBE", "news"]).await,
        "*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n"
    );
    // Published through every master (each client lands on a different one), each message
    // reaches the subscriber.
    for i in 0..6 {
        let mut publisher = p.raw_as("a", "pa").await;
        let n = publisher.cmd(&["PUBLISH", "news", &format!("m{i}")]).await;
        assert!(n == ":1\r\n" || n == ":0\r\n", "{n}");
        assert_eq!(
            sub.reply().await,
            format!("*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nm{i}\r\n")
        );
    }
    // PUBSUB CHANNELS and NUMSUB count the subscribers of every master.
    let mut subs = Vec::new();
    for i in 0..6 {
        let mut c = p.raw_as("a", "pa").await;
        let ch = format!("ch{i}");
        assert!(c
            .cmd(&["SUBSCRIBE", &ch, "news"])
            .await
            .contains("subscribe"));
        c.reply().await;
        subs.push(c);
    }
    let mut admin = p.raw_as("a", "pa").await;
    let channels = sorted(&admin.cmd(&["PUBSUB", "CHANNELS"]).await);
    assert_eq!(channels, ["ch0", "ch1", "ch2", "ch3", "ch4", "ch5", "news"]);
    assert_eq!(
        admin
            .cmd(&["PUBSUB", "NUMSUB", "news", "ch3", "none"])
            .await,
        "*6\r\n$4\r\nnews\r\n:7\r\n$3\r\nch3\r\n:1\r\n$4\r\nnone\r\n:0\r\n"
    );
    let mut b = p.raw_as("b", "pb").await;
    assert_eq!(b.cmd(&["PUBSUB", "CHANNELS"]).await, "*0\r\n");
    drop(subs);
    // Another tenant's subscriber hears nothing of it.
    let mut other = p.raw_as("b", "pb").await;
    assert_eq!(other.cmd(&["PUBLISH", "news", "x"]).await, ":0\r\n");
    // Shard channels go to their slot's master.
    let mut ssub = p.raw_as("a", "pa").await;
    assert_eq!(
        ssub.cmd(&["SSUBSCRIBE", "shard1"]).await,
        "*3\r\n$10\r\nssubscribe\r\n$6\r\nshard1\r\n:1\r\n"
    );
    let mut publisher = p.raw_as("a", "pa").await;
    assert_eq!(publisher.cmd(&["SPUBLISH", "shard1", "hi"]).await, ":1\r\n");
    assert_eq!(
        ssub.reply().await,
        "*3\r\n$8\r\nsmessage\r\n$6\r\nshard1\r\n$2\r\nhi\r\n"
    );
    // BLPOP waits on its key's master and wakes on a push from another client.
    let mut blocked = p.raw_as("a", "pa").await;
    for key in ["q1", "q2", "q3", "q4"] {
        blocked.send_cmd(&["BLPOP", key, "5"]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(publisher.cmd(&["RPUSH", key, "job"]).await, ":1\r\n");
        assert_eq!(
            blocked.reply().await,
            format!("*2\r\n$2\r\n{key}\r\n$3\r\njob\r\n")
        );
    }
    // And a plain command on the same connection after it goes wherever its key is.
    assert_eq!(blocked.cmd(&["SET", "after", "1"]).await, "+OK\r\n");
    // CLIENT UNBLOCK reaches the node the client is blocked on, whichever it is.
    let id = blocked.cmd(&["CLIENT", "ID"]).await;
    let id = id.trim_start_matches(':').trim().to_string();
    for key in ["q1", "q2", "q3", "q4"] {
        blocked.send_cmd(&["BLPOP", key, "10"]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(publisher.cmd(&["CLIENT", "UNBLOCK", &id]).await, ":1\r\n");
        assert_eq!(blocked.reply().await, "*-1\r\n");
    }
}

#[tokio::test]
async fn many_clients_cost_each_node_few_connections() {
    let cluster = Cluster::start();
    let p = proxy(&cluster, "").await;
    let mut clients = Vec::new();
    for _ in 0..200 {
        clients.push(p.raw_as("a", "pa").await);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.cmd(&["SET", &format!("k{i}"), "v"]).await, "+OK\r\n");
    }
    let mut all = futures_util::future::join_all(
        clients
            .iter_mut()
            .enumerate()
            .map(|(i, c)| async move { c.cmd(&["GET", &format!("k{i}")]).await }),
    )
    .await;
    all.dedup();
    assert_eq!(all, vec!["$1\r\nv\r\n".to_string()]);
    let mut most = 0;
    for n in &cluster.nodes {
        let info = cli(n.port, &["INFO", "clients"]);
        let connected = info_field(&info, "connected_clients");
        assert!(connected <= 32, "{} clients on {}", connected, n.port);
        most = most.max(connected);
    }
    eprintln!("200 clients: at most {most} connections on a node");
}

/// `CLUSTER KEYSLOT` of a name, asked of a node.
fn keyslot(cluster: &Cluster, name: &str) -> u16 {
    cli(cluster.nodes[0].port, &["CLUSTER", "KEYSLOT", name])
        .trim()
        .parse()
        .unwrap()
}

/// Moves `slot` from its master to `to`, key by key, the way `redis-cli --cluster reshard`
/// does: IMPORTING/MIGRATING, MIGRATE in small batches (with a pause, so clients run in the
/// middle of it), then NODE on every master.
fn migrate_slot(cluster: &Cluster, slot: u16, to: usize) {
    let masters = cluster
        .masters()
        .iter()
        .map(|&m| cluster.nodes[m].port)
        .collect();
    let from = cluster.nodes[cluster.owner(slot)].port;
    migrate(masters, slot, from, cluster.nodes[to].port);
}

/// [`migrate_slot`] by ports only, so that a thread can run it while the test owns the
/// cluster (and stops it, should the test fail).
fn migrate(masters: Vec<u16>, slot: u16, fp: u16, tp: u16) {
    let id = |port: u16| cli(port, &["CLUSTER", "MYID"]).trim().to_string();
    let (from_id, to_id) = (id(fp), id(tp));
    let s = slot.to_string();
    assert!(cli(tp, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id]).contains("OK"));
    assert!(cli(fp, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id]).contains("OK"));
    loop {
        let keys = cli(fp, &["CLUSTER", "GETKEYSINSLOT", &s, "5"]);
        let keys: Vec<&str> = keys.split_whitespace().collect();
        if keys.is_empty() {
            break;
        }
        let port = tp.to_string();
        let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
        args.extend(&keys);
        let out = cli(fp, &args);
        assert!(out.contains("OK"), "MIGRATE: {out}");
        std::thread::sleep(Duration::from_millis(30));
    }
    for m in masters {
        cli(m, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id]);
    }
}

#[tokio::test]
async fn a_slot_migrated_under_load_loses_nothing() {
    let cluster = Cluster::start();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let p = proxy(&cluster, &format!("[admin]\nlisten = \"{admin}\"\n")).await;
    let (slot, from, to) = moving(&cluster, "mig");
    let mut a = p.raw_as("a", "pa").await;
    for i in 0..60 {
        assert_eq!(
            a.cmd(&["SET", &format!("{{mig}}{i}"), "0"]).await,
            "+OK\r\n"
        );
    }
    // Run the migration on a thread while this task keeps writing and reading the slot.
    let worker = {
        let masters = cluster
            .masters()
            .iter()
            .map(|&m| cluster.nodes[m].port)
            .collect();
        let (fp, tp) = (cluster.nodes[from].port, cluster.nodes[to].port);
        std::thread::spawn(move || migrate(masters, slot, fp, tp))
    };
    let (mut round, mut ran) = (0u64, 0u64);
    while !worker.is_finished() || round < 5 {
        round += 1;
        for i in 0..60 {
            let k = format!("{{mig}}{i}");
            let v = format!("{round}-{i}");
            assert_eq!(a.cmd(&["SET", &k, &v]).await, "+OK\r\n", "round {round}");
            assert_eq!(
                a.cmd(&["GET", &k]).await,
                format!("${}\r\n{v}\r\n", v.len()),
                "round {round}"
            );
        }
        // A script on the migrating slot runs once, or is refused (not run) while its key
        // moves: never twice, never with a redirect.
        let script = "return redis.call('INCR', KEYS[1])";
        let r = a.cmd(&["EVAL", script, "1", "{mig}count"]).await;
        if r.starts_with(':') {
            ran += 1;
            assert_eq!(r, format!(":{ran}\r\n"), "round {round}");
        } else {
            assert!(r.contains("keys are moving to another node"), "{r}");
        }
        // Multi-key on the migrating slot: answered whole, never with a redirect.
        let r = a.cmd(&["MGET", "{mig}1", "{mig}2"]).await;
        assert!(r.starts_with("*2\r\n") || r.starts_with("-TRYAGAIN"), "{r}");
    }
    worker.join().unwrap();
    assert_eq!(cluster.owner(slot), to);
    assert_eq!(
        cluster.nodes[to].keys().await.len(),
        60 + usize::from(ran > 0)
    );
    if ran > 0 {
        let n = ran.to_string();
        let want = format!("${}\r\n{n}\r\n", n.len());
        assert_eq!(a.cmd(&["GET", "{mig}count"]).await, want);
    }
    assert!(round > 5, "the loop ran {round} rounds");
    // The loop met the migration: respite followed redirects (ASK, then MOVED).
    let (_, metrics) = crate::admin::http_get(admin, "/metrics").await;
    let redirects: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("respite_upstream_node_redirects_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(redirects > 0, "{metrics}");
}

#[tokio::test]
async fn a_master_killed_under_load_fails_over_without_wrong_values() {
    let mut cluster = Cluster::start();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let p = proxy(&cluster, &format!("[admin]\nlisten = \"{admin}\"\n")).await;
    crate::admin::answers(admin, "/readyz", 200, Duration::from_secs(5)).await;
    let doomed = cluster.owner(keyslot(&cluster, "gone"));
    let survivor = cluster.owner(keyslot(&cluster, "stays"));
    let survivor = if survivor == doomed {
        // Find a tag on another master.
        (0..1000)
            .map(|i| format!("stays{i}"))
            .find(|t| cluster.owner(keyslot(&cluster, t)) != doomed)
            .unwrap()
    } else {
        "stays".to_string()
    };
    let mut a = p.raw_as("a", "pa").await;
    assert_eq!(a.cmd(&["SET", "{gone}k", "0"]).await, "+OK\r\n");
    assert_eq!(
        a.cmd(&["SET", &format!("{{{survivor}}}k"), "0"]).await,
        "+OK\r\n"
    );
    // A client blocked on the doomed master's slot.
    let mut blocked = p.raw_as("a", "pa").await;
    blocked.send_cmd(&["BLPOP", "{gone}q", "20"]).await;
    // Eight more clients write and read back keys of every slot, pipelined, the whole time:
    // each reply is an error or the value just written, never another, and none waits past
    // command_timeout_ms (3 s).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for w in 0..8 {
        let (addr, stop) = (p.addr, stop.clone());
        load.push(tokio::spawn(async move {
            let mut c = Raw::login(addr, "a", "pa").await;
            let (mut ok, mut failed) = (0u64, 0u64);
            let mut round = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                round += 1;
                let mut batch = bytes::BytesMut::new();
                for i in 0..8 {
                    let (k, v) = (format!("w{w}:{i}"), format!("{round}"));
                    respite::wire::encode_request(
                        &mut batch,
                        ["SET".as_bytes(), k.as_bytes(), v.as_bytes()].into_iter(),
                    );
                    respite::wire::encode_request(
                        &mut batch,
                        ["GET".as_bytes(), k.as_bytes()].into_iter(),
                    );
                }
                let t = Instant::now();
                c.send(&batch).await;
                for _ in 0..8 {
                    let (set, get) = (c.reply().await, c.reply().await);
                    let v = round.to_string();
                    match (set.as_str(), get) {
                        ("+OK\r\n", g) if g == format!("${}\r\n{v}\r\n", v.len()) => ok += 1,
                        (s, g) => {
                            assert!(s.starts_with('-') || s == "+OK\r\n", "{s}");
                            assert!(g.starts_with('-'), "a wrong value: {g}");
                            failed += 1;
                        }
                    }
                }
                assert!(
                    t.elapsed() < Duration::from_millis(3500),
                    "{:?}",
                    t.elapsed()
                );
            }
            (ok, failed)
        }));
    }
    // The replica must have the write before its master dies.
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.nodes[doomed].kill9();
    let killed = Instant::now();
    let mut recovered = None;
    let mut last_good = 0u64;
    let mut i = 0u64;
    while recovered.is_none() {
        i += 1;
        if killed.elapsed() > Duration::from_secs(20) {
            let alive = (0..6).find(|&j| j != doomed).unwrap();
            panic!(
                "no failover after 20 s: {}\n{}",
                a.cmd(&["INCR", "{gone}k"]).await,
                cli(cluster.nodes[alive].port, &["CLUSTER", "NODES"])
            );
        }
        // The other master's slots never stop.
        let k = format!("{{{survivor}}}k");
        let t = Instant::now();
        assert_eq!(a.cmd(&["SET", &k, &i.to_string()]).await, "+OK\r\n");
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        // The dead master's slot: an error or the right value, never a hang.
        let t = Instant::now();
        let r = a.cmd(&["INCR", "{gone}k"]).await;
        assert!(
            t.elapsed() < Duration::from_millis(3500),
            "{:?}",
            t.elapsed()
        );
        if let Some(n) = r.strip_prefix(':') {
            let n: u64 = n.trim().parse().unwrap();
            assert!(n > last_good, "{n} after {last_good}");
            last_good = n;
            recovered = Some(Instant::now());
        } else {
            assert!(
                r.starts_with("-ERR upstream unavailable") || r.starts_with("-CLUSTERDOWN"),
                "{r}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The replica took over: it is a master now, and respite serves its slots.
    let alive: Vec<usize> = (0..6).filter(|&i| i != doomed).collect();
    cluster.wait_ok(&alive);
    crate::admin::answers(admin, "/readyz", 200, Duration::from_secs(5)).await;
    let promoted_at = Instant::now();
    for _ in 0..20 {
        let r = a.cmd(&["INCR", "{gone}k"]).await;
        assert!(r.starts_with(':'), "{r}");
    }
    assert!(promoted_at.elapsed() < Duration::from_secs(5));
    // The blocked client was sent on to the promoted replica, and wakes on a push there.
    assert_eq!(a.cmd(&["RPUSH", "{gone}q", "job"]).await, ":1\r\n");
    assert_eq!(
        blocked.reply().await,
        "*2\r\n$7\r\n{gone}q\r\n$3\r\njob\r\n"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for l in load {
        let (o, f) = l.await.unwrap();
        (ok, failed) = (ok + o, failed + f);
    }
    assert!(ok > 1000, "{ok} answered, {failed} failed");
    eprintln!(
        "failover: served again {:?} after the kill; load: {ok} pairs answered, {failed} failed",
        recovered.unwrap() - killed
    );
}

/// The sum of MEMORY USAGE over every key under `prefix` on every master.
async fn memory_on_masters(cluster: &Cluster, prefix: &str) -> i64 {
    let mut total = 0;
    for m in cluster.masters() {
        let mut d = cluster.nodes[m].direct().await;
        for k in cluster.nodes[m].keys().await {
            if k.starts_with(prefix) {
                let size: Option<i64> = q(&mut d, &["MEMORY", "USAGE", &k, "SAMPLES", "0"])
                    .await
                    .unwrap();
                total += size.unwrap_or(0);
            }
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_hold_across_nodes() {
    let cluster = Cluster::start();
    let p = Proxy::start_config(&format!(
        "[upstream]\nmode = \"cluster\"\nurl = \"{}\"\ncommand_timeout_ms = 3000\n\
         [quota]\nflush_interval_ms = 20\nmeasure_delay_ms = 0\nreconcile_interval_ms = 600000\n\
         [[tenants]]\nid = \"a\"\npassword = \"pa\"\nquota_bytes = 20000\noverage_bytes = 5000\n\
         [[tenants]]\nid = \"b\"\npassword = \"pb\"\n",
        cluster.url()
    ))
    .await;
    let mut a = p.raw_as("a", "pa").await;
    let value = "x".repeat(1000);
    let (key, reply) = a.set_until_refused(&value).await;
    assert!(
        reply.starts_with("-OOM command not allowed: tenant 'a' is at "),
        "{reply}"
    );
    assert_eq!(a.cmd(&["EXISTS", &key]).await, ":0\r\n");
    // What Redis holds, summed over the masters, is within quota + overage (+ one write).
    let held = memory_on_masters(&cluster, "tenant:a:").await;
    assert!((20_000..=26_100).contains(&held), "holds {held}");
    // The keys really are on several masters.
    let mut spread = 0;
    for m in cluster.masters() {
        let keys = cluster.nodes[m].keys().await;
        spread += usize::from(keys.iter().any(|k| k.starts_with("tenant:a:k")));
    }
    assert_eq!(spread, 3);
    // Reads and deletes still work; deleting makes room again.
    assert_eq!(a.cmd(&["STRLEN", "k0"]).await, ":1000\r\n");
    assert_eq!(a.cmd(&["DEL", "k0", "k1", "k2", "k3"]).await, ":4\r\n");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = a.cmd(&["SET", "more", &value]).await;
        if r == "+OK\r\n" {
            break;
        }
        assert!(Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The usage figure settles to what the masters hold.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let info = a.cmd(&["INFO", "tenant"]).await;
        let used = info_field(&info, "used_bytes");
        let truth = memory_on_masters(&cluster, "tenant:a:").await;
        if used == truth {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "usage {used} never reached {truth}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A write refused in the cluster stage (CROSSSLOT inside MULTI, an odd MSET) gives its
    // charge back: the connection goes on, and so does the quota.
    assert_eq!(a.cmd(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(a.cmd(&["SET", "{q}a", "1"]).await, "+QUEUED\r\n");
    assert!(a.cmd(&["SET", "{z}b", "1"]).await.starts_with("-CROSSSLOT"));
    assert!(a.cmd(&["EXEC"]).await.starts_with("-EXECABORT"));
    assert_eq!(
        a.cmd(&["MSET", "{q}a", "1", "{z}b"]).await,
        "-ERR wrong number of arguments for 'mset' command\r\n"
    );
    assert_eq!(a.cmd(&["SET", "{q}a", "1"]).await, "+OK\r\n");
    // Another tenant is not limited.
    let mut b = p.raw_as("b", "pb").await;
    assert_eq!(b.cmd(&["SET", "big", &"y".repeat(50_000)]).await, "+OK\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_market_data_and_admin_figures_in_a_cluster() {
    let cluster = Cluster::start();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut config = format!(
        "[upstream]\nmode = \"cluster\"\nurl = \"{}\"\ncommand_timeout_ms = 3000\n\
         [admin]\nlisten = \"{admin}\"\n\
         [[tenants]]\nid = \"pub\"\npassword = \"ppub\"\nrole = \"publisher\"\n",
        cluster.url()
    );
    for i in 0..20 {
        config.push_str(&format!(
            "[[tenants]]\nid = \"t{i}\"\npassword = \"pt{i}\"\n"
        ));
    }
    config.push_str("[shared]\nprefixes = [\"shared:market:\"]\n");
    let p = Proxy::start_config(&config).await;
    crate::admin::answers(admin, "/readyz", 200, Duration::from_secs(5)).await;
    let mut publisher = p.raw_as("pub", "ppub").await;
    let names: Vec<String> = (0..30)
        .map(|i| format!("shared:market:S{i}:price"))
        .collect();
    for (i, name) in names.iter().enumerate() {
        assert_eq!(
            publisher.cmd(&["SET", name, &i.to_string()]).await,
            "+OK\r\n"
        );
    }
    // Stored by their plain names, on whichever master owns each.
    let keys = cluster.keys().await;
    assert!(names.iter().all(|n| keys.contains(n)), "{keys:?}");
    // Every tenant reads each one (filled from its master, then from respite's cache).
    for t in 0..20 {
        let mut c = p.raw_as(&format!("t{t}"), &format!("pt{t}")).await;
        for (i, name) in names.iter().enumerate() {
            let v = i.to_string();
            assert_eq!(
                c.cmd(&["GET", name]).await,
                format!("${}\r\n{v}\r\n", v.len())
            );
        }
        let r = c.cmd(&["SET", &names[0], "x"]).await;
        assert!(r.starts_with("-NOPERM"), "{r}");
    }
    let mut t0 = p.raw_as("t0", "pt0").await;
    let info = t0.cmd(&["INFO", "shared"]).await;
    assert!(info_field(&info, "shared_l1_hits") >= 19 * 30, "{info}");
    // A publisher's new value is what the next read sees.
    assert_eq!(publisher.cmd(&["SET", &names[3], "new"]).await, "+OK\r\n");
    assert_eq!(t0.cmd(&["GET", &names[3]]).await, "$3\r\nnew\r\n");
    // Per-node figures.
    let (status, metrics) = crate::admin::http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("respite_cluster_slots_served 16384"),
        "{metrics}"
    );
    let nodes = metrics
        .lines()
        .filter(|l| l.starts_with("respite_upstream_node_requests_total{node="))
        .count();
    assert!(nodes >= 3, "{metrics}");
}

#[tokio::test]
async fn scripts_run_confined_on_their_keys_master() {
    let cluster = Cluster::start_with(&["--busy-reply-threshold", "100"]);
    let p = script_proxy(&cluster, 5000, 300, "v").await;
    let mut v = p.raw_as("v", "pv").await;
    let mut a = p.raw_as("a", "pa").await;
    for i in 0..20 {
        assert_eq!(
            v.cmd(&["SET", &format!("secret{i}"), "s3cret"]).await,
            "+OK\r\n"
        );
    }
    // EVAL on keys of every master, in the tenant's namespace, names as written.
    let incr = "return redis.call('INCRBY', KEYS[1], ARGV[1])";
    for i in 0..20 {
        let k = format!("n{i}");
        assert_eq!(a.cmd(&["EVAL", incr, "1", &k, "2"]).await, ":2\r\n");
    }
    assert_eq!(
        a.cmd(&["EVAL", "return {KEYS[1], KEYS[2]}", "2", "{t}x", "{t}y"])
            .await,
        "*2\r\n$4\r\n{t}x\r\n$4\r\n{t}y\r\n"
    );
    // Keys of two slots: Redis' own CROSSSLOT.
    let r = a.cmd(&["EVAL", "return 1", "2", "n1", "n2"]).await;
    assert!(r.starts_with("-CROSSSLOT"), "{r}");
    // SCRIPT LOAD reaches every master: EVALSHA works wherever its keys are.
    let sha = a.cmd(&["SCRIPT", "LOAD", incr]).await;
    let sha = sha.split("\r\n").nth(1).unwrap().to_string();
    for i in 0..20 {
        let k = format!("n{i}");
        assert_eq!(a.cmd(&["EVALSHA", &sha, "1", &k, "1"]).await, ":3\r\n");
    }
    // Another tenant's keys stay out of reach, on every master.
    for i in 0..20 {
        let name = format!("tenant:v:secret{i}");
        let around = format!("return _G.redis.call('GET', '{name}')");
        let r = a.cmd(&["EVAL", &around, "1", &name]).await;
        assert!(r.starts_with('-') && !r.contains("s3cret"), "{r}");
        let through = "return redis.call('GET', KEYS[1])";
        assert_eq!(a.cmd(&["EVAL", through, "1", &name]).await, "$-1\r\n");
    }
    // Functions: loaded on every master, called on their keys' master.
    let lib = "#!lua name=mylib\nredis.register_function('incr2', function(keys, args) \
               return redis.call('INCRBY', keys[1], 2) end)";
    assert_eq!(a.cmd(&["FUNCTION", "LOAD", lib]).await, "$5\r\nmylib\r\n");
    for i in 0..20 {
        let k = format!("f{i}");
        assert_eq!(a.cmd(&["FCALL", "incr2", "1", &k]).await, ":2\r\n");
    }
    // A runaway script is killed on whichever master runs it; the others never stopped.
    a.send_cmd(&["EVAL", "while true do end", "1", "spin"])
        .await;
    assert_eq!(v.cmd(&["GET", "secret1"]).await, "$6\r\ns3cret\r\n");
    let killed = tokio::time::timeout(Duration::from_secs(10), a.reply())
        .await
        .expect("killed, not left running");
    assert!(killed.starts_with("-ERR Script killed"), "{killed}");
    assert_eq!(a.cmd(&["EVAL", "return 1", "1", "spin"]).await, ":1\r\n");
    // The connection is still a's, logged back in as respite.
    assert_eq!(a.cmd(&["GET", "n1"]).await, "$1\r\n3\r\n");
    let keys = cluster.keys().await;
    assert!(
        keys.iter()
            .all(|k| k.starts_with("tenant:") || k.starts_with("respite:")),
        "{keys:?}"
    );
}

#[tokio::test]
async fn a_slot_moving_under_a_transaction_aborts_it_with_no_node_named() {
    let cluster = Cluster::start();
    let p = proxy(&cluster, "").await;
    let (slot, _, to) = moving(&cluster, "tx");
    let mut a = p.raw_as("a", "pa").await;
    assert_eq!(a.cmd(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(a.cmd(&["SET", "{tx}a", "1"]).await, "+QUEUED\r\n");
    // The slot (empty: nothing was written yet) moves to another master.
    migrate_slot(&cluster, slot, to);
    let r = a.cmd(&["SET", "{tx}b", "1"]).await;
    assert!(
        r.starts_with("-ERR upstream unavailable: the key's slot moved"),
        "{r}"
    );
    assert!(!r.contains("127.0.0.1"), "{r}");
    assert!(a.cmd(&["EXEC"]).await.starts_with("-EXECABORT"));
    // The next transaction goes to the slot's new master.
    assert_eq!(a.cmd(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(a.cmd(&["SET", "{tx}a", "2"]).await, "+QUEUED\r\n");
    assert_eq!(a.cmd(&["EXEC"]).await, "*1\r\n+OK\r\n");
    assert_eq!(cluster.nodes[to].keys().await, vec!["tenant:a:{tx}a"]);
}

#[tokio::test]
async fn a_blocked_command_follows_its_slot_to_the_new_master() {
    let cluster = Cluster::start();
    let p = proxy(&cluster, "").await;
    let (slot, from, to) = moving(&cluster, "bq");
    let mut blocked = p.raw_as("a", "pa").await;
    blocked.send_cmd(&["BLPOP", "{bq}jobs", "8"]).await;
    let mut x = p.raw_as("a", "pa").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    // The slot (empty) moves while BLPOP waits on it: Redis unblocks it with MOVED, and
    // respite sends it again to the new master.
    migrate_slot(&cluster, slot, to);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(x.cmd(&["RPUSH", "{bq}jobs", "j1"]).await, ":1\r\n");
    assert_eq!(
        blocked.reply().await,
        "*2\r\n$8\r\n{bq}jobs\r\n$2\r\nj1\r\n"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // XREAD BLOCK the same way, back to the first master.
    blocked
        .send_cmd(&["XREAD", "BLOCK", "8000", "STREAMS", "{bq}s", "$"])
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    migrate_slot(&cluster, slot, from);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let id = x.cmd(&["XADD", "{bq}s", "*", "f", "v"]).await;
    let reply = blocked.reply().await;
    assert!(
        reply.contains("{bq}s") && reply.contains("$1\r\nf\r\n"),
        "{reply} after {id}"
    );
    // Its time counts from when it was first sent: moved after 1.2 s of its 2, it times
    // out 2 s after it was sent, not 2 s after the move.
    blocked.send_cmd(&["BLPOP", "{bq}none", "2"]).await;
    let t = Instant::now();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    migrate_slot(&cluster, slot, to);
    assert_eq!(blocked.reply().await, "*-1\r\n");
    assert!(
        t.elapsed() < Duration::from_millis(2900),
        "{:?}",
        t.elapsed()
    );
    assert!(
        t.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        t.elapsed()
    );
    migrate_slot(&cluster, slot, from);
    // Nothing was lost on the way.
    assert_eq!(x.cmd(&["XLEN", "{bq}s"]).await, ":1\r\n");
    assert_eq!(cluster.owner(slot), from);
}

/// `cmdstat_get` calls on node `i` (0 when it has none).
fn gets_on(cluster: &Cluster, i: usize) -> i64 {
    let info = cli(cluster.nodes[i].port, &["INFO", "commandstats"]);
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_get:calls="))
        .and_then(|l| l.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn tenants_that_opt_in_read_from_replicas() {
    let mut cluster = Cluster::start();
    // CLUSTER SLOTS lists a replica once it has replicated something (offset above 0).
    for m in cluster.masters() {
        let tag = (0..)
            .map(|i| format!("warm{i}"))
            .find(|t| cluster.owner(respite::wire::key_slot(b"", t.as_bytes())) == m)
            .unwrap();
        cli(cluster.nodes[m].port, &["SET", &tag, "1"]);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let listed = || {
        let slots = cli(cluster.nodes[0].port, &["CLUSTER", "SLOTS"]);
        slots.lines().filter(|l| *l == "127.0.0.1").count()
    };
    while listed() < 6 {
        assert!(Instant::now() < deadline, "replicas never listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let p = Proxy::start_config(&format!(
        "[upstream]\nmode = \"cluster\"\nurl = \"{}\"\nread_from = \"replica-preferred\"\n\
         command_timeout_ms = 3000\nconnect_timeout_ms = 300\n\
         [[tenants]]\nid = \"r\"\npassword = \"pr\"\nread_from_replicas = true\n\
         [[tenants]]\nid = \"a\"\npassword = \"pa\"\n",
        cluster.url()
    ))
    .await;
    let mut r = p.raw_as("r", "pr").await;
    let mut a = p.raw_as("a", "pa").await;
    for i in 0..50 {
        assert_eq!(
            r.cmd(&["SET", &format!("k{i}"), &format!("v{i}")]).await,
            "+OK\r\n"
        );
        assert_eq!(
            a.cmd(&["SET", &format!("k{i}"), &format!("v{i}")]).await,
            "+OK\r\n"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in &cluster.nodes {
        cli(n.port, &["CONFIG", "RESETSTAT"]);
    }
    let masters = cluster.masters();
    let replicas: Vec<usize> = (0..6).filter(|i| !masters.contains(i)).collect();
    for i in 0..50 {
        let v = format!("v{i}");
        let want = format!("${}\r\n{v}\r\n", v.len());
        assert_eq!(r.cmd(&["GET", &format!("k{i}")]).await, want);
    }
    // MGET across slots: split, each part read from a replica.
    let mget = r.cmd(&["MGET", "k1", "k2", "k3"]).await;
    assert_eq!(mget, "*3\r\n$2\r\nv1\r\n$2\r\nv2\r\n$2\r\nv3\r\n");
    let on_replicas: i64 = replicas.iter().map(|&i| gets_on(&cluster, i)).sum();
    let on_masters: i64 = masters.iter().map(|&i| gets_on(&cluster, i)).sum();
    assert_eq!((on_replicas, on_masters), (50, 0));
    // A tenant that did not opt in reads its masters.
    for i in 0..10 {
        assert!(a.cmd(&["GET", &format!("k{i}")]).await.starts_with("$2"));
    }
    let on_masters: i64 = masters.iter().map(|&i| gets_on(&cluster, i)).sum();
    assert_eq!(on_masters, 10);
    // Writes, and reads inside a transaction, stay on masters.
    assert_eq!(r.cmd(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(r.cmd(&["GET", "k1"]).await, "+QUEUED\r\n");
    assert_eq!(r.cmd(&["EXEC"]).await, "*1\r\n$2\r\nv1\r\n");
    // A replica dies: its master's slots are read from the master, no error reaches r.
    let dead = replicas[0];
    cluster.nodes[dead].kill9();
    for round in 0..3 {
        for i in 0..50 {
            let v = format!("v{i}");
            let want = format!("${}\r\n{v}\r\n", v.len());
            assert_eq!(
                r.cmd(&["GET", &format!("k{i}")]).await,
                want,
                "round {round}"
            );
        }
    }
}

/// A full SCAN iteration of `c`, `COUNT` at a time, with `between` run once after the call
/// that starts the walk of master `at` (in address order); the keys seen, sorted, deduped.
async fn scan_all(c: &mut Raw, count: &str, at: u64, mut between: impl FnMut()) -> Vec<String> {
    let mut seen = Vec::new();
    let mut cursor = "0".to_string();
    let mut ran = false;
    loop {
        let reply = c.cmd(&["SCAN", &cursor, "COUNT", count]).await;
        let mut lines = reply.split("\r\n").skip(2);
        cursor = lines.next().unwrap().to_string();
        seen.extend(sorted(&lines.collect::<Vec<_>>().join("\r\n")));
        let node = cursor.parse::<u64>().unwrap() % 1024;
        if !ran && node == at {
            between();
            ran = true;
        }
        if cursor == "0" {
            break;
        }
    }
    seen.sort();
    seen.dedup();
    seen
}

#[tokio::test]
async fn scan_and_keys_return_every_key_across_a_migration() {
    let cluster = Cluster::start();
    let p = proxy(&cluster, "").await;
    // Masters in address order, as respite walks them; a tag on the last one.
    let mut masters = cluster.masters();
    masters.sort_by_key(|&m| format!("127.0.0.1:{}", cluster.nodes[m].port));
    let (first, last) = (masters[0], masters[2]);
    let tag = (0..)
        .map(|i| format!("m{i}"))
        .find(|t| cluster.owner(keyslot(&cluster, t)) == last)
        .unwrap();
    let slot = keyslot(&cluster, &tag);
    let mut a = p.raw_as("a", "pa").await;
    let mut want = Vec::new();
    for i in 0..40 {
        for k in [format!("{{{tag}}}{i}"), format!("plain{i}")] {
            assert_eq!(a.cmd(&["SET", &k, "v"]).await, "+OK\r\n");
            want.push(k);
        }
    }
    want.sort();
    let id = |i: usize| {
        cli(cluster.nodes[i].port, &["CLUSTER", "MYID"])
            .trim()
            .to_string()
    };
    let (fp, tp) = (cluster.nodes[last].port, cluster.nodes[first].port);
    let (from_id, to_id) = (id(last), id(first));
    let s = slot.to_string();
    // 1. Half the slot's keys move to the first master (walked already) while the walk is on
    //    the last: found there, at the end of the last master's walk (MIGRATING).
    let half = || {
        cli(tp, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id]);
        cli(fp, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id]);
        let keys = cli(fp, &["CLUSTER", "GETKEYSINSLOT", &s, "20"]);
        let mut args = vec!["MIGRATE", "127.0.0.1", "", "", "0", "5000", "KEYS"];
        let port = tp.to_string();
        args[2] = &port;
        args.extend(keys.split_whitespace());
        assert!(cli(fp, &args).contains("OK"));
    };
    assert_eq!(scan_all(&mut a, "5", 2, half).await, want);
    // KEYS and DBSIZE in the middle of that migration: each key once.
    assert_eq!(sorted(&a.cmd(&["KEYS", "*"]).await), want);
    assert_eq!(a.cmd(&["DBSIZE"]).await, format!(":{}\r\n", want.len()));
    // 2. The rest moves and the slot is handed over while the walk is on the last master:
    //    no migration left to see at its end, but the slot was its when its walk began.
    let rest = || {
        let keys = cli(fp, &["CLUSTER", "GETKEYSINSLOT", &s, "100"]);
        let port = tp.to_string();
        let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
        args.extend(keys.split_whitespace());
        assert!(cli(fp, &args).contains("OK"));
        for m in [fp, tp, cluster.nodes[masters[1]].port] {
            cli(m, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id]);
        }
    };
    assert_eq!(scan_all(&mut a, "5", 2, rest).await, want);
    assert_eq!(cluster.owner(slot), first);
    assert_eq!(sorted(&a.cmd(&["KEYS", "*"]).await), want);
    // Cursor edge cases answer as Redis does.
    assert_eq!(a.cmd(&["SCAN", "abc"]).await, "-ERR invalid cursor\r\n");
    assert_eq!(
        a.cmd(&["SCAN", "999999999999"]).await.get(..4),
        Some("*2\r\n")
    );
}

#[tokio::test]
async fn watch_and_subscriptions_still_reach_every_node() {
    let cluster = Cluster::start();
    let p = proxy(&cluster, "").await;
    let mut a = p.raw_as("a", "pa").await;
    for i in 0..30 {
        assert_eq!(
            a.cmd(&["SET", &format!("k{i}"), &format!("v{i}")]).await,
            "+OK\r\n"
        );
    }
    // WATCH pins the connection to {w}'s master; reads of every other node still answer,
    // in order, and the transaction keeps its WATCH.
    assert_eq!(a.cmd(&["WATCH", "{w}a"]).await, "+OK\r\n");
    pipelined_gets_answer_in_order(&mut a, 30).await;
    assert_eq!(
        a.cmd(&["MGET", "k1", "k2"]).await,
        "*2\r\n$2\r\nv1\r\n$2\r\nv2\r\n"
    );
    let mut b = p.raw_as("a", "pa").await;
    assert_eq!(b.cmd(&["SET", "{w}a", "changed"]).await, "+OK\r\n");
    assert_eq!(a.cmd(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(a.cmd(&["SET", "{w}a", "mine"]).await, "+QUEUED\r\n");
    assert_eq!(a.cmd(&["EXEC"]).await, "*-1\r\n");
    assert_eq!(a.cmd(&["GET", "{w}a"]).await, "$7\r\nchanged\r\n");
    // A second WATCH on another node's key cannot share the connection: a clear error.
    assert_eq!(a.cmd(&["WATCH", "{w}a"]).await, "+OK\r\n");
    let other = (0..30)
        .map(|i| format!("k{i}"))
        .find(|k| keyslot(&cluster, &format!("tenant:a:{k}")) != keyslot(&cluster, "w"))
        .unwrap();
    let r = a.cmd(&["WATCH", &other]).await;
    assert!(
        r.starts_with("-CROSSSLOT") || r.starts_with("-ERR this connection"),
        "{r}"
    );
    assert_eq!(a.cmd(&["UNWATCH"]).await, "+OK\r\n");
    // A RESP3 subscriber reads keys of every node between its messages.
    let mut s = p.raw_as("a", "pa").await;
    s.protocol = 3;
    assert!(s.cmd(&["HELLO", "3"]).await.starts_with('%'));
    assert!(s.cmd(&["SUBSCRIBE", "news"]).await.starts_with(">3"));
    for i in 0..30 {
        let v = format!("v{i}");
        assert_eq!(
            s.cmd(&["GET", &format!("k{i}")]).await,
            format!("${}\r\n{v}\r\n", v.len())
        );
    }
    assert_eq!(b.cmd(&["PUBLISH", "news", "hi"]).await.get(..1), Some(":"));
    assert_eq!(
        s.reply().await,
        ">3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nhi\r\n"
    );
}

/// A fake "node" on loopback: records every byte it gets, answers AUTH/READONLY/ASKING with
/// +OK, HELLO with a small map, anything else with "hacked".
async fn evil_node() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut c, _)) = l.accept().await else {
                return;
            };
            let seen = s2.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                loop {
                    let Ok(n) = c.read(&mut tmp).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.lock().unwrap().extend_from_slice(&tmp[..n]);
                    buf.extend_from_slice(&tmp[..n]);
                    // Parse whole arrays of bulk strings.
                    loop {
                        let text = buf.clone();
                        let Some((args, used)) = parse(&text) else {
                            break;
                        };
                        buf.drain(..used);
                        let cmd = args[0].to_ascii_uppercase();
                        let reply: Vec<u8> = match &cmd[..] {
                            b"AUTH" | b"READONLY" | b"ASKING" => b"+OK\r\n".to_vec(),
                            b"HELLO" if args.get(1).map(|a| &a[..]) == Some(b"3") => {
                                b"%1\r\n$7\r\nversion\r\n$6\r\n7.0.15\r\n".to_vec()
                            }
                            b"HELLO" => b"*2\r\n$7\r\nversion\r\n$6\r\n7.0.15\r\n".to_vec(),
                            _ => b"$6\r\nhacked\r\n".to_vec(),
                        };
                        if c.write_all(&reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    fn parse(b: &[u8]) -> Option<(Vec<Vec<u8>>, usize)> {
        let line = |at: usize| -> Option<(Vec<u8>, usize)> {
            let end = b[at..].windows(2).position(|w| w == b"\r\n")? + at;
            Some((b[at..end].to_vec(), end + 2))
        };
        let (head, mut at) = line(0)?;
        let n: usize = std::str::from_utf8(&head[1..]).ok()?.parse().ok()?;
        let mut args = Vec::new();
        for _ in 0..n {
            let (h, next) = line(at)?;
            let len: usize = std::str::from_utf8(&h[1..]).ok()?.parse().ok()?;
            if b.len() < next + len + 2 {
                return None;
            }
            args.push(b[next..next + len].to_vec());
            at = next + len + 2;
        }
        Some((args, at))
    }
    (port, seen)
}

/// A hostile tenant: redirects a script makes up are never followed (no request of another
/// tenant, no credentials and no re-run reach anyone), cluster internals answer as a
/// standalone Redis, and no error names a node.
#[tokio::test]
async fn a_tenant_cannot_steer_the_cluster_routing() {
    let cluster = Cluster::start();
    let p = proxy(&cluster, "").await;
    let (port, seen) = evil_node().await;
    let mut a = p.raw_as("a", "pa").await;
    let mut b = p.raw_as("b", "pb").await;
    assert_eq!(b.cmd(&["SET", "secret", "before"]).await, "+OK\r\n");
    // A MOVED (and an ASK) made up by a script, to a node of the attacker's, for the slot
    // of another tenant's key.
    let slot = keyslot(&cluster, "tenant:b:secret");
    for word in ["MOVED", "ASK"] {
        let script = format!("return redis.error_reply('{word} {slot} 127.0.0.1:{port}')");
        for _ in 0..20 {
            let r = a.cmd(&["EVAL", &script, "0"]).await;
            assert!(r.starts_with("-ERR upstream unavailable"), "{r}");
            assert!(!r.contains("127.0.0.1"), "{r}");
        }
    }
    for i in 0..50 {
        let v = format!("topsecret{i}");
        assert_eq!(b.cmd(&["SET", "secret", &v]).await, "+OK\r\n");
        assert_eq!(
            b.cmd(&["GET", "secret"]).await,
            format!("${}\r\n{v}\r\n", v.len())
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        seen.lock().unwrap().is_empty(),
        "respite connected to the attacker's node"
    );
    // A made-up TRYAGAIN, or a MOVED to the very node that ran it, runs the script once.
    let script = "redis.call('INCR', KEYS[1]) return redis.error_reply('TRYAGAIN fake')";
    assert_eq!(
        a.cmd(&["EVAL", script, "1", "cnt"]).await,
        "-TRYAGAIN fake\r\n"
    );
    assert_eq!(a.cmd(&["GET", "cnt"]).await, "$1\r\n1\r\n");
    let slot = keyslot(&cluster, "tenant:a:cnt2");
    let owner = cluster.nodes[cluster.owner(slot)].port;
    let script = format!(
        "redis.call('INCR', KEYS[1]) return redis.error_reply('MOVED {slot} 127.0.0.1:{owner}')"
    );
    assert!(a
        .cmd(&["EVAL", &script, "1", "cnt2"])
        .await
        .starts_with("-ERR upstream"));
    assert_eq!(a.cmd(&["GET", "cnt2"]).await, "$1\r\n1\r\n");
    // The cluster's own commands answer as a standalone Redis does.
    let disabled = "-ERR This instance has cluster support disabled\r\n";
    for c in [
        vec!["CLUSTER", "NODES"],
        vec!["CLUSTER", "SLOTS"],
        vec!["CLUSTER", "SHARDS"],
        vec!["CLUSTER", "INFO"],
        vec!["CLUSTER", "MYID"],
        vec!["CLUSTER", "KEYSLOT", "x"],
        vec!["CLUSTER", "GETKEYSINSLOT", "1", "10"],
        vec!["READONLY"],
        vec!["READWRITE"],
        vec!["ASKING"],
    ] {
        assert_eq!(a.cmd(&c).await, disabled, "{c:?}");
    }
    let info = a.cmd(&["INFO"]).await;
    assert!(info.contains("redis_mode:standalone\r\n"), "{info}");
    assert!(info.contains("cluster_enabled:0\r\n"), "{info}");
    // Tenant-wide commands over a pinned connection still cover every master.
    for i in 0..60 {
        assert_eq!(a.cmd(&["SET", &format!("w{i}"), "v"]).await, "+OK\r\n");
    }
    assert_eq!(a.cmd(&["CLIENT", "NO-EVICT", "on"]).await, "+OK\r\n");
    assert_eq!(a.cmd(&["DBSIZE"]).await, ":62\r\n");
    assert_eq!(sorted(&a.cmd(&["KEYS", "w*"]).await).len(), 60);
    assert_eq!(a.cmd(&["FLUSHDB"]).await, "+OK\r\n");
    assert_eq!(a.cmd(&["DBSIZE"]).await, ":0\r\n");
}

/// SCRIPT KILL (and the warden) reach the node the tenant's script runs on, and only when
/// it is the tenant's: another tenant's script on another master keeps running.
#[tokio::test]
async fn script_kill_kills_only_the_callers_script_on_its_node() {
    let cluster = Cluster::start_with(&["--busy-reply-threshold", "100"]);
    let p = script_proxy(&cluster, 20000, 15000, "b").await;
    let first = cluster.owner(0);
    let find = |tenant: &str, on_first: bool| {
        (0..)
            .map(|i| format!("s{i}"))
            .find(|k| {
                let slot =
                    respite::wire::key_slot(format!("tenant:{tenant}:").as_bytes(), k.as_bytes());
                (cluster.owner(slot) == first) == on_first
            })
            .unwrap()
    };
    let (ka, kb) = (find("a", false), find("b", true));
    let mut a = p.raw_as("a", "pa").await;
    let mut b = p.raw_as("b", "pb").await;
    let spin = "while true do end";
    a.send_cmd(&["EVAL", spin, "1", &ka]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.send_cmd(&["EVAL", spin, "1", &kb]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut a2 = p.raw_as("a", "pa").await;
    assert_eq!(a2.cmd(&["SCRIPT", "KILL"]).await, "+OK\r\n");
    let killed = a.reply().await;
    assert!(killed.starts_with("-ERR Script killed"), "{killed}");
    assert_eq!(
        b.try_reply(Duration::from_millis(500)).await,
        None,
        "b's script was killed"
    );
    let mut b2 = p.raw_as("b", "pb").await;
    assert_eq!(b2.cmd(&["SCRIPT", "KILL"]).await, "+OK\r\n");
    assert!(b.reply().await.starts_with("-ERR Script killed"));
}

/// A shard channel whose slot moved before the SSUBSCRIBE: an error that names no node.
#[tokio::test]
async fn ssubscribe_after_a_move_names_no_node() {
    let cluster = Cluster::start();
    let p = proxy(&cluster, "").await;
    for i in 0..3 {
        let ch = format!("chan{i}");
        let slot = keyslot(&cluster, &format!("tenant:a:{ch}"));
        let from = cluster.owner(slot);
        let to = cluster.masters().into_iter().find(|&m| m != from).unwrap();
        let mut s = p.raw_as("a", "pa").await;
        migrate_slot(&cluster, slot, to);
        let r = s.cmd(&["SSUBSCRIBE", &ch]).await;
        assert!(!r.contains("MOVED") && !r.contains("127.0.0.1"), "{r}");
    }
}

/// Transactions pipelined back to back on different nodes, and one of commands without keys
/// that sets connection state: each runs whole on a connection of its own, and nothing it
/// sets reaches the connections other clients share.
#[tokio::test]
async fn transactions_in_a_row_and_without_keys_keep_to_their_own_connection() {
    let cluster = Cluster::start();
    let p = proxy(&cluster, "").await;
    let mut a = p.raw_as("a", "pa").await;
    let (x, y) = (0..)
        .map(|i| (format!("x{i}"), format!("y{i}")))
        .find(|(x, y)| {
            let slot = |k: &str| respite::wire::key_slot(b"tenant:a:", k.as_bytes());
            cluster.owner(slot(x)) != cluster.owner(slot(y))
        })
        .unwrap();
    pipeline(
        &mut a,
        &[
            vec!["MULTI"],
            vec!["SET", &x, "1"],
            vec!["EXEC"],
            vec!["MULTI"],
            vec!["SET", &y, "2"],
            vec!["EXEC"],
        ],
    )
    .await;
    for want in ["+OK", "+QUEUED", "*1\r\n+OK", "+OK", "+QUEUED", "*1\r\n+OK"] {
        assert_eq!(a.reply().await, format!("{want}\r\n"));
    }
    // A transaction of commands without keys turns tracking on for its own connection only.
    let mut t = p.raw_as("a", "pa").await;
    t.protocol = 3;
    assert!(t.cmd(&["HELLO", "3"]).await.starts_with('%'));
    assert_eq!(t.cmd(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(t.cmd(&["CLIENT", "TRACKING", "ON"]).await, "+QUEUED\r\n");
    assert_eq!(t.cmd(&["EXEC"]).await, "*1\r\n+OK\r\n");
    for m in cluster.masters() {
        let list = cli(cluster.nodes[m].port, &["CLIENT", "LIST"]);
        assert!(
            !list.contains("flags=t"),
            "a connection tracks keys: {list}"
        );
    }
    let mut b = p.raw_as("b", "pb").await;
    b.protocol = 3;
    assert!(b.cmd(&["HELLO", "3"]).await.starts_with('%'));
    for i in 0..20 {
        let k = format!("k{i}");
        assert_eq!(b.cmd(&["SET", &k, "v"]).await, "+OK\r\n");
        assert_eq!(b.cmd(&["GET", &k]).await, "$1\r\nv\r\n");
    }
    // PUBSUB NUMSUB answers one pair per channel asked, repeats included, as Redis does.
    assert_eq!(
        b.cmd(&["PUBSUB", "NUMSUB", "c1", "c1"]).await,
        "*4\r\n$2\r\nc1\r\n:0\r\n$2\r\nc1\r\n:0\r\n"
    );
}

/// A blocked command with another request pipelined behind it, its slot moving meanwhile:
/// sent on to the new master, then the request behind it.
#[tokio::test]
async fn a_blocked_command_with_a_request_behind_it_follows_its_slot() {
    let cluster = Cluster::start();
    let p = proxy(&cluster, "").await;
    let (slot, from, to) = moving(&cluster, "bq");
    let other = (0..)
        .map(|i| format!("o{i}"))
        .find(|k| cluster.owner(respite::wire::key_slot(b"tenant:a:", k.as_bytes())) != from)
        .unwrap();
    let mut blocked = p.raw_as("a", "pa").await;
    pipeline(
        &mut blocked,
        &[vec!["BLPOP", "{bq}jobs", "0"], vec!["GET", &other]],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    migrate_slot(&cluster, slot, to);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut x = p.raw_as("a", "pa").await;
    assert_eq!(x.cmd(&["RPUSH", "{bq}jobs", "j1"]).await, ":1\r\n");
    assert_eq!(
        blocked.reply().await,
        "*2\r\n$8\r\n{bq}jobs\r\n$2\r\nj1\r\n"
    );
    assert_eq!(blocked.reply().await, "$-1\r\n");
}

/// Nodes that announce hostnames (`cluster-preferred-endpoint-type hostname`): walks stay
/// exact and quick.
#[tokio::test]
async fn a_cluster_of_hostnames_walks_exactly() {
    let cluster = Cluster::start_with(&[
        "--cluster-announce-hostname",
        "localhost",
        "--cluster-preferred-endpoint-type",
        "hostname",
    ]);
    let p = proxy(&cluster, "").await;
    let mut a = p.raw_as("a", "pa").await;
    let mut want = Vec::new();
    for i in 0..300 {
        let k = format!("k{i}");
        assert_eq!(a.cmd(&["SET", &k, "v"]).await, "+OK\r\n");
        want.push(k);
    }
    want.sort();
    let t = Instant::now();
    assert_eq!(a.cmd(&["DBSIZE"]).await, ":300\r\n");
    assert_eq!(sorted(&a.cmd(&["KEYS", "*"]).await), want);
    let mut seen = Vec::new();
    let mut cursor = "0".to_string();
    loop {
        let reply = a.cmd(&["SCAN", &cursor, "COUNT", "100"]).await;
        let mut lines = reply.split("\r\n").skip(2);
        cursor = lines.next().unwrap().to_string();
        seen.extend(sorted(&lines.collect::<Vec<_>>().join("\r\n")));
        if cursor == "0" {
            break;
        }
    }
    seen.sort();
    assert_eq!(seen, want, "each key once");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

/// A slot no master serves: its requests are answered at once with an error that names no
/// node, alone or pipelined with others, and the others are served.
#[tokio::test]
async fn a_slot_without_a_master_answers_at_once() {
    let cluster = Cluster::start();
    let p = proxy(&cluster, "").await;
    let mut a = p.raw_as("a", "pa").await;
    let slot = keyslot(&cluster, "orphan");
    for n in &cluster.nodes {
        cli(n.port, &["CLUSTER", "DELSLOTS", &slot.to_string()]);
    }
    let other = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| keyslot(&cluster, &format!("tenant:a:{k}")) != slot)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let unserved = "-ERR upstream unavailable: no master of the cluster serves the key's slot\r\n";
    loop {
        let t = Instant::now();
        let r = a.cmd(&["GET", "{orphan}k"]).await;
        if r == unserved {
            assert!(
                t.elapsed() < Duration::from_millis(500),
                "{:?}",
                t.elapsed()
            );
            break;
        }
        assert!(Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pipeline(
        &mut a,
        &[
            vec!["SET", &other, "v"],
            vec!["GET", "{orphan}k"],
            vec!["GET", &other],
        ],
    )
    .await;
    assert_eq!(a.reply().await, "+OK\r\n");
    assert_eq!(a.reply().await, unserved);
    assert_eq!(a.reply().await, "$1\r\nv\r\n");
    assert_eq!(a.cmd(&["DBSIZE"]).await, ":1\r\n");
}

/// Generated requests of the commands respite splits by slot (MSET, MGET, EXISTS, DEL,
/// UNLINK, TOUCH), with keys that hash to every master, tags in odd places, keywords as key
/// names, repeats and odd argument counts: through respite in front of the cluster, each
/// reply is byte for byte what one Redis answers, in RESP2 and RESP3.
#[tokio::test]
async fn split_commands_answer_as_one_redis_for_generated_requests() {
    let cluster = Cluster::start();
    let p = proxy(&cluster, "").await;
    let reference = Redis::start();
    let names = [
        "k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8", "{a}x", "{a}y", "x{a}", "{b}1", "{", "}{",
        "{}k", "{}", "a{}b{c}", "MGET", "match", "COUNT", "", "nope", "é",
    ];
    let seed: u64 = std::env::var("RESPITE_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    let mut next = move |n: usize| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) % n as u64) as usize
    };
    for protocol in [2u8, 3] {
        let mut ours = p.raw_as("a", "pa").await;
        let mut theirs =
            Raw::connect(format!("127.0.0.1:{}", reference.port).parse().unwrap()).await;
        if protocol == 3 {
            for c in [&mut ours, &mut theirs] {
                c.protocol = 3;
                assert!(c.cmd(&["HELLO", "3"]).await.starts_with('%'));
            }
        }
        for case in 0..300 {
            let command = ["MSET", "MGET", "EXISTS", "DEL", "UNLINK", "TOUCH"][next(6)];
            let count = if next(10) == 0 { 40 } else { 1 + next(8) };
            let mut args = vec![command.to_string()];
            for i in 0..count {
                args.push(names[next(names.len())].to_string());
                if command == "MSET" && (i + 1 < count || next(8) != 0) {
                    args.push(format!("v{case}-{i}"));
                }
            }
            let args: Vec<&str> = args.iter().map(|a| a.as_str()).collect();
            let (got, want) = (ours.cmd(&args).await, theirs.cmd(&args).await);
            assert_eq!(
                got, want,
                "seed {seed}, RESP{protocol}, case {case}: {args:?}"
            );
        }
    }
}
