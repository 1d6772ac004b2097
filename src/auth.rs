//! Authentication: from `AUTH` / `HELLO ... AUTH` arguments to a [`Tenant`].
//!
//! Passwords are kept only as SHA-256 digests and compared in constant time, so a plain
//! `password` and a `password_sha256` in the config behave the same. A JWT (when `[auth.jwt]`
//! is configured) is accepted wherever a password is; its tenant comes from a claim.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use subtle::ConstantTimeEq;

use crate::config::{sha256, Config, JwtConfig};
use crate::quota::Ledgers;
use crate::tenant::Tenant;

/// Why a login failed. Every variant becomes the same `-WRONGPASS` reply (a client must not
/// learn which tenants exist); the variant is for the log line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthFailure {
    #[error("unknown tenant")]
    UnknownTenant,
    #[error("wrong password")]
    WrongPassword,
    #[error("invalid token: {0}")]
    BadToken(String),
    #[error("token expired")]
    ExpiredToken,
    #[error("token has no usable tenant claim")]
    NoTenantClaim,
    #[error("token is for another tenant")]
    TenantMismatch,
    #[error("token names a plan with no [plans.<name>] table")]
    UnknownPlan,
    #[error("token for an admin tenant, which logs in with its password only")]
    AdminByToken,
}

impl AuthFailure {
    /// The reason as the audit trail names it: one word per variant, never the secret.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthFailure::UnknownTenant => "unknown_tenant",
            AuthFailure::WrongPassword => "wrong_password",
            AuthFailure::BadToken(_) => "bad_token",
            AuthFailure::ExpiredToken => "expired_token",
            AuthFailure::NoTenantClaim => "no_tenant_claim",
            AuthFailure::TenantMismatch => "tenant_mismatch",
            AuthFailure::UnknownPlan => "unknown_plan",
            AuthFailure::AdminByToken => "admin_by_token",
        }
    }
}

struct Entry {
    tenant: Arc<Tenant>,
    digest: Option<[u8; 32]>,
    /// What its settings come to (its own, its plan's, `[defaults]`'), to tell whether a
    /// reload changed them.
    settings: Settings,
}

/// A listed tenant's settings as they come out of the config, compared across a reload.
#[derive(Debug, PartialEq)]
struct Settings {
    limits: Option<crate::config::QuotaLimits>,
    max_clients: Option<usize>,
    pinned_max: Option<usize>,
    output_limit: Option<usize>,
    scripts: crate::config::ScriptRights,
    rates: crate::config::RateSettings,
    caps: crate::config::Caps,
    reads_replicas: bool,
    databases: u32,
    role: String,
    plan: Option<String>,
}

impl Settings {
    fn of(config: &Config, t: &crate::config::TenantConfig) -> Settings {
        Settings {
            limits: config.limits(t),
            max_clients: config.tenant_max_clients(t),
            pinned_max: config.tenant_pinned_max(t),
            output_limit: config.tenant_output_limit(t),
            scripts: config.tenant_scripts(t),
            rates: config.tenant_rates(t),
            caps: config.tenant_caps(t),
            reads_replicas: config.tenant_reads_replicas(t),
            databases: config.tenant_databases(t),
            role: t.role.get_ref().clone(),
            plan: t.plan.as_ref().map(|p| p.get_ref().clone()),
        }
    }
}

struct Jwt {
    key: DecodingKey,
    validation: Validation,
    claim: String,
    /// `dynamic_tenants`: the claim naming the plan of a tenant no entry lists.
    dynamic: Option<String>,
    /// The settings it was built from, to tell whether a reload changed them.
    settings: String,
}

/// One config's tenants and how each may log in; a reload puts a new one in place.
struct Book {
    config: Arc<Config>,
    shared: Arc<[Bytes]>,
    listed: HashMap<String, Entry>,
    /// Listed tenants by their password's SHA-256, for `AUTH <password>`.
    by_digest: HashMap<[u8; 32], Arc<Tenant>>,
    /// Tenants no `[[tenants]]` entry names, made from tokens (`dynamic_tenants`), with the
    /// plan each was made on.
    unlisted: Mutex<HashMap<String, Arc<Tenant>>>,
    jwt: Option<Jwt>,
    default_tenant: Option<String>,
    /// Usage is kept (decided at start): tenants get ledgers.
    quotas: bool,
}

