//! Scripts for every tenant: EVAL and friends, kept inside the tenant's namespace.
//!
//! Two parts, one for correctness and one for safety:
//!
//! - **The prelude** ([`prelude`]): every script runs behind Lua that puts the keys and
//!   channels its `redis.call`s name into the tenant's namespace, hands it `KEYS` as the
//!   tenant wrote them, and takes the prefix out of key names in replies. Keys a script
//!   builds itself (job queues pass a prefix in ARGV) land in the tenant's namespace too.
//! - **The wall: Redis' ACLs.** A script can reach the real `redis` table (through
//!   `loadstring`), so the prelude cannot be the boundary. Each tenant has a Redis ACL user
//!   (`respite-tenant-<id>`: its keys and channels, the shared prefixes read-only, only the
//!   commands [`crate::policy::allowed_in_scripts`] lets a script call), which respite
//!   creates on the tenant's first script. The session logs its upstream connection in as
//!   that user for exactly one script (`AUTH` before, respite's own login after, in the
//!   same pipeline, inside MULTI too), so Redis refuses any other key inside the script
//!   itself; a script the prelude finds running as a user that could touch respite's keys
//!   refuses to run.
//!
//! The client knows its script by the SHA1 of its own body; Redis by that of the wrapped
//! one. The mapping is kept per tenant in Redis (`respite:scripts:<prelude>:<tenant>`, so
//! every instance shares it) and cached here. SCRIPT LOAD/EXISTS/FLUSH answer per tenant.
//!
//! Runaway scripts: each script sent is noted with its deadline (`script_timeout_ms`);
//! the warden kills the oldest one in flight once past it, with SCRIPT KILL over a
//! connection of its own (Redis answers nothing else while a script runs, and the shared
//! connection is queued behind it).

pub mod library;
pub mod prelude;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use deadpool_redis::redis;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::command::{Command, COMMANDS};
use crate::config::Config;
use crate::error::Error;
use crate::tenant::Tenant;
use crate::upstream::{Connector, OwnPool};
use crate::wire::encode_request;

pub use prelude::{library_names, sha1_hex, Prelude};

/// A kill that found nothing to kill (or could not) is tried again this much later.
const RETRY: Duration = Duration::from_millis(500);

const UNKNOWN: u8 = 0;
const NO: u8 = 1;
const YES: u8 = 2;

/// Scripts as respite runs them: the prelude, the client SHA → wrapped SHA mapping, the
/// tenants' ACL users and the scripts in flight.
pub struct Scripts {
    pub prelude: Prelude,
    own: OwnPool,
    connector: Arc<Connector>,
    /// Cluster mode: a script runs on one of the masters, which respite does not track.
    cluster: Option<Arc<crate::upstream::cluster::Topology>>,
    /// (tenant prefix, client SHA) → wrapped SHA, as recorded in Redis.
    known: DashMap<(Bytes, [u8; 40]), [u8; 40]>,
    /// The AUTH of each tenant whose ACL user this instance has set up.
    users: DashMap<Bytes, [Bytes; 3]>,
    /// Can respite's Redis user create ACL users ([`UNKNOWN`], [`NO`], [`YES`])?
    acl: AtomicU8,
    /// The commands every tenant user may run, and those it may run on its own keys only.
    rules: (Vec<String>, Vec<String>),
    /// Derives the tenants' ACL passwords, so every instance sets and uses the same ones.
    secret: String,
    /// The AUTH arguments of respite's own login, sent after each confined script.
    relogin: Vec<Bytes>,
    /// The shortest `script_timeout_ms` of any tenant, to check against Redis'
    /// `busy-reply-threshold` (no kill reaches Redis before it).
    shortest_timeout_ms: u64,
    running: Arc<Running>,
}

/// Scripts in flight, oldest first, with their deadlines.
#[derive(Default)]
pub struct Running {
    runs: Mutex<BTreeMap<u64, Run>>,
    next: AtomicU64,
    changed: Notify,
    /// Scripts killed for running past their tenant's timeout.
    pub killed: AtomicU64,
}

