//! Commands respite answers itself, because their answer depends on the tenant or on the
//! client connection rather than on Redis: AUTH, HELLO, SELECT, QUIT, RESET, the CLIENT
//! subcommands about connections, PUBSUB NUMPAT, and (in `keyspace`) the tenant-wide
//! DBSIZE, KEYS, RANDOMKEY, FLUSHDB/FLUSHALL and INFO.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::{End, ReplyMode, Session};
use crate::clients::{ClientType, KillFilter, Version};
use crate::command::grammar::redis_int;
use crate::command::{Command, Unknown};
use crate::error::Error;
use crate::namespace::{ExecItem, Shape};
use crate::namespace::{Expect, Forward};
use crate::wire::{Request, Resp};

/// A request respite handles without forwarding it as is.
#[derive(Debug)]
pub enum Local {
    Auth {
        user: Option<Bytes>,
        secret: Bytes,
    },
    Hello {
        protover: Option<u8>,
        auth: Option<(Bytes, Bytes)>,
        setname: Option<Bytes>,
    },
    Quit,
    Reset,
    ClientKill(Vec<Bytes>),
    ClientReply(ReplyMode),
    ClientUnblock(Vec<Bytes>),
    /// Answered from the session's own state; inside MULTI, queued with its result computed
    /// now.
    Session(SessionCmd),
    /// Answered by walking the tenant's namespace (`keyspace`).
    Keyspace(KeyspaceCmd),
    /// Recognised, but malformed: answer with this error.
    Invalid(Error),
}

/// A command answered from the session's own state.
#[derive(Debug)]
pub enum SessionCmd {
    Select(Bytes),
    /// A command Redis queues in a transaction and fails when it runs (MOVE to a bad
    /// database): its error, now or inside EXEC's reply.
    FailsWhenRun(Bytes),
    ClientId,
    ClientGetName,
    ClientSetName(Bytes),
    /// CLIENT INFO, with the bytes of its arguments (`argv-mem`).
    ClientInfo(usize),
    /// CLIENT LIST's filters, and the bytes of all its arguments.
    ClientList(Vec<Bytes>, usize),
    ClientSetInfo(Bytes, Bytes),
    PubsubNumpat,
    /// MODULE LIST: no module's commands reach a tenant (respite does not know their keys),
    /// so for the tenant none is loaded.
    ModuleList,
}

/// A command answered for the tenant's whole namespace.
#[derive(Debug)]
pub enum KeyspaceCmd {
    DbSize,
    /// KEYS, answered from paced SCAN steps: one KEYS would hold Redis for a walk of every
    /// tenant's keys.
    Keys(Bytes),
    RandomKey,
    /// FLUSHDB (the selected database), FLUSHALL (`all` the tenant's databases).
    Flush {
        lazy: bool,
        all: bool,
    },
    Info(Vec<Bytes>),
}

fn lower(b: &[u8]) -> Vec<u8> {
    b.to_ascii_lowercase()
}

/// Which of respite's own commands `req` is, if any. Arity is checked against the command
/// table where Redis knows the command. Names come from the table (static, lowercase), so
/// recognising costs no allocation on the hot path.
pub fn recognize(req: &Request, looked_up: &Result<Command, Unknown>) -> Option<Local> {
    let a = &req.args;
    let (name, sub): (&[u8], Option<&[u8]>) = match looked_up {
        Ok(c) => c.names(),
        // Redis 7.2's CLIENT SETINFO, sent by current client libraries on connect.
        Err(Unknown::Subcommand(p)) if p.name == b"client" && req.arg_is(1, b"setinfo") => {
            (b"client", Some(b"setinfo"))
        }
        Err(_) => return None,
    };
    let local = match (name, sub) {
        (b"auth", _) => match a.len() {
            2 => Local::Auth {
                user: None,
                secret: a[1].clone(),
            },
            3 => Local::Auth {
                user: Some(a[1].clone()),
                secret: a[2].clone(),
            },
            1 => Local::Invalid(Error::WrongArity("auth".into())),
            _ => Local::Invalid(Error::Syntax),
        },
        (b"hello", _) => hello(a),
        (b"quit", _) => Local::Quit,
        (b"reset", _) => Local::Reset,
        (b"client", Some(b"setinfo")) => match a.len() {
            4 => Local::Session(SessionCmd::ClientSetInfo(a[2].clone(), a[3].clone())),
            _ => Local::Invalid(Error::WrongArity("client|setinfo".into())),
        },
        _ if !is_local_name(name, sub) => return None,
        _ => {
            if let Ok(c) = looked_up {
                if !c.arity_ok(a.len()) {
                    return Some(Local::Invalid(Error::WrongArity(c.full_name())));
                }
            }
            checked(req, name, sub)?
        }
    };
    Some(local)
}

