//! Authentication: passwords, tenant + password, hashed passwords, HELLO AUTH, JWT, sidecar
//! mode, switching tenant.

use crate::harness::*;

const NOAUTH: &str = "-NOAUTH Authentication required.\r\n";
const WRONGPASS: &str = "-WRONGPASS invalid username-password pair or user is disabled.\r\n";

#[tokio::test]
async fn only_auth_hello_quit_reset_before_auth() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, TENANTS).await;
    let mut c = proxy.raw().await;
    assert_eq!(c.cmd(&["PING"]).await, NOAUTH);
    assert_eq!(c.cmd(&["PING", "hi"]).await, NOAUTH);
    assert_eq!(c.cmd(&["GET", "k"]).await, NOAUTH);
    assert_eq!(c.cmd(&["CONFIG", "GET", "x"]).await, NOAUTH);
    assert_eq!(
        c.cmd(&["NOSUCHCOMMAND"]).await,
        "-ERR unknown command 'NOSUCHCOMMAND', with args beginning with: \r\n"
    );
    assert_eq!(c.cmd(&["RESET"]).await, "+RESET\r\n");
    assert_eq!(c.cmd(&["QUIT"]).await, "+OK\r\n");
    assert!(c.closed().await);
    assert!(redis.keys().await.is_empty());
}

#[tokio::test]
async fn password_forms_and_failures() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, TENANTS).await;
    let mut c = proxy.raw().await;
    assert_eq!(c.cmd(&["AUTH", "nope"]).await, WRONGPASS);
    assert_eq!(
        c.cmd(&["AUTH", "a", "pb"]).await,
        WRONGPASS,
        "b's password is not a's"
    );
    assert_eq!(
        c.cmd(&["AUTH", "zz", "pa"]).await,
        WRONGPASS,
        "unknown tenant"
    );
    assert_eq!(
        c.cmd(&["GET", "k"]).await,
        NOAUTH,
        "failed AUTH leaves it unauthenticated"
    );
    assert_eq!(
        c.cmd(&["AUTH"]).await,
        "-ERR wrong number of arguments for 'auth' command\r\n"
    );
    assert_eq!(
        c.cmd(&["AUTH", "a", "b", "c"]).await,
        "-ERR syntax error\r\n"
    );
    assert_eq!(c.cmd(&["AUTH", "pa"]).await, "+OK\r\n");
    assert_eq!(c.cmd(&["SET", "k", "1"]).await, "+OK\r\n");
    // A failed AUTH keeps the tenant it had, as in Redis.
    assert_eq!(c.cmd(&["AUTH", "wrong"]).await, WRONGPASS);
    assert_eq!(c.cmd(&["GET", "k"]).await, "$1\r\n1\r\n");
    // `default` is Redis' default user name: AUTH default <password> works like AUTH <password>.
    let mut d = proxy.raw().await;
    assert_eq!(d.cmd(&["AUTH", "default", "pb"]).await, "+OK\r\n");
    assert_eq!(d.cmd(&["GET", "k"]).await, "$-1\r\n");
}

#[tokio::test]
async fn hashed_password() {
    let redis = Redis::start();
    let real = {
        use std::fmt::Write;
        let d = respite::config::sha256(b"hashed-secret");
        d.iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    };
    let cfg = format!("[[tenants]]\nid = \"h\"\npassword_sha256 = \"{real}\"\n");
    let proxy = Proxy::start(&redis, &cfg).await;
    let mut c = proxy.raw().await;
    assert_eq!(c.cmd(&["AUTH", "h", "hashed-secret"]).await, "+OK\r\n");
    assert_eq!(
        c.cmd(&["AUTH", real.as_str()]).await,
        WRONGPASS,
        "the digest is not the password"
    );
}

