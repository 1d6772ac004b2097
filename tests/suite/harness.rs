//! Test harness: a real redis-server (from PATH) on a free port, respite in-process on port 0,
//! and clients to talk to it: the `redis` crate, and raw RESP bytes for edge cases.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use respite::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A throwaway redis-server, killed on drop.
pub struct Redis {
    pub port: u16,
    child: Child,
    _dir: TempDir,
    extra: Vec<String>,
}

/// A temporary directory removed on drop (std has none).
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p = std::env::temp_dir().join(format!("respite-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_with(&[])
    }

    /// Starts redis-server with extra `--option value` arguments. A free port can be taken by
    /// another test between being found and redis-server binding it: then this tries another.
    pub fn start_with(extra: &[&str]) -> Redis {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        for _ in 0..5 {
            let port = free_port();
            let dir = TempDir::new();
            let child = spawn_redis(port, &dir.0, &extra);
            let mut r = Redis {
                port,
                child,
                _dir: dir,
                extra: extra.clone(),
            };
            if r.wait_ready() {
                return r;
            }
            r.stop();
        }
        panic!("redis-server did not start");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Waits until this redis-server answers PING; false if it exited (its port was taken).
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return false;
            }
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                // Redis answers PING (or, with a password set, NOAUTH); nothing else here would.
                let mut reply = [0u8; 64];
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                if s.write_all(b"PING\r\n").is_ok()
                    && s.read(&mut reply).is_ok_and(|n| n > 0)
                    && (reply.starts_with(b"+PONG") || reply.starts_with(b"-NOAUTH"))
                {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts redis-server again on the same port (after `stop`).
    pub fn restart(&mut self) {
        self.stop();
        self.child = spawn_redis(self.port, &self._dir.0, &self.extra);
        assert!(
            self.wait_ready(),
            "redis-server did not restart on {}",
            self.port
        );
    }

    /// A direct connection to Redis, bypassing respite: to check what Redis really holds.
    pub async fn direct(&self) -> redis::aio::MultiplexedConnection {
        let mut url = self.url();
        if let Some(i) = self.extra.iter().position(|a| a == "--requirepass") {
            url = format!("redis://:{}@127.0.0.1:{}", self.extra[i + 1], self.port);
        }
        connect(&redis::Client::open(url).unwrap()).await
    }

    /// All keys in Redis, sorted.
    pub async fn keys(&self) -> Vec<String> {
        let mut c = self.direct().await;
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut c)
            .await
            .unwrap();
        keys.sort();
        keys
    }
}

