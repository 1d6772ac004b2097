//! The stages a request passes, in order (auth gate, command table, respite's own
//! commands, policy, key map, rewrite, quota), and acting on what they decided: answer,
//! refuse, serve from the shared cache, or forward.

use std::ops::ControlFlow::{self, Break, Continue};

use super::*;

/// The value a stage passes on, or return the action it decided.
macro_rules! decided {
    ($stage:expr) => {
        match $stage {
            Continue(value) => value,
            Break(action) => return action,
        }
    };
}

impl Session {
    /// One request through the stages, then acting on what they decided.
    ///
    /// The rare arms' futures are boxed: a future is as large as the largest wait in it,
    /// and this one is made, moved and dropped for every request. With them inline it was
    /// 17.5 KB, and the common request's state was spread over it (callgrind: a fifth of
    /// the data-cache write misses at pipeline 1 went with it).
    pub(super) async fn handle(&mut self, req: Request) -> Result<(), End> {
        match self.decide(req) {
            Action::Refuse(e) => {
                self.refuse(e);
                self.count(Outcome::Refused, None);
            }
            Action::Local(local) => {
                Box::pin(self.run_local(local)).await?;
                let outcome = self.last_outcome();
                self.count(outcome, None);
            }
            Action::SharedGet(key) => return self.shared_get(key).await,
            Action::Forward(_, b"restore", Some(_)) if self.state.multi.is_some() => {
                // Its size is known only once it ran: queued, it would be charged by its
                // (compressed) payload.
                self.refuse(Error::NotInMulti);
                self.count(Outcome::Refused, None);
            }
            Action::Forward(fwd, top, cost) => {
                // The common write is covered without a wait: no future is made for the
                // quota stage.
                let written = match self.charge_now(cost) {
                    Ok(written) => written,
                    Err(cost) => match Box::pin(self.charge_late(cost, top)).await {
                        Some(written) => Some(written),
                        None => return Ok(()),
                    },
                };
                if top == b"restore" {
                    if let Some(written) = written {
                        return Box::pin(self.restore(fwd, written)).await;
                    }
                }
                self.forward(fwd, top, written, None).await?;
                self.unpublish().await;
            }
            Action::Script(kind, fwd, cost) => return Box::pin(self.script(kind, fwd, cost)).await,
        }
        Ok(())
    }

    /// RESTORE under a quota, charged by what Redis holds after it rather than by its
    /// payload (compressed, so a 1 MiB payload can hold tens of MiB): run over respite's own
    /// connection once every earlier reply is in, measured exactly, and deleted again with
    /// `-OOM` when the measured size does not fit (with REPLACE, the value it replaced is
    /// put back). Inside MULTI it is refused under a quota.
    pub(super) async fn restore(&mut self, fwd: Forward, mut written: Written) -> Result<(), End> {
        self.drain().await?;
        let (Some(quotas), Some(ledger)) = (
            self.ctx.quotas.clone(),
            self.tenant.as_ref().and_then(|t| t.ledger.clone()),
        ) else {
            return self.forward(fwd, b"restore", Some(written), None).await;
        };
        written.keys.clone_from(&fwd.args);
        let key = crate::wire::namespaced(&self.keys_prefix(), &fwd.args[1]);
        let replace = fwd.args[4..]
            .iter()
            .any(|a| a.eq_ignore_ascii_case(b"replace"));
        // What REPLACE would overwrite, to put back if the new value does not fit.
        let old = match replace {
            true => self.ctx.own.run(async |c| dump(c, &key).await).await.ok(),
            false => None,
        };
        let restored = self
            .ctx
            .own
            .run(async |c| restore_measured(c, &key, &fwd.args[2..]).await)
            .await;
        let outcome = match restored {
            Ok(size) => {
                let extra = size.saturating_sub(written.charged());
                match quotas.admit(&ledger, WriteCost::more(extra)).await {
                    Ok(more) => {
                        self.account.add(more);
                        Ok(())
                    }
                    Err(e) => {
                        // Over the quota once measured: the key goes again.
                        let undo = async |c: &mut crate::upstream::OwnConn| {
                            undo_restore(c, &key, old.flatten()).await
                        };
                        let _ = self.ctx.own.run(undo).await;
                        Err(e)
                    }
                }
            }
            Err(e) => Err(e.for_client(UpstreamError::Bookkeeping)),
        };
        self.account.add(written);
        match outcome {
            Ok(()) => {
                self.answer(crate::wire::Resp::ok());
                self.count(Outcome::Ok, None);
            }
            Err(e) => {
                self.refuse(e);
                self.count(Outcome::Refused, None);
            }
        }
        Ok(())
    }