/// A local command whose arity the table has checked.
fn checked(req: &Request, name: &[u8], sub: Option<&[u8]>) -> Option<Local> {
    let a = &req.args;
    Some(match (name, sub) {
        (b"select", _) => Local::Session(SessionCmd::Select(a[1].clone())),
        (b"client", Some(b"id")) => Local::Session(SessionCmd::ClientId),
        (b"client", Some(b"getname")) => Local::Session(SessionCmd::ClientGetName),
        (b"client", Some(b"setname")) => Local::Session(SessionCmd::ClientSetName(a[2].clone())),
        (b"client", Some(b"info")) => Local::Session(SessionCmd::ClientInfo(argv_bytes(a))),
        (b"client", Some(b"list")) => {
            Local::Session(SessionCmd::ClientList(a[2..].to_vec(), argv_bytes(a)))
        }
        (b"client", Some(b"kill")) => Local::ClientKill(a[2..].to_vec()),
        (b"client", Some(b"unblock")) => Local::ClientUnblock(a[2..].to_vec()),
        (b"client", Some(b"reply")) => {
            if req.arg_is(2, b"on") {
                Local::ClientReply(ReplyMode::On)
            } else if req.arg_is(2, b"off") {
                Local::ClientReply(ReplyMode::Off)
            } else if req.arg_is(2, b"skip") {
                Local::ClientReply(ReplyMode::SkipNext)
            } else {
                Local::Invalid(Error::Syntax)
            }
        }
        (b"pubsub", Some(b"numpat")) => Local::Session(SessionCmd::PubsubNumpat),
        (b"module", Some(b"list")) => Local::Session(SessionCmd::ModuleList),
        (b"dbsize", _) => Local::Keyspace(KeyspaceCmd::DbSize),
        (b"keys", _) => Local::Keyspace(KeyspaceCmd::Keys(a[1].clone())),
        (b"randomkey", _) => Local::Keyspace(KeyspaceCmd::RandomKey),
        (b"flushdb" | b"flushall", _) => {
            let all = name == b"flushall";
            let lazy = match a.len() {
                1 => false,
                2 if req.arg_is(1, b"sync") => false,
                2 if req.arg_is(1, b"async") => true,
                _ => return Some(Local::Invalid(Error::Syntax)),
            };
            Local::Keyspace(KeyspaceCmd::Flush { lazy, all })
        }
        (b"info", _) => Local::Keyspace(KeyspaceCmd::Info(a[1..].to_vec())),
        _ => return None,
    })
}

fn argv_bytes(args: &[Bytes]) -> usize {
    args.iter().map(Bytes::len).sum()
}

fn is_local_name(name: &[u8], sub: Option<&[u8]>) -> bool {
    matches!(
        (name, sub),
        (
            b"select" | b"dbsize" | b"keys" | b"randomkey" | b"flushdb" | b"flushall" | b"info",
            _
        ) | (
            b"client",
            Some(
                b"id"
                    | b"getname"
                    | b"setname"
                    | b"info"
                    | b"list"
                    | b"kill"
                    | b"unblock"
                    | b"reply"
            )
        ) | (b"pubsub", Some(b"numpat"))
            | (b"module", Some(b"list"))
    )
}