/// A successful login.
pub struct Login {
    pub tenant: Arc<Tenant>,
    /// When the token it came from expires (a password never does).
    pub expires: Option<SystemTime>,
    /// The generation the secret was checked under: a session that finds it moved on by
    /// the time it acts as the tenant (a reload changed passwords or keys meanwhile) checks
    /// the secret again.
    pub generation: u64,
}

/// What a reload changed among the tenants: the tenants whose connections must close, and
/// what to report.
#[derive(Debug, Default, serde::Serialize)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Listed tenants whose settings (their own, their plan's or `[defaults]`') changed,
    /// credentials aside.
    pub changed: Vec<String>,
    /// Tenants whose password changed: their connections close too.
    pub new_credentials: Vec<String>,
    /// Tenants made admins or no longer admins: their connections close too, so that
    /// nothing an admin began (a MONITOR) outlives the role, and no connection that logged
    /// in otherwise (a token, before the entry named it) becomes an admin's.
    pub admin_changed: Vec<String>,
    /// The token key, issuer, audience or claims changed: connections that logged in with
    /// a token close.
    pub token_settings: bool,
    /// `server.default_tenant` changed: connections that never logged in close.
    pub default_tenant: bool,
}

/// Every tenant and how each may log in. A reload ([`Authenticator::replace`]) swaps in a
/// new book of tenants and moves the generation on; sessions notice it at their next pass
/// and take their tenant's new settings.
pub struct Authenticator {
    book: RwLock<Arc<Book>>,
    generation: AtomicU64,
    /// Where each tenant's ledger is kept, when quotas are.
    ledgers: Option<Arc<Ledgers>>,
}

impl Authenticator {
    /// Builds from a config that [`Config::parse`] already validated; `ledgers` when usage
    /// is kept.
    pub fn from_config(
        config: Config,
        ledgers: Option<Arc<Ledgers>>,
    ) -> anyhow::Result<Authenticator> {
        let book = Book::new(config, None, ledgers.as_deref())?;
        Ok(Authenticator {
            book: RwLock::new(Arc::new(book)),
            generation: AtomicU64::new(0),
            ledgers,
        })
    }

    fn book(&self) -> Arc<Book> {
        self.book.read().unwrap().clone()
    }

    /// Moves on with every reload (and when an unlisted tenant's plan changes).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Every tenant known now: the listed ones and those made from tokens.
    pub fn tenants(&self) -> Vec<Arc<Tenant>> {
        let book = self.book();
        let mut all: Vec<_> = book.listed.values().map(|e| e.tenant.clone()).collect();
        all.extend(book.unlisted.lock().unwrap().values().cloned());
        all
    }

    /// The tenant called `id` now, listed or made from a token.
    pub fn tenant(&self, id: &str) -> Option<Arc<Tenant>> {
        self.book().get(id)
    }

    /// Sidecar mode: the tenant of connections that never authenticate.
    pub fn default_tenant(&self) -> Option<Arc<Tenant>> {
        let book = self.book();
        book.default_tenant.as_deref().and_then(|id| book.get(id))
    }

    /// The config in effect, without its `[[tenants]]` (each is kept as its [`Tenant`]
    /// only: ten thousand entries would double what tenants cost in memory).
    pub fn config(&self) -> Arc<Config> {
        self.book().config.clone()
    }