    /// GET of a shared key, from the shared cache. A publisher's own earlier writes to
    /// shared keys on this connection are waited for first, so it reads what it wrote.
    pub(super) async fn shared_get(&mut self, key: Bytes) -> Result<(), End> {
        if !self.publishing.published.is_empty() {
            self.drain().await?;
            self.unpublish().await;
        }
        if !self.up.to_up.is_empty() {
            // A miss waits on Redis: let the requests before it go first.
            self.flush_upstream().await;
        }
        let Some(shared) = &self.ctx.market else {
            return Ok(());
        };
        let tenant = self.tenant.clone().expect("authenticated");
        let got = match shared.get_now(&mut self.publishing.memo, &key) {
            Some(e) => Ok(e),
            // Boxed: the wait for L1 or Redis is a future of many kilobytes, which would
            // otherwise be part of every request's `handle`.
            None => Box::pin(shared.get_late(&mut self.publishing.memo, &key, &tenant.id)).await,
        };
        let (reply, outcome, hit) = match got {
            Ok(e) => (e.reply(self.state.protocol), Outcome::Ok, Some(e.found())),
            Err(e @ Error::OriginLimited(_)) => {
                // Past the origin's rates a miss is nil, as if the origin had no value,
                // unless the tenant asked to be told.
                tenant
                    .live
                    .limited
                    .origin_limited
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                match tenant.refuse_past_rates {
                    true => (e.to_resp(), Outcome::Refused, None),
                    false => (
                        crate::wire::Resp(self.state.protocol).null(),
                        Outcome::Ok,
                        Some(false),
                    ),
                }
            }
            Err(e) => (e.to_resp(), Outcome::Error, None),
        };
        self.answer(reply);
        self.count(outcome, hit);
        Ok(())
    }

    /// Drops the shared keys this connection wrote from the shared cache: the new ones when
    /// sent, all of them again once every reply is in (a reader on another connection may
    /// have cached the old value meanwhile), then forgets them.
    pub(super) async fn unpublish(&mut self) {
        if self.publishing.published.is_empty() {
            return;
        }
        let done = self.up.awaiting == 0 && self.up.to_up.is_empty();
        let from = if done { 0 } else { self.publishing.unpublished };
        if let Some(shared) = &self.ctx.market {
            for k in &self.publishing.published[from..] {
                shared.invalidate(k).await;
            }
        }
        if done {
            self.publishing.published.clear();
        }
        self.publishing.unpublished = self.publishing.published.len();
    }

    /// The quota stage for a request with a `cost`: its charge, or `None` when it is refused
    /// (answered with `-OOM`, or the error that kept it from being charged).
    pub(super) async fn charge(
        &mut self,
        cost: Option<WriteCost>,
        top: &[u8],
    ) -> Option<Option<Written>> {
        match self.charge_now(cost) {
            Ok(written) => Some(written),
            Err(cost) => self.charge_late(cost, top).await.map(Some),
        }
    }

    /// The quota stage without a wait: no cost, or a charge the session's allowance or the
    /// tenant's lease covers ([`Session::admit_now`]). Otherwise the cost comes back for
    /// [`Session::charge_late`].
    fn charge_now(&mut self, cost: Option<WriteCost>) -> Result<Option<Written>, WriteCost> {
        match cost {
            None => Ok(None),
            Some(cost) => self.admit_now(cost).map(Some),
        }
    }