fn hello(a: &[Bytes]) -> Local {
    let mut protover = None;
    let mut auth = None;
    let mut setname = None;
    if let Some(v) = a.get(1) {
        match std::str::from_utf8(v)
            .ok()
            .and_then(|v| v.parse::<i64>().ok())
        {
            Some(2) => protover = Some(2),
            Some(3) => protover = Some(3),
            Some(_) => return Local::Invalid(Error::NoProto),
            None => return Local::Invalid(Error::BadProtover),
        }
    }
    let mut i = 2;
    while i < a.len() {
        let opt = lower(&a[i]);
        let more = a.len() - i - 1;
        match opt.as_slice() {
            b"auth" if more >= 2 => {
                auth = Some((a[i + 1].clone(), a[i + 2].clone()));
                i += 3;
            }
            b"setname" if more >= 1 => {
                setname = Some(a[i + 1].clone());
                i += 2;
            }
            _ => {
                return Local::Invalid(Error::HelloOption(
                    String::from_utf8_lossy(&a[i]).into_owned(),
                ))
            }
        }
    }
    Local::Hello {
        protover,
        auth,
        setname,
    }
}

/// HELLO's map: the server Redis is, the protocol, the connection's number.
fn hello_reply(protover: u8, version: &str, id: u64) -> Bytes {
    let resp = Resp(protover);
    let mut out = BytesMut::new();
    resp.put_map_len(&mut out, 7);
    for (k, v) in [
        ("server", Some("redis")),
        ("version", Some(version)),
        ("proto", None),
        ("id", None),
        ("mode", Some("standalone")),
        ("role", Some("master")),
    ] {
        Resp::put_bulk(&mut out, k.as_bytes());
        match (k, v) {
            ("proto", _) => out.extend_from_slice(&Resp::int(protover as i64)),
            ("id", _) => out.extend_from_slice(&Resp::int(id as i64)),
            (_, Some(v)) => Resp::put_bulk(&mut out, v.as_bytes()),
            _ => {}
        }
    }
    Resp::put_bulk(&mut out, b"modules");
    Resp::put_array_len(&mut out, 0);
    out.freeze()
}

/// Redis' rule for client names: printable ASCII without spaces.
fn valid_name(name: &[u8]) -> bool {
    name.iter().all(|&c| (b'!'..=b'~').contains(&c))
}

impl Session {
    pub(crate) async fn run_local(&mut self, local: Local) -> Result<(), End> {
        // CLIENT INFO / LIST show the command being run, as Redis does.
        self.publish_noted();
        if matches!(
            local,
            Local::ClientKill(_)
                | Local::Session(SessionCmd::ClientInfo(_) | SessionCmd::ClientList(..))
        ) {
            self.learn_redis_version().await;
        }
        if self.state.multi.is_some() {
            match local {
                Local::Quit | Local::Reset | Local::Invalid(_) => {}
                Local::Session(cmd) => {
                    // Queued like any command: +QUEUED now, the result inside EXEC's reply.
                    let result = self.local_result(cmd);
                    if let Some(m) = &mut self.state.multi {
                        m.items.push(ExecItem::Local(result));
                    }
                    self.answer(Resp::simple("QUEUED"));
                    return Ok(());
                }
                // INFO is a snapshot anyway: taken now (past the pinned connection, which
                // queues), its text goes inside EXEC's reply like the results above.
                Local::Keyspace(cmd @ KeyspaceCmd::Info(_)) => {
                    self.drain().await?;
                    let result = self.keyspace(cmd).await;
                    if let Some(m) = &mut self.state.multi {
                        m.items.push(ExecItem::Local(result));
                    }
                    self.answer(Resp::simple("QUEUED"));
                    return Ok(());
                }
                _ => {
                    self.refuse(Error::NotInMulti);
                    return Ok(());
                }
            }
        }
        match local {
            Local::Auth { user, secret } => self.auth(user, secret).await?,
            Local::Hello {
                protover,
                auth,
                setname,
            } => self.hello(protover, auth, setname).await?,
            Local::Quit => {
                self.answer(Resp::ok());
                self.client.closing = true;
            }
            Local::Reset => {
                self.drain().await?;
                self.drop_upstream();
                self.state.protocol = 2;
                self.state.reply_mode = ReplyMode::On;
                self.select_db(0);
                self.tenant = None;
                self.seat = None;
                self.expire_at(None);
                self.me.state.lock().unwrap().tenant = None;
                self.me.state.lock().unwrap().protocol = 2;
                // A certificate's connection goes back to its tenant and no other: with that
                // tenant removed it logs in again, as a new connection with the certificate
                // is refused; the default tenant is not the certificate's to give.
                let by_default = self.certified.is_none();
                let tenant = match self.certified.as_deref() {
                    Some(id) => self.ctx.auth.tenant(id),
                    None => self.ctx.auth.default_tenant(),
                };
                match tenant {
                    Some(t) => {
                        if !self.seat_and_set(t) {
                            return Ok(());
                        }
                        self.me.state.lock().unwrap().by_default = by_default;
                    }
                    // Unauthenticated again: a place among those, and a deadline to log in.
                    None => {
                        let w = self.ctx.waiting(self.me.kill.clone());
                        self.login = Some((w, Instant::now() + self.ctx.unauthenticated.timeout))
                    }
                }
                self.answer(Resp::simple("RESET"));
            }
            Local::ClientReply(mode) => {
                self.state.reply_mode = mode;
                if mode == ReplyMode::On {
                    self.answer(Resp::ok());
                }
            }
            Local::ClientKill(args) => {
                let reply = self.client_kill(&args);
                self.answer(reply);
            }
            Local::ClientUnblock(args) => self.client_unblock(args).await?,
            Local::Keyspace(cmd) => {
                self.drain().await?;
                let reply = self.keyspace(cmd).await;
                self.answer(reply);
            }
            Local::Invalid(e) => self.refuse(e),
            Local::Session(cmd) => {
                let reply = self.local_result(cmd);
                self.answer(reply);
            }
        }
        Ok(())
    }