struct Run {
    prefix: Bytes,
    tenant: String,
    deadline: Instant,
    /// The node it was sent to (cluster mode): each node runs one script at a time, the
    /// oldest sent there.
    node: Option<Arc<Connector>>,
    /// Kills that found no script running: after [`MAX_ATTEMPTS`] this one is taken to be
    /// stuck elsewhere, not running, and is left alone.
    attempts: u8,
}

/// Kills tried for one script before respite stops trying.
const MAX_ATTEMPTS: u8 = 3;

/// A script in flight; dropped when its reply is in (or its session gave up on it).
pub struct RunGuard {
    running: Arc<Running>,
    id: u64,
}

impl std::fmt::Debug for RunGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RunGuard({})", self.id)
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.running.runs.lock().unwrap().remove(&self.id);
    }
}

/// How a tenant's script reaches Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confinement {
    /// As the tenant's ACL user: AUTH with these arguments first, respite's login after.
    User { auth: [Bytes; 3] },
    /// As respite's own user (`allow_unconfined_scripts`).
    Unconfined,
}

impl Scripts {
    pub fn new(
        config: &Config,
        shortest_timeout_ms: u64,
        own: OwnPool,
        connector: Arc<Connector>,
        cluster: Option<Arc<crate::upstream::cluster::Topology>>,
    ) -> Scripts {
        let shared: Vec<Bytes> = config
            .shared
            .as_ref()
            .map(|s| s.get_ref().prefixes.clone())
            .unwrap_or_default()
            .into_iter()
            .map(Bytes::from)
            .collect();
        let addr = config.upstream_addr();
        let mut relogin = vec![Bytes::from_static(b"AUTH")];
        match &addr.password {
            Some(pass) => {
                relogin.extend(addr.username.clone().map(Bytes::from));
                relogin.push(Bytes::from(pass.expose().to_string()));
            }
            // respite logged in as `default` without a password: `default` is nopass.
            None => relogin.extend([Bytes::from_static(b"default"), Bytes::from_static(b"-")]),
        }
        Scripts {
            prelude: Prelude::new(&shared),
            own,
            connector,
            cluster,
            known: DashMap::new(),
            users: DashMap::new(),
            acl: AtomicU8::new(UNKNOWN),
            rules: command_rules(),
            secret: addr
                .password
                .as_ref()
                .map(|p| p.expose().to_string())
                .unwrap_or_default(),
            relogin,
            shortest_timeout_ms,
            running: Arc::default(),
        }
    }

    pub fn running(&self) -> &Running {
        &self.running
    }

    /// respite's own login, to send after a confined script.
    pub fn relogin(&self) -> &[Bytes] {
        &self.relogin
    }

    /// Forgets every tenant's ACL user (a reload: roles and rights may have changed); each
    /// is set up again, from its tenant's new settings, before its next script.
    pub fn forget_users(&self) {
        self.users.clear();
    }

    /// `Some(false)` once Redis has said respite's user cannot create ACL users.
    pub fn can_confine(&self) -> Option<bool> {
        match self.acl.load(Ordering::Relaxed) {
            YES => Some(true),
            NO => Some(false),
            _ => None,
        }
    }

    /// Asks Redis whether respite's user may run ACL SETUSER (at start, and again when it
    /// was not known), and warns when Redis would not take a SCRIPT KILL in time.
    pub async fn probe(&self) {
        self.probe_acl().await;
        let threshold = self
            .own
            .run(async |c| {
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("busy-reply-threshold")
                    .query_async::<Vec<String>>(c)
                    .await
            })
            .await;
        if let Ok(Some(ms)) = threshold.map(|kv| kv.get(1).and_then(|v| v.parse::<u64>().ok())) {
            if ms > self.shortest_timeout_ms {
                tracing::warn!(
                    busy_reply_threshold_ms = ms,
                    script_timeout_ms = self.shortest_timeout_ms,
                    "Redis answers nothing, SCRIPT KILL included, until a script has run for \
                     busy-reply-threshold: scripts are killed after that, not after \
                     script_timeout_ms (lower busy-reply-threshold on Redis)"
                );
            }
        }
    }

