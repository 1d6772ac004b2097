//! Checking a parsed config, one function per section: each mistake reported with its own
//! message and, where the TOML has one, its place.

use super::*;

const ONE_JWT_KEY: &str =
    "auth.jwt: set exactly one of hs256_secret, hs256_secret_file and rs256_public_key_file";

/// What a check reports: the place in the file (when known) and the message.
type Report<'a> = dyn FnMut(Option<Range<usize>>, String) + 'a;

/// `[defaults]` or a `[plans.<name>]` (`what`): rates and caps of at least 1, a known
/// `rate_limit`.
fn validate_inherited(what: &str, d: &DefaultsConfig, err: &mut Report) {
    if d.ops_per_second == Some(0) || d.bytes_per_second == Some(0) {
        err(
            None,
            format!("{what}.ops_per_second and {what}.bytes_per_second must be at least 1"),
        );
    }
    if d.rate_limit
        .as_deref()
        .is_some_and(|r| !matches!(r, "delay" | "refuse"))
    {
        err(
            None,
            format!("{what}.rate_limit must be \"delay\" or \"refuse\""),
        );
    }
    if d.databases
        .is_some_and(|n| !(1..=super::MAX_DATABASES).contains(&n))
    {
        err(
            None,
            format!(
                "{what}.databases must be from 1 to {}",
                super::MAX_DATABASES
            ),
        );
    }
    if d.max_clients == Some(0) || d.pinned_max == Some(0) {
        err(
            None,
            format!("{what}.max_clients and {what}.pinned_max must be at least 1"),
        );
    }
}

impl Config {
    /// Every semantic problem, each with the span of the value at fault when it has one.
    pub(super) fn validate(&self) -> Vec<(Option<Range<usize>>, String)> {
        let mut errs = Vec::new();
        let mut err = |span: Option<Range<usize>>, msg: String| errs.push((span, msg));
        self.validate_server(&mut err);
        self.validate_upstream(&mut err);
        self.validate_bookkeeping(&mut err);
        self.validate_admin(&mut err);
        self.validate_shared(&mut err);
        self.validate_jwt(&mut err);
        self.validate_tenants(&mut err);
        self.validate_default_tenant(&mut err);
        self.validate_audit(&mut err);
        errs
    }

    /// `[server]`: the listener and the request limits.
    fn validate_server(&self, err: &mut Report) {
        let listen = &self.server.listen;
        if listen.get_ref().is_empty() {
            if self.server.tls_listen.is_none() {
                err(
                    Some(listen.span()),
                    "server.listen = \"\" turns the plain listener off: set server.tls_listen"
                        .into(),
                );
            }
        } else if listen.get_ref().parse::<SocketAddr>().is_err() {
            err(
                Some(listen.span()),
                format!(
                    "server.listen: {:?} is not an address like 127.0.0.1:6380",
                    listen.get_ref()
                ),
            );
        }
        self.validate_server_tls(err);
        if self.server.max_clients == 0 {
            err(None, "server.max_clients must be at least 1".into());
        }
        if self.server.auth_timeout_ms == 0 || self.server.max_unauthenticated == 0 {
            err(
                None,
                "server.auth_timeout_ms and server.max_unauthenticated must be at least 1".into(),
            );
        }
        if !(1..=MAX_THREADS).contains(&self.server.threads) {
            err(
                None,
                format!("server.threads must be between 1 and {MAX_THREADS}"),
            );
        }
        if self.server.max_array_len == 0 || self.server.max_bulk_bytes == 0 {
            err(
                None,
                "server.max_array_len and server.max_bulk_bytes must be at least 1".into(),
            );
        }
    }