#[tokio::test]
async fn hello_with_auth_and_setname() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, TENANTS).await;
    let mut c = proxy.raw().await;
    assert!(c
        .cmd(&["HELLO", "3"])
        .await
        .starts_with("-NOAUTH HELLO must be called"));
    assert_eq!(
        c.cmd(&["HELLO", "4"]).await,
        "-NOPROTO unsupported protocol version\r\n"
    );
    assert_eq!(c.cmd(&["HELLO", "3", "AUTH", "a", "bad"]).await, WRONGPASS);
    c.send_cmd(&["HELLO", "3", "AUTH", "a", "pa", "SETNAME", "app1"])
        .await;
    c.protocol = 3;
    let hello = c.reply().await;
    assert!(
        hello.starts_with("%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n"),
        "{hello}"
    );
    assert!(hello.contains("$5\r\nproto\r\n:3\r\n"), "{hello}");
    assert_eq!(c.cmd(&["CLIENT", "GETNAME"]).await, "$4\r\napp1\r\n");
    // RESP3 replies now: a null is `_`, a map is `%`.
    assert_eq!(c.cmd(&["GET", "missing"]).await, "_\r\n");
    assert_eq!(c.cmd(&["HSET", "h", "f", "v"]).await, ":1\r\n");
    assert_eq!(
        c.cmd(&["HGETALL", "h"]).await,
        "%1\r\n$1\r\nf\r\n$1\r\nv\r\n"
    );
    // And back to RESP2.
    c.send_cmd(&["HELLO", "2"]).await;
    c.protocol = 2;
    assert!(c.reply().await.starts_with("*14\r\n"));
    assert_eq!(c.cmd(&["GET", "missing"]).await, "$-1\r\n");
    assert_eq!(redis.keys().await, vec!["tenant:a:h"]);
}

#[tokio::test]
async fn sidecar_default_tenant() {
    let redis = Redis::start();
    let proxy = Proxy::start(
        &redis,
        &format!("[server]\ndefault_tenant = \"a\"\n{TENANTS}"),
    )
    .await;
    let mut c = proxy.raw().await;
    assert_eq!(c.cmd(&["SET", "k", "v"]).await, "+OK\r\n");
    assert_eq!(redis.keys().await, vec!["tenant:a:k"]);
    // It can still log in as another tenant.
    assert_eq!(c.cmd(&["AUTH", "b", "pb"]).await, "+OK\r\n");
    assert_eq!(c.cmd(&["GET", "k"]).await, "$-1\r\n");
}