    async fn probe_acl(&self) {
        let probe = self
            .own
            .run(async |c| {
                let me: String = redis::cmd("ACL").arg("WHOAMI").query_async(c).await?;
                redis::cmd("ACL")
                    .arg("DRYRUN")
                    .arg(me)
                    .arg("ACL")
                    .arg("SETUSER")
                    .arg("respite-probe")
                    .query_async::<String>(c)
                    .await
            })
            .await;
        let (now, why) = match probe {
            Ok(ok) if ok == "OK" => (YES, String::new()),
            Ok(refusal) => (NO, refusal),
            Err(crate::upstream::PoolError::Redis(e)) => (NO, e.to_string()),
            Err(_) => return,
        };
        if self.acl.swap(now, Ordering::Relaxed) != now && now == NO {
            tracing::warn!(
                reason = %why,
                "respite's Redis user cannot run ACL SETUSER: tenant scripts cannot be \
                 confined and are refused, except for tenants with allow_unconfined_scripts"
            );
        }
    }

    /// The wrapped script's name for a tenant's `client` SHA, if this instance knows it.
    pub fn known(&self, tenant: &Tenant, client: &[u8; 40]) -> Option<[u8; 40]> {
        self.known
            .get(&(tenant.prefix.clone(), *client))
            .map(|w| *w)
    }

    /// The wrapped script's name for a tenant's `client` SHA: known here, or recorded in
    /// Redis by any instance; `None` when the tenant never loaded it (NOSCRIPT).
    pub async fn lookup(
        &self,
        tenant: &Tenant,
        client: &[u8; 40],
    ) -> Result<Option<[u8; 40]>, Error> {
        if let Some(w) = self.known(tenant, client) {
            return Ok(Some(w));
        }
        let key = self.record_key(tenant);
        let found: Option<Vec<u8>> = self
            .own
            .run(async |c| {
                redis::cmd("HGET")
                    .arg(&key)
                    .arg(&client[..])
                    .query_async(c)
                    .await
            })
            .await
            .map_err(|e| e.for_client(crate::error::UpstreamError::Bookkeeping))?;
        let wrapped = found.and_then(|w| <[u8; 40]>::try_from(&w[..]).ok());
        if let Some(w) = wrapped {
            self.known.insert((tenant.prefix.clone(), *client), w);
        }
        Ok(wrapped)
    }

    /// Notes that `client` runs as `wrapped` for the tenant: here at once, in Redis in the
    /// background the first time (an EVAL need not wait for it).
    pub fn remember(&self, tenant: &Tenant, client: [u8; 40], wrapped: [u8; 40]) {
        let old = self.known.insert((tenant.prefix.clone(), client), wrapped);
        if old != Some(wrapped) {
            let (own, key) = (self.own.clone(), self.record_key(tenant));
            tokio::spawn(async move { record(&own, &key, &client, &wrapped).await });
        }
    }

    /// As [`Scripts::remember`], waiting until Redis holds it (SCRIPT LOAD).
    pub async fn record(
        &self,
        tenant: &Tenant,
        client: [u8; 40],
        wrapped: [u8; 40],
    ) -> Result<(), Error> {
        self.known.insert((tenant.prefix.clone(), client), wrapped);
        let key = self.record_key(tenant);
        record(&self.own, &key, &client, &wrapped)
            .await
            .map_err(|e| e.for_client(crate::error::UpstreamError::Bookkeeping))
    }

    /// SCRIPT FLUSH for one tenant: its names are forgotten (Redis' script cache, which
    /// every tenant shares, is left alone).
    pub async fn forget(&self, tenant: &Tenant) -> Result<(), Error> {
        self.known.retain(|(p, _), _| *p != tenant.prefix);
        let key = self.record_key(tenant);
        self.own
            .run(async |c| redis::cmd("DEL").arg(&key).query_async::<i64>(c).await)
            .await
            .map(drop)
            .map_err(|e| e.for_client(crate::error::UpstreamError::Bookkeeping))
    }

    fn record_key(&self, tenant: &Tenant) -> String {
        format!("respite:scripts:{}:{}", self.prelude.id, tenant.id)
    }