    /// `AUTH <secret>` or `AUTH <tenant> <secret>`; the secret is a password or a JWT.
    /// `default` as the user name means none, as Redis' default user does.
    pub fn login(&self, user: Option<&[u8]>, secret: &[u8]) -> Result<Login, AuthFailure> {
        // Read before the book: a reload that swaps the book moves it on after.
        let generation = self.generation();
        let book = self.book();
        let user = user.filter(|u| *u != b"default");
        let digest = sha256(secret);
        let login = |tenant: Arc<Tenant>, expires| Login {
            tenant,
            expires,
            generation,
        };
        match user {
            Some(user) => {
                let named = std::str::from_utf8(user).ok();
                let entry = named.and_then(|u| book.listed.get(u));
                if let Some(e) = entry {
                    if e.digest.is_some_and(|d| bool::from(d.ct_eq(&digest))) {
                        return Ok(login(e.tenant.clone(), None));
                    }
                }
                let (id, plan, expires) = book.verify_jwt(secret).map_err(|e| match e {
                    // Not a token, for a name no tenant has: the log says which it was.
                    AuthFailure::WrongPassword
                        if entry.is_none() && named.and_then(|n| book.get(n)).is_none() =>
                    {
                        AuthFailure::UnknownTenant
                    }
                    e => e,
                })?;
                if named != Some(id.as_str()) {
                    return Err(match entry.is_some() || book.may_make(&id) {
                        true => AuthFailure::TenantMismatch,
                        false => AuthFailure::UnknownTenant,
                    });
                }
                Ok(login(self.vouched(book, &id, plan)?, Some(expires)))
            }
            // Found by the password's digest (no two tenants share one): the time taken
            // does not depend on how many tenants there are, nor say which one matched.
            None => match book.by_digest.get(&digest) {
                Some(t) => Ok(login(t.clone(), None)),
                None if book.jwt.is_some() && looks_like_jwt(secret) => {
                    let (id, plan, expires) = book.verify_jwt(secret)?;
                    Ok(login(self.vouched(book, &id, plan)?, Some(expires)))
                }
                None => Err(AuthFailure::WrongPassword),
            },
        }
    }

    /// The tenant a valid token names: listed, or (`dynamic_tenants`) made on the token's
    /// plan, or made anew when the token names another plan than the one it was made on.
    fn vouched(
        &self,
        mut book: Arc<Book>,
        id: &str,
        plan: Option<String>,
    ) -> Result<Arc<Tenant>, AuthFailure> {
        loop {
            if let Some(e) = book.listed.get(id) {
                // Whoever can have a token minted for an id (a platform that lets customers
                // name their tenant) must not become an operator by naming this one.
                return match e.tenant.admin {
                    true => Err(AuthFailure::AdminByToken),
                    false => Ok(e.tenant.clone()),
                };
            }
            if !book.may_make(id) {
                return Err(AuthFailure::UnknownTenant);
            }
            if plan
                .as_ref()
                .is_some_and(|p| !book.config.plans.contains_key(p))
            {
                return Err(AuthFailure::UnknownPlan);
            }
            let mut unlisted = book.unlisted.lock().unwrap();
            // A reload holds this lock from reading the unlisted tenants to putting its
            // book in place: a tenant made in a book that is no longer current would be
            // lost to the new one. Make it in the current book instead.
            let current = self.book();
            if !Arc::ptr_eq(&current, &book) {
                drop(unlisted);
                book = current;
                continue;
            }
            let was = unlisted.get(id).cloned();
            if let Some(t) = &was {
                if t.plan == plan {
                    return Ok(t.clone());
                }
            }
            let tenant = Arc::new(book.make(id, plan.as_deref(), was.as_deref()));
            if let (Some(ledgers), Some(l)) = (&self.ledgers, &tenant.ledger) {
                ledgers.insert(l);
            }
            unlisted.insert(id.to_string(), tenant.clone());
            drop(unlisted);
            if was.is_some() {
                // Its connections take the new plan at their next pass.
                self.generation.fetch_add(1, Ordering::AcqRel);
            }
            return Ok(tenant);
        }
    }