    /// `server.tls_listen` and `[server.tls]`: an address, and certificate files that load.
    fn validate_server_tls(&self, err: &mut Report) {
        let server = &self.server;
        if let Some(l) = &server.tls_listen {
            if l.get_ref().parse::<SocketAddr>().is_err() {
                err(
                    Some(l.span()),
                    format!(
                        "server.tls_listen: {:?} is not an address like 0.0.0.0:6390",
                        l.get_ref()
                    ),
                );
            }
        }
        match (&server.tls_listen, &server.tls) {
            (Some(l), None) => err(
                Some(l.span()),
                "server.tls_listen needs [server.tls] with cert_file and key_file".into(),
            ),
            (None, Some(_)) => err(
                None,
                "[server.tls] is set but server.tls_listen is not: nothing would use it".into(),
            ),
            (Some(_), Some(tls)) => {
                if tls.tenant_from_cert && tls.client_ca_file.is_none() {
                    err(
                        None,
                        "server.tls.tenant_from_cert needs client_ca_file: only a certificate \
                         that CA signed may name a tenant"
                            .into(),
                    );
                }
                let ca = tls.client_ca_file.as_deref();
                if let Err(e) = crate::transport::server_config(&tls.cert_file, &tls.key_file, ca) {
                    err(None, format!("[server.tls]: {e}"));
                }
            }
            (None, None) => {}
        }
    }

    /// `[upstream]`: where Redis is, and how many connections of each kind.
    fn validate_upstream(&self, err: &mut Report) {
        if let Err(e) = UpstreamAddr::parse(self.upstream.url.get_ref()) {
            err(Some(self.upstream.url.span()), format!("upstream.url: {e}"));
        }
        let up = &self.upstream;
        if !matches!(up.mode.get_ref().as_str(), "standalone" | "cluster") {
            err(
                Some(up.mode.span()),
                "upstream.mode must be \"standalone\" or \"cluster\"".into(),
            );
        }
        for seed in &up.seeds {
            if let Err(e) = UpstreamAddr::parse(seed.get_ref()) {
                err(Some(seed.span()), format!("upstream.seeds: {e}"));
            }
        }
        if !up.seeds.is_empty() && !self.cluster() {
            err(
                Some(up.seeds[0].span()),
                "upstream.seeds are seed nodes of a cluster: set upstream.mode = \"cluster\""
                    .into(),
            );
        }
        match up.read_from.get_ref().as_str() {
            "master" => {}
            "replica-preferred" if self.cluster() => {}
            "replica-preferred" => err(
                Some(up.read_from.span()),
                "upstream.read_from = \"replica-preferred\" reads a cluster's replicas: set \
                 upstream.mode = \"cluster\""
                    .into(),
            ),
            _ => err(
                Some(up.read_from.span()),
                "upstream.read_from must be \"master\" or \"replica-preferred\"".into(),
            ),
        }
        if self.cluster() {
            self.validate_cluster(err);
        }
        self.validate_upstream_tls(err);
        if self.upstream.connect_timeout_ms == 0 || self.upstream.command_timeout_ms == 0 {
            err(
                None,
                "upstream.connect_timeout_ms and upstream.command_timeout_ms must be above 0"
                    .into(),
            );
        }
        if self.upstream.connections == 0
            || self.upstream.pinned_max == 0
            || self.upstream.pool_size == 0
        {
            err(
                None,
                "upstream.connections, upstream.pinned_max and upstream.pool_size must be at \
                 least 1"
                    .into(),
            );
        }
    }

    /// A cluster has only database 0.
    fn validate_cluster(&self, err: &mut Report) {
        let seeds = std::iter::once(&self.upstream.url).chain(&self.upstream.seeds);
        for url in seeds {
            if UpstreamAddr::parse(url.get_ref()).is_ok_and(|a| a.db != 0) {
                err(
                    Some(url.span()),
                    "a Redis Cluster has only database 0: drop the /db from the URL".into(),
                );
            }
        }
    }

    /// `[billing]` and `[quota]`: the intervals of the background bookkeeping.
    fn validate_bookkeeping(&self, err: &mut Report) {
        validate_inherited("defaults", &self.defaults, err);
        for (name, plan) in &self.plans {
            if !valid_tenant_id(name) {
                err(
                    None,
                    format!("plans.{name}: a plan's name must match [A-Za-z0-9_-]{{1,64}}"),
                );
            }
            validate_inherited(&format!("plans.{name}"), plan, err);
        }
        if self.billing.interval_ms == 0 {
            err(None, "billing.interval_ms must be above 0".into());
        }
        if self.quota.flush_interval_ms == 0
            || self.quota.reconcile_interval_ms == 0
            || self.quota.reconcile_keys_per_second == 0
        {
            err(
                None,
                "quota.flush_interval_ms, quota.reconcile_interval_ms and \
                 quota.reconcile_keys_per_second must be above 0"
                    .into(),
            );
        }
    }