    /// The quota stage with a round trip to the shared figure: the charge, or `None` when
    /// it is refused (answered).
    async fn charge_late(&mut self, cost: WriteCost, top: &[u8]) -> Option<Written> {
        let refused = match self.admit(cost).await {
            Ok(w) => return Some(w),
            Err(e) => e,
        };
        let command = String::from_utf8_lossy(top);
        tracing::warn!(%command, error = %refused, "refused");
        self.refuse(refused);
        self.count(Outcome::Refused, None);
        None
    }

    /// The quota stage, when the lease covers the write (no round trip); otherwise the cost
    /// comes back for [`Session::admit`].
    pub(super) fn admit_now(&mut self, cost: WriteCost) -> Result<Written, WriteCost> {
        match (
            &self.ctx.quotas,
            self.tenant.as_ref().and_then(|t| t.ledger.as_ref()),
        ) {
            (Some(quotas), Some(ledger)) => self.account.admit_now(ledger, cost, quotas.recent()),
            _ => Err(cost),
        }
    }

    /// The quota stage with a round trip to the shared figure: a reservation, or `-OOM`.
    pub(super) async fn admit(&mut self, cost: WriteCost) -> Result<Written, Error> {
        let (Some(quotas), Some(ledger)) = (
            self.ctx.quotas.clone(),
            self.tenant.as_ref().and_then(|t| t.ledger.clone()),
        ) else {
            // Without quota bookkeeping nothing is charged.
            return Ok(Written::uncharged(cost));
        };
        quotas.admit(&ledger, cost).await
    }

    /// The stages, in order: auth gate and respite's own commands, command table, key map and
    /// policy, shared keys, rewrite, quota cost. Each either decides (`Break` carries the
    /// action) or passes on; none reaches back.
    pub(super) fn decide(&mut self, mut req: Request) -> Action {
        let looked_up = command::lookup(&req.args);
        self.note_command(&looked_up);
        self.figures.current = looked_up
            .as_ref()
            .ok()
            .filter(|_| self.ctx.metrics)
            .map(|c| Meta::of(c, self.figures.read_at));
        let tenant = decided!(self.gate(&req, &looked_up));
        let cmd = decided!(known(looked_up, &req));
        let top = cmd.parent.unwrap_or(cmd.spec).name;
        if self.state.multi.is_some() && cmd.has(command::CMD_NO_MULTI) {
            // Redis judges this before a user's permissions: SAVE inside MULTI is refused
            // as inside a transaction, not as a whole-server command.
            return Action::Refuse(Error::NotInTransaction);
        }
        if self.ctx.upstream.cluster.is_some()
            && matches!(top, b"cluster" | b"readonly" | b"readwrite" | b"asking")
        {
            return Action::Refuse(Error::ClusterDisabled);
        }
        if self.ctx.upstream.cluster.is_some() && top == b"monitor" && tenant.admin {
            // One pinned connection watches one node: most of the commands would be missed.
            let why = "respite fronts a Redis Cluster: it would watch one node of many";
            let command = cmd.full_name();
            self.ctx
                .audit
                .command_refused(&tenant.id, self.me.addr, &command, why);
            return Action::Refuse(Error::NoPerm { command, why });
        }
        let keys = match decided!(self.police(&cmd, &req, &tenant)) {
            Ok(keys) => keys,
            Err(command::KeyError::BadKeyCount | command::KeyError::OutOfRange)
                if ScriptCmd::of(&cmd) == Some(ScriptCmd::Fcall) =>
            {
                // Redis looks the function up before it reads the key count: the tenant's
                // function name and the count alone, which Redis refuses either way (a
                // count that was too large for the arguments is too large for none).
                req.args.truncate(3);
                command::KeyMap::None
            }
            Err(e) => return Action::Refuse(rewrite::key_error(&cmd, &req.args, e)),
        };
        if let Break(action) = self.shared_keys(&cmd, &req, &keys, &tenant) {
            // Served from the shared cache: the request's vector serves the next one.
            self.client.spare(req.args);
            return action;
        }
        let mut fwd = decided!(refused(rewrite::request(&cmd, req.args, &keys, &tenant)));
        decided!(refused(self.redirection(&cmd, &mut fwd, &tenant)));
        if self.ctx.upstream.cluster.is_some() {
            let prefix = self.prefix_for(fwd.channels);
            fwd.slot = keys
                .iter()
                .next()
                .map(|(i, _)| routing::slot_of(&fwd, i, &prefix));
            // Not a script (EVAL_RO and the like): its logins must reach one node, the one
            // that runs it.
            fwd.read_only = cmd.has(command::CMD_READONLY)
                && !cmd.has(command::CMD_BLOCKING)
                && ScriptCmd::of(&cmd).is_none();
        }
        let cost = tenant.ledger.as_ref().and_then(|_| {
            let max = self.ctx.facts.proto_max_bulk();
            let prefix_len = self.prefix_len(fwd.channels);
            quota::cost(&cmd, &fwd.args, &keys, &fwd.prefixed, prefix_len, max).map(|c| match self
                .state
                .db
            {
                0 => c,
                _ => c.in_database(self.keys_prefix()),
            })
        });
        if let Some(kind) = ScriptCmd::of(&cmd) {
            return Action::Script(kind, fwd, cost);
        }
        if cmd.parent.is_none() && cmd.spec.name == b"move" {
            return self.move_key(fwd, &tenant);
        }
        if cmd.parent.is_none() && cmd.spec.name == b"copy" {
            if let Err(e) = self.copy_db(&mut fwd.args) {
                return self.fails_when_run(e);
            }
        }
        // Built in place: the common outcome is not moved through the stages' results.
        Action::Forward(fwd, cmd.parent.unwrap_or(cmd.spec).name, cost)
    }