    /// The reply of a command that only reads or sets session state.
    fn local_result(&mut self, cmd: SessionCmd) -> Bytes {
        let resp = Resp(self.state.protocol);
        match cmd {
            SessionCmd::Select(db) => match self.database(&db) {
                Ok(db) => {
                    if let Some(m) = self.state.multi.as_mut() {
                        // Redis selects at EXEC: the commands queued after this one are in
                        // the new database, and the old one comes back if EXEC does not run.
                        m.db_before.get_or_insert(self.state.db);
                    }
                    self.select_db(db);
                    Resp::ok()
                }
                Err(e) => e.to_resp(),
            },
            SessionCmd::FailsWhenRun(error) => error,
            SessionCmd::ClientId => Resp::int(self.me.shown_id() as i64),
            SessionCmd::ClientGetName => match &self.me.state.lock().unwrap().name {
                Some(n) => Resp::bulk(n),
                None => resp.null(),
            },
            SessionCmd::ClientSetName(name) => {
                if !valid_name(&name) {
                    return Error::BadClientName.to_resp();
                }
                self.me.state.lock().unwrap().name = (!name.is_empty()).then_some(name);
                Resp::ok()
            }
            SessionCmd::ClientSetInfo(attr, value) => {
                let mut st = self.me.state.lock().unwrap();
                match lower(&attr).as_slice() {
                    b"lib-name" if valid_name(&value) => st.lib_name = Some(value),
                    b"lib-ver" if valid_name(&value) => st.lib_ver = Some(value),
                    b"lib-name" | b"lib-ver" => {
                        return Error::BadClientInfo(String::from_utf8_lossy(&attr).into_owned())
                            .to_resp()
                    }
                    _ => {
                        return Error::UnknownOption(String::from_utf8_lossy(&attr).into_owned())
                            .to_resp()
                    }
                }
                Resp::ok()
            }
            SessionCmd::ClientInfo(argv) => {
                self.publish_buffers(argv);
                let line = self.me.info_line(Instant::now(), self.redis_version()) + "\n";
                resp.text(line.as_bytes())
            }
            SessionCmd::ClientList(args, argv) => {
                self.publish_buffers(argv);
                self.client_list(&args)
            }
            SessionCmd::PubsubNumpat => {
                let id = self.tenant.as_ref().map(|t| t.id.as_str()).unwrap_or("");
                Resp::int(self.ctx.clients.numpat(id) as i64)
            }
            SessionCmd::ModuleList => Bytes::from_static(b"*0\r\n"),
        }
    }

