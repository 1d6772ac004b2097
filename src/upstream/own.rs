//! respite's own connections to Redis: a pool apart from the clients' connections.

use std::path::Path;
use std::time::Duration;

use deadpool::managed;
use deadpool_redis::redis;

use crate::error::{Error, UpstreamError};

/// respite's own connections to Redis (quota bookkeeping, shared-key fills, health,
/// billing): a deadpool-redis pool apart from the clients' connections, so that they never
/// wait behind a client's pipeline, and every use bounded by `command_timeout_ms`. In
/// cluster mode a pool of redis-rs cluster connections, which route each command by its key
/// and follow redirects themselves.
#[derive(Clone)]
pub struct OwnPool {
    pool: Pools,
    timeout: Duration,
}

#[derive(Clone)]
enum Pools {
    One(deadpool_redis::Pool),
    Cluster(managed::Pool<ClusterManager>),
}

/// One of respite's own connections: to the one Redis, or to a cluster.
pub enum OwnConn {
    One(deadpool_redis::Connection),
    Cluster(managed::Object<ClusterManager>),
}

/// Makes redis-rs cluster connections for the pool. deadpool-redis has one too, but it
/// cannot be given a private CA (`upstream.ca_file`) for a `rediss://` cluster.
pub struct ClusterManager {
    client: redis::cluster::ClusterClient,
}

impl managed::Manager for ClusterManager {
    type Type = redis::cluster_async::ClusterConnection;
    type Error = redis::RedisError;

    async fn create(&self) -> Result<Self::Type, Self::Error> {
        self.client.get_async_connection().await
    }

    async fn recycle(
        &self,
        conn: &mut Self::Type,
        _: &managed::Metrics,
    ) -> managed::RecycleResult<Self::Error> {
        let () = redis::cmd("PING")
            .query_async(conn)
            .await
            .map(|_: String| ())?;
        Ok(())
    }
}

/// The private CA of a `rediss://` Redis, as redis-rs takes it.
fn certificates(ca_file: Option<&Path>) -> anyhow::Result<Option<redis::TlsCertificates>> {
    let Some(path) = ca_file else {
        return Ok(None);
    };
    let pem = crate::transport::read_key_file(path)
        .map_err(|e| anyhow::anyhow!("upstream.ca_file {}: {e}", path.display()))?;
    Ok(Some(redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    }))
}

impl redis::aio::ConnectionLike for OwnConn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            OwnConn::One(c) => c.req_packed_command(cmd),
            OwnConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            OwnConn::One(c) => c.req_packed_commands(pipeline, offset, count),
            OwnConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            OwnConn::One(c) => c.get_db(),
            OwnConn::Cluster(c) => c.get_db(),
        }
    }
}

impl OwnConn {
    /// Runs `cmd` on the node at `host:port` (cluster mode), or where its key routes it
    /// (`None`, and always with one Redis).
    pub async fn on_node<T: redis::FromRedisValue>(
        &mut self,
        cmd: &redis::Cmd,
        node: Option<(&str, u16)>,
    ) -> redis::RedisResult<T> {
        use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
        match (self, node) {
            (OwnConn::Cluster(c), Some((host, port))) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.to_string(),
                    port,
                });
                let value = c.route_command(cmd.clone(), routing).await?;
                Ok(redis::from_redis_value(value)?)
            }
            (c, _) => cmd.query_async(c).await,
        }
    }

    /// Runs every command, each where its key routes it, and returns their replies in
    /// order: one pipeline to one Redis; in a cluster, all at once over the cluster
    /// connection (a redis-rs pipeline must stay within one slot).
    pub async fn each<T: redis::FromRedisValue>(
        &mut self,
        cmds: &[redis::Cmd],
    ) -> redis::RedisResult<Vec<T>> {
        match self {
            OwnConn::Cluster(c) => {
                let conn: &redis::cluster_async::ClusterConnection = c;
                let calls = cmds.iter().map(|cmd| {
                    let mut conn = conn.clone();
                    async move { cmd.query_async::<T>(&mut conn).await }
                });
                futures_util::future::join_all(calls)
                    .await
                    .into_iter()
                    .collect()
            }
            c => {
                let mut pipe = redis::pipe();
                for cmd in cmds {
                    pipe.add_command(cmd.clone());
                }
                pipe.query_async(c).await
            }
        }
    }
}