fn spawn_redis(port: u16, dir: &std::path::Path, extra: &[String]) -> Child {
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--dir"])
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be on PATH (scripts/test.sh installs it)")
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The tenants most tests use.
pub const TENANTS: &str = r#"
[[tenants]]
id = "a"
password = "pa"

[[tenants]]
id = "b"
password = "pb"

[[tenants]]
id = "scripter"
password = "ps"
allow_scripts = true
"#;

/// respite running in this process, stopped on drop.
pub struct Proxy {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// Starts respite in front of `redis` with `extra` config (tenants, sections) appended
    /// to a `[server]` and `[upstream]` that point at it.
    pub async fn start(redis: &Redis, extra: &str) -> Proxy {
        Proxy::start_config(&format!(
            "[upstream]\nurl = \"{}\"\ncommand_timeout_ms = 2000\nconnect_timeout_ms = 500\n{extra}",
            redis.url()
        ))
        .await
    }

    pub async fn start_config(text: &str) -> Proxy {
        let config = Config::parse(text).unwrap_or_else(|e| panic!("test config: {e}\n{text}"));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        let task = tokio::spawn(async move {
            respite::run(config, None, Some(listener), s).await.unwrap();
        });
        Proxy {
            addr,
            shutdown,
            task: Some(task),
        }
    }

    /// Starts respite from the config file `path`, as the binary does: a reload (SIGHUP,
    /// `POST /reload`) reads the file again.
    pub async fn start_file(path: &std::path::Path) -> Proxy {
        let source = respite::config::Source {
            path: path.to_path_buf(),
            listen: None,
            upstream: None,
        };
        let config = source
            .load()
            .unwrap_or_else(|e| panic!("test config {}: {e}", path.display()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        let task = tokio::spawn(async move {
            respite::run(config, Some(source), Some(listener), s)
                .await
                .unwrap();
        });
        Proxy {
            addr,
            shutdown,
            task: Some(task),
        }
    }

    /// A `redis` crate connection logged in as `tenant` (password `p<tenant>`).
    pub async fn client(&self, user: &str, pass: &str) -> redis::aio::MultiplexedConnection {
        self.client_url(&format!("redis://{user}:{pass}@{}/", self.addr))
            .await
    }

    pub async fn client_url(&self, url: &str) -> redis::aio::MultiplexedConnection {
        connect(&redis::Client::open(url).unwrap()).await
    }

    pub fn redis_client(&self, user: &str, pass: &str) -> redis::Client {
        redis::Client::open(format!("redis://{user}:{pass}@{}/", self.addr)).unwrap()
    }

    pub async fn raw(&self) -> Raw {
        Raw::connect(self.addr).await
    }

    /// A raw connection already logged in as tenant `user`.
    pub async fn raw_as(&self, user: &str, pass: &str) -> Raw {
        Raw::login(self.addr, user, pass).await
    }

    /// Stops accepting and waits for the server task to finish.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The `respite` binary on the config file `config`, whose `server.listen` is 127.0.0.1:`port`,
/// once it accepts connections; its output goes nowhere unless `with` says otherwise.
pub async fn run_binary(
    config: &std::path::Path,
    port: u16,
    with: impl FnOnce(&mut Command),
) -> (Child, SocketAddr) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_respite"));
    command
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    with(&mut command);
    let child = command.spawn().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "respite did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (child, addr)
}

/// A client speaking raw RESP, for exact replies and malformed input.
pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
    pub protocol: u8,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::new(),
            protocol: 2,
        }
    }

    /// Connects and logs in as tenant `user` (for tasks that cannot borrow the proxy).
    pub async fn login(addr: SocketAddr, user: &str, pass: &str) -> Raw {
        let mut r = Raw::connect(addr).await;
        assert_eq!(r.cmd(&["AUTH", user, pass]).await, "+OK\r\n");
        r
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Sends a command as a RESP array.
    pub async fn send_cmd(&mut self, args: &[&str]) {
        let mut out = BytesMut::new();
        respite::wire::encode_request(&mut out, args.iter().map(|a| a.as_bytes()));
        self.send(&out).await;
    }

    /// Sends a command and returns its whole reply as text (RESP bytes, lossily UTF-8).
    pub async fn cmd(&mut self, args: &[&str]) -> String {
        self.send_cmd(args).await;
        self.reply().await
    }

    /// The next whole reply frame, as text. Panics after 5 s.
    pub async fn reply(&mut self) -> String {
        self.try_reply(Duration::from_secs(5))
            .await
            .expect("a reply within 5 s")
    }

    /// The next reply, or None if the connection closed or nothing came in `wait`.
    pub async fn try_reply(&mut self, wait: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(f) = respite::wire::next_frame(&mut self.buf, self.protocol).unwrap() {
                return Some(String::from_utf8_lossy(&f.raw).into_owned());
            }
            let n = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
        }
    }

    /// SETs `k0`, `k1`, ... to `value` until one is refused (a quota): that key and the
    /// refusal. Panics if 100 writes all pass.
    pub async fn set_until_refused(&mut self, value: &str) -> (String, String) {
        for i in 0..100 {
            let key = format!("k{i}");
            let r = self.cmd(&["SET", &key, value]).await;
            if r != "+OK\r\n" {
                return (key, r);
            }
        }
        panic!("the quota never stopped the writes");
    }

    /// True if the server closed the connection (EOF within 2 s).
    pub async fn closed(&mut self) -> bool {
        let mut b = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(2), self.stream.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

/// Runs a command through the `redis` crate and returns the value.
pub async fn q<T: redis::FromRedisValue>(
    c: &mut redis::aio::MultiplexedConnection,
    args: &[&str],
) -> redis::RedisResult<T> {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(c).await
}

/// A small HTTP origin for shared keys: `GET /market/<key>` answers what `set` gave that
/// key (404 otherwise), after `delay`, and counts every request it gets.
pub struct Origin {
    /// The `[shared.origin] url` for respite.
    pub url: String,
    answers: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, (u16, String)>>>,
    hits: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Origin {
    pub async fn start(delay: Duration) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/market/{{key}}", listener.local_addr().unwrap());
        let answers = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
        let hits = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
        let (a, h) = (answers.clone(), hits.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let (a, h) = (a.clone(), h.clone());
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let line = String::from_utf8_lossy(&req)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_string();
                    let path = line.split(' ').nth(1).unwrap_or("");
                    let key = path.strip_prefix("/market/").unwrap_or("").to_string();
                    *h.lock().unwrap().entry(key.clone()).or_insert(0) += 1;
                    tokio::time::sleep(delay).await;
                    let (status, body) = a
                        .lock()
                        .unwrap()
                        .get(&key)
                        .cloned()
                        .unwrap_or((404, String::new()));
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(reply.as_bytes()).await;
                });
            }
        });
        Origin {
            url,
            answers,
            hits,
            task,
        }
    }

    pub fn set(&self, key: &str, status: u16, body: &str) {
        self.answers
            .lock()
            .unwrap()
            .insert(key.to_string(), (status, body.to_string()));
    }

    pub fn hits(&self, key: &str) -> usize {
        self.hits.lock().unwrap().get(key).copied().unwrap_or(0)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The number after `field:` in an INFO reply.
pub fn info_field(info: &str, field: &str) -> i64 {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in {info}"))
        .trim()
        .parse()
        .unwrap()
}

/// A `redis` crate connection that waits up to 10 s for a reply. The crate's default, 500 ms,
/// is shorter than a blocking command a test runs, or a busy CI machine's pause.
pub async fn connect(client: &redis::Client) -> redis::aio::MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(std::time::Duration::from_secs(10)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap()
}

/// A Redis Cluster of six real redis-server processes on loopback (3 masters, 3 replicas),
/// made by `redis-cli --cluster create`. Ports below 30000, so that each node's cluster bus
/// (port + 10000) is a valid port too. Every node is killed on drop.
pub struct Cluster {
    pub nodes: Vec<Redis>,
    /// Each node's TLS port ([`Cluster::start_tls`]), beside its plain one.
    pub tls_ports: Vec<u16>,
}

/// A port in 20000..29999 free together with its cluster bus port.
fn free_cluster_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    for _ in 0..1000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64,
        );
        let port = 20000 + (h.finish() % 10000) as u16;
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10000) {
            return port;
        }
    }
    panic!("no free port pair for a cluster node");
}

