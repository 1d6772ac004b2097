//! The TOML configuration: its shape (shared/DESIGN.md is the contract), parsing, and
//! validation with errors that name the field and point at its line and column.
//!
//! Parsing is strict: unknown keys are rejected (`deny_unknown_fields`), and a setting whose
//! feature respite does not have yet is refused with an error that says so, never silently
//! ignored. Secrets live in [`Secret`], whose `Debug` prints `MASKED`; each secret setting
//! may instead name a file holding it (`password_file`, `token_file`, ...: see `secret_file`).

mod secret_file;
mod validate;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

/// A value that must never reach a log line or a `Debug` dump.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MASKED")
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub admin: Option<Spanned<AdminConfig>>,
    #[serde(default)]
    pub defaults: DefaultsConfig,
    #[serde(default)]
    pub quota: QuotaConfig,
    #[serde(default)]
    pub billing: BillingConfig,
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub shared: Option<Spanned<SharedConfig>>,
    /// Named sets of per-tenant settings (`[plans.<name>]`), picked by a tenant's `plan` or
    /// by a token's plan claim; what a plan leaves out comes from `[defaults]`.
    #[serde(default)]
    pub plans: BTreeMap<String, DefaultsConfig>,
    /// The audit trail (see `audit`); none is written without this section.
    #[serde(default)]
    pub audit: Option<Spanned<AuditConfig>>,
}

/// Shared market data (see `shared`).
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SharedConfig {
    /// Key prefixes every tenant reads by the same name (never namespaced, read-only).
    #[serde(default = "default_shared_prefixes")]
    pub prefixes: Vec<String>,
    /// Memory for the in-proxy cache of shared values.
    #[serde(default = "default_l1_max_bytes")]
    pub l1_max_bytes: u64,
    /// The longest an L1 entry lives: how stale a value another respite instance has since
    /// overwritten can be here.
    #[serde(default = "default_max_stale_ms")]
    pub max_stale_ms: u64,
    /// TTL tiers by key pattern (Redis glob `*`/`?`); the first match wins.
    #[serde(default = "default_ttl_tiers")]
    pub ttl: Vec<TtlTier>,
    /// The TTL of origin values whose key matches no tier.
    #[serde(default = "default_shared_ttl_seconds")]
    pub default_ttl_seconds: u64,
    pub origin: Option<OriginConfig>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TtlTier {
    pub pattern: String,
    pub seconds: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OriginConfig {
    /// `http://host:port/path/{key}`: where a value comes from when Redis has none.
    pub url: String,
    #[serde(default = "default_origin_timeout_ms")]
    pub timeout_ms: u64,
    /// Origin fetches one tenant's misses may cause per second on this instance; past it a
    /// miss answers nil (or, for a tenant with `rate_limit = "refuse"`, an error).
    pub fetches_per_second_per_tenant: Option<u64>,
    /// Origin fetches per second on this instance, every tenant's and refreshes together.
    pub fetches_per_second: Option<u64>,
}

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_listen")]
    pub listen: Spanned<String>,
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
    /// Sidecar mode: connections that never AUTH act as this tenant.
    pub default_tenant: Option<Spanned<String>>,
    /// Largest bulk string a client may send (Redis' proto-max-bulk-len).
    #[serde(default = "default_max_bulk_bytes")]
    pub max_bulk_bytes: usize,
    /// Most arguments in one request.
    #[serde(default = "default_max_array_len")]
    pub max_array_len: usize,
    /// How long shutdown waits for in-flight commands before closing connections.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// A connection that has not authenticated this long after it opened is closed.
    #[serde(default = "default_auth_timeout_ms")]
    pub auth_timeout_ms: u64,
    /// Connections not yet authenticated, at most: idle sockets cannot take the places of
    /// tenants' connections.
    #[serde(default = "default_max_unauthenticated")]
    pub max_unauthenticated: usize,
    /// Reply bytes one client may have asked for and not read (in respite's buffers or on
    /// their way from Redis); past it the client is closed, as Redis closes one past its
    /// client-output-buffer-limit. 0: no bound.
    #[serde(default = "default_client_output_limit_bytes")]
    pub client_output_limit_bytes: usize,
    /// Keep per-tenant command counts, hit rates and latencies (INFO, /metrics).
    #[serde(default = "default_true")]
    pub metrics: bool,
    /// Threads sessions run on. One: every session on the main thread. More: that many
    /// worker threads, each with its own sessions and shared upstream connections
    /// (`server::Workers`), so that a request and its reply never cross threads either way.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// A TLS listener beside the plain one (or instead of it, with `listen = ""`); its
    /// certificate and key are in `[server.tls]`.
    pub tls_listen: Option<Spanned<String>>,
    pub tls: Option<ServerTlsConfig>,
}

/// `[server.tls]`: what the TLS listener presents, and whom it asks for a certificate.
/// Re-read on reload, so a renewed certificate is served without a restart.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// The certificate chain, PEM, leaf first.
    pub cert_file: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// Mutual TLS: clients must present a certificate this CA (PEM) signed.
    pub client_ca_file: Option<PathBuf>,
    /// The client certificate names the tenant (its subject's common name, else the first
    /// of its DNS names that is a tenant, whichever its place among them): the connection
    /// starts logged in as that tenant, as in sidecar mode.
    #[serde(default)]
    pub tenant_from_cert: bool,
}