/// Why one of respite's own requests failed.
#[derive(Debug)]
pub enum PoolError {
    /// No connection could be had.
    Unavailable(String),
    /// Redis (or the connection) answered with an error.
    Redis(redis::RedisError),
    /// No answer within the timeout (ms).
    Timeout(u64),
}

impl std::fmt::Display for PoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolError::Unavailable(why) => f.write_str(why),
            PoolError::Redis(e) => write!(f, "{e}"),
            PoolError::Timeout(ms) => write!(f, "no reply within {ms} ms"),
        }
    }
}

impl PoolError {
    /// The client's error for a failure of one of respite's own requests made for it: Redis'
    /// own error reply as it is, anything else as Redis being unavailable for `what`.
    pub fn for_client(self, what: fn(String) -> UpstreamError) -> Error {
        match self {
            PoolError::Redis(e) if e.code().is_some() => Error::Redis(format!(
                "{} {}",
                e.code().unwrap_or_default(),
                e.detail().unwrap_or("")
            )),
            PoolError::Timeout(ms) => Error::Upstream(UpstreamError::Timeout(ms)),
            other => Error::Upstream(what(other.to_string())),
        }
    }
}

impl OwnPool {
    pub fn from_config(config: &crate::config::Config) -> anyhow::Result<OwnPool> {
        let timeout = Duration::from_millis(config.upstream.command_timeout_ms);
        let settings = deadpool_redis::PoolConfig {
            max_size: config.upstream.pool_size,
            timeouts: deadpool_redis::Timeouts {
                wait: Some(timeout),
                create: Some(Duration::from_millis(config.upstream.connect_timeout_ms)),
                recycle: Some(timeout),
            },
            ..Default::default()
        };
        let runtime = deadpool_redis::Runtime::Tokio1;
        // A rediss:// URL without a ca_file trusts the system's CAs, as redis-rs does itself.
        let certs = certificates(
            config
                .upstream
                .ca_file
                .as_ref()
                .map(|c| c.get_ref().as_path()),
        )?;
        let pool = if config.cluster() {
            let urls: Vec<&str> = std::iter::once(&config.upstream.url)
                .chain(&config.upstream.seeds)
                .map(|u| u.get_ref().as_str())
                .collect();
            let mut client = redis::cluster::ClusterClientBuilder::new(urls);
            if let Some(certs) = certs {
                client = client.certs(certs);
            }
            let manager = ClusterManager {
                client: client.build()?,
            };
            Pools::Cluster(
                managed::Pool::builder(manager)
                    .config(settings)
                    .runtime(runtime)
                    .build()?,
            )
        } else {
            let url = config.upstream.url.get_ref().as_str();
            let manager = match certs {
                Some(certs) => {
                    let client = redis::Client::build_with_tls(url, certs)?;
                    deadpool_redis::Manager::new(client.get_connection_info().clone())?
                }
                None => deadpool_redis::Manager::new(url)?,
            };
            Pools::One(
                deadpool_redis::Pool::builder(manager)
                    .config(settings)
                    .runtime(runtime)
                    .build()?,
            )
        };
        Ok(OwnPool { pool, timeout })
    }

    /// Runs `f` on a pooled connection, within the command timeout.
    pub async fn run<T, F>(&self, f: F) -> Result<T, PoolError>
    where
        F: AsyncFnOnce(&mut OwnConn) -> redis::RedisResult<T>,
    {
        let work = async {
            let unavailable = |e: String| PoolError::Unavailable(e);
            let mut c = match &self.pool {
                Pools::One(p) => {
                    OwnConn::One(p.get().await.map_err(|e| unavailable(e.to_string()))?)
                }
                Pools::Cluster(p) => {
                    OwnConn::Cluster(p.get().await.map_err(|e| unavailable(e.to_string()))?)
                }
            };
            f(&mut c).await.map_err(PoolError::Redis)
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or(Err(PoolError::Timeout(self.timeout.as_millis() as u64)))
    }
}