    /// `rediss://` for every node or for none, and a `ca_file` that loads.
    fn validate_upstream_tls(&self, err: &mut Report) {
        let up = &self.upstream;
        let tls = |u: &Spanned<String>| UpstreamAddr::parse(u.get_ref()).ok().map(|a| a.tls);
        let first = tls(&up.url);
        for seed in &up.seeds {
            if tls(seed).is_some_and(|t| Some(t) != first) {
                err(
                    Some(seed.span()),
                    "upstream.seeds: every seed must use the scheme of upstream.url (redis:// \
                     or rediss://)"
                        .into(),
                );
            }
        }
        if let Some(ca) = &up.ca_file {
            if first == Some(false) {
                err(
                    Some(ca.span()),
                    "upstream.ca_file is for TLS: the upstream URL must be rediss://".into(),
                );
            } else if let Err(e) = crate::transport::client_config(Some(ca.get_ref())) {
                err(Some(ca.span()), format!("upstream.ca_file: {e}"));
            }
        }
    }

    /// `[admin]`: the operators' HTTP listener.
    fn validate_admin(&self, err: &mut Report) {
        if let Some(admin) = &self.admin {
            if admin
                .get_ref()
                .token
                .as_ref()
                .is_some_and(|t| t.expose().is_empty())
            {
                err(
                    Some(admin.span()),
                    "admin.token must not be empty (leave it out to reload by SIGHUP only)".into(),
                );
            }
            if admin.get_ref().listen.parse::<SocketAddr>().is_err() {
                err(
                    Some(admin.span()),
                    format!(
                        "admin.listen: {:?} is not an address like 127.0.0.1:9121",
                        admin.get_ref().listen
                    ),
                );
            }
        }
    }

    /// `[shared]`: the shared prefixes (apart from `tenant:`, `respite:` and each other), the
    /// cache's sizes and TTL tiers, the origin.
    fn validate_shared(&self, err: &mut Report) {
        if let Some(shared) = &self.shared {
            let at = Some(shared.span());
            let sh = shared.get_ref();
            // A prefix that is a prefix of `tenant:` (say `t`) would make every tenant's keys
            // "shared": readable by all, unprefixed. Overlap either way is refused.
            let overlap = |a: &str, b: &str| a.starts_with(b) || b.starts_with(a);
            for (i, p) in sh.prefixes.iter().enumerate() {
                if p.is_empty() || overlap(p, "tenant:") || overlap(p, "respite:") {
                    err(
                        at.clone(),
                        format!(
                            "shared.prefixes: {p:?} must be non-empty and must not overlap \
                             tenant: or respite:"
                        ),
                    );
                }
                if let Some(q) = sh.prefixes[..i].iter().find(|q| overlap(p, q)) {
                    err(
                        at.clone(),
                        format!("shared.prefixes: {p:?} overlaps {q:?}; list the shorter one only"),
                    );
                }
            }
            if sh.max_stale_ms == 0 || sh.l1_max_bytes == 0 || sh.default_ttl_seconds == 0 {
                err(
                    at.clone(),
                    "shared.max_stale_ms, shared.l1_max_bytes and shared.default_ttl_seconds \
                     must be above 0"
                        .into(),
                );
            }
            if sh.ttl.iter().any(|t| t.seconds == 0) {
                err(at.clone(), "shared.ttl: seconds must be above 0".into());
            }
            if let Some(o) = &sh.origin {
                if !o.url.starts_with("http://") || !o.url.contains("{key}") {
                    err(
                        at.clone(),
                        format!(
                            "shared.origin.url: {:?} must be an http:// URL with {{key}} in it",
                            o.url
                        ),
                    );
                }
                if o.timeout_ms == 0 {
                    err(at, "shared.origin.timeout_ms must be above 0".into());
                }
            }
        }
    }