    /// How the tenant's script runs: as its own ACL user (created on first use), or
    /// unconfined when the tenant is trusted. Refused when it must be confined and cannot.
    pub async fn confinement(&self, tenant: &Tenant) -> Result<Confinement, Error> {
        if tenant.scripts.unconfined {
            return Ok(Confinement::Unconfined);
        }
        if self.can_confine().is_none() {
            self.probe_acl().await;
        }
        if self.can_confine() == Some(false) {
            return Err(Error::NoPerm {
                command: "eval".into(),
                why: "respite's Redis user cannot create ACL users (ACL SETUSER), so this \
                      tenant's scripts cannot be confined to its keys",
            });
        }
        if let Some(auth) = self.users.get(&tenant.prefix) {
            return Ok(Confinement::User { auth: auth.clone() });
        }
        let (user, pass) = self.user(tenant);
        // Its other databases' keys: `tenant:<id>@<db>:...` (`Tenant::db_prefix`).
        let db_stem = format!("tenant:{}@", tenant.id);
        let pattern = |access: &[u8], prefix: &[u8]| [access, &glob_escape(prefix), b"*"].concat();
        let mut setuser = redis::cmd("ACL");
        setuser
            .arg("SETUSER")
            .arg(&user)
            .arg("reset")
            .arg("on")
            .arg(format!("#{}", hex::encode(Sha256::digest(&pass))))
            .arg("resetchannels")
            .arg(pattern(b"~", &tenant.prefix))
            .arg(pattern(b"~", db_stem.as_bytes()))
            .arg(pattern(b"&", &tenant.prefix));
        for p in tenant.shared.iter() {
            let access: &[u8] = if tenant.publisher { b"~" } else { b"%R~" };
            setuser.arg(pattern(access, p));
        }
        let (rules, own_keys_only) = &self.rules;
        for r in rules {
            setuser.arg(r);
        }
        if tenant.publisher {
            // Shared keys are its to write.
            for r in &own_keys_only[1..] {
                setuser.arg(r);
            }
        }
        // A selector: these commands with the tenant's own keys and nothing else.
        let mut selector = [
            b"(".as_slice(),
            &pattern(b"~", &tenant.prefix),
            b" ",
            &pattern(b"~", db_stem.as_bytes()),
        ]
        .concat();
        for r in own_keys_only {
            selector.push(b' ');
            selector.extend_from_slice(r.as_bytes());
        }
        selector.push(b')');
        setuser.arg(selector);
        self.set_up_user(&setuser).await?;
        let auth = [
            Bytes::from_static(b"AUTH"),
            Bytes::from(user),
            Bytes::from(pass),
        ];
        self.users.insert(tenant.prefix.clone(), auth.clone());
        Ok(Confinement::User { auth })
    }

    /// Runs the ACL SETUSER of a tenant's user: on the one Redis, or on every node of a
    /// cluster that takes it. A node that cannot now (busy with a script, or down) is left
    /// for later: a script of the tenant's there fails its login, which sets the user up
    /// again for the next one (`forget_user`).
    async fn set_up_user(&self, setuser: &redis::Cmd) -> Result<(), Error> {
        let for_client =
            |e: crate::upstream::PoolError| e.for_client(crate::error::UpstreamError::Bookkeeping);
        let Some(topology) = &self.cluster else {
            return self
                .own
                .run(async |c| setuser.query_async::<()>(c).await)
                .await
                .map_err(for_client);
        };
        let mut failed = None;
        let mut done = 0;
        for node in topology.nodes() {
            let at = Some((node.host.as_str(), node.port));
            match self
                .own
                .run(async |c| c.on_node::<()>(setuser, at).await)
                .await
            {
                Ok(()) => done += 1,
                Err(e) => {
                    tracing::warn!(node = %node.addr, error = %e, "ACL SETUSER of a tenant's user failed on a node");
                    failed = Some(e);
                }
            }
        }
        match (done, failed) {
            (0, Some(e)) => Err(for_client(e)),
            _ => Ok(()),
        }
    }

    /// Sets the tenant's ACL user up again before its next script.
    pub fn forget_user(&self, tenant: &Tenant) {
        self.users.remove(&tenant.prefix);
    }

    /// The tenant's ACL user and its password, the same on every instance (derived from
    /// respite's own Redis password, which only respite knows).
    fn user(&self, tenant: &Tenant) -> (String, String) {
        let mut h = Sha256::new();
        h.update(b"respite tenant script user\0");
        h.update(self.secret.as_bytes());
        h.update(b"\0");
        h.update(tenant.id.as_bytes());
        (
            format!("respite-tenant-{}", tenant.id),
            hex::encode(h.finalize()),
        )
    }