    /// MOVE key db, within the tenant's databases: Redis' checks, in its order, then a
    /// script of respite's that renames the key to its name in the other database unless
    /// it is missing or the name is taken there (Redis' answers, 0 or 1; the TTL goes
    /// with it). In a cluster the two names are in different slots: refused, as Redis
    /// Cluster refuses MOVE.
    fn move_key(&mut self, mut fwd: Forward, tenant: &Tenant) -> Action {
        const MOVE: &[u8] = b"if redis.call('exists', KEYS[1]) == 0 or \
            redis.call('exists', KEYS[2]) == 1 then return 0 end \
            redis.call('rename', KEYS[1], KEYS[2]) return 1";
        if self.state.protocol == 2 && self.state.subs.any() {
            // Redis' refusal names MOVE, not the script it becomes.
            return Action::Refuse(Error::SubscribedOnly("move".into()));
        }
        let refuse = |text: &str| self.fails_when_run(Error::Redis(format!("ERR {text}")));
        if self.ctx.upstream.cluster.is_some() {
            return refuse("MOVE is not allowed in cluster mode");
        }
        let db = match self.database(&fwd.args[2]) {
            Ok(db) => db,
            Err(e) => return self.fails_when_run(e),
        };
        if db == self.state.db {
            return refuse("source and destination objects are the same");
        }
        if !fwd.prefixed.has(1) {
            return refuse("respite: shared keys have no databases to move between");
        }
        let to = crate::wire::namespaced(&tenant.db_prefix(db), &fwd.args[1]);
        let from = crate::wire::namespaced(&self.keys_prefix(), &fwd.args[1]);
        let cost = tenant
            .ledger
            .as_ref()
            .map(|_| WriteCost::moved(vec![from, to.clone()]));
        fwd.args = vec![
            Bytes::from_static(b"EVAL"),
            Bytes::from_static(MOVE),
            Bytes::from_static(b"2"),
            std::mem::take(&mut fwd.args[1]),
            to,
        ];
        fwd.prefixed = Default::default();
        fwd.prefixed.set(3);
        Action::Forward(fwd, b"move", cost)
    }

    /// An error Redis gives when the command runs, not when it is queued: inside MULTI it
    /// is queued like the command (its result inside EXEC's reply, the rest of the
    /// transaction runs), as from Redis.
    fn fails_when_run(&self, e: Error) -> Action {
        match self.state.multi {
            Some(_) => Action::Local(Local::Session(local::SessionCmd::FailsWhenRun(e.to_resp()))),
            None => Action::Refuse(e),
        }
    }