    /// SELECT's database, read as Redis reads it (an `int`), and within the tenant's.
    pub(super) fn database(&self, arg: &[u8]) -> Result<u32, Error> {
        let n = crate::command::grammar::redis_int(arg).ok_or(Error::NotInteger)?;
        if i32::try_from(n).is_err() {
            return Err(Error::Redis(
                "ERR value is out of range, value must between -2147483648 and 2147483647".into(),
            ));
        }
        let databases = self.tenant.as_ref().map_or(1, |t| t.databases);
        u32::try_from(n)
            .ok()
            .filter(|n| *n < databases)
            .ok_or(Error::DbIndex)
    }

    async fn auth(&mut self, user: Option<Bytes>, secret: Bytes) -> Result<(), End> {
        match self.authenticator().login(user.as_deref(), &secret) {
            Ok(login) => {
                if self.log_in("AUTH", login, user.as_deref(), &secret).await? {
                    self.answer(Resp::ok());
                }
            }
            Err(why) => {
                self.auth_failed("AUTH", user.as_deref(), &why);
                self.refuse(Error::WrongPass);
            }
        }
        Ok(())
    }

    /// Logs a failed login `via` AUTH or HELLO (never the secret), records it in the audit
    /// trail, and counts it for the tenant it named, if that tenant exists.
    fn auth_failed(&self, via: &'static str, user: Option<&[u8]>, why: &crate::auth::AuthFailure) {
        let named = user.and_then(|u| std::str::from_utf8(u).ok()).unwrap_or("");
        // A name no tenant has may be a password typed in the user name's place (most
        // passwords are valid ids): neither the log nor the trail writes it down.
        let shown = match why {
            crate::auth::AuthFailure::UnknownTenant => "",
            _ => named,
        };
        tracing::warn!(tenant = %shown, reason = %why, "authentication failed");
        let detail = match why {
            crate::auth::AuthFailure::BadToken(fault) => Some(fault.as_str()),
            _ => None,
        };
        self.audit_auth_failed(via, shown, why.reason(), detail);
        if let Some(t) = self.authenticator().tenant(named) {
            t.stats.auth_failed();
        }
    }

    /// The audit trail's line for a refused login. The tenant is shown when the name could
    /// be one (a valid id, not Redis' `default` user), and `named` is empty for a name no
    /// tenant has: a password typed into the user name must not be written down.
    fn audit_auth_failed(
        &self,
        via: &'static str,
        named: &str,
        reason: &str,
        detail: Option<&str>,
    ) {
        let tenant = Some(named).filter(|n| *n != "default" && crate::config::valid_tenant_id(n));
        self.ctx.audit.auth_failed(crate::audit::AuthFailed {
            via,
            tenant,
            peer: self.me.addr,
            reason,
            detail,
        });
    }

    /// Acts as the tenant of `login` from now on, until its token (if it came from one)
    /// expires. `false` when the tenant has no room for another connection.
    /// `user` and `secret` are what it logged in with: checked again when a reload came
    /// between the check and the switch (which may wait for earlier replies), so that a
    /// password or key revoked meanwhile does not let it in.
    async fn log_in(
        &mut self,
        via: &'static str,
        mut login: crate::auth::Login,
        user: Option<&[u8]>,
        secret: &[u8],
    ) -> Result<bool, End> {
        let id = login.tenant.id.clone();
        if !self.switch_tenant(login.tenant.clone()).await? {
            return Ok(false);
        }
        while self.ctx.auth.generation() != login.generation {
            match self.authenticator().login(user, secret) {
                Ok(again) if again.tenant.id == id => {
                    self.tenant = Some(again.tenant.clone());
                    login = again;
                }
                _ => {
                    tracing::warn!(tenant = %id, "credentials revoked while logging in: closing");
                    self.audit_auth_failed(via, &id, "revoked_while_logging_in", None);
                    self.refuse(Error::WrongPass);
                    self.client.closing = true;
                    self.tenant = None;
                    self.seat = None;
                    return Ok(false);
                }
            }
        }
        self.me.state.lock().unwrap().by_default = false;
        self.expire_at(login.expires);
        Ok(true)
    }