impl Cluster {
    /// Starts six nodes, joins them (one replica per master), and waits until every node
    /// says `cluster_state:ok` and knows all six.
    pub fn start() -> Cluster {
        Cluster::start_with(&[])
    }

    /// [`Cluster::start`] with `extra` options for every node.
    pub fn start_with(more: &[&str]) -> Cluster {
        Cluster::start_nodes(more, None)
    }

    /// A cluster whose nodes also speak TLS, each on a port of its own, with `tls` options
    /// (certificate, key, CA) for every node; the cluster bus and replication use TLS too,
    /// so a TLS client is told the nodes' TLS ports.
    pub fn start_tls(tls: &[&str]) -> Cluster {
        Cluster::start_nodes(&[], Some(tls))
    }

    fn start_nodes(more: &[&str], tls: Option<&[&str]>) -> Cluster {
        let mut nodes = Vec::new();
        let mut tls_ports = Vec::new();
        for _ in 0..6 {
            let tls_port = tls.map(|_| free_port());
            let tls_args: Vec<String> = match (tls, tls_port) {
                (Some(args), Some(port)) => ["--tls-port".to_string(), port.to_string()]
                    .into_iter()
                    .chain(["--tls-cluster", "yes", "--tls-replication", "yes"].map(String::from))
                    .chain(args.iter().map(|s| s.to_string()))
                    .collect(),
                _ => Vec::new(),
            };
            tls_ports.extend(tls_port);
            let node = (0..5).find_map(|_| {
                let dir = TempDir::new();
                let extra: Vec<String> = [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "1000",
                    // Other masters' slots stay served while one master is down (Redis'
                    // default stops the whole cluster): what the README asks of operators.
                    "--cluster-require-full-coverage",
                    "no",
                    // Replicas in sync at once (Redis 7 waits 5 s for more replicas to
                    // share a diskless sync): a replica never synced cannot take over.
                    "--repl-diskless-sync-delay",
                    "0",
                    "--cluster-config-file",
                ]
                .iter()
                .map(|s| s.to_string())
                .chain([dir.0.join("nodes.conf").display().to_string()])
                .chain(more.iter().map(|s| s.to_string()))
                .chain(tls_args.iter().cloned())
                .collect();
                let port = free_cluster_port();
                let child = spawn_redis(port, &dir.0, &extra);
                let mut r = Redis {
                    port,
                    child,
                    _dir: dir,
                    extra,
                };
                r.wait_ready().then_some(r)
            });
            nodes.push(node.expect("a cluster node started"));
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli must be on PATH");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Cluster { nodes, tls_ports };
        cluster.wait_ok(&(0..6).collect::<Vec<_>>());
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cluster.nodes.iter().all(|n| {
            let info = cli(n.port, &["INFO", "replication"]);
            info.contains("role:master") || info.contains("master_link_status:up")
        }) {
            assert!(Instant::now() < deadline, "replicas not in sync after 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// The seed URL for respite.
    pub fn url(&self) -> String {
        self.nodes[0].url()
    }

    /// Waits (up to 20 s) until each of `nodes` answers `cluster_state:ok` with every slot
    /// served and agrees with the others on who the masters are.
    pub fn wait_ok(&self, nodes: &[usize]) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = nodes.iter().all(|&i| {
                cli(self.nodes[i].port, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
            });
            let masters: Vec<_> = nodes.iter().map(|&i| self.masters_seen_by(i)).collect();
            if ok && masters.windows(2).all(|w| w[0] == w[1]) && masters[0].len() == 3 {
                return;
            }
            assert!(Instant::now() < deadline, "cluster not ok after 20 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The ports of the masters that serve slots, as node `i` sees them, sorted.
    fn masters_seen_by(&self, i: usize) -> Vec<u16> {
        let mut ports: Vec<u16> = cli(self.nodes[i].port, &["CLUSTER", "NODES"])
            .lines()
            .filter(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                f.len() > 8 && f[2].contains("master") && !f[2].contains("fail")
            })
            .filter_map(|l| l.split(' ').nth(1)?.split(['@', ':']).nth(1)?.parse().ok())
            .collect();
        ports.sort();
        ports
    }

    /// Indexes (into `nodes`) of the masters serving slots now.
    pub fn masters(&self) -> Vec<usize> {
        let alive = (0..6)
            .find(|&i| self.nodes[i].alive())
            .expect("a live node");
        let ports = self.masters_seen_by(alive);
        (0..6)
            .filter(|&i| ports.contains(&self.nodes[i].port))
            .collect()
    }

    /// The index of the node serving `slot` as its master.
    pub fn owner(&self, slot: u16) -> usize {
        // The node that says so itself (its own `myself` line), rather than any node's view
        // of the others, which gossip updates late.
        let claims = |line: &str| {
            let f: Vec<&str> = line.split(' ').collect();
            f.len() >= 9
                && f[2].contains("master")
                && f[8..].iter().any(|r| {
                    let (a, b) = r.split_once('-').unwrap_or((r, r));
                    match (a.parse::<u16>(), b.parse::<u16>()) {
                        (Ok(a), Ok(b)) => (a..=b).contains(&slot),
                        _ => false,
                    }
                })
        };
        for i in (0..6).filter(|&i| self.nodes[i].alive()) {
            let out = cli(self.nodes[i].port, &["CLUSTER", "NODES"]);
            if out.lines().any(|l| l.contains("myself") && claims(l)) {
                return i;
            }
        }
        panic!("no owner of slot {slot}");
    }

    /// Every key on every master, sorted.
    pub async fn keys(&self) -> Vec<String> {
        let mut all = Vec::new();
        for i in self.masters() {
            all.extend(self.nodes[i].keys().await);
        }
        all.sort();
        all
    }
}

/// One redis-cli command against a node on loopback, its output as text ("" if it failed).
pub fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

impl Redis {
    /// Is the process still running (not killed by a test)?
    pub fn alive(&self) -> bool {
        std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
    }

    /// `kill -9`, the way a machine dies: no shutdown, no save.
    pub fn kill9(&mut self) {
        let _ = Command::new("kill")
            .args(["-9", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Seconds since the Unix epoch, for token claims.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// An HS256 JWT of `claims` signed with `secret`.
pub fn token(claims: serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}