    /// Notes a script of `tenant` sent now (to `node`, in a cluster); the warden kills it
    /// past `timeout`.
    pub fn start(
        &self,
        tenant: &Tenant,
        timeout: Duration,
        node: Option<Arc<Connector>>,
    ) -> RunGuard {
        let id = self.running.next.fetch_add(1, Ordering::Relaxed);
        self.running.runs.lock().unwrap().insert(
            id,
            Run {
                prefix: tenant.prefix.clone(),
                tenant: tenant.id.clone(),
                deadline: Instant::now() + timeout,
                node,
                attempts: 0,
            },
        );
        self.running.changed.notify_one();
        RunGuard {
            running: self.running.clone(),
            id,
        }
    }

    /// SCRIPT KILL from a tenant: only a script of its own can be killed, and respite can
    /// only tell that the oldest script it has in flight (on that node, in a cluster) is the
    /// one running.
    pub async fn kill_for(&self, tenant: &Tenant, which: &[u8]) -> Bytes {
        let node = {
            let runs = self.running.runs.lock().unwrap();
            let heads = oldest_per_node(&runs);
            heads
                .into_iter()
                .find(|(_, r)| r.prefix == tenant.prefix)
                .map(|(_, r)| r.node.clone())
        };
        let Some(node) = node else {
            return crate::wire::Resp::error("NOTBUSY No scripts in execution right now.");
        };
        match self.kill(which, node.as_ref()).await {
            Ok(reply) => reply,
            Err(e) => Error::Upstream(e).to_resp(),
        }
    }

    /// SCRIPT KILL (or FUNCTION KILL) over a new connection (the shared ones wait behind
    /// the script), on `node`; without one, the one Redis (or, in a cluster, every master
    /// until one kills a script).
    async fn kill(
        &self,
        which: &[u8],
        node: Option<&Arc<Connector>>,
    ) -> Result<Bytes, crate::error::UpstreamError> {
        let connectors: Vec<Arc<Connector>> = match (node, &self.cluster) {
            (Some(n), _) => vec![n.clone()],
            (None, None) => vec![self.connector.clone()],
            (None, Some(t)) => t
                .map()
                .masters()
                .iter()
                .map(|n| n.connector.clone())
                .collect(),
        };
        let mut last = Ok(crate::wire::Resp::error(
            "NOTBUSY No scripts in execution right now.",
        ));
        for connector in connectors {
            match kill_on(&connector, which).await {
                Ok(reply) if reply.starts_with(b"-NOTBUSY") => {}
                Ok(reply) => return Ok(reply),
                Err(e) => last = Err(e),
            }
        }
        last
    }