    /// COPY's DB, read as Redis reads it, must be the selected database, and is taken out
    /// (Redis copies within the database of the connection, whatever the upstream URL
    /// names). Into another database: refused, the one COPY respite does not rewrite (its
    /// source may be a shared key, its size is charged by its source's).
    fn copy_db(&self, args: &mut Vec<Bytes>) -> Result<(), Error> {
        let mut i = 3;
        while i + 1 < args.len() {
            if args[i].eq_ignore_ascii_case(b"db") {
                let db = self.database(&args[i + 1])?;
                if db != self.state.db {
                    return Err(Error::Unsupported(
                        "respite copies within the selected database only (COPY ... DB to \
                         another one is not supported)"
                            .into(),
                    ));
                }
                args.drain(i..i + 2);
                continue;
            }
            i += 1;
        }
        Ok(())
    }

    /// CLIENT TRACKING ... REDIRECT names a connection as the tenant numbers them: Redis
    /// gets that connection's upstream id. Only a connection of the same tenant whose pinned
    /// connection took `__redis__:invalidate` can be named (such a connection is closed, not
    /// reused, when let go: a stale id never reaches another tenant's). CLIENT TRACKINGINFO's
    /// `redirect` goes back the other way.
    fn redirection(
        &mut self,
        cmd: &command::Command,
        fwd: &mut Forward,
        tenant: &Tenant,
    ) -> Result<(), Error> {
        if let Expect::Reply(Shape::TrackingInfo(r) | Shape::GetRedir(r)) = &mut fwd.expect {
            r.as_mut().clone_from(&self.state.redirects);
            return Ok(());
        }
        if cmd.names() != (b"client", Some(b"tracking")) {
            return Ok(());
        }
        let Some((i, repeated)) = rewrite::tracking_redirect(&fwd.args) else {
            return Ok(());
        };
        let shown = command::grammar::redis_int(&fwd.args[i]).ok_or(Error::NotInteger)?;
        if self.ctx.upstream.cluster.is_some() {
            return Err(Error::Unsupported(
                "respite does not redirect invalidations in cluster mode: use RESP3 (HELLO 3) \
                 to get them on the tracking connection"
                    .into(),
            ));
        }
        let target = u64::try_from(shown)
            .ok()
            .and_then(|id| self.ctx.clients.get_shown(&tenant.id, id))
            .ok_or_else(|| {
                Error::Redis("ERR The client ID you want redirect to does not exist".into())
            })?;
        let upstream = target
            .upstream_id
            .load(std::sync::atomic::Ordering::Relaxed);
        if upstream <= 0
            || !target
                .invalidations
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(Error::Unsupported(
                "respite redirects invalidations only to a connection subscribed to \
                 __redis__:invalidate"
                    .into(),
            ));
        }
        if repeated {
            // Redis' refusal, after the first id's lookup: the second id never reaches
            // Redis (whose answer would tell whether such a Redis client exists).
            return Err(Error::Redis(
                "ERR A client can only redirect to a single other client".into(),
            ));
        }
        fwd.args[i] = Bytes::from(upstream.to_string());
        let redirects = &mut self.state.redirects;
        redirects.retain(|&(s, _)| s != shown);
        redirects.push((shown, upstream));
        if redirects.len() > MAX_REDIRECTS {
            redirects.remove(0);
        }
        Ok(())
    }

    /// The auth gate, then respite's own commands: before AUTH only the commands that log
    /// in (or leave) pass.
    fn gate(
        &mut self,
        req: &Request,
        looked_up: &Result<command::Command, Unknown>,
    ) -> Decided<Arc<Tenant>> {
        let local = local::recognize(req, looked_up);
        let Some(tenant) = self.tenant.clone() else {
            return Break(match local {
                Some(l @ (Local::Auth { .. } | Local::Hello { .. })) => Action::Local(l),
                Some(l @ (Local::Quit | Local::Reset)) => Action::Local(l),
                Some(Local::Invalid(e)) if req.arg_is(0, b"auth") || req.arg_is(0, b"hello") => {
                    Action::Refuse(e)
                }
                // As Redis with a password: an unknown command or a wrong arity is told
                // before the missing login (PING too: a health check without the password
                // must not look healthy).
                _ => match known(*looked_up, req) {
                    Break(refusal) => refusal,
                    Continue(_) => Action::Refuse(Error::NoAuth),
                },
            });
        };
        match local {
            Some(l @ (Local::Quit | Local::Reset)) => Break(Action::Local(l)),
            Some(_) if self.state.protocol == 2 && self.state.subs.any() => {
                // What Redis answers in RESP2 subscribed mode, before the command runs.
                let name = match looked_up {
                    Ok(cmd) => cmd.full_name(),
                    Err(_) => "client|setinfo".into(),
                };
                Break(Action::Refuse(Error::SubscribedOnly(name)))
            }
            Some(l) => Break(Action::Local(l)),
            None => Continue(tenant),
        }
    }

    /// The request's keys, found once (every stage after this reads the map), and the policy;
    /// keys that cannot be found are the caller's to answer.
    fn police(
        &self,
        cmd: &command::Command,
        req: &Request,
        tenant: &Tenant,
    ) -> Decided<Result<command::KeyMap, command::KeyError>> {
        let keys = command::KeyMap::find(cmd, &req.args);
        let facts = &self.ctx.facts;
        if let Err(e) = policy::check(cmd, &req.args, keys.as_ref().ok(), tenant, facts) {
            tracing::warn!(tenant = %tenant.id, command = %cmd.full_name(), "refused");
            if let Some(why) = policy::refused_server_wide(cmd, tenant) {
                let trail = &self.ctx.audit;
                trail.command_refused(&tenant.id, self.me.addr, &cmd.full_name(), why);
            }
            return Break(Action::Refuse(e));
        }
        if tenant.admin && keys.is_ok() && policy::for_operators(cmd) {
            let peer = self.me.addr;
            policy::audit(&self.ctx.audit, tenant, peer, &cmd.full_name(), &req.args);
        }
        Continue(keys)
    }

    /// A GET of a shared key is served from the shared cache; a publisher's writes to shared
    /// keys are noted, to be dropped from it.
    fn shared_keys(
        &mut self,
        cmd: &command::Command,
        req: &Request,
        keys: &command::KeyMap,
        tenant: &Tenant,
    ) -> Decided<()> {
        if self.ctx.market.is_none() {
            return Continue(());
        }
        // Who read which shared keys, for the audit trail: the keys whose values the command
        // uses (Redis' ACCESS flag: GET, MGET, HGETALL, TTL, COPY's source; not EXISTS or
        // TYPE).
        let cap = self.ctx.audit.shared_reads_cap();
        if cap > 0 {
            for (i, flags) in keys.iter() {
                let read = flags & command::KS_ACCESS != 0 && flags & command::KS_NOT_KEY == 0;
                if read && tenant.is_shared(&req.args[i]) {
                    self.figures.shared_reads.note(&req.args[i], cap);
                }
            }
        }
        // Inside MULTI a GET is queued in Redis like any command.
        if self.state.multi.is_none()
            && cmd.parent.is_none()
            && cmd.spec.name == b"get"
            && tenant.is_shared(&req.args[1])
        {
            return Break(Action::SharedGet(req.args[1].clone()));
        }
        if tenant.publisher && cmd.has(command::CMD_WRITE) {
            for (i, _) in keys.iter() {
                if tenant.is_shared(&req.args[i]) {
                    self.publishing.published.push(req.args[i].clone());
                }
            }
        }
        Continue(())
    }

    /// Remembers the command for CLIENT LIST (`cmd=`, `idle=`).
    pub(super) fn note_command(&mut self, looked_up: &Result<command::Command, Unknown>) {
        if let Ok(cmd) = looked_up {
            self.figures.noted = Some(cmd.names());
        }
    }

    /// Answers with respite's own reply, unless CLIENT REPLY says not to.
    pub(crate) fn answer(&mut self, reply: Bytes) {
        if !self.take_mute() {
            self.up.pending.push_back(Slot::Ready(reply));
        }
    }

    /// Answers with an error; inside MULTI that also dooms the transaction, as in Redis.
    pub(crate) fn refuse(&mut self, e: Error) {
        if let Some(m) = &mut self.state.multi {
            m.dirty = true;
        }
        self.answer(e.to_resp());
    }

    pub(super) fn take_mute(&mut self) -> bool {
        match self.state.reply_mode {
            ReplyMode::On => false,
            ReplyMode::Off => true,
            ReplyMode::SkipNext => {
                self.state.reply_mode = ReplyMode::On;
                true
            }
        }
    }
}