    /// Becomes `tenant`. Switching tenant drops the upstream connection (after the replies
    /// of earlier commands), so nothing the previous tenant had set up stays reachable.
    /// `false` when the tenant has no room for another connection: answered, and closing.
    async fn switch_tenant(&mut self, tenant: Arc<crate::tenant::Tenant>) -> Result<bool, End> {
        if let Some(t) = &self.tenant {
            if t.id == tenant.id {
                // The same tenant (maybe made anew by a reload or a new plan): same place.
                self.tenant = Some(tenant);
                return Ok(true);
            }
        }
        self.drain().await?;
        self.drop_upstream();
        Ok(self.seat_and_set(tenant))
    }

    /// A login by token lasts as long as the token: when it expires the connection is
    /// closed (the client reconnects and logs in with a fresh one). Closing rather than
    /// answering `-NOAUTH` to the next command: a subscribed or blocked connection may send
    /// no next command, and a transaction or a pinned connection cannot be half logged out.
    /// A new login on the connection replaces the watch (`None`: a password, no expiry).
    pub(crate) fn expire_at(&mut self, expires: Option<std::time::SystemTime>) {
        self.expiry = None;
        self.me.state.lock().unwrap().by_token = expires.is_some();
        let Some(at) = expires else {
            return;
        };
        let left = at
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        let (stop, kill) = (
            tokio_util::sync::CancellationToken::new(),
            self.me.kill.clone(),
        );
        let tenant = self
            .tenant
            .as_ref()
            .map(|t| t.id.clone())
            .unwrap_or_default();
        tokio::spawn({
            let stop = stop.clone();
            async move {
                tokio::select! {
                    _ = tokio::time::sleep(left) => {
                        tracing::info!(%tenant, "token expired: closing the connection");
                        kill.cancel();
                    }
                    _ = stop.cancelled() => {}
                    _ = kill.cancelled() => {}
                }
            }
        });
        self.expiry = Some(stop.drop_guard());
    }

    /// Takes a place among the tenant's `max_clients` and acts as it; without one, answers
    /// as Redis past `maxclients` and closes the connection (`false`).
    fn seat_and_set(&mut self, tenant: Arc<crate::tenant::Tenant>) -> bool {
        let Some(seat) = tenant.seat() else {
            tracing::warn!(tenant = %tenant.id, "max_clients reached; closing connection");
            self.refuse(Error::MaxClients);
            self.client.closing = true;
            return false;
        };
        self.set_tenant(tenant, seat);
        true
    }

    async fn hello(
        &mut self,
        protover: Option<u8>,
        auth: Option<(Bytes, Bytes)>,
        setname: Option<Bytes>,
    ) -> Result<(), End> {
        if let Some((user, pass)) = auth {
            match self.authenticator().login(Some(&user), &pass) {
                Ok(login) => {
                    if !self.log_in("HELLO", login, Some(&user), &pass).await? {
                        return Ok(());
                    }
                }
                Err(why) => {
                    self.auth_failed("HELLO", Some(&user), &why);
                    self.refuse(Error::WrongPass);
                    return Ok(());
                }
            }
        }
        if self.tenant.is_none() {
            let proto = match self.redis_version() >= Version(7, 2, 0) {
                true => "<proto> ",
                false => "",
            };
            self.refuse(Error::HelloNoAuth(proto));
            return Ok(());
        }
        if let Some(name) = &setname {
            if !valid_name(name) {
                self.refuse(Error::BadClientName);
                return Ok(());
            }
        }
        self.drain().await?;
        let protover = protover.unwrap_or(self.state.protocol);
        // A pinned connection switches protocol with the client; shared ones exist per
        // protocol, so a session without one simply uses the other kind from now on.
        if let Some(p) = self
            .up
            .pinned
            .as_mut()
            .filter(|_| protover != self.state.protocol)
        {
            // HELLO's own reply already comes in the new protocol.
            p.conn.protocol = protover;
            let v = protover.to_string();
            if let Err(e) = self.call(&[b"HELLO", v.as_bytes()]).await {
                self.refuse(Error::Upstream(e));
                return Ok(());
            }
        }
        self.state.protocol = protover;
        {
            let mut st = self.me.state.lock().unwrap();
            st.protocol = protover;
            if let Some(name) = setname {
                st.name = (!name.is_empty()).then_some(name);
            }
        }
        // HELLO reports Redis' version, which respite learns on its first connection.
        if self.ctx.upstream.redis_version().is_none() {
            if let Err(e) = self.call(&[b"PING"]).await {
                self.refuse(Error::Upstream(e));
                return Ok(());
            }
        }
        let version = self.ctx.upstream.redis_version().unwrap_or_default();
        let reply = hello_reply(protover, &version, self.me.shown_id());
        self.answer(reply);
        Ok(())
    }