#[derive(Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// "standalone" (one Redis) or "cluster" (`url` and `seeds` are seed nodes of a Redis
    /// Cluster).
    #[serde(default = "default_mode")]
    pub mode: Spanned<String>,
    #[serde(default = "default_upstream_url")]
    pub url: Spanned<String>,
    /// More seed nodes (cluster mode), tried after `url` when the slot map is first read.
    #[serde(default)]
    pub seeds: Vec<Spanned<String>>,
    /// A file holding the password for every URL above that has none of its own (with the
    /// URL's user, if any). Once loaded, the password stands in those URLs.
    pub password_file: Option<Spanned<PathBuf>>,
    /// What `password_file` held, for a `--upstream` URL given after loading.
    #[serde(skip)]
    pub file_password: Option<Secret>,
    /// Where reads of tenants with `read_from_replicas` go in cluster mode: "master", or
    /// "replica-preferred" (a replica of the key's master, the master when none answers).
    #[serde(default = "default_read_from")]
    pub read_from: Spanned<String>,
    /// Connections of the pool respite's own commands use (quota bookkeeping).
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Shared connections per protocol (RESP2, RESP3) carrying stateless commands, split over
    /// the worker threads (`server.threads`; at least one each).
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// Most pinned connections (sessions with MULTI, WATCH, blocking commands, pub/sub).
    #[serde(default = "default_pinned_max")]
    pub pinned_max: usize,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_command_timeout_ms")]
    pub command_timeout_ms: u64,
    /// The CA (PEM) that signed a `rediss://` Redis' certificate, when it is not one the
    /// system trusts (a private CA, as managed Redis services use).
    pub ca_file: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub id: Spanned<String>,
    pub password: Option<Secret>,
    pub password_sha256: Option<Spanned<String>>,
    /// A file holding the password; once loaded, it is `password`.
    pub password_file: Option<Spanned<PathBuf>>,
    pub quota_bytes: Option<Spanned<u64>>,
    pub overage_bytes: Option<Spanned<u64>>,
    /// Connections this tenant may hold at once (else `[defaults]`, else unlimited).
    pub max_clients: Option<Spanned<usize>>,
    /// Pinned upstream connections this tenant may hold at once (else `[defaults]`, else
    /// only `upstream.pinned_max` bounds them).
    pub pinned_max: Option<Spanned<usize>>,
    /// EVAL/EVALSHA/SCRIPT, confined to the tenant (else `[defaults]`, else on).
    pub allow_scripts: Option<Spanned<bool>>,
    /// Trusted: its scripts run as respite's own Redis user, unconfined, also when respite
    /// cannot create ACL users, and it may use FUNCTION/FCALL (else `[defaults]`, else off).
    pub allow_unconfined_scripts: Option<Spanned<bool>>,
    /// A script of this tenant running longer is killed (else `[defaults]`, else 5,000).
    pub script_timeout_ms: Option<Spanned<u64>>,
    /// Unread reply bytes summed over the tenant's clients (else `[defaults]`, else no
    /// bound): past it, the client whose replies pass it is closed.
    pub output_limit_bytes: Option<Spanned<usize>>,
    /// Requests per second on this instance (else `[defaults]`, else no bound).
    pub ops_per_second: Option<Spanned<u64>>,
    /// Request and reply bytes per second on this instance (else `[defaults]`).
    pub bytes_per_second: Option<Spanned<u64>>,
    /// Past a rate: "delay" (stop reading the tenant's connections) or "refuse".
    pub rate_limit: Option<Spanned<String>>,
    /// Channels, patterns and shard channels one connection may be subscribed to (else
    /// `[defaults]`, else 10,000).
    pub max_subscriptions: Option<Spanned<usize>>,
    /// The most elements a negative count may ask of SRANDMEMBER, HRANDFIELD and
    /// ZRANDMEMBER (else `[defaults]`, else 1,048,576): Redis builds such replies whole.
    pub max_random_count: Option<Spanned<u64>>,
    /// Its reads may be served by replicas (cluster mode with `read_from =
    /// "replica-preferred"`; else `[defaults]`, else off): replicas lag their master.
    pub read_from_replicas: Option<Spanned<bool>>,
    /// Databases SELECT may pick, 0 to n-1 (else `[defaults]`, else 16, as Redis).
    pub databases: Option<Spanned<u32>>,
    /// "tenant"; "publisher" also writes shared keys; "admin" also runs the server-wide
    /// commands operators need (`policy`). Only ever from this entry: `[defaults]`, plans
    /// and tokens have no role, and a tenant made from a token is a "tenant".
    #[serde(default = "default_role")]
    pub role: Spanned<String>,
    /// The `[plans.<name>]` its unset settings come from (before `[defaults]`).
    pub plan: Option<Spanned<String>>,
}

