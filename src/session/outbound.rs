//! Requests on their way to Redis: queued for a shared connection or written to the
//! session's pinned one, in order, with the slot each reply will fill.

use super::*;

impl Session {
    /// Queues a rewritten request for Redis. `top` is the command's (container's) name;
    /// `write` its charge, if it is a write under a quota.
    pub(crate) async fn forward(
        &mut self,
        fwd: Forward,
        top: &[u8],
        mut write: Option<Written>,
        script: Option<ScriptSend>,
    ) -> Result<(), End> {
        let Forward {
            mut args,
            prefixed,
            channels,
            mut expect,
            blocking,
            slot: key_slot,
            read_only,
        } = fwd;
        if self.past_subscriptions(top, &args, &expect) {
            return Ok(());
        }
        self.up.script = script.is_some();
        let queued = self.state.multi.is_some()
            && !matches!(top, b"exec" | b"discard" | b"multi" | b"watch");
        if top == b"exec" && self.state.multi.as_ref().is_some_and(|m| m.dirty) {
            return self.abort_exec().await;
        }
        let cluster = self.ctx.upstream.cluster.is_some();
        if cluster {
            if let routing::Routed::Done = self.route_in_cluster(top, key_slot, read_only, queued) {
                self.give_back(write);
                return Ok(());
            }
            if top == b"mset" && !queued && args.len() % 2 == 0 {
                // One Redis checks the pairs before anything else; a cluster would first
                // answer CROSSSLOT (or respite split the request on a lone key).
                self.give_back(write);
                self.refuse(Error::WrongArity("mset".into()));
                return Ok(());
            }
            let pending = self.state.multi.as_ref().is_some_and(|m| m.begin_pending);
            if pending && queued && key_slot.is_none() && script.is_none() {
                return self.hold_in_multi(args, prefixed, channels, expect);
            }
            let merged = [
                &b"channels"[..],
                b"numsub",
                b"shardchannels",
                b"shardnumsub",
            ];
            let merges = |sub: &Bytes| merged.iter().any(|m| sub.eq_ignore_ascii_case(m));
            if top == b"pubsub" && !queued && args.get(1).is_some_and(merges) {
                // Over every master, answered by respite.
                self.drain().await?;
                let reply = self.cluster_pubsub(&args, &prefixed).await;
                self.answer(reply);
                return Ok(());
            }
            if top == b"scan" && !queued {
                // Over every master in turn, answered by respite.
                self.drain().await?;
                let reply = self.cluster_scan(&args, &prefixed).await;
                self.answer(reply);
                return Ok(());
            }
            let pins = blocking || matches!(expect, Expect::Confirm { .. });
            if !self.keep_to_node(top, pins).await? {
                self.give_back(write);
                return Ok(());
            }
        }
        // EXEC runs the scripts queued in the transaction.
        let exec_scripts = match top {
            b"exec" => self.state.multi.as_ref().and_then(|m| m.script_timeout),
            _ => None,
        };
        // In place: a request's expectation and charge are not moved through these steps.
        if !queued {
            self.track_state(top, &args, &mut expect, &mut write);
        } else if !self.queue_in_multi(&mut expect, &mut write, &args) {
            return Ok(());
        }
        // Connection state begins (or a command may block): it needs a connection of its own.
        // A transaction of commands without keys, begun at its EXEC (cluster mode), runs on
        // a pinned connection too: what it sets (CLIENT TRACKING, NO-EVICT) stays off the
        // shared connections.
        let pin = blocking
            || matches!(expect, Expect::Confirm { .. })
            || self.needs_pinned()
            || self.up.begin_at_exec.is_some();
        let mute = self.take_mute();
        let timeout = script.as_ref().map(|s| s.timeout).or(exec_scripts);
        if timeout.is_some() && !queued && self.blocked_in_flight() {
            // Behind a blocking command Redis would hold the script for as long: it is sent
            // once that is answered, so that its clock (and SCRIPT KILL) follow it running.
            self.drain().await?;
        }
        let run = match (&self.tenant, timeout) {
            (Some(tenant), Some(t)) if !queued => {
                // The node it runs on: the pinned connection's, if it goes there.
                let node = match (&self.up.pinned, self.shared_path()) {
                    (Some(p), false) => Some(p.connector().clone()),
                    _ => self
                        .target_node()
                        .ok()
                        .flatten()
                        .map(|n| n.connector.clone()),
                };
                Some(self.ctx.scripts.start(tenant, t, node))
            }
            _ => None,
        };
        if let (true, Some(t), Some(m)) = (queued, timeout, &mut self.state.multi) {
            m.script_timeout = Some(m.script_timeout.map_or(t, |old| old.max(t)));
        }
        let slot = match expect {
            Expect::Reply(shape) => Slot::Reply {
                shape,
                blocking,
                mute,
                write: write.is_some(),
                meta: self.figures.current.take(),
                _script: run.map(Box::new),
            },
            Expect::Confirm { kind, count } => Slot::Confirm {
                kind,
                left: count,
                mute,
            },
        };
        if !self.open(pin, matches!(slot, Slot::Internal)).await? {
            self.give_back(write);
            return Ok(());
        }
        let begin = match self.state.multi.as_mut() {
            Some(m) if m.begin_pending && queued => {
                m.begin_pending = false;
                Some(std::mem::take(&mut m.held))
            }
            _ => self.up.begin_at_exec.take(),
        };
        if let Some(held) = begin {
            // Cluster mode: the transaction begins on the node of its first command with
            // keys, with the commands without keys queued before it (their +QUEUED was
            // respite's).
            encode_request(&mut self.up.to_up, [&b"MULTI"[..]].into_iter());
            self.queue(Slot::Internal);
            for request in held {
                self.up.to_up.extend_from_slice(&request);
                self.queue(Slot::Internal);
            }
        }
        let confine = script.and_then(|s| s.auth);
        if let Some(auth) = &confine {
            // In a cluster the next script may be for another node: one pair each.
            if cluster || !self.reopen_bracket(auth, queued) {
                self.login_for_script(auth, queued);
            }
        }
        if cluster {
            let prefix = self.prefix_for(channels);
            if blocking && !queued {
                self.remember_blocked(top, &args, &prefixed, &prefix);
            }
            let split = !queued && self.shared_path();
            if !(split && self.split(top, &args, &prefixed, &prefix)) {
                encode_marked(&mut self.up.to_up, &args, &prefix, &prefixed);
            }
        } else {
            // Borrowed, not cloned: the common request's path.
            let prefix = super::prefix_of(&self.tenant, &self.state, channels);
            encode_marked(&mut self.up.to_up, &args, prefix, &prefixed);
        }
        debug_assert!(
            write.is_none() || matches!(slot, Slot::Reply { write: true, .. }),
            "a charge without a write slot: `writes` would fall out of step with `pending`"
        );
        self.queue(slot);
        if let Some(mut w) = write {
            // Encoded: the write's key can leave the request rather than be copied.
            w.keys.take_from(&mut args);
            self.up.writes.push_back(w);
        }
        self.client.spare(args);
        if let Some(auth) = confine {
            let at = self.up.to_up.len();
            let relogin = self.ctx.scripts.relogin();
            encode_request(&mut self.up.to_up, relogin.iter().map(|a| &a[..]));
            self.queue(Slot::Relogin);
            if let Some(m) = self.state.multi.as_mut().filter(|_| queued) {
                m.items.push(ExecItem::Hidden);
            }
            self.up.bracket = Some(Bracket {
                at,
                end: self.up.to_up.len(),
                user: auth[1].clone(),
                queued,
            });
        }
        if self.state.db_before_exec.is_some() {
            // The transaction SELECTed: whether Redis runs it decides the database of the
            // requests after it, so they wait for its reply (`replied` keeps the new one if
            // it ran). No reply from Redis: the old one, as after a refused EXEC.
            self.drain().await?;
            if let Some(before) = self.state.db_before_exec.take() {
                self.select_back(before);
            }
        }
        Ok(())
    }