    fn tenant_id(&self) -> &str {
        self.tenant.as_ref().map(|t| t.id.as_str()).unwrap_or("")
    }

    /// The version of the Redis respite fronts, which decides the fields of CLIENT LIST and
    /// the filters of CLIENT KILL.
    fn redis_version(&self) -> Version {
        self.ctx
            .upstream
            .redis_version()
            .and_then(|v| Version::parse(&v))
            .unwrap_or(Version::ASSUMED)
    }

    /// respite learns Redis' version on its first connection: until then, one PING (as for
    /// HELLO). In cluster mode the nodes' connections do not tell it: assumed.
    async fn learn_redis_version(&mut self) {
        if self.ctx.upstream.redis_version().is_none() && self.ctx.upstream.cluster.is_none() {
            if let Err(e) = self.call(&[b"PING"]).await {
                tracing::debug!(error = %e, "Redis' version unknown; CLIENT LIST assumes one");
            }
        }
    }

    /// CLIENT LIST [TYPE type | ID id ...], over the tenant's own connections, as Redis'
    /// `clientCommand` reads it: TYPE or ID, not both; the lines of ID in the order asked.
    fn client_list(&self, args: &[Bytes]) -> Bytes {
        let resp = Resp(self.state.protocol);
        let mine = self.ctx.clients.of_tenant(self.tenant_id());
        let chosen: Vec<_> = match args {
            [] => mine,
            [t, kind] if t.eq_ignore_ascii_case(b"type") => {
                let Some(kind) = ClientType::parse(kind) else {
                    return Error::UnknownClientType(String::from_utf8_lossy(kind).into_owned())
                        .to_resp();
                };
                mine.into_iter()
                    .filter(|c| c.client_type() == kind)
                    .collect()
            }
            [i, ids @ ..] if i.eq_ignore_ascii_case(b"id") && !ids.is_empty() => {
                let mut chosen = Vec::new();
                for id in ids {
                    let Some(id) = redis_int(id) else {
                        return Error::InvalidClientId.to_resp();
                    };
                    chosen.extend(mine.iter().find(|c| c.shown_id() as i64 == id).cloned());
                }
                chosen
            }
            _ => return Error::Syntax.to_resp(),
        };
        let (now, version) = (Instant::now(), self.redis_version());
        let mut text = String::new();
        for c in chosen {
            text.push_str(&c.info_line(now, version));
            text.push('\n');
        }
        resp.text(text.as_bytes())
    }

    /// CLIENT KILL addr:port, or CLIENT KILL with filters, over the tenant's own connections.
    fn client_kill(&mut self, args: &[Bytes]) -> Bytes {
        let old_form = args.len() == 1;
        let filter = match old_form {
            // The old form can kill the caller too.
            true => KillFilter {
                addr: Some(String::from_utf8_lossy(&args[0]).into_owned()),
                ..KillFilter::new(false)
            },
            false => match self.kill_filter(args) {
                Ok(f) => f,
                Err(e) => return e.to_resp(),
            },
        };
        let now = Instant::now();
        let mut killed = 0;
        for c in self.ctx.clients.of_tenant(self.tenant_id()) {
            if filter.matches(&c, now) && !(filter.skip_me && c.id == self.me.id) {
                self.kill(&c);
                killed += 1;
            }
        }
        match (old_form, killed) {
            (true, 0) => Error::NoSuchClient.to_resp(),
            (true, _) => Resp::ok(),
            (false, n) => Resp::int(n),
        }
    }