impl TenantConfig {
    /// A tenant no `[[tenants]]` entry names: one a signed token vouched for, on `plan`.
    pub fn unlisted(id: &str, plan: Option<&str>) -> TenantConfig {
        TenantConfig {
            id: Spanned::new(0..0, id.to_string()),
            password: None,
            password_sha256: None,
            password_file: None,
            quota_bytes: None,
            overage_bytes: None,
            max_clients: None,
            pinned_max: None,
            allow_scripts: None,
            allow_unconfined_scripts: None,
            script_timeout_ms: None,
            output_limit_bytes: None,
            ops_per_second: None,
            bytes_per_second: None,
            rate_limit: None,
            max_subscriptions: None,
            max_random_count: None,
            read_from_replicas: None,
            databases: None,
            role: default_role(),
            plan: plan.map(|p| Spanned::new(0..0, p.to_string())),
        }
    }

    /// The SHA-256 of the tenant's password, from `password` or `password_sha256` (the
    /// first when both are set, which `validate` refuses); `None` when neither is usable.
    pub fn digest(&self) -> Option<[u8; 32]> {
        match (&self.password, &self.password_sha256) {
            (Some(p), _) => Some(sha256(p.expose().as_bytes())),
            (None, Some(h)) => parse_sha256_hex(h.get_ref()),
            (None, None) => None,
        }
    }
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

fn parse_sha256_hex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// The HTTP listener for operators (see `admin`).
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: String,
    /// Bearer token for `POST /reload`; without one, reload is by SIGHUP only.
    pub token: Option<Secret>,
    /// A file holding the token; once loaded, it is `token`.
    pub token_file: Option<Spanned<PathBuf>>,
    /// /metrics lists a tenant by name while it has a connection or did something within
    /// this many seconds: the label count follows the active tenants, not the configured.
    #[serde(default = "default_tenant_window_seconds")]
    pub tenant_window_seconds: u64,
}

/// What a tenant gets when its own entry does not say (`[defaults]`, and each
/// `[plans.<name>]`).
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultsConfig {
    pub quota_bytes: Option<u64>,
    pub overage_bytes: Option<u64>,
    /// Connections per tenant.
    pub max_clients: Option<usize>,
    /// Pinned upstream connections per tenant.
    pub pinned_max: Option<usize>,
    pub allow_scripts: Option<bool>,
    pub allow_unconfined_scripts: Option<bool>,
    pub script_timeout_ms: Option<u64>,
    pub output_limit_bytes: Option<usize>,
    pub ops_per_second: Option<u64>,
    pub bytes_per_second: Option<u64>,
    pub rate_limit: Option<String>,
    pub max_subscriptions: Option<usize>,
    pub max_random_count: Option<u64>,
    pub read_from_replicas: Option<bool>,
    pub databases: Option<u32>,
}