    /// A DISCARD (or an aborted EXEC): a SELECT queued in the transaction never ran.
    pub(super) fn unselect_queued(&mut self) {
        if let Some(before) = self.state.multi.as_ref().and_then(|m| m.db_before) {
            self.select_back(before);
        }
    }

    /// Cluster mode, a transaction not begun yet (no command with keys so far): a command
    /// without keys waits for the first one with keys, which picks the node; respite
    /// answers +QUEUED as Redis would, and its result comes in EXEC's reply.
    fn hold_in_multi(
        &mut self,
        args: Vec<Bytes>,
        prefixed: crate::wire::Marks,
        channels: bool,
        mut expect: Expect,
    ) -> Result<(), End> {
        if !self.queue_in_multi(&mut expect, &mut None, &args) {
            return Ok(());
        }
        let prefix = self.prefix_for(channels);
        if let Some(m) = self.state.multi.as_mut() {
            let mut request = BytesMut::new();
            encode_marked(&mut request, &args, &prefix, &prefixed);
            m.held.push(request.freeze());
        }
        self.answer(Bytes::from_static(b"+QUEUED\r\n"));
        self.count(Outcome::Ok, None);
        Ok(())
    }

    /// A write refused before it was sent: its charge is settled (its keys measured as they
    /// are) rather than dropped, which would leave it spoken for.
    fn give_back(&mut self, write: Option<Written>) {
        if let Some(w) = write {
            self.account.add(w);
        }
    }