/// The command table's answer: a known command with a valid arity, or Redis' own error.
fn known(looked_up: Result<command::Command, Unknown>, req: &Request) -> Decided<command::Command> {
    let cmd = match looked_up {
        Ok(cmd) => cmd,
        Err(Unknown::Command) => return Break(Action::Refuse(Error::unknown_command(&req.args))),
        Err(Unknown::Subcommand(container)) => {
            return Break(Action::Refuse(Error::UnknownSubcommand {
                sub: String::from_utf8_lossy(&req.args[1]).into_owned(),
                container: String::from_utf8_lossy(container.name).to_uppercase(),
            }))
        }
    };
    if !cmd.arity_ok(req.args.len()) {
        return Break(Action::Refuse(Error::WrongArity(cmd.full_name())));
    }
    Continue(cmd)
}

/// The REDIRECTs a connection remembers (see `ConnectionState::redirects`): Redis'
/// redirect is the last one it accepted, which a refused REDIRECT after it does not change.
const MAX_REDIRECTS: usize = 8;

/// A stage's outcome: go on with this (`Continue`), or the request is decided (`Break`).
type Decided<T> = ControlFlow<Action, T>;

/// A refusal decides the request.
fn refused<T>(r: Result<T, Error>) -> Decided<T> {
    match r {
        Ok(t) => Continue(t),
        Err(e) => Break(Action::Refuse(e)),
    }
}