/// How usage is kept (see `quota`): all optional.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// How often written keys are measured and unused allowance handed back.
    #[serde(default = "default_flush_interval_ms")]
    pub flush_interval_ms: u64,
    /// A written key is measured at most this long after the write (sooner when its tenant
    /// has many such keys, nears its limit or goes idle): the usage figure lags by this
    /// much, the limit does not (writes are covered by the instance's lease meanwhile).
    #[serde(default = "default_measure_delay_ms")]
    pub measure_delay_ms: u64,
    /// How often each tenant's keys are walked and re-measured (one instance at a time).
    #[serde(default = "default_reconcile_interval_ms")]
    pub reconcile_interval_ms: u64,
    /// Pace of that walk, so it never hurts latency.
    #[serde(default = "default_reconcile_keys_per_second")]
    pub reconcile_keys_per_second: u64,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        QuotaConfig {
            flush_interval_ms: default_flush_interval_ms(),
            measure_delay_ms: default_measure_delay_ms(),
            reconcile_interval_ms: default_reconcile_interval_ms(),
            reconcile_keys_per_second: default_reconcile_keys_per_second(),
        }
    }
}

/// Daily billing roll-ups in Redis (see `billing`).
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BillingConfig {
    /// How often each instance adds what it served to `respite:metrics:<tenant>:<date>`.
    #[serde(default = "default_billing_interval_ms")]
    pub interval_ms: u64,
}

impl Default for BillingConfig {
    fn default() -> Self {
        BillingConfig {
            interval_ms: default_billing_interval_ms(),
        }
    }
}

/// A tenant's limits: writes are refused past `quota + overage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaLimits {
    pub quota: u64,
    pub overage: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub jwt: Option<Spanned<JwtConfig>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    pub hs256_secret: Option<Secret>,
    /// A file holding the HS256 secret; once loaded, it is `hs256_secret`.
    pub hs256_secret_file: Option<Spanned<PathBuf>>,
    pub rs256_public_key_file: Option<PathBuf>,
    #[serde(default = "default_tenant_claim")]
    pub tenant_claim: String,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(default)]
    pub leeway_seconds: u64,
    /// A valid token's tenant is a tenant even when no `[[tenants]]` entry names it.
    #[serde(default)]
    pub dynamic_tenants: bool,
    /// The claim naming such a tenant's `[plans.<name>]` (else `[defaults]` applies).
    #[serde(default = "default_plan_claim")]
    pub plan_claim: String,
}

/// The audit trail (`[audit]`, see `audit`): JSON lines of their own, never in the log.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The file the lines are appended to, or "-" for standard output (the log is on
    /// standard error).
    pub path: String,
    /// Distinct (tenant, shared key) pairs counted in a minute; reads of further pairs are
    /// counted in one overflow line, so a tenant reading many keys costs bounded memory. 0:
    /// shared reads are not recorded.
    #[serde(default = "default_shared_reads_max_pairs")]
    pub shared_reads_max_pairs: usize,
}

fn default_shared_reads_max_pairs() -> usize {
    10_000
}

fn default_listen() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:6380".into())
}
fn default_max_clients() -> usize {
    10_000
}
fn default_max_bulk_bytes() -> usize {
    512 * 1024 * 1024
}
fn default_max_array_len() -> usize {
    1024 * 1024
}
fn default_shutdown_grace_ms() -> u64 {
    5_000
}
fn default_auth_timeout_ms() -> u64 {
    10_000
}
fn default_max_unauthenticated() -> usize {
    1_000
}
/// More runtime threads than any machine respite runs on has cores.
const MAX_THREADS: usize = 1024;