    /// A script of the same tenant right after another one's, in the same batch: the login
    /// after the first is taken back, so both run inside one AUTH pair (a pipeline of
    /// scripts costs Redis two AUTHs, not two per script).
    fn reopen_bracket(&mut self, auth: &[Bytes; 3], queued: bool) -> bool {
        let open = self.up.bracket.take().filter(|b| {
            b.end == self.up.to_up.len()
                && b.user == auth[1]
                && b.queued == queued
                && matches!(self.up.pending.back(), Some(Slot::Relogin))
        });
        let Some(b) = open else {
            return false;
        };
        self.up.to_up.truncate(b.at);
        self.up.pending.pop_back();
        self.up.awaiting -= 1;
        self.up.to_up_count -= 1;
        if let Some(m) = self.state.multi.as_mut().filter(|_| queued) {
            // The login's hidden result, before the script's own item `queue_in_multi` pushed.
            let at = m.items.len() - 2;
            m.items.remove(at);
        }
        true
    }

    /// A SUBSCRIBE (PSUBSCRIBE, SSUBSCRIBE) that would take the connection past its
    /// tenant's `max_subscriptions` is refused whole (and `true`).
    fn past_subscriptions(&mut self, top: &[u8], args: &[Bytes], expect: &Expect) -> bool {
        let (Expect::Confirm { kind, .. }, Some(tenant)) = (expect, &self.tenant) else {
            return false;
        };
        if !matches!(top, b"subscribe" | b"psubscribe" | b"ssubscribe") {
            return false;
        }
        let max = tenant.caps.max_subscriptions;
        let names = args[1..]
            .iter()
            .map(|c| crate::wire::namespaced(&tenant.prefix, c));
        if self.state.subs.count() + self.state.subs.new_ones(*kind, names) <= max {
            return false;
        }
        self.refuse(Error::MaxSubscriptions(max));
        true
    }

    /// Is a blocking command (BLPOP, XREAD BLOCK, WAIT, ...) waiting for its reply?
    fn blocked_in_flight(&self) -> bool {
        self.up
            .pending
            .iter()
            .any(|s| matches!(s, Slot::Reply { blocking: true, .. }))
    }

    /// Logs the connection in as the tenant's ACL user for the script about to be encoded
    /// (respite's own login follows it). Inside MULTI the AUTH is queued with the script:
    /// its result is left out of EXEC's reply.
    fn login_for_script(&mut self, auth: &[Bytes; 3], queued: bool) {
        encode_request(&mut self.up.to_up, auth.iter().map(|a| &a[..]));
        self.queue(Slot::ScriptLogin);
        if let Some(m) = self.state.multi.as_mut().filter(|_| queued) {
            // Before the script's own item, which `queue_in_multi` pushed.
            let at = m.items.len().saturating_sub(1);
            m.items.insert(at, ExecItem::Hidden);
        }
    }

