//! The stages a request passes, in order (auth gate, command table, respite's own
//! commands, policy, key map, rewrite, quota), and acting on what they decided: answer,
//! refuse, serve from the shared cache, or forward.

use super::*;

impl Session {
    /// One request through the stages, then acting on what they decided.
    pub(super) async fn handle(&mut self, req: Request) -> Result<(), End> {
        match self.decide(req) {
            Action::Refuse(e) => {
                self.refuse(e);
                self.count(Outcome::Refused, None);
            }
            Action::Local(local) => {
                self.run_local(local).await?;
                let outcome = self.last_outcome();
                self.count(outcome, None);
            }
            Action::SharedGet(key) => return self.shared_get(key).await,
            Action::Forward(fwd, top, None) => {
                self.forward(fwd, top, None).await?;
                self.unpublish().await;
            }
            Action::Forward(fwd, top, Some(cost)) => {
                let written = match self.admit_now(cost) {
                    Ok(w) => w,
                    Err(cost) => match self.admit(cost).await {
                        Ok(w) => w,
                        Err(e) => {
                            let command = String::from_utf8_lossy(top);
                            tracing::warn!(%command, error = %e, "refused");
                            self.refuse(e);
                            self.count(Outcome::Refused, None);
                            return Ok(());
                        }
                    },
                };
                if top == b"restore" && self.multi.is_none() {
                    return self.restore(fwd, written).await;
                }
                self.forward(fwd, top, Some(written)).await?;
                self.unpublish().await;
            }
        }
        Ok(())
    }