    /// Puts `config`'s tenants in place of the current ones (a reload): tenants that stay
    /// keep what they gathered and take their new settings; unlisted tenants stay on their
    /// plans while `dynamic_tenants` is on. Returns what changed.
    pub fn replace(&self, config: Config) -> anyhow::Result<Changes> {
        let old = self.book();
        // Held until the new book is in place: no token makes a tenant in the old one
        // meanwhile (see `vouched`).
        let old_unlisted = old.unlisted.lock().unwrap();
        let new = Book::new(config, Some((&old, &old_unlisted)), self.ledgers.as_deref())?;
        let mut changes = Changes {
            token_settings: old.jwt.as_ref().map(|j| &j.settings)
                != new.jwt.as_ref().map(|j| &j.settings),
            default_tenant: old.default_tenant != new.default_tenant,
            ..Changes::default()
        };
        for (id, e) in &new.listed {
            match old.listed.get(id) {
                None if !old_unlisted.contains_key(id) => changes.added.push(id.clone()),
                Some(was) => {
                    if was.digest != e.digest {
                        changes.new_credentials.push(id.clone());
                    }
                    if was.settings != e.settings {
                        changes.changed.push(id.clone());
                    }
                }
                None => {}
            }
            let was_admin = old.listed.get(id).is_some_and(|was| was.tenant.admin);
            if was_admin != e.tenant.admin {
                changes.admin_changed.push(id.clone());
            }
        }
        let unlisted = new.unlisted.lock().unwrap();
        let gone = old
            .listed
            .keys()
            .chain(old_unlisted.keys())
            .filter(|id| !new.listed.contains_key(*id) && !unlisted.contains_key(*id))
            .cloned()
            .collect::<Vec<_>>();
        drop(unlisted);
        if let Some(ledgers) = &self.ledgers {
            for id in &gone {
                ledgers.retire(format!("tenant:{id}:").as_bytes());
            }
        }
        changes.removed = gone;
        changes.added.sort();
        changes.removed.sort();
        changes.changed.sort();
        changes.new_credentials.sort();
        changes.admin_changed.sort();
        *self.book.write().unwrap() = Arc::new(new);
        self.generation.fetch_add(1, Ordering::AcqRel);
        drop(old_unlisted);
        Ok(changes)
    }
}

impl Book {
    /// The tenants of `config`; those of `was` (the book before a reload) carry over.
    fn new(
        mut config: Config,
        was: Option<(&Book, &HashMap<String, Arc<Tenant>>)>,
        ledgers: Option<&Ledgers>,
    ) -> anyhow::Result<Book> {
        let shared = config.shared_prefixes();
        let jwt = config
            .auth
            .jwt
            .as_ref()
            .map(|j| Jwt::from_config(j.get_ref()))
            .transpose()?;
        let quotas = ledgers.is_some();
        let mut listed = HashMap::with_capacity(config.tenants.len());
        for t in std::mem::take(&mut config.tenants) {
            let id = t.id.get_ref();
            let before = was.and_then(|(book, unlisted)| match book.listed.get(id) {
                Some(e) => Some(e.tenant.clone()),
                None => unlisted.get(id).cloned(),
            });
            let tenant = Tenant::from_config(&config, &t, &shared, quotas, before.as_deref());
            if let (Some(ledgers), Some(l)) = (ledgers, &tenant.ledger) {
                ledgers.insert(l);
            }
            let entry = Entry {
                tenant: Arc::new(tenant),
                digest: t.digest(),
                settings: Settings::of(&config, &t),
            };
            listed.insert(id.clone(), entry);
        }
        let mut book = Book {
            default_tenant: config
                .server
                .default_tenant
                .as_ref()
                .map(|d| d.get_ref().clone()),
            config: Arc::new(config),
            shared,
            by_digest: listed
                .values()
                .filter_map(|e: &Entry| Some((e.digest?, e.tenant.clone())))
                .collect(),
            listed,
            unlisted: Mutex::default(),
            jwt,
            quotas,
        };
        // Unlisted tenants stay, on their plans, while tokens may still make them.
        if let Some((_, was)) = was {
            let mut unlisted = HashMap::new();
            for (id, t) in was.iter() {
                let plan_kept = t
                    .plan
                    .as_ref()
                    .is_none_or(|p| book.config.plans.contains_key(p));
                if book.may_make(id) && plan_kept {
                    let made = book.make(id, t.plan.as_deref(), Some(t));
                    unlisted.insert(id.clone(), Arc::new(made));
                }
            }
            book.unlisted = Mutex::new(unlisted);
        }
        Ok(book)
    }

