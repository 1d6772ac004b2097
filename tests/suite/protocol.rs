//! The client protocol: pipelining, inline commands, malformed and oversized requests,
//! clients that vanish or never read.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::harness::*;

#[tokio::test]
async fn ten_thousand_pipelined_commands_get_ten_thousand_replies_in_order() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, TENANTS).await;
    let mut c = proxy.raw_as("a", "pa").await;
    let mut batch = Vec::new();
    for i in 0..10_000 {
        let v = i.to_string();
        let mut out = bytes::BytesMut::new();
        // Mix forwarded commands with ones respite answers itself, to check ordering.
        let args: Vec<&str> = match i % 4 {
            0 => vec!["SET", "k", &v],
            1 => vec!["GET", "k"],
            2 => vec!["CLIENT", "GETNAME"],
            _ => vec!["INCR", "n"],
        };
        respite::wire::encode_request(&mut out, args.iter().map(|a| a.as_bytes()));
        batch.extend_from_slice(&out);
    }
    c.send(&batch).await;
    for i in 0..10_000 {
        let expect = match i % 4 {
            0 => "+OK\r\n".to_string(),
            1 => {
                let v = (i - 1).to_string();
                format!("${}\r\n{v}\r\n", v.len())
            }
            2 => "$-1\r\n".to_string(),
            _ => format!(":{}\r\n", i / 4 + 1),
        };
        assert_eq!(c.reply().await, expect, "reply {i}");
    }
}

#[tokio::test]
async fn inline_commands_like_telnet() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, TENANTS).await;
    let mut c = proxy.raw().await;
    c.send(b"PING\r\n").await;
    assert_eq!(c.reply().await, "-NOAUTH Authentication required.\r\n");
    c.send(b"AUTH pa\nSET greeting \"hello world\"\r\nGET greeting\n")
        .await;
    assert_eq!(c.reply().await, "+OK\r\n");
    assert_eq!(c.reply().await, "+OK\r\n");
    assert_eq!(c.reply().await, "$11\r\nhello world\r\n");
    c.send(b"PING\r\n").await;
    assert_eq!(c.reply().await, "+PONG\r\n");
    assert_eq!(redis.keys().await, vec!["tenant:a:greeting"]);
}

async fn protocol_error(input: &[u8], expect: &str, authenticated: bool) {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, TENANTS).await;
    let mut other = proxy.raw_as("a", "pa").await;
    let mut c = if authenticated {
        proxy.raw_as("b", "pb").await
    } else {
        proxy.raw().await
    };
    c.send(input).await;
    assert_eq!(
        c.reply().await,
        format!("-ERR Protocol error: {expect}\r\n")
    );
    assert!(
        c.closed().await,
        "the connection closes after a protocol error"
    );
    // Nothing else is affected.
    assert_eq!(other.cmd(&["PING"]).await, "+PONG\r\n");
}

#[tokio::test]
async fn malformed_requests_get_redis_protocol_errors_and_close() {
    protocol_error(b"*x\r\n", "invalid multibulk length", true).await;
    protocol_error(b"*1\r\n:1\r\n", "expected '$', got ':'", true).await;
    protocol_error(b"*1\r\n$abc\r\n", "invalid bulk length", true).await;
    protocol_error(
        b"SET k \"unbalanced\r\n",
        "unbalanced quotes in request",
        true,
    )
    .await;
}

#[tokio::test]
async fn oversized_requests_are_refused_before_buffering() {
    // Past max_array_len / max_bulk_bytes (Redis' limits by default).
    protocol_error(b"*2000000\r\n", "invalid multibulk length", true).await;
    protocol_error(b"*1\r\n$600000000\r\n", "invalid bulk length", true).await;
    // Before AUTH the limits are Redis' unauthenticated ones.
    protocol_error(b"*11\r\n", "unauthenticated multibulk length", false).await;
    protocol_error(b"*1\r\n$20000\r\n", "unauthenticated bulk length", false).await;
    let long = vec![b'a'; 70 * 1024];
    protocol_error(&long, "too big inline request", true).await;
}

#[tokio::test]
async fn errors_before_a_protocol_error_keep_their_order() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, TENANTS).await;
    let mut c = proxy.raw_as("a", "pa").await;
    c.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*1\r\n$6\r\nDBSIZE\r\n*1\r\n:oops\r\n")
        .await;
    assert_eq!(c.reply().await, "+OK\r\n");
    assert_eq!(c.reply().await, ":1\r\n");
    assert_eq!(
        c.reply().await,
        "-ERR Protocol error: expected '$', got ':'\r\n"
    );
    assert!(c.closed().await);
}

#[tokio::test]
async fn configured_request_limits() {
    let redis = Redis::start();
    let proxy = Proxy::start(
        &redis,
        &format!("[server]\nmax_bulk_bytes = 100\nmax_array_len = 5\n{TENANTS}"),
    )
    .await;
    let mut c = proxy.raw_as("a", "pa").await;
    let v = "x".repeat(100);
    assert_eq!(c.cmd(&["SET", "k", &v]).await, "+OK\r\n");
    c.send_cmd(&["SET", "k", &"x".repeat(101)]).await;
    assert_eq!(
        c.reply().await,
        "-ERR Protocol error: invalid bulk length\r\n"
    );
    let mut c = proxy.raw_as("a", "pa").await;
    c.send_cmd(&["MSET", "a", "1", "b", "2", "c"]).await;
    assert_eq!(
        c.reply().await,
        "-ERR Protocol error: invalid multibulk length\r\n"
    );
}