    /// RESTORE under a quota, charged by what Redis holds after it rather than by its
    /// payload (compressed, so a 1 MiB payload can hold tens of MiB): run over respite's own
    /// connection once every earlier reply is in, measured exactly, and deleted again with
    /// `-OOM` when the measured size does not fit. (Inside MULTI it is queued like any write
    /// and measured with the next flush.)
    pub(super) async fn restore(&mut self, fwd: Forward, mut written: Written) -> Result<(), End> {
        self.drain().await?;
        let (Some(quotas), Some(ledger)) = (
            self.ctx.quotas.clone(),
            self.tenant.as_ref().and_then(|t| t.ledger.clone()),
        ) else {
            return self.forward(fwd, b"restore", Some(written)).await;
        };
        written.keys.clone_from(&fwd.args);
        let key = crate::wire::namespaced(&self.prefix(), &fwd.args[1]);
        let restored = self
            .ctx
            .own
            .run(async |c| {
                let mut restore = deadpool_redis::redis::cmd("RESTORE");
                restore.arg(&key[..]);
                for a in &fwd.args[2..] {
                    restore.arg(&a[..]);
                }
                let () = restore.query_async(c).await?;
                deadpool_redis::redis::cmd("MEMORY")
                    .arg("USAGE")
                    .arg(&key[..])
                    .arg("SAMPLES")
                    .arg(0)
                    .query_async::<Option<u64>>(c)
                    .await
            })
            .await;
        let outcome = match restored {
            Ok(size) => {
                let extra = size.unwrap_or(0).saturating_sub(written.charged());
                match quotas.admit(&ledger, WriteCost::more(extra)).await {
                    Ok(more) => {
                        self.account.add(more);
                        Ok(())
                    }
                    Err(e) => {
                        // Over the quota once measured: the key goes again.
                        let _ = self
                            .ctx
                            .own
                            .run(async |c| {
                                deadpool_redis::redis::cmd("DEL")
                                    .arg(&key[..])
                                    .query_async::<i64>(c)
                                    .await
                            })
                            .await;
                        Err(e)
                    }
                }
            }
            Err(crate::upstream::OwnError::Redis(e)) if e.code().is_some() => Err(Error::Redis(
                format!("{} {}", e.code().unwrap_or("ERR"), e.detail().unwrap_or("")),
            )),
            Err(e) => Err(Error::Upstream(UpstreamError::Bookkeeping(e.to_string()))),
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
        if !self.published.is_empty() {
            self.drain().await?;
            self.unpublish().await;
        }
        if !self.to_up.is_empty() {
            // A miss waits on Redis: let the requests before it go first.
            self.flush_upstream().await;
        }
        let Some(shared) = &self.ctx.shared else {
            return Ok(());
        };
        let (reply, outcome, hit) = match shared.get_memo(&mut self.memo, &key).await {
            Ok(e) => (e.reply(self.protocol), Outcome::Ok, Some(e.found())),
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
        if self.published.is_empty() {
            return;
        }
        let done = self.awaiting == 0 && self.to_up.is_empty();
        let from = if done { 0 } else { self.unpublished };
        if let Some(shared) = &self.ctx.shared {
            for k in &self.published[from..] {
                shared.invalidate(k).await;
            }
        }
        if done {
            self.published.clear();
        }
        self.unpublished = self.published.len();
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
            return Err(Error::Other(
                "internal: a write cost without a quota".into(),
            ));
        };
        quotas.admit(&ledger, cost).await
    }

    /// The stages, in order: auth gate, command table, respite's own commands, policy,
    /// rewrite. Each either decides or passes on; none reaches back.
    pub(super) fn decide(&mut self, req: Request) -> Action {
        let looked_up = command::lookup(&req.args);
        self.note_command(&looked_up);
        self.current = looked_up
            .as_ref()
            .ok()
            .filter(|_| self.ctx.metrics)
            .map(|c| Meta::of(c, self.read_at));
        let local = local::recognize(&req, &looked_up, self.tenant.is_some());
        let Some(tenant) = self.tenant.clone() else {
            return match local {
                Some(l @ (Local::Auth { .. } | Local::Hello { .. } | Local::Ping(_)))
                | Some(l @ (Local::Quit | Local::Reset)) => Action::Local(l),
                Some(Local::Invalid(e)) if req.arg_is(0, b"auth") || req.arg_is(0, b"hello") => {
                    Action::Refuse(e)
                }
                _ => Action::Refuse(Error::NoAuth),
            };
        };
        match local {
            // Inside MULTI, KEYS is queued in Redis like any command, its pattern namespaced.
            Some(Local::Keys(_)) if self.multi.is_some() => {}
            Some(l) => return Action::Local(l),
            None => {}
        }
        let cmd = match looked_up {
            Ok(cmd) => cmd,
            Err(Unknown::Command) => return Action::Refuse(Error::unknown_command(&req.args)),
            Err(Unknown::Subcommand(container)) => {
                return Action::Refuse(Error::UnknownSubcommand {
                    sub: String::from_utf8_lossy(&req.args[1]).into_owned(),
                    container: String::from_utf8_lossy(container.name).to_uppercase(),
                })
            }
        };
        if !cmd.arity_ok(req.args.len()) {
            return Action::Refuse(Error::WrongArity(cmd.full_name()));
        }
        // The request's keys, found once: every stage below reads this map.
        let keys = command::KeyMap::find(&cmd, &req.args);
        if let Err(e) = policy::check(
            &cmd,
            &req.args,
            keys.as_ref().ok(),
            &tenant,
            &self.ctx.facts,
        ) {
            tracing::warn!(tenant = %tenant.id, command = %cmd.full_name(), "refused");
            return Action::Refuse(e);
        }
        let keys = match keys {
            Ok(keys) => keys,
            Err(e) => return Action::Refuse(rewrite::key_error(&cmd, e)),
        };
        if self.ctx.shared.is_some() {
            // Inside MULTI a GET is queued in Redis like any command.
            if self.multi.is_none()
                && cmd.parent.is_none()
                && cmd.spec.name == b"get"
                && tenant.is_shared(&req.args[1])
            {
                return Action::SharedGet(req.args[1].clone());
            }
            if tenant.publisher && cmd.has(command::CMD_WRITE) {
                for (i, _) in keys.iter() {
                    if tenant.is_shared(&req.args[i]) {
                        self.published.push(req.args[i].clone());
                    }
                }
            }
        }
        let fwd = match rewrite::request(&cmd, req.args, &keys, &tenant) {
            Ok(fwd) => fwd,
            Err(e) => return Action::Refuse(e),
        };
        let cost = tenant
            .ledger
            .as_ref()
            .and_then(|_| quota::cost(&cmd, &fwd.args, &keys, &fwd.prefixed, tenant.prefix.len()));
        Action::Forward(fwd, cmd.parent.unwrap_or(cmd.spec).name, cost)
    }

    /// Remembers the command for CLIENT LIST (`cmd=`, `idle=`).
    pub(super) fn note_command(&mut self, looked_up: &Result<command::Command, Unknown>) {
        if let Ok(cmd) = looked_up {
            self.noted = Some(match cmd.parent {
                Some(p) => (p.name, Some(cmd.spec.name)),
                None => (cmd.spec.name, None),
            });
        }
    }

    /// Answers with respite's own reply, unless CLIENT REPLY says not to.
    pub(crate) fn answer(&mut self, reply: Bytes) {
        if !self.take_mute() {
            self.pending.push_back(Slot::Ready(reply));
        }
    }

    /// Answers with an error; inside MULTI that also dooms the transaction, as in Redis.
    pub(crate) fn refuse(&mut self, e: Error) {
        if let Some(m) = &mut self.multi {
            m.dirty = true;
        }
        self.answer(e.to_resp());
    }

    pub(super) fn take_mute(&mut self) -> bool {
        match self.reply_mode {
            ReplyMode::On => false,
            ReplyMode::Off => true,
            ReplyMode::SkipNext => {
                self.reply_mode = ReplyMode::On;
                true
            }
        }
    }
}