/// A key's DUMP payload and remaining TTL in ms (0 without one), `None` if it does not exist.
async fn dump(
    c: &mut crate::upstream::OwnConn,
    key: &[u8],
) -> deadpool_redis::redis::RedisResult<Option<(Vec<u8>, i64)>> {
    let (payload, pttl): (Option<Vec<u8>>, i64) = deadpool_redis::redis::pipe()
        .cmd("DUMP")
        .arg(key)
        .cmd("PTTL")
        .arg(key)
        .query_async(c)
        .await?;
    Ok(payload.map(|p| (p, pttl.max(0))))
}

/// RESTORE `key` with the client's `rest` (TTL, payload, options), then its exact size.
async fn restore_measured(
    c: &mut crate::upstream::OwnConn,
    key: &[u8],
    rest: &[Bytes],
) -> deadpool_redis::redis::RedisResult<u64> {
    let mut restore = deadpool_redis::redis::cmd("RESTORE");
    restore.arg(key);
    for a in rest {
        restore.arg(&a[..]);
    }
    let () = restore.query_async(c).await?;
    let size: Option<u64> = deadpool_redis::redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(key)
        .arg("SAMPLES")
        .arg(0)
        .query_async(c)
        .await?;
    Ok(size.unwrap_or(0))
}

/// Removes a restored key that did not fit, and puts back the value it replaced.
async fn undo_restore(
    c: &mut crate::upstream::OwnConn,
    key: &[u8],
    old: Option<(Vec<u8>, i64)>,
) -> deadpool_redis::redis::RedisResult<()> {
    let () = deadpool_redis::redis::cmd("DEL")
        .arg(key)
        .query_async(c)
        .await
        .map(|_: i64| ())?;
    if let Some((payload, pttl)) = old {
        deadpool_redis::redis::cmd("RESTORE")
            .arg(key)
            .arg(pttl)
            .arg(payload)
            .arg("REPLACE")
            .query_async::<()>(c)
            .await?;
    }
    Ok(())
}