    /// `[auth.jwt]`: exactly one key, and a claim that names the tenant.
    fn validate_jwt(&self, err: &mut Report) {
        let jwt = self.auth.jwt.as_ref();
        if let Some(jwt) = jwt {
            let j = jwt.get_ref();
            // A secret file that could not be read is reported already (`secret_file`).
            let hs256 = j.hs256_secret.is_some() || j.hs256_secret_file.is_some();
            match (&j.hs256_secret, &j.rs256_public_key_file) {
                (_, Some(_)) if hs256 => err(Some(jwt.span()), ONE_JWT_KEY.into()),
                (None, None) if !hs256 => err(Some(jwt.span()), ONE_JWT_KEY.into()),
                (Some(s), None) if s.expose().is_empty() => err(
                    Some(jwt.span()),
                    "auth.jwt.hs256_secret must not be empty".into(),
                ),
                (None, Some(path)) => {
                    if let Err(e) = crate::transport::read_key_file(path)
                        .map_err(|e| e.to_string())
                        .and_then(|pem| {
                            jsonwebtoken::DecodingKey::from_rsa_pem(&pem).map_err(|e| e.to_string())
                        })
                    {
                        err(
                            Some(jwt.span()),
                            format!("auth.jwt.rs256_public_key_file {}: {e}", path.display()),
                        );
                    }
                }
                _ => {}
            }
            if j.tenant_claim.is_empty() {
                err(
                    Some(jwt.span()),
                    "auth.jwt.tenant_claim must not be empty".into(),
                );
            }
        }
    }