    /// CLIENT KILL's filters, read pair by pair as Redis' `clientKillCommand` does: the
    /// first bad one is the error, a filter without its value a syntax error.
    fn kill_filter(&self, args: &[Bytes]) -> Result<KillFilter, Error> {
        let mut f = KillFilter::new(true);
        let max_age = self.redis_version() >= Version(7, 4, 0);
        for (i, key) in args.iter().enumerate().step_by(2) {
            let Some(value) = args.get(i + 1) else {
                return Err(Error::Syntax);
            };
            let text = || String::from_utf8_lossy(value).into_owned();
            match lower(key).as_slice() {
                b"id" => match redis_int(value) {
                    Some(id) if id > 0 => f.id = Some(id as u64),
                    _ => return Err(Error::ClientIdNotPositive),
                },
                b"type" => match ClientType::parse(value) {
                    Some(kind) => f.kind = Some(kind),
                    None => return Err(Error::UnknownClientType(text())),
                },
                b"addr" => f.addr = Some(text()),
                b"laddr" => f.laddr = Some(text()),
                // The tenant is the only user there is, as far as it can tell.
                b"user" if value.as_ref() != self.tenant_id().as_bytes() => {
                    return Err(Error::NoSuchUser(text()))
                }
                b"user" => {}
                b"skipme" if value.eq_ignore_ascii_case(b"yes") => f.skip_me = true,
                b"skipme" if value.eq_ignore_ascii_case(b"no") => f.skip_me = false,
                b"maxage" if max_age => match redis_int(value) {
                    Some(age) if age > 0 => f.max_age = Some(age as u64),
                    Some(_) => return Err(Error::MaxAgeNotPositive),
                    None => return Err(Error::MaxAgeNotInteger),
                },
                _ => return Err(Error::Syntax),
            }
        }
        Ok(f)
    }

    fn kill(&mut self, c: &crate::clients::Client) {
        if c.id == self.me.id {
            // Redis closes the caller after its reply.
            self.client.closing = true;
        } else {
            c.kill.cancel();
        }
    }

    /// CLIENT UNBLOCK <id> [TIMEOUT|ERROR]: the id is respite's; Redis knows the connection
    /// by its own id, so the request is forwarded with that one.
    async fn client_unblock(&mut self, args: Vec<Bytes>) -> Result<(), End> {
        let target = std::str::from_utf8(&args[0])
            .ok()
            .and_then(|s| s.parse::<u64>().ok());
        let Some(target) = target else {
            self.refuse(Error::NotInteger);
            return Ok(());
        };
        if let Some(mode) = args.get(1) {
            if args.len() > 2
                || !(mode.eq_ignore_ascii_case(b"timeout") || mode.eq_ignore_ascii_case(b"error"))
            {
                self.refuse(Error::UnblockReason);
                return Ok(());
            }
        }
        let blocked = self.ctx.clients.get_shown(self.tenant_id(), target);
        let upstream_id = blocked
            .as_ref()
            .map(|c| c.upstream_id.load(std::sync::atomic::Ordering::Relaxed))
            .unwrap_or(0);
        let node = blocked.and_then(|c| c.state.lock().unwrap().upstream_node.clone());
        if upstream_id == 0 {
            // Only a session blocked on a pinned connection can be unblocked.
            self.answer(Resp::int(0));
            return Ok(());
        }
        let mut fwd_args = vec![
            Bytes::from_static(b"CLIENT"),
            Bytes::from_static(b"UNBLOCK"),
            Bytes::from(upstream_id.to_string()),
        ];
        fwd_args.extend(args.into_iter().skip(1));
        if let (Some(node), true) = (node, self.ctx.upstream.cluster.is_some()) {
            // Its id is that node's.
            return self.unblock_on(node, fwd_args).await;
        }
        let fwd = Forward {
            args: fwd_args,
            prefixed: Default::default(),
            channels: false,
            expect: Expect::Reply(Shape::Plain),
            blocking: false,
            slot: None,
            read_only: false,
        };
        self.forward(fwd, b"client", None, None).await
    }
}
