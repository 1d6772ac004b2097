//! Authentication: from `AUTH` / `HELLO ... AUTH` arguments to a [`Tenant`].
//!
//! Passwords are kept only as SHA-256 digests and compared in constant time, so a plain
//! `password` and a `password_sha256` in the config behave the same. A JWT (when `[auth.jwt]`
//! is configured) is accepted wherever a password is; its tenant comes from a claim.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use subtle::ConstantTimeEq;

use crate::config::{sha256, Config, JwtConfig};
use crate::quota::Ledger;
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
    #[error("token has no usable tenant claim")]
    NoTenantClaim,
    #[error("token is for another tenant")]
    TenantMismatch,
}

struct Entry {
    tenant: Arc<Tenant>,
    digest: Option<[u8; 32]>,
}

struct Jwt {
    key: DecodingKey,
    validation: Validation,
    claim: String,
}

/// Every tenant and how each may log in.
pub struct Authenticator {
    tenants: HashMap<String, Entry>,
    jwt: Option<Jwt>,
}

impl Authenticator {
    /// Builds from a config that [`Config::parse`] already validated.
    pub fn from_config(config: &Config) -> anyhow::Result<Authenticator> {
        let mut tenants = HashMap::new();
        let shared: Arc<[Bytes]> = config
            .shared
            .as_ref()
            .map(|s| {
                s.get_ref()
                    .prefixes
                    .iter()
                    .map(|p| Bytes::from(p.clone()))
                    .collect()
            })
            .unwrap_or_default();
        for t in &config.tenants {
            let digest = t.digest();
            let id = t.id.get_ref().clone();
            let mut tenant = Tenant::new(&id, config.tenant_scripts(t));
            tenant.max_clients = config.tenant_max_clients(t);
            tenant.pinned = config.tenant_pinned_max(t).map(crate::upstream::Share::new);
            tenant.caps = config.tenant_caps(t);
            tenant.reads_replicas = config.tenant_reads_replicas(t);
            let rates = config.tenant_rates(t);
            tenant.refuse_past_rates = rates.refuse;
            tenant.rates = crate::rate::Rates::new(
                rates.ops_per_second,
                rates.bytes_per_second,
                match rates.refuse {
                    true => crate::rate::Past::Refuse,
                    false => crate::rate::Past::Delay,
                },
            );
            tenant.output = config
                .tenant_output_limit(t)
                .map(|limit| Arc::new(crate::upstream::OutputTotal::new(limit)));
            tenant.shared = shared.clone();
            tenant.publisher = t.role.get_ref() == "publisher";
            if config.quotas_enabled() {
                tenant.ledger = Some(Arc::new(Ledger::new(&id, config.limits(t))));
            }
            let tenant = Arc::new(tenant);
            tenants.insert(id, Entry { tenant, digest });
        }
        let jwt = config
            .auth
            .jwt
            .as_ref()
            .map(|j| Jwt::from_config(j.get_ref()))
            .transpose()?;
        Ok(Authenticator { tenants, jwt })
    }

    pub fn tenants(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        self.tenants.values().map(|e| &e.tenant)
    }

    pub fn tenant(&self, id: &str) -> Option<Arc<Tenant>> {
        self.tenants.get(id).map(|e| e.tenant.clone())
    }

    /// `AUTH <secret>` or `AUTH <tenant> <secret>`; the secret is a password or a JWT.
    /// `default` as the user name means none, as Redis' default user does.
    pub fn login(&self, user: Option<&[u8]>, secret: &[u8]) -> Result<Arc<Tenant>, AuthFailure> {
        let user = user.filter(|u| *u != b"default");
        let digest = sha256(secret);
        match user {
            Some(user) => {
                let entry = std::str::from_utf8(user)
                    .ok()
                    .and_then(|u| self.tenants.get(u));
                if let Some(e) = entry {
                    if e.digest.is_some_and(|d| bool::from(d.ct_eq(&digest))) {
                        return Ok(e.tenant.clone());
                    }
                }
                let tenant = self.verify_jwt(secret)?;
                match entry {
                    None => Err(AuthFailure::UnknownTenant),
                    Some(e) if Arc::ptr_eq(&e.tenant, &tenant) => Ok(tenant),
                    Some(_) => Err(AuthFailure::TenantMismatch),
                }
            }
            None => {
                // Compare against every tenant so the time taken does not say which matched.
                let mut found = None;
                for e in self.tenants.values() {
                    if e.digest.is_some_and(|d| bool::from(d.ct_eq(&digest))) {
                        found = Some(e.tenant.clone());
                    }
                }
                match found {
                    Some(t) => Ok(t),
                    None if self.jwt.is_some() && looks_like_jwt(secret) => self.verify_jwt(secret),
                    None => Err(AuthFailure::WrongPassword),
                }
            }
        }
    }

    fn verify_jwt(&self, token: &[u8]) -> Result<Arc<Tenant>, AuthFailure> {
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
        .map_err(|e| AuthFailure::BadToken(e.to_string()))?;
        let id = data
            .claims
            .get(&jwt.claim)
            .and_then(|v| v.as_str())
            .ok_or(AuthFailure::NoTenantClaim)?;
        self.tenant(id).ok_or(AuthFailure::UnknownTenant)
    }
}

fn looks_like_jwt(token: &[u8]) -> bool {
    token.iter().filter(|&&b| b == b'.').count() == 2
}

impl Jwt {
    fn from_config(c: &JwtConfig) -> anyhow::Result<Jwt> {
        let (key, alg) = match (&c.hs256_secret, &c.rs256_public_key_file) {
            (Some(secret), _) => (
                DecodingKey::from_secret(secret.expose().as_bytes()),
                Algorithm::HS256,
            ),
            (None, Some(path)) => (
                DecodingKey::from_rsa_pem(&std::fs::read(path)?)?,
                Algorithm::RS256,
            ),
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
        })
    }
}
