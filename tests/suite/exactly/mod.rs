//! Redis, exactly: the same raw commands sent to Redis and to respite (sidecar mode, tenant
//! `suite`), and their replies compared byte for byte. One redis-server serves both: the
//! direct connection's keys are unprefixed, respite's are `tenant:suite:...`, so they never
//! meet.

mod admin;
mod attacks;
mod clients;
mod config;
mod databases;
mod errors;
mod info;
mod login;
mod pubsub;
mod tracking;

use std::time::Duration;

use crate::harness::{Proxy, Raw, Redis};

/// A raw connection straight to Redis and one through respite, fed the same commands.
pub struct Pair {
    pub redis: Raw,
    pub respite: Raw,
}

/// Redis and respite in front of it, for side-by-side replies.
pub struct Sides {
    pub redis: Redis,
    pub proxy: Proxy,
}

/// respite's config for the comparisons: sidecar mode, scripts allowed, a quota (so that
/// the quota's checks are in the path a request takes).
pub const SIDECAR: &str = r#"
[server]
default_tenant = "suite"
[[tenants]]
id = "suite"
password = "ps"
allow_scripts = true
quota_bytes = 10000000
"#;

impl Sides {
    pub async fn start() -> Sides {
        Sides::start_with(&[], "").await
    }

    /// With `redis_args` for redis-server and `extra` config for respite.
    pub async fn start_with(redis_args: &[&str], extra: &str) -> Sides {
        let redis = Redis::start_with(redis_args);
        let proxy = Proxy::start(&redis, &format!("{SIDECAR}{extra}")).await;
        Sides { redis, proxy }
    }

    pub async fn pair(&self) -> Pair {
        Pair {
            redis: Raw::connect(format!("127.0.0.1:{}", self.redis.port).parse().unwrap()).await,
            respite: self.proxy.raw().await,
        }
    }
}

impl Pair {
    /// Sends `args` to both; their replies (Redis', respite's).
    pub async fn both(&mut self, args: &[&str]) -> (String, String) {
        (self.redis.cmd(args).await, self.respite.cmd(args).await)
    }

    /// Sends `args` to both and asserts the replies are the same bytes; returns the reply.
    pub async fn same(&mut self, args: &[&str]) -> String {
        let (redis, respite) = self.both(args).await;
        assert_eq!(
            respite, redis,
            "respite's reply to {args:?} differs from Redis'"
        );
        redis
    }

    /// Sends `args` to both with no reply expected (CLIENT REPLY OFF).
    pub async fn send(&mut self, args: &[&str]) {
        self.redis.send_cmd(args).await;
        self.respite.send_cmd(args).await;
    }

    /// Sends `args` to both and asserts that the next `n` frames (replies or pushes) are
    /// the same bytes.
    pub async fn same_frames(&mut self, args: &[&str], n: usize) {
        self.send(args).await;
        for i in 0..n {
            let (redis, respite) = (self.redis.reply().await, self.respite.reply().await);
            assert_eq!(
                respite, redis,
                "frame {i} after {args:?} differs from Redis'"
            );
        }
    }

    /// The next frame from each side (a push: a message, an invalidation), asserted to be
    /// the same bytes.
    pub async fn next_same(&mut self) -> String {
        let (redis, respite) = (self.redis.reply().await, self.respite.reply().await);
        assert_eq!(respite, redis, "respite's push differs from Redis'");
        redis
    }

    /// Asserts that neither side sends anything within `wait`.
    pub async fn silent(&mut self, wait: Duration) {
        let redis = self.redis.try_reply(wait).await;
        let respite = self.respite.try_reply(wait).await;
        assert_eq!(redis, None, "Redis sent something");
        assert_eq!(respite, None, "respite sent what Redis does not");
    }

    /// Sets both sides' RESP version (HELLO `v`), as the raw readers need to know it.
    pub async fn hello(&mut self, v: u8) {
        // HELLO's own reply is in the new version already.
        self.redis.protocol = v;
        self.respite.protocol = v;
        let (a, b) = self.both(&["HELLO", &v.to_string()]).await;
        assert!(a.starts_with(if v == 3 { '%' } else { '*' }), "{a}");
        assert!(b.starts_with(if v == 3 { '%' } else { '*' }), "{b}");
    }
}