    /// Inside MULTI: Redis queues the command and answers +QUEUED; its real reply comes
    /// inside EXEC's, and its write is settled with EXEC. `false`: refused instead.
    fn queue_in_multi(
        &mut self,
        expect: &mut Expect,
        write: &mut Option<Written>,
        args: &[Bytes],
    ) -> bool {
        let Expect::Reply(shape) = expect else {
            self.refuse(Error::NotInTransaction);
            return false;
        };
        let base = self.prefix();
        if let Some(m) = &mut self.state.multi {
            m.items
                .push(ExecItem::Upstream(std::mem::replace(shape, Shape::Plain)));
            if let Some(mut w) = write.take() {
                w.keys.clone_from(args);
                match &mut m.writes {
                    Some(all) => all.absorb(&mut w, &base),
                    None => m.writes = Some(w),
                }
            }
        }
        true
    }

    /// EXEC of a transaction a refused command doomed: Redis' queue is discarded and the
    /// client gets EXECABORT, as from Redis.
    async fn abort_exec(&mut self) -> Result<(), End> {
        self.state.watching = false;
        self.unselect_queued();
        let mut sent = true;
        if let Some(m) = self.state.multi.take() {
            sent = !m.begin_pending;
            if let Some(w) = m.writes {
                self.account.add(w);
            }
        }
        if sent && self.open(false, false).await? {
            encode_request(&mut self.up.to_up, [&b"DISCARD"[..]].into_iter());
            self.queue(Slot::Internal);
        }
        self.answer(Error::ExecAbort.to_resp());
        Ok(())
    }