#[tokio::test]
async fn unknown_commands_and_wrong_arity_read_like_redis() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, TENANTS).await;
    let mut c = proxy.raw_as("a", "pa").await;
    let mut d = Raw::connect(format!("127.0.0.1:{}", redis.port).parse().unwrap()).await;
    for cmd in [
        vec!["FOO", "bar", "baz"],
        vec!["GET"],
        vec!["GET", "a", "b"],
        vec!["CLIENT", "NOSUCH"],
        vec!["CLIENT", "SETNAME"],
        vec!["SELECT", "x"],
        vec!["EVAL", "return 1", "x"],
    ] {
        let theirs = d.cmd(&cmd).await;
        assert_eq!(c.cmd(&cmd).await, theirs, "{cmd:?}");
    }
}

#[tokio::test]
async fn client_disconnecting_mid_pipeline_harms_nothing() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, TENANTS).await;
    for _ in 0..5 {
        let mut c = proxy.raw_as("a", "pa").await;
        let mut batch = Vec::new();
        for _ in 0..2000 {
            batch.extend_from_slice(b"*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n");
        }
        // Half a request at the end, then gone.
        batch.extend_from_slice(b"*2\r\n$3\r\nGET");
        c.stream.write_all(&batch).await.unwrap();
        drop(c);
    }
    let mut c = proxy.raw_as("a", "pa").await;
    assert_eq!(c.cmd(&["PING"]).await, "+PONG\r\n");
    // Every whole INCR that reached Redis ran at most once.
    let n: i64 = c
        .cmd(&["GET", "n"])
        .await
        .lines()
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap();
    assert!(n <= 10_000, "{n}");
}

#[tokio::test]
async fn a_client_that_never_reads_is_backpressured_not_buffered() {
    // Backpressure stops reading its requests; its output bound closes it if the replies
    // already asked for pass 32 MiB.
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, TENANTS).await;
    let mut c = proxy.raw_as("a", "pa").await;
    let mut setup = proxy.raw_as("a", "pa").await;
    assert_eq!(
        setup.cmd(&["SET", "big", &"x".repeat(64 * 1024)]).await,
        "+OK\r\n"
    );
    // Ask for ~85 GB of replies (32 MB of requests) without reading any: respite must stop
    // reading from us long before, so the writes stall (socket buffers hold a few MB).
    let req = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n".repeat(40_000);
    let mut sent = 0usize;
    let mut closed = false;
    let writing = async {
        for _ in 0..32 {
            if c.stream.write_all(&req).await.is_err() {
                // Past client_output_limit_bytes (32 MiB of replies in flight): closed.
                closed = true;
                return;
            }
            sent += 1;
        }
    };
    let finished = tokio::time::timeout(Duration::from_secs(3), writing)
        .await
        .is_ok();
    assert!(
        !finished || closed,
        "respite kept reading although no reply was read ({sent} MB)"
    );
    assert!(
        sent < 16,
        "respite read {sent} MB of requests from a client that reads nothing"
    );
    // Other clients are served meanwhile.
    assert_eq!(setup.cmd(&["PING"]).await, "+PONG\r\n");
}

/// Requests that arrive a few bytes at a time are answered as if sent whole: a pipeline
/// dripped in pieces, an inline command byte by byte, and a long header line in pieces that
/// carry no newline until past the inline limit, which is still refused.
#[tokio::test]
async fn requests_dripped_in_pieces_are_answered_whole() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, TENANTS).await;
    let mut c = proxy.raw_as("a", "pa").await;
    let pipeline =
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\nGET k\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
    for piece in pipeline.chunks(3) {
        c.stream.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(c.reply().await, "+OK\r\n");
    assert_eq!(c.reply().await, "$5\r\nhello\r\n");
    assert_eq!(c.reply().await, "$5\r\nhello\r\n");
    // A value that holds newlines, and one that holds none until its last bytes.
    let value = "a\nb\r\nc".repeat(100) + &"x".repeat(3000);
    let mut request = bytes::BytesMut::new();
    respite::wire::encode_request(
        &mut request,
        [&b"SET"[..], b"v", value.as_bytes()].into_iter(),
    );
    for piece in request.chunks(500) {
        c.stream.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(c.reply().await, "+OK\r\n");
    assert_eq!(
        c.cmd(&["STRLEN", "v"]).await,
        format!(":{}\r\n", value.len())
    );
    // 70 KiB of header with no newline, in pieces: refused once past the limit.
    let mut c = proxy.raw_as("a", "pa").await;
    c.stream.write_all(b"*1").await.unwrap();
    for _ in 0..70 {
        if c.stream.write_all(&[b'1'; 1024]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(
        c.reply().await,
        "-ERR Protocol error: too big mbulk count string\r\n"
    );
    assert!(c.closed().await);
}