fn default_threads() -> usize {
    1
}
fn default_mode() -> Spanned<String> {
    Spanned::new(0..0, "standalone".into())
}
fn default_read_from() -> Spanned<String> {
    Spanned::new(0..0, "master".into())
}
fn default_upstream_url() -> Spanned<String> {
    Spanned::new(0..0, "redis://127.0.0.1:6379".into())
}
/// One shared connection per core: Redis runs commands on one thread, so more connections
/// only split the batches that make sharing pay.
fn default_connections() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}
fn default_pinned_max() -> usize {
    1024
}
fn default_shared_prefixes() -> Vec<String> {
    vec!["shared:market:".into()]
}
fn default_l1_max_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_max_stale_ms() -> u64 {
    1_000
}
fn default_ttl_tiers() -> Vec<TtlTier> {
    [
        ("shared:market:*:price", 60),
        ("shared:market:*:1m:ohlcv", 300),
        ("shared:market:*:1d:ohlcv", 3600),
    ]
    .into_iter()
    .map(|(p, s)| TtlTier {
        pattern: p.into(),
        seconds: s,
    })
    .collect()
}
/// A tenant's own setting, else the `[defaults]` one.
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 10_000;
pub const DEFAULT_MAX_RANDOM_COUNT: u64 = 1024 * 1024;
/// Redis' own default for `databases`.
pub const DEFAULT_DATABASES: u32 = 16;
/// Redis' own bound for `databases` (INT_MAX).
pub const MAX_DATABASES: u32 = i32::MAX as u32;

/// A tenant's caps on commands whose cost Redis does not bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub max_subscriptions: usize,
    pub max_random_count: u64,
}

impl Default for Caps {
    fn default() -> Caps {
        Caps {
            max_subscriptions: DEFAULT_MAX_SUBSCRIPTIONS,
            max_random_count: DEFAULT_MAX_RANDOM_COUNT,
        }
    }
}

/// A tenant's rates (`ops_per_second`, `bytes_per_second`, `rate_limit = "refuse"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateSettings {
    pub ops_per_second: Option<u64>,
    pub bytes_per_second: Option<u64>,
    pub refuse: bool,
}

/// A tenant script running longer than this is killed, unless configured otherwise.
pub const DEFAULT_SCRIPT_TIMEOUT_MS: u64 = 5_000;

/// What a tenant's scripts may do (`allow_scripts`, `allow_unconfined_scripts`,
/// `script_timeout_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScriptRights {
    pub allowed: bool,
    pub unconfined: bool,
    pub timeout_ms: u64,
}

impl Default for ScriptRights {
    fn default() -> ScriptRights {
        ScriptRights {
            allowed: true,
            unconfined: false,
            timeout_ms: DEFAULT_SCRIPT_TIMEOUT_MS,
        }
    }
}

fn default_client_output_limit_bytes() -> usize {
    32 * 1024 * 1024
}

fn own_or<T: Copy>(own: &Option<Spanned<T>>, default: Option<T>) -> Option<T> {
    own.as_ref().map(|v| *v.get_ref()).or(default)
}
fn default_shared_ttl_seconds() -> u64 {
    60
}
fn default_origin_timeout_ms() -> u64 {
    2_000
}
fn default_billing_interval_ms() -> u64 {
    60_000
}
fn default_true() -> bool {
    true
}
fn default_pool_size() -> usize {
    4
}
fn default_flush_interval_ms() -> u64 {
    50
}
fn default_measure_delay_ms() -> u64 {
    2_000
}
fn default_reconcile_interval_ms() -> u64 {
    300_000
}
fn default_reconcile_keys_per_second() -> u64 {
    10_000
}
fn default_connect_timeout_ms() -> u64 {
    1_000
}
fn default_command_timeout_ms() -> u64 {
    5_000
}
fn default_role() -> Spanned<String> {
    Spanned::new(0..0, "tenant".into())
}
fn default_tenant_window_seconds() -> u64 {
    300
}
fn default_plan_claim() -> String {
    "plan".into()
}
fn default_tenant_claim() -> String {
    "tenant_id".into()
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            max_clients: default_max_clients(),
            default_tenant: None,
            max_bulk_bytes: default_max_bulk_bytes(),
            max_array_len: default_max_array_len(),
            shutdown_grace_ms: default_shutdown_grace_ms(),
            auth_timeout_ms: default_auth_timeout_ms(),
            max_unauthenticated: default_max_unauthenticated(),
            client_output_limit_bytes: default_client_output_limit_bytes(),
            metrics: true,
            threads: default_threads(),
            tls_listen: None,
            tls: None,
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            mode: default_mode(),
            url: default_upstream_url(),
            seeds: Vec::new(),
            password_file: None,
            file_password: None,
            read_from: default_read_from(),
            pool_size: default_pool_size(),
            connections: default_connections(),
            pinned_max: default_pinned_max(),
            connect_timeout_ms: default_connect_timeout_ms(),
            command_timeout_ms: default_command_timeout_ms(),
            ca_file: None,
        }
    }
}