    /// `[[tenants]]`: ids, credentials that pick exactly one tenant, quotas and roles.
    fn validate_tenants(&self, err: &mut Report) {
        let mut ids = HashSet::new();
        let mut digests = HashSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            let id = t.id.get_ref();
            if !valid_tenant_id(id) {
                err(
                    Some(t.id.span()),
                    format!("tenants[{i}].id: {id:?} must match [A-Za-z0-9_-]{{1,64}}"),
                );
            } else if !ids.insert(id.as_str()) {
                err(
                    Some(t.id.span()),
                    format!("tenants[{i}].id: tenant {id:?} is defined twice"),
                );
            }
            if let Some(plan) = &t.plan {
                if !self.plans.contains_key(plan.get_ref()) {
                    err(
                        Some(plan.span()),
                        format!(
                            "tenants[{i}].plan: {:?} is not a [plans.<name>] table",
                            plan.get_ref()
                        ),
                    );
                }
            }
            let digest = self.credentials(i, t, err);
            // `AUTH <password>` names no tenant, so a password must pick exactly one.
            if let Some(d) = digest {
                if !digests.insert(d) {
                    err(
                        Some(t.id.span()),
                        format!(
                            "tenants[{i}] ({id}) has the same password as another tenant: \
                             AUTH <password> could not tell them apart"
                        ),
                    );
                }
            }
            for (name, cap) in [
                ("max_clients", &t.max_clients),
                ("pinned_max", &t.pinned_max),
            ] {
                if let Some(m) = cap.as_ref().filter(|m| *m.get_ref() == 0) {
                    err(
                        Some(m.span()),
                        format!("tenants[{i}].{name} must be at least 1"),
                    );
                }
            }
            if let Some(n) = t
                .databases
                .as_ref()
                .filter(|n| !(1..=super::MAX_DATABASES).contains(n.get_ref()))
            {
                err(
                    Some(n.span()),
                    format!(
                        "tenants[{i}].databases must be from 1 to {}",
                        super::MAX_DATABASES
                    ),
                );
            }
            for (name, rate) in [
                ("ops_per_second", &t.ops_per_second),
                ("bytes_per_second", &t.bytes_per_second),
            ] {
                if let Some(r) = rate.as_ref().filter(|r| *r.get_ref() == 0) {
                    err(
                        Some(r.span()),
                        format!("tenants[{i}].{name} must be at least 1"),
                    );
                }
            }
            if let Some(r) = t
                .rate_limit
                .as_ref()
                .filter(|r| !matches!(r.get_ref().as_str(), "delay" | "refuse"))
            {
                err(
                    Some(r.span()),
                    format!(
                        "tenants[{i}].rate_limit: {:?} is not \"delay\" or \"refuse\"",
                        r.get_ref()
                    ),
                );
            }
            if let (None, Some(o)) = (self.limits(t), &t.overage_bytes) {
                err(
                    Some(o.span()),
                    format!(
                        "tenants[{i}].overage_bytes needs a quota_bytes (here or in [defaults])"
                    ),
                );
            }
            self.validate_role(i, t, err);
        }
    }

    /// The `i`th tenant's role: a publisher needs shared keys to write; an admin logs in
    /// with its own password only, since whoever can mint a token for its id (a platform
    /// letting customers pick their tenant id) would otherwise become an operator.
    fn validate_role(&self, i: usize, t: &TenantConfig, err: &mut Report) {
        let role = &t.role;
        let why = match role.get_ref().as_str() {
            "tenant" => return,
            "publisher" if self.shared.is_some() => return,
            "publisher" => format!("tenants[{i}].role = \"publisher\" needs a [shared] section"),
            "admin"
                if t.password.is_some()
                    || t.password_sha256.is_some()
                    || t.password_file.is_some() =>
            {
                return
            }
            "admin" => format!(
                "tenants[{i}].role = \"admin\" needs a password or password_sha256 (or a \
                 password_file): an admin tenant never logs in with a token"
            ),
            other => format!(
                "tenants[{i}].role: {other:?} is not \"tenant\", \"publisher\" or \"admin\""
            ),
        };
        err(Some(role.span()), why);
    }

    /// The digest of the `i`th tenant's password, if it has a usable one; exactly one way to
    /// log in is set.
    fn credentials(&self, i: usize, t: &TenantConfig, err: &mut Report) -> Option<[u8; 32]> {
        let id = t.id.get_ref();
        match (&t.password, &t.password_sha256) {
            (Some(_), Some(h)) => {
                err(
                    Some(h.span()),
                    format!("tenants[{i}]: set password or password_sha256, not both"),
                );
                None
            }
            (Some(_), None) => t.digest(),
            (None, Some(h)) => {
                let digest = t.digest();
                if digest.is_none() {
                    err(
                        Some(h.span()),
                        format!("tenants[{i}].password_sha256 must be 64 hex digits"),
                    );
                }
                digest
            }
            // A password file that could not be read is reported already (`secret_file`).
            (None, None) => {
                if self.auth.jwt.is_none() && t.password_file.is_none() {
                    err(
                        Some(t.id.span()),
                        format!(
                            "tenants[{i}] ({id}) has no password, password_file, \
                             password_sha256 or [auth.jwt]: nothing could authenticate it"
                        ),
                    );
                }
                None
            }
        }
    }

    /// `server.default_tenant` names a tenant, and not an admin: a connection that never
    /// logged in must not run the server-wide commands.
    fn validate_default_tenant(&self, err: &mut Report) {
        let Some(d) = &self.server.default_tenant else {
            return;
        };
        let why = match self.tenants.iter().find(|t| t.id.get_ref() == d.get_ref()) {
            None => "is not a tenant in [[tenants]]",
            Some(t) if t.role.get_ref() == "admin" => {
                "has role = \"admin\": an admin tenant must log in, it is never the default"
            }
            Some(_) => return,
        };
        err(
            Some(d.span()),
            format!("server.default_tenant: {:?} {why}", d.get_ref()),
        );
    }

    /// `[audit]`: a file to append to, or "-" for standard output. Whether the file can be
    /// opened is found at start (a config checked on another machine may name a directory
    /// that exists only where respite runs).
    fn validate_audit(&self, err: &mut Report) {
        let Some(audit) = &self.audit else {
            return;
        };
        let path = audit.get_ref().path.as_str();
        let why = if path.is_empty() {
            "must name a file, or \"-\" for standard output"
        } else if path.ends_with('/') || Path::new(path).is_dir() {
            "names a directory: name a file in it"
        } else {
            return;
        };
        err(Some(audit.span()), format!("audit.path {path:?} {why}"));
    }
}