    /// Kills scripts past their tenant's `script_timeout_ms` until `stop`.
    pub async fn watch(&self, stop: CancellationToken) {
        loop {
            // The script running on each node is the oldest sent there: the first of those
            // to pass its deadline is the one to wait for.
            let oldest = {
                let runs = self.running.runs.lock().unwrap();
                oldest_per_node(&runs)
                    .into_iter()
                    .min_by_key(|(_, r)| r.deadline)
                    .map(|(id, r)| (id, r.deadline))
            };
            let wait = async {
                match oldest {
                    Some((_, deadline)) => tokio::time::sleep_until(deadline.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.running.changed.notified() => continue,
                _ = wait => {}
            }
            let Some((id, _)) = oldest else { continue };
            let (tenant, node) = {
                let mut runs = self.running.runs.lock().unwrap();
                match runs.get_mut(&id) {
                    // Looked at again in a while, whatever the kill does.
                    Some(r) => {
                        r.deadline = Instant::now() + RETRY;
                        (r.tenant.clone(), r.node.clone())
                    }
                    None => continue,
                }
            };
            // EVAL scripts and functions have a KILL each; a busy Redis runs one or the other.
            let killed = match self.kill(b"SCRIPT", node.as_ref()).await {
                // -BUSY ... You can only call FUNCTION KILL
                Ok(r) if r.starts_with(b"-NOTBUSY") || r.starts_with(b"-BUSY") => {
                    self.kill(b"FUNCTION", node.as_ref()).await
                }
                other => other,
            };
            match killed {
                Ok(reply) if reply.starts_with(b"+OK") => {
                    self.running.killed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%tenant, "killed a script running past the tenant's script_timeout_ms");
                }
                Ok(reply) if reply.starts_with(b"-NOTBUSY") => {
                    let mut runs = self.running.runs.lock().unwrap();
                    if let Some(r) = runs.get_mut(&id) {
                        r.attempts += 1;
                        if r.attempts >= MAX_ATTEMPTS {
                            runs.remove(&id);
                        }
                    }
                }
                Ok(reply) => tracing::warn!(
                    %tenant,
                    reply = %String::from_utf8_lossy(&reply).trim_end(),
                    "a script past the tenant's script_timeout_ms could not be killed"
                ),
                Err(e) => tracing::warn!(%tenant, error = %e, "SCRIPT KILL failed"),
            }
        }
    }
}

/// The oldest run of each node (by the node it was sent to; one Redis: the oldest of all),
/// with its id: the scripts that can be running now.
fn oldest_per_node(runs: &BTreeMap<u64, Run>) -> Vec<(u64, &Run)> {
    let mut heads: Vec<(u64, &Run)> = Vec::new();
    for (id, r) in runs {
        let same = |h: &(u64, &Run)| match (&h.1.node, &r.node) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !heads.iter().any(same) {
            heads.push((*id, r));
        }
    }
    heads
}

/// SCRIPT KILL (or FUNCTION KILL) on the Redis `connector` connects to.
async fn kill_on(
    connector: &Connector,
    which: &[u8],
) -> Result<Bytes, crate::error::UpstreamError> {
    let mut conn = connector.connect(2).await?;
    let mut out = bytes::BytesMut::new();
    encode_request(&mut out, [which, b"KILL"].into_iter());
    conn.write_all(&out).await?;
    let reply = tokio::time::timeout(connector.command_timeout, conn.read_frame())
        .await
        .map_err(|_| crate::error::UpstreamError::Timeout(connector.command_timeout_ms()))??;
    Ok(reply.raw)
}

async fn record(
    own: &OwnPool,
    key: &str,
    client: &[u8; 40],
    wrapped: &[u8; 40],
) -> Result<(), crate::upstream::PoolError> {
    own.run(async |c| {
        redis::cmd("HSET")
            .arg(key)
            .arg(&client[..])
            .arg(&wrapped[..])
            .query_async::<i64>(c)
            .await
    })
    .await
    .map(drop)
}

/// The commands of a tenant's ACL user: `-@all`, the script commands, and `+command` (or
/// `+container|sub`) for every command a script may call; the second list holds those that
/// must reach only the tenant's own keys ([`crate::policy::WRITES_THROUGH_READ_ACCESS`]).
fn command_rules() -> (Vec<String>, Vec<String>) {
    // The scripts themselves run as the user.
    let mut rules: Vec<String> = [
        "-@all",
        "+eval",
        "+evalsha",
        "+eval_ro",
        "+evalsha_ro",
        "+fcall",
        "+fcall_ro",
    ]
    .map(String::from)
    .to_vec();
    let mut own_keys_only = vec!["-@all".to_string()];
    for spec in COMMANDS {
        let name = String::from_utf8_lossy(spec.name);
        if spec.subcommands.is_empty() {
            if crate::policy::allowed_in_scripts(&Command { spec, parent: None }) {
                let into = match crate::policy::WRITES_THROUGH_READ_ACCESS.contains(&&*name) {
                    true => &mut own_keys_only,
                    false => &mut rules,
                };
                into.push(format!("+{name}"));
            }
            continue;
        }
        for sub in spec.subcommands {
            let cmd = Command {
                spec: sub,
                parent: Some(spec),
            };
            if crate::policy::allowed_in_scripts(&cmd) {
                rules.push(format!("+{name}|{}", String::from_utf8_lossy(sub.name)));
            }
        }
    }
    (rules, own_keys_only)
}

/// A prefix as a literal in an ACL glob pattern.
fn glob_escape(prefix: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len());
    for &c in prefix {
        if matches!(c, b'*' | b'?' | b'[' | b']' | b'\\') {
            out.push(b'\\');
        }
        out.push(c);
    }
    out
}