impl fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("url", &mask_url_password(self.url.get_ref()))
            .field("password_file", &self.password_file)
            .field("pool_size", &self.pool_size)
            .field("connections", &self.connections)
            .field("pinned_max", &self.pinned_max)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("command_timeout_ms", &self.command_timeout_ms)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// The URL with its password (if any) replaced by `MASKED`, for logs and Debug output.
pub fn mask_url_password(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("MASKED"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<not a URL>".to_string(),
    }
}

/// One problem in a config file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line and column, when the problem has a place in the file.
    pub at: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some((line, col)) => write!(f, "line {line}, column {col}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// All the problems found in one file.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Is `id` a valid tenant id: `[A-Za-z0-9_-]{1,64}` (no glob characters, no `{}`, no `:`).
pub fn valid_tenant_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Where the upstream Redis is and how to log in to it, from `upstream.url`.
#[derive(Debug, Clone)]
pub struct UpstreamAddr {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub db: u32,
    /// `rediss://`: TLS, with the host name as SNI and the name the certificate must carry.
    pub tls: bool,
}

impl UpstreamAddr {
    pub fn parse(text: &str) -> Result<Self, String> {
        let url = url::Url::parse(text).map_err(|e| format!("not a URL ({e})"))?;
        if url.fragment().is_some() || url.query().is_some() {
            // redis-rs reads `#insecure` (no certificate check) and `?protocol=...` from
            // these; respite's own connections would not: one behaviour, none of them.
            return Err("a URL with #fragment or ?query is not supported".into());
        }
        let tls = match url.scheme() {
            "redis" => false,
            "rediss" => true,
            other => {
                return Err(format!(
                    "scheme must be redis:// or rediss://, not {other}://"
                ))
            }
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or("the URL has no host")?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let decode = |s: &str| {
            percent_decode(s)
                .ok_or_else(|| "credentials are not valid percent-encoding".to_string())
        };
        let username = match url.username() {
            "" => None,
            u => Some(decode(u)?),
        };
        let password = url.password().map(decode).transpose()?.map(Secret);
        let db = match url.path().trim_start_matches('/') {
            "" => 0,
            n => n
                .parse()
                .map_err(|_| format!("database {n:?} in the URL path is not a number"))?,
        };
        Ok(UpstreamAddr {
            host,
            port: url.port().unwrap_or(6379),
            username,
            password,
            db,
            tls,
        })
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Where the running config came from, for a reload to read it again: the file, and the
/// command line's overrides (applied again on top of it).
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub listen: Option<String>,
    pub upstream: Option<String>,
}

impl Source {
    /// Reads, overrides and validates the config.
    pub fn load(&self) -> Result<Config, ConfigErrors> {
        let mut config = Config::load(&self.path)?;
        config.override_with(self.listen.clone(), self.upstream.clone())?;
        Ok(config)
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                at: None,
                message: format!("cannot read {}: {e}", path.display()),
            }])
        })?;
        Config::parse(&text)
    }

    /// Parses and validates config text, reading the secrets of its `*_file` settings, and
    /// returns every problem found.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                at: e.span().map(|s| line_col(text, s.start)),
                message: e.message().trim().to_string(),
            }])
        })?;
        let mut problems = config.read_secret_files();
        problems.extend(config.validate());
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(
                problems
                    .into_iter()
                    .map(|(span, message)| ConfigError {
                        at: span.filter(|s| s.end > 0).map(|s| line_col(text, s.start)),
                        message,
                    })
                    .collect(),
            ))
        }
    }

    /// The plain listener's address; `None` for `listen = ""` (TLS only).
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        let listen = self.server.listen.get_ref();
        (!listen.is_empty()).then(|| listen.parse().expect("validated in Config::parse"))
    }

    /// `[shared] prefixes`, as tenants hold them (none without `[shared]`).
    pub fn shared_prefixes(&self) -> Arc<[bytes::Bytes]> {
        self.shared
            .as_ref()
            .map(|s| {
                s.get_ref()
                    .prefixes
                    .iter()
                    .map(|p| bytes::Bytes::from(p.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The TLS config for a `rediss://` upstream; `None` for `redis://`.
    pub fn upstream_tls(
        &self,
    ) -> Result<Option<Arc<tokio_rustls::rustls::ClientConfig>>, crate::transport::TlsError> {
        if !self.upstream_addr().tls {
            return Ok(None);
        }
        let ca = self
            .upstream
            .ca_file
            .as_ref()
            .map(|c| c.get_ref().as_path());
        crate::transport::client_config(ca).map(Some)
    }

    /// The TLS listener's certificates, if there is a TLS listener.
    pub fn server_tls(
        &self,
    ) -> Result<Option<crate::transport::ServerTls>, crate::transport::TlsError> {
        let (Some(_), Some(tls)) = (&self.server.tls_listen, &self.server.tls) else {
            return Ok(None);
        };
        let ca = tls.client_ca_file.as_deref();
        let config = crate::transport::server_config(&tls.cert_file, &tls.key_file, ca)?;
        Ok(Some(crate::transport::ServerTls::new(
            config,
            tls.tenant_from_cert,
        )))
    }

    /// The TLS listener's address, if there is one.
    pub fn tls_listen_addr(&self) -> Option<SocketAddr> {
        let listen = self.server.tls_listen.as_ref()?;
        Some(
            listen
                .get_ref()
                .parse()
                .expect("validated in Config::parse"),
        )
    }

    /// A setting the tenant's own entry leaves out: its plan's, else `[defaults]`'s.
    fn inherited<T>(
        &self,
        t: &TenantConfig,
        f: impl Fn(&DefaultsConfig) -> Option<T>,
    ) -> Option<T> {
        t.plan
            .as_ref()
            .and_then(|p| self.plans.get(p.get_ref()))
            .and_then(&f)
            .or_else(|| f(&self.defaults))
    }

    /// The connections the tenant may hold: its own cap, else its plan's or `[defaults]`'s;
    /// `None`: no cap.
    pub fn tenant_max_clients(&self, t: &TenantConfig) -> Option<usize> {
        own_or(&t.max_clients, self.inherited(t, |d| d.max_clients))
    }

    /// The pinned connections the tenant may hold: its own cap, else inherited.
    pub fn tenant_pinned_max(&self, t: &TenantConfig) -> Option<usize> {
        own_or(&t.pinned_max, self.inherited(t, |d| d.pinned_max))
    }

    /// The tenant's caps on commands of unbounded cost: its own, else inherited.
    pub fn tenant_caps(&self, t: &TenantConfig) -> Caps {
        Caps {
            max_subscriptions: own_or(
                &t.max_subscriptions,
                self.inherited(t, |d| d.max_subscriptions),
            )
            .unwrap_or(DEFAULT_MAX_SUBSCRIPTIONS),
            max_random_count: own_or(
                &t.max_random_count,
                self.inherited(t, |d| d.max_random_count),
            )
            .unwrap_or(DEFAULT_MAX_RANDOM_COUNT),
        }
    }

    /// The tenant's rates on this instance: its own, else inherited.
    pub fn tenant_rates(&self, t: &TenantConfig) -> RateSettings {
        RateSettings {
            ops_per_second: own_or(&t.ops_per_second, self.inherited(t, |d| d.ops_per_second)),
            bytes_per_second: own_or(
                &t.bytes_per_second,
                self.inherited(t, |d| d.bytes_per_second),
            ),
            refuse: match &t.rate_limit {
                Some(r) => r.get_ref() == "refuse",
                None => self.inherited(t, |d| d.rate_limit.clone()).as_deref() == Some("refuse"),
            },
        }
    }

    /// The databases the tenant's connections may SELECT: its own count, else inherited,
    /// else Redis' 16.
    pub fn tenant_databases(&self, t: &TenantConfig) -> u32 {
        own_or(&t.databases, self.inherited(t, |d| d.databases)).unwrap_or(DEFAULT_DATABASES)
    }

    /// The tenant's bound on its clients' unread replies: its own, else inherited.
    pub fn tenant_output_limit(&self, t: &TenantConfig) -> Option<usize> {
        own_or(
            &t.output_limit_bytes,
            self.inherited(t, |d| d.output_limit_bytes),
        )
    }

    /// What the tenant's scripts may do: its own settings, else inherited.
    pub fn tenant_scripts(&self, t: &TenantConfig) -> ScriptRights {
        let unconfined = own_or(
            &t.allow_unconfined_scripts,
            self.inherited(t, |d| d.allow_unconfined_scripts),
        );
        ScriptRights {
            allowed: own_or(&t.allow_scripts, self.inherited(t, |d| d.allow_scripts))
                .unwrap_or(true),
            unconfined: unconfined.unwrap_or(false),
            timeout_ms: own_or(
                &t.script_timeout_ms,
                self.inherited(t, |d| d.script_timeout_ms),
            )
            .unwrap_or(DEFAULT_SCRIPT_TIMEOUT_MS),
        }
    }

    /// Whether the tenant's reads go to replicas: it opted in (or its plan or `[defaults]`
    /// did) and the upstream is a cluster read with `read_from = "replica-preferred"`.
    pub fn tenant_reads_replicas(&self, t: &TenantConfig) -> bool {
        let opted = own_or(
            &t.read_from_replicas,
            self.inherited(t, |d| d.read_from_replicas),
        );
        self.cluster()
            && self.upstream.read_from.get_ref() == "replica-preferred"
            && opted.unwrap_or(false)
    }

    /// The tenant's quota and overage: its own, else inherited; `None` means unlimited.
    pub fn limits(&self, t: &TenantConfig) -> Option<QuotaLimits> {
        let quota = own_or(&t.quota_bytes, self.inherited(t, |d| d.quota_bytes))?;
        let overage = own_or(&t.overage_bytes, self.inherited(t, |d| d.overage_bytes)).unwrap_or(0);
        Some(QuotaLimits { quota, overage })
    }

    /// Usage is kept once any tenant or plan has a quota; without one, writes cost nothing
    /// extra.
    pub fn quotas_enabled(&self) -> bool {
        self.defaults.quota_bytes.is_some()
            || self.plans.values().any(|p| p.quota_bytes.is_some())
            || self.tenants.iter().any(|t| t.quota_bytes.is_some())
    }

    pub fn upstream_addr(&self) -> UpstreamAddr {
        UpstreamAddr::parse(self.upstream.url.get_ref()).expect("validated in Config::parse")
    }

    /// Is the upstream a Redis Cluster?
    pub fn cluster(&self) -> bool {
        self.upstream.mode.get_ref() == "cluster"
    }

    /// The seed nodes of a cluster: `url`, then `seeds`.
    pub fn seed_addrs(&self) -> Vec<UpstreamAddr> {
        std::iter::once(&self.upstream.url)
            .chain(&self.upstream.seeds)
            .map(|u| UpstreamAddr::parse(u.get_ref()).expect("validated in Config::parse"))
            .collect()
    }

    /// Applies the command line's `--listen` / `--upstream`, checking them like the file's.
    pub fn override_with(
        &mut self,
        listen: Option<String>,
        upstream: Option<String>,
    ) -> Result<(), ConfigErrors> {
        if let Some(l) = listen {
            self.server.listen = Spanned::new(0..0, l);
        }
        let mut problems = Vec::new();
        if let Some(u) = upstream {
            self.upstream.url = Spanned::new(0..0, u);
            if let Some(p) = &self.upstream.file_password {
                if let Err(e) = secret_file::with_password(&mut self.upstream.url, p) {
                    problems.push((None, e));
                }
            }
        }
        problems.extend(self.validate());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(
                problems
                    .into_iter()
                    .map(|(_, message)| ConfigError { at: None, message })
                    .collect(),
            ))
        }
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_is_masked() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "MASKED");
    }

    #[test]
    fn upstream_url_with_credentials_and_db() {
        let a = UpstreamAddr::parse("redis://app%40x:p%3Ass@10.0.0.1:6390/2").unwrap();
        assert_eq!((a.host.as_str(), a.port, a.db), ("10.0.0.1", 6390, 2));
        assert_eq!(a.username.as_deref(), Some("app@x"));
        assert_eq!(a.password.unwrap().expose(), "p:ss");
        assert!(UpstreamAddr::parse("http://x").is_err());
        assert!(UpstreamAddr::parse("rediss://x:6380/#insecure").is_err());
        assert!(UpstreamAddr::parse("redis://x:6379/?protocol=resp3").is_err());
        assert!(!a.tls);
        let tls = UpstreamAddr::parse("rediss://redis.example.com:6380").unwrap();
        assert!(tls.tls && tls.host == "redis.example.com" && tls.port == 6380);
    }

    #[test]
    fn line_and_column() {
        assert_eq!(line_col("a\nbc\nd", 3), (2, 2));
        assert_eq!(line_col("abc", 0), (1, 1));
    }
}