#[tokio::test]
async fn second_auth_switches_tenant_cleanly() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, TENANTS).await;
    let mut c = proxy.raw_as("a", "pa").await;
    assert_eq!(c.cmd(&["SET", "k", "from-a"]).await, "+OK\r\n");
    assert_eq!(c.cmd(&["WATCH", "k"]).await, "+OK\r\n");
    assert_eq!(c.cmd(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(c.cmd(&["SET", "k", "in-multi"]).await, "+QUEUED\r\n");
    // AUTH inside MULTI is refused like any command that cannot be queued.
    assert!(c.cmd(&["AUTH", "b", "pb"]).await.starts_with("-ERR"));
    assert_eq!(c.cmd(&["DISCARD"]).await, "+OK\r\n");
    assert_eq!(c.cmd(&["AUTH", "b", "pb"]).await, "+OK\r\n");
    assert_eq!(
        c.cmd(&["GET", "k"]).await,
        "$-1\r\n",
        "b does not see a's key"
    );
    assert_eq!(c.cmd(&["EXEC"]).await, "-ERR EXEC without MULTI\r\n");
    assert_eq!(c.cmd(&["SET", "k", "from-b"]).await, "+OK\r\n");
    let mut d = redis.direct().await;
    assert_eq!(
        q::<String>(&mut d, &["GET", "tenant:a:k"]).await.unwrap(),
        "from-a"
    );
    assert_eq!(
        q::<String>(&mut d, &["GET", "tenant:b:k"]).await.unwrap(),
        "from-b"
    );
}

mod jwt {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "test-hs256-secret";

    async fn proxy(redis: &Redis, extra: &str) -> Proxy {
        Proxy::start(
            redis,
            &format!("{TENANTS}\n[auth.jwt]\nhs256_secret = \"{SECRET}\"\n{extra}"),
        )
        .await
    }

    #[tokio::test]
    async fn valid_tokens_log_in_as_their_tenant() {
        let redis = Redis::start();
        let proxy = proxy(&redis, "").await;
        let t = token(json!({"tenant_id": "b", "exp": now() + 60}), SECRET);
        let mut c = proxy.raw().await;
        assert_eq!(c.cmd(&["AUTH", &t]).await, "+OK\r\n");
        assert_eq!(c.cmd(&["SET", "k", "v"]).await, "+OK\r\n");
        let mut c2 = proxy.raw().await;
        assert_eq!(c2.cmd(&["AUTH", "b", &t]).await, "+OK\r\n");
        let mut c3 = proxy.raw().await;
        assert_eq!(
            c3.cmd(&["AUTH", "a", &t]).await,
            WRONGPASS,
            "tenant mismatch"
        );
        assert_eq!(redis.keys().await, vec!["tenant:b:k"]);
    }

    #[tokio::test]
    async fn bad_tokens_are_wrongpass() {
        let redis = Redis::start();
        let proxy = proxy(&redis, "issuer = \"platform\"\naudience = \"respite\"\n").await;
        let good =
            json!({"tenant_id": "a", "exp": now() + 60, "iss": "platform", "aud": "respite"});
        let mut c = proxy.raw().await;
        let cases = [
            (
                "expired",
                json!({"tenant_id": "a", "exp": now() - 10, "iss": "platform", "aud": "respite"}),
                SECRET,
            ),
            (
                "not yet valid",
                json!({"tenant_id": "a", "exp": now() + 60, "nbf": now() + 30, "iss": "platform", "aud": "respite"}),
                SECRET,
            ),
            ("bad signature", good.clone(), "another-secret"),
            (
                "no claim",
                json!({"exp": now() + 60, "iss": "platform", "aud": "respite"}),
                SECRET,
            ),
            (
                "unknown tenant",
                json!({"tenant_id": "zz", "exp": now() + 60, "iss": "platform", "aud": "respite"}),
                SECRET,
            ),
            (
                "wrong issuer",
                json!({"tenant_id": "a", "exp": now() + 60, "iss": "other", "aud": "respite"}),
                SECRET,
            ),
            (
                "wrong audience",
                json!({"tenant_id": "a", "exp": now() + 60, "iss": "platform", "aud": "other"}),
                SECRET,
            ),
        ];
        for (what, claims, secret) in cases {
            assert_eq!(
                c.cmd(&["AUTH", &token(claims, secret)]).await,
                WRONGPASS,
                "{what}"
            );
        }
        assert_eq!(c.cmd(&["AUTH", &token(good, SECRET)]).await, "+OK\r\n");
    }

    #[tokio::test]
    async fn rs256_public_key() {
        let redis = Redis::start();
        let dir = TempDir::new();
        let key = dir.0.join("pub.pem");
        std::fs::write(&key, RSA_PUBLIC).unwrap();
        let proxy = Proxy::start(
            &redis,
            &format!(
                "{TENANTS}\n[auth.jwt]\nrs256_public_key_file = \"{}\"\n",
                key.display()
            ),
        )
        .await;
        let claims = json!({"tenant_id": "a", "exp": now() + 60});
        let t = encode(
            &Header::new(jsonwebtoken::Algorithm::RS256),
            &claims,
            &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
        )
        .unwrap();
        let mut c = proxy.raw().await;
        assert_eq!(c.cmd(&["AUTH", &t]).await, "+OK\r\n");
        let hs = token(claims, SECRET);
        assert_eq!(
            proxy.raw().await.cmd(&["AUTH", &hs]).await,
            WRONGPASS,
            "HS256 is not accepted"
        );
    }

    // A 2048-bit test key made for this suite (openssl genrsa 2048).
    const RSA_PRIVATE: &str = include_str!("keys/test-rsa.pem");
    const RSA_PUBLIC: &str = include_str!("keys/test-rsa.pub.pem");
}