    /// The connection state a command starts or ends (MULTI/EXEC/DISCARD, WATCH, tracking,
    /// no-evict), and EXEC's reply shape and writes.
    fn track_state(
        &mut self,
        top: &[u8],
        args: &[Bytes],
        expect: &mut Expect,
        write: &mut Option<Written>,
    ) {
        match top {
            b"multi" if self.state.multi.is_none() => self.state.multi = Some(Multi::default()),
            b"exec" => {
                self.state.watching = false;
                if let Some(m) = self.state.multi.take() {
                    *expect = Expect::Reply(Shape::Exec(Box::new(m.items)));
                    *write = m.writes;
                    self.state.db_before_exec = m.db_before;
                }
            }
            b"discard" => {
                self.unselect_queued();
                self.end_multi();
                self.state.watching = false;
            }
            b"watch" if self.state.multi.is_none() => self.state.watching = true,
            b"unwatch" => self.state.watching = false,
            b"client" if args[1].eq_ignore_ascii_case(b"tracking") => {
                self.state.tracking = args[2].eq_ignore_ascii_case(b"on");
            }
            b"subscribe" if args[1..].iter().any(|c| c == crate::namespace::INVALIDATE) => {
                self.state.invalidation_target = true;
                self.me
                    .invalidations
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            b"client" if args[1].eq_ignore_ascii_case(b"no-evict") => {
                self.state.no_evict = args[2].eq_ignore_ascii_case(b"on");
            }
            b"monitor" => self.state.monitoring = true,
            _ => {}
        }
    }

    /// Makes sure the next request can go to Redis. With `pin`, it goes over a pinned
    /// connection, taken now (after the replies of whatever went over the shared one) if the
    /// session has none. `false` when no pinned connection can be had: the request is not
    /// sent, and is answered with the error instead (unless it is respite's own, `internal`).
    pub(super) async fn open(&mut self, pin: bool, internal: bool) -> Result<bool, End> {
        if pin && self.up.pinned.is_none() {
            self.drain().await?;
            let share = self.tenant.as_ref().and_then(|t| t.pinned.as_deref());
            let acquired = match self.target_node() {
                Ok(node) => {
                    let node = node.as_ref().map(|n| &n.connector);
                    let protocol = self.state.protocol;
                    self.ctx
                        .upstream
                        .pinned
                        .acquire(node, protocol, share)
                        .await
                }
                Err(e) => Err(e),
            };
            match acquired {
                Ok(p) => self.hold(p),
                Err(e) => {
                    if let Some(m) = &mut self.state.multi {
                        m.dirty = true;
                    }
                    // An EXEC that cannot be sent: its SELECTs never ran.
                    if let Some(before) = self.state.db_before_exec.take() {
                        self.select_back(before);
                    }
                    // The state the command would have begun does not exist.
                    (
                        self.state.watching,
                        self.state.tracking,
                        self.state.no_evict,
                        self.state.monitoring,
                    ) = (false, false, false, false);
                    if self
                        .state
                        .multi
                        .as_ref()
                        .is_some_and(|m| m.items.is_empty())
                    {
                        self.end_multi();
                    }
                    if !internal {
                        self.up
                            .pending
                            .push_back(Slot::Ready(Error::Upstream(e).to_resp()));
                    }
                    return Ok(false);
                }
            }
        }
        if self.up.awaiting == 0 {
            self.up.progress = Instant::now();
        }
        Ok(true)
    }

    /// Do the requests being encoded go over the shared connections (no pinned connection,
    /// or a detour from it in cluster mode)?
    pub(super) fn shared_path(&self) -> bool {
        self.up.pinned.is_none() || self.up.detour
    }

    /// Opens the slot of the request just encoded into `to_up`.
    pub(super) fn queue(&mut self, slot: Slot) {
        if self.ctx.upstream.cluster.is_some() && self.shared_path() {
            self.plan_part();
        }
        self.up.to_up_count += 1;
        self.up.pending.push_back(slot);
        self.up.awaiting += 1;
    }

    /// Sends what is queued for Redis: written to the pinned connection, or handed to the
    /// shared one as one batch.
    pub(super) async fn flush_upstream(&mut self) {
        if self.up.to_up.is_empty() {
            return;
        }
        self.up.bracket = None;
        let count = std::mem::take(&mut self.up.to_up_count);
        self.up.plan_end = 0;
        let detour = self.up.detour;
        let Some(p) = self.up.pinned.as_mut().filter(|_| !detour) else {
            let plan = std::mem::take(&mut self.up.plan);
            match self.up.flight.as_mut() {
                Some(f) => {
                    let data = self.up.to_up.split().freeze();
                    if self.up.to_up.capacity() < 4096 {
                        self.up.to_up.reserve(16 * 1024);
                    }
                    f.send(data, plan, &self.up.sink, self.state.protocol);
                    // A request with no node to go to is answered at once.
                    self.take_flight_ready();
                }
                None => {
                    // Copied into the connection's write buffer: this one is used again.
                    self.ctx
                        .upstream
                        .shared(self.state.protocol, self.me.id)
                        .submit(&self.up.to_up, count, self.up.sink.clone());
                    self.up.to_up.clear();
                    crate::wire::reuse_emptied(&mut self.up.to_up, 16 * 1024);
                }
            }
            return;
        };
        let up = &mut p.conn;
        // Almost always the socket takes it all at once: no timer needed for that.
        match up.stream.try_write(&self.up.to_up) {
            Ok(n) => self.up.to_up.advance(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                self.up.to_up.clear();
                return self.fail_upstream(UpstreamError::Closed);
            }
        }
        if self.up.to_up.is_empty() && !up.stream.unsent() {
            crate::wire::reuse_emptied(&mut self.up.to_up, 16 * 1024);
            return;
        }
        // The rest, and what TLS still holds of it.
        let timeout = self.ctx.upstream.command_timeout();
        let result = match tokio::time::timeout(timeout, up.write_all(&self.up.to_up)).await {
            Ok(r) => r,
            Err(_) => Err(self.ctx.upstream.timed_out()),
        };
        self.up.to_up.clear();
        crate::wire::reuse_emptied(&mut self.up.to_up, 16 * 1024);
        if let Err(e) = result {
            self.fail_upstream(e);
        }
    }

    /// Waits until every request sent to Redis has its reply, so that respite can act on the
    /// connection itself (switch tenant, change protocol, pin, run a tenant-wide scan) in
    /// order.
    pub(crate) async fn drain(&mut self) -> Result<(), End> {
        loop {
            self.flush_upstream().await;
            self.deliver();
            if self.up.reblock.is_some() {
                // A blocked command whose slot moved while this drain waited on it.
                self.reblock().await?;
            }
            if self.up.awaiting == 0 {
                self.up.detour = false;
                return Ok(());
            }
            let deadline = self.deadline();
            let retry = self.up.flight.as_ref().and_then(|f| f.next_retry());
            let wake = [deadline, retry].into_iter().flatten().min();
            let up = &mut self.up.pinned;
            let event = tokio::select! {
                _ = self.me.kill.cancelled() => Event::Killed,
                n = read_upstream(up), if up.is_some() => Event::UpstreamRead(n),
                r = self.up.replies.recv() => Event::SharedReply(r),
                _ = sleep_until(wake), if wake.is_some() => Event::Timeout,
            };
            match event {
                Event::UpstreamRead(Ok(n)) if n > 0 => {}
                Event::UpstreamRead(_) => self.fail_upstream(UpstreamError::Closed),
                Event::SharedReply(r) => self.take_reply(r),
                Event::Timeout => {
                    self.retry_due();
                    if deadline.is_some_and(|d| d <= Instant::now()) {
                        self.fail_upstream(self.ctx.upstream.timed_out());
                    }
                }
                _ => return Err(self.killed()),
            }
        }
    }

    /// Runs one of respite's own requests (after a drain) and returns Redis' reply.
    pub(crate) async fn call(&mut self, args: &[&[u8]]) -> Result<Frame, UpstreamError> {
        let mut replies = self.call_many(&[args]).await?;
        Ok(replies.pop().expect("one reply per request"))
    }

    /// Runs one of respite's own requests, already encoded, at `target` (cluster mode).
    pub(crate) async fn call_encoded(
        &mut self,
        request: Bytes,
        target: cluster::Target,
    ) -> Result<Frame, UpstreamError> {
        let len = request.len();
        let plan = vec![cluster::Part {
            len,
            target,
            join: None,
            script: false,
        }];
        let mut frames = self.exchange(request, 1, plan, true).await?;
        Ok(frames.pop().expect("one reply per request"))
    }

    /// Runs several of respite's own requests, pipelined, on the session's connection
    /// (pinned or shared) after a drain, and returns their replies in order. Pub/sub
    /// messages that arrive meanwhile on a pinned connection go on to the client.
    pub(crate) async fn call_many(
        &mut self,
        requests: &[&[&[u8]]],
    ) -> Result<Vec<Frame>, UpstreamError> {
        self.call_routed(requests, Vec::new()).await
    }

    /// [`Session::call_many`] with, in cluster mode, a target per request (any master for
    /// those past the end of `targets`).
    pub(crate) async fn call_routed(
        &mut self,
        requests: &[&[&[u8]]],
        targets: Vec<cluster::Target>,
    ) -> Result<Vec<Frame>, UpstreamError> {
        let (data, plan, routed) = self.encode_own(requests, targets);
        // Inside MULTI the pinned connection would queue them.
        let past_pinned = routed || self.state.multi.is_some();
        self.exchange(data, requests.len(), plan, past_pinned).await
    }

    /// [`Session::call_routed`] for respite's own reads of the tenant's keys (PTTL, TYPE):
    /// never on a pinned connection that tracks keys (CLIENT TRACKING), where Redis would
    /// take each key read for one the client read, and send it invalidations for keys it
    /// never asked for. Callers drain first, so nothing waits on the pinned connection that
    /// these replies could overtake.
    pub(crate) async fn call_on_keys(
        &mut self,
        requests: &[&[&[u8]]],
        targets: Vec<cluster::Target>,
    ) -> Result<Vec<Frame>, UpstreamError> {
        let (data, plan, routed) = self.encode_own(requests, targets);
        let past_pinned = routed || self.state.tracking || self.state.multi.is_some();
        self.exchange(data, requests.len(), plan, past_pinned).await
    }

    /// respite's own `requests`, encoded, with (cluster mode) the plan of their targets, and
    /// whether that plan names them (the flight reaches them, not the pinned connection).
    fn encode_own(
        &self,
        requests: &[&[&[u8]]],
        mut targets: Vec<cluster::Target>,
    ) -> (Bytes, Vec<cluster::Part>, bool) {
        let mut data = BytesMut::new();
        let mut plan = Vec::new();
        let cluster = self.ctx.upstream.cluster.is_some();
        let routed = cluster && !targets.is_empty();
        targets.reverse();
        for r in requests {
            let at = data.len();
            encode_request(&mut data, r.iter().copied());
            if cluster {
                plan.push(cluster::Part {
                    len: data.len() - at,
                    target: targets.pop().unwrap_or(cluster::Target::Any),
                    join: None,
                    script: false,
                });
            }
        }
        (data.freeze(), plan, routed)
    }

    /// Sends `n` of respite's own requests (encoded in `data`) and waits for their replies:
    /// over the pinned connection if the session holds one, unless `past_pinned` (cluster
    /// mode: the plan names the nodes, which the flight reaches; or reads that must not
    /// touch the pinned connection's state): then over the shared connection (or flight).
    async fn exchange(
        &mut self,
        data: Bytes,
        n: usize,
        plan: Vec<cluster::Part>,
        past_pinned: bool,
    ) -> Result<Vec<Frame>, UpstreamError> {
        let timeout = self.ctx.upstream.command_timeout();
        let pinned = self.up.pinned.as_mut().filter(|_| !past_pinned);
        let result = match pinned {
            Some(p) => {
                let pubsub = self.state.subs.any();
                let prefix = self
                    .tenant
                    .as_ref()
                    .map(|t| t.prefix.clone())
                    .unwrap_or_default();
                let up = &mut p.conn;
                let out = &mut self.client.out;
                let exchange = async {
                    up.write_all(&data).await?;
                    let mut frames = Vec::with_capacity(n);
                    while frames.len() < n {
                        let frame = up.read_frame().await?;
                        match reply::classify(&frame, pubsub) {
                            Kind::Reply => frames.push(frame),
                            _ => out.extend_from_slice(&reply::strip_push(&frame, &prefix)),
                        }
                    }
                    Ok(frames)
                };
                tokio::time::timeout(timeout, exchange).await
            }
            None => {
                let protocol = self.state.protocol;
                match self.up.flight.as_mut() {
                    Some(f) => f.send(data, plan, &self.up.sink, protocol),
                    None => self.ctx.upstream.shared(protocol, self.me.id).submit(
                        &data,
                        n,
                        self.up.sink.clone(),
                    ),
                }
                let generation = self.up.sink.generation;
                let meter = &self.up.sink.meter;
                let replies = &mut self.up.replies;
                let flight = &mut self.up.flight;
                let exchange = async {
                    let mut frames = Vec::with_capacity(n);
                    // Cluster mode: a request with no node to go to is answered already.
                    let mut results: Vec<_> =
                        flight.as_mut().map(|f| f.take_ready()).unwrap_or_default();
                    loop {
                        for result in results.drain(..) {
                            let frame = result?;
                            meter.taken(frame.raw.len());
                            frames.push(frame);
                        }
                        if frames.len() >= n {
                            break;
                        }
                        let retry = flight.as_ref().and_then(|f| f.next_retry());
                        let r = tokio::select! {
                            r = replies.recv() => r,
                            _ = sleep_until(retry), if retry.is_some() => {
                                if let Some(f) = flight.as_mut() {
                                    f.retry_due();
                                    results = f.take_ready();
                                }
                                continue;
                            }
                        };
                        if r.generation != generation {
                            continue;
                        }
                        // Cluster mode: the replies in this session's order, as they come.
                        results = match flight.as_mut() {
                            Some(f) => {
                                f.take(r);
                                f.take_ready()
                            }
                            None => vec![r.result],
                        };
                    }
                    Ok(frames)
                };
                tokio::time::timeout(timeout, exchange).await
            }
        };
        let result = result.unwrap_or_else(|_| Err(self.ctx.upstream.timed_out()));
        match &result {
            // Past a pinned connection with nothing in flight on it: that connection and
            // its state (WATCH, subscriptions, tracking) are not the failure's; late replies
            // to these requests are left behind with their generation.
            Err(_) if past_pinned && self.up.pinned.is_some() && self.up.awaiting == 0 => {
                self.new_generation();
            }
            Err(e) => self.fail_upstream(e.clone()),
            Ok(_) => {}
        }
        result
    }

    /// Gives back the pinned connection (after a drain) so the next command starts clean.
    pub(crate) fn drop_upstream(&mut self) {
        self.unpin();
        self.reset_connection_state();
    }
}