    fn get(&self, id: &str) -> Option<Arc<Tenant>> {
        match self.listed.get(id) {
            Some(e) => Some(e.tenant.clone()),
            None => self.unlisted.lock().unwrap().get(id).cloned(),
        }
    }

    /// May a valid token make tenant `id`, which no entry lists?
    fn may_make(&self, id: &str) -> bool {
        self.jwt.as_ref().is_some_and(|j| j.dynamic.is_some())
            && !self.listed.contains_key(id)
            && crate::config::valid_tenant_id(id)
    }

    /// An unlisted tenant on `plan` (else `[defaults]`).
    fn make(&self, id: &str, plan: Option<&str>, was: Option<&Tenant>) -> Tenant {
        let entry = crate::config::TenantConfig::unlisted(id, plan);
        Tenant::from_config(&self.config, &entry, &self.shared, self.quotas, was)
    }

    /// The tenant, plan and expiry a valid token names.
    fn verify_jwt(
        &self,
        token: &[u8],
    ) -> Result<(String, Option<String>, SystemTime), AuthFailure> {
        let Some(jwt) = &self.jwt else {
            return Err(AuthFailure::WrongPassword);
        };
        if !looks_like_jwt(token) {
            return Err(AuthFailure::WrongPassword);
        }
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &jwt.key,
            &jwt.validation,
        )
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthFailure::ExpiredToken,
            _ => AuthFailure::BadToken(e.to_string()),
        })?;
        let claims = data.claims;
        let id = claims
            .get(&jwt.claim)
            .and_then(|v| v.as_str())
            .ok_or(AuthFailure::NoTenantClaim)?;
        let plan = jwt
            .dynamic
            .as_ref()
            .and_then(|c| claims.get(c))
            .and_then(|v| v.as_str())
            .map(str::to_string);
        // `exp` is required and checked by the validation: seconds, maybe with a fraction
        // (JavaScript issuers), maybe absurdly far (kept to a date a SystemTime holds).
        let exp = claims
            .get("exp")
            .and_then(|v| {
                v.as_u64()
                    .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f.round() as u64))
            })
            .unwrap_or(0)
            .saturating_add(jwt.validation.leeway)
            .min(FAR_FUTURE_SECS);
        let expires = SystemTime::UNIX_EPOCH + Duration::from_secs(exp);
        Ok((id.to_string(), plan, expires))
    }
}

/// The latest expiry a token may have here (about the year 2514): later dates are this one.
const FAR_FUTURE_SECS: u64 = 1 << 34;

fn looks_like_jwt(token: &[u8]) -> bool {
    token.iter().filter(|&&b| b == b'.').count() == 2
}

impl Jwt {
    fn from_config(c: &JwtConfig) -> anyhow::Result<Jwt> {
        let (key, alg, material) = match (&c.hs256_secret, &c.rs256_public_key_file) {
            (Some(secret), _) => (
                DecodingKey::from_secret(secret.expose().as_bytes()),
                Algorithm::HS256,
                secret.expose().as_bytes().to_vec(),
            ),
            (None, Some(path)) => {
                let pem = crate::transport::read_key_file(path)?;
                (DecodingKey::from_rsa_pem(&pem)?, Algorithm::RS256, pem)
            }
            (None, None) => anyhow::bail!("auth.jwt has no key"),
        };
        let mut validation = Validation::new(alg);
        validation.validate_nbf = true;
        validation.leeway = c.leeway_seconds;
        validation.validate_aud = c.audience.is_some();
        if let Some(aud) = &c.audience {
            validation.set_audience(&[aud]);
        }
        if let Some(iss) = &c.issuer {
            validation.set_issuer(&[iss]);
        }
        Ok(Jwt {
            key,
            validation,
            claim: c.tenant_claim.clone(),
            dynamic: c.dynamic_tenants.then(|| c.plan_claim.clone()),
            // The key by its digest (the secret's Debug is masked), and every other setting.
            settings: format!("{}{c:?}", hex::encode(sha256(&material))),
        })
    }
}
