//! Replies on their way back: routed to the request they answer, rewritten out of the
//! namespace, settled with the quota, and pub/sub pushes told apart; upstream failures
//! answered in order.

use super::*;

impl Session {
    /// Moves every reply that is ready, in order, into the client's output buffer.
    pub(crate) fn deliver(&mut self) {
        let mut routed = false;
        loop {
            while let Some(Slot::Ready(_)) = self.up.pending.front() {
                if let Some(Slot::Ready(b)) = self.up.pending.pop_front() {
                    self.client.out.extend_from_slice(&b);
                }
            }
            if let Some(p) = self.up.pinned.as_mut() {
                match p.conn.next_frame() {
                    Ok(Some(frame)) => {
                        self.tick(&mut routed);
                        self.route(frame);
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.fail_upstream(e);
                        continue;
                    }
                }
            }
            match self.up.replies.try_recv() {
                Some(r) => {
                    self.tick(&mut routed);
                    self.take_reply(r);
                }
                None => break,
            }
        }
        if routed {
            self.up.progress = self.figures.clock;
        }
        if self.up.pinned.is_some() && self.up.awaiting == 0 && !self.needs_pinned() {
            self.unpin();
        }
        self.settle();
    }

    /// Settles the writes answered so far and hands back the unused allowance (see
    /// `quota::Account`).
    pub(super) fn settle(&mut self) {
        let ledger = self.tenant.as_ref().and_then(|t| t.ledger.as_deref());
        self.account.finish(ledger);
    }

    /// The writes still waiting for their replies, which will not come: Redis may or may
    /// not have run them, so they are settled (measured) either way.
    pub(super) fn settle_unanswered(&mut self) {
        for slot in self.up.pending.iter_mut() {
            if let Slot::Reply { write, .. } = slot {
                *write = false;
            }
        }
        for w in self.up.writes.drain(..) {
            self.account.add(w);
        }
    }

    /// Ends the transaction in progress, if any; its queued writes will not run as queued,
    /// but are settled (their keys measured) all the same.
    pub(super) fn end_multi(&mut self) {
        if let Some(w) = self.state.multi.take().and_then(|m| m.writes) {
            self.account.add(w);
        }
    }

    /// Reads the clock for the first reply of a batch: one reading serves the batch's
    /// latencies and Redis' progress.
    pub(super) fn tick(&mut self, routed: &mut bool) {
        if !*routed {
            self.figures.clock = Instant::now();
            *routed = true;
        }
    }

    /// A reply from the shared connection: routed, unless it answers a request this session
    /// already gave up on (an earlier generation).
    pub(super) fn take_reply(&mut self, r: Reply) {
        if r.generation != self.up.sink.generation {
            return;
        }
        let Some(flight) = self.up.flight.as_mut() else {
            return self.take_result(r.result);
        };
        // Cluster mode: the replies now next in this session's order.
        flight.take(r);
        self.take_flight_ready();
    }

    /// Takes the replies the cluster flight has ready, in order. Should one of them fail
    /// the upstream (a new generation), the rest were the old generation's: dropped.
    pub(super) fn take_flight_ready(&mut self) {
        let Some(flight) = self.up.flight.as_mut() else {
            return;
        };
        let mut ready = flight.take_ready();
        let generation = self.up.sink.generation;
        for result in ready.drain(..) {
            if self.up.sink.generation != generation {
                break;
            }
            self.take_result(result);
        }
        ready.clear();
        if let Some(flight) = self.up.flight.as_mut() {
            flight.give_back(ready);
        }
    }

    /// Cluster mode: sends again the requests whose wait (TRYAGAIN) is over, and takes the
    /// replies that makes ready.
    pub(super) fn retry_due(&mut self) {
        let Some(flight) = self.up.flight.as_mut() else {
            return;
        };
        if flight.next_retry().is_some_and(|t| t <= Instant::now()) {
            flight.retry_due();
            self.take_flight_ready();
        }
    }

    /// One reply (or its error) for the oldest open slot.
    fn take_result(&mut self, result: Result<Frame, UpstreamError>) {
        match result {
            Ok(frame) => {
                self.up.taken += frame.raw.len();
                self.route(frame)
            }
            Err(e) => {
                let mute = match self.answered() {
                    Some(Slot::Reply { mute, .. }) | Some(Slot::Confirm { mute, .. }) => mute,
                    _ => true,
                };
                if !mute {
                    self.client
                        .out
                        .extend_from_slice(&Error::Upstream(e).to_resp());
                }
            }
        }
    }

    /// Does Redis hold state for this client, so that its requests must keep one connection?
    pub(super) fn needs_pinned(&self) -> bool {
        self.has_connection_state() || self.state.no_evict
    }

    /// Gives the pinned connection back: to the pool, reset, if nothing is in flight on it;
    /// otherwise closed.
    pub(crate) fn unpin(&mut self) {
        if let Some(p) = self.up.pinned.take() {
            self.me
                .upstream_id
                .store(0, std::sync::atomic::Ordering::Relaxed);
            let target = std::mem::take(&mut self.state.invalidation_target);
            if target {
                self.me
                    .invalidations
                    .store(false, std::sync::atomic::Ordering::Relaxed);
            }
            // A redirect target's id must never reach another session; a monitoring
            // connection streams lines Redis' RESET would have to read past.
            let keep = !target && !self.state.monitoring;
            if self.up.awaiting == 0 && self.up.to_up.is_empty() && keep {
                self.ctx.upstream.pinned.release(p);
            } else {
                p.close();
            }
        }
    }

    /// Takes the head slot, which Redis has just answered.
    pub(super) fn answered(&mut self) -> Option<Slot> {
        let slot = self.up.pending.pop_front();
        if let Some(Slot::Reply { write: true, .. }) = &slot {
            // Redis has run the write: its keys can be measured (with the batch).
            let w = self
                .up
                .writes
                .pop_front()
                .expect("a charge for each write slot");
            self.account.add(w);
        }
        if slot.as_ref().is_some_and(is_upstream_slot) {
            self.up.awaiting -= 1;
        }
        slot
    }

    /// Puts one frame from Redis where it belongs.
    pub(super) fn route(&mut self, frame: Frame) {
        // A no-argument UNSUBSCRIBE answers once per subscription held when Redis ran it,
        // i.e. now that every earlier confirmation has been counted.
        if let Some(Slot::Confirm {
            kind,
            left: left @ None,
            ..
        }) = self.up.pending.front_mut()
        {
            let held = match kind {
                SubKind::Channel => self.state.subs.channels.len(),
                SubKind::Pattern => self.state.subs.patterns.len(),
                SubKind::Shard => self.state.subs.shard.len(),
            };
            *left = Some(held.max(1));
        }
        if self.state.monitoring && reply::is_monitor_line(&frame.raw) {
            // Every command Redis runs, every tenant's: the operator's view, as Redis words it.
            self.client.out.extend_from_slice(&frame.raw);
            return;
        }
        let head_confirms = matches!(self.up.pending.front(), Some(Slot::Confirm { .. }));
        match reply::classify(&frame, self.state.subs.any() || head_confirms) {
            Kind::Message => {
                let prefix = super::prefix_of(&self.tenant, &self.state, true);
                let message = reply::strip_push(&frame, prefix);
                self.client.out.extend_from_slice(&message)
            }
            Kind::Confirmation {
                kind, subscribe, ..
            } => self.confirmed(&frame, kind, subscribe, &self.prefix()),
            Kind::Reply => self.replied(&frame),
        }
    }

    /// A (un)subscribe confirmation: counted against the request it answers, and passed on
    /// even under CLIENT REPLY OFF or SKIP, which in Redis mute replies, not pushes.
    fn confirmed(&mut self, frame: &Frame, kind: SubKind, subscribe: bool, prefix: &[u8]) {
        self.track_subscription(kind, subscribe, reply::confirmation_channel(frame));
        // Redis may also unsubscribe on its own (e.g. a shard channel moving): then no
        // request waits for it.
        if let Some(Slot::Confirm { left, .. }) = self.up.pending.front_mut() {
            let l = left.get_or_insert(1);
            *l = l.saturating_sub(1);
            if *l == 0 {
                self.answered();
            }
        }
        self.client
            .out
            .extend_from_slice(&reply::strip_push(frame, prefix));
    }

    /// A reply: to the oldest request waiting, rewritten by its shape, and counted.
    fn replied(&mut self, frame: &Frame) {
        if self.up.blocked.is_some() {
            if frame.is_error() && self.resend_blocked(frame) {
                return;
            }
            if matches!(
                self.up.pending.front(),
                Some(Slot::Reply { blocking: true, .. })
            ) {
                self.up.blocked = None;
            }
        }
        match self.answered() {
            Some(Slot::Reply {
                shape, mute, meta, ..
            }) => {
                if let Some(meta) = meta {
                    let (outcome, hit) = if frame.is_error() {
                        (Outcome::Error, None)
                    } else {
                        (Outcome::Ok, meta.read.then(|| crate::wire::found(frame)))
                    };
                    self.figures
                        .tally
                        .done(&meta, outcome, hit, self.figures.clock);
                }
                let exec = matches!(shape, Shape::Exec(_));
                if exec && frame.elements().is_some() {
                    // The transaction ran, its SELECTs with it: the database stays.
                    self.state.db_before_exec = None;
                }
                let moved = self.moved_under_state(frame, exec, matches!(shape, Shape::Script(_)));
                if !mute {
                    // Borrowed, not cloned: no reference count touched per reply.
                    let prefix = super::prefix_of(&self.tenant, &self.state, true);
                    match moved {
                        Some(e) => self.client.out.extend_from_slice(&e),
                        None => reply::strip_into(frame, &shape, prefix, &mut self.client.out),
                    }
                }
            }
            // An error instead of confirmations (e.g. wrong arity, or a shard channel's slot
            // moved): one reply.
            Some(Slot::Confirm { mute, .. }) => {
                let reply = match self.moved_under_state(frame, false, false) {
                    Some(e) => e,
                    None => frame.raw.clone(),
                };
                if !mute {
                    self.client.out.extend_from_slice(&reply);
                }
            }
            Some(Slot::Internal) => {}
            Some(Slot::Relogin) if frame.is_error() => {
                let why = String::from_utf8_lossy(&frame.raw).trim_end().to_string();
                tracing::error!(error = %why, "respite could not log back in after a tenant script");
                self.fail_upstream(UpstreamError::Login(why));
            }
            Some(Slot::Relogin) => {}
            Some(Slot::ScriptLogin) => {
                if let (true, Some(t)) = (frame.is_error(), &self.tenant) {
                    tracing::warn!(tenant = %t.id, "the tenant's Redis ACL user refused its login; setting it up again");
                    self.ctx.scripts.forget_user(t);
                }
            }
            Some(Slot::Ready(_)) => unreachable!("ready slots are delivered first"),
            None => {
                tracing::warn!("Redis sent a reply nobody asked for; dropping the connection");
                self.fail_upstream(UpstreamError::Protocol("unexpected reply".into()));
            }
        }
    }

    /// Cluster mode: a MOVED or ASK on a pinned connection (its key's slot moved while the
    /// connection held state on the old node, e.g. inside MULTI) cannot be followed; the
    /// client gets an error that names no node (EXEC: EXECABORT, as Redis discarded the
    /// transaction), a transaction in progress is doomed, and the slot map is read again.
    fn moved_under_state(&mut self, frame: &Frame, exec: bool, script: bool) -> Option<Bytes> {
        let topology = self.ctx.upstream.cluster.as_ref()?;
        if !(frame.raw.starts_with(b"-MOVED ") || frame.raw.starts_with(b"-ASK ")) {
            return None;
        }
        // The slot's new node (one the cluster named), in the map now: the next transaction
        // goes there. Not from a script, whose errors are the tenant's own words.
        if let (Some(p), false) = (&self.up.pinned, script) {
            topology.follow(&frame.raw, p.connector());
        }
        topology.refresh_soon();
        if exec {
            return Some(Error::ExecAbort.to_resp());
        }
        if let Some(m) = &mut self.state.multi {
            m.dirty = true;
        }
        Some(
            Error::Upstream(UpstreamError::Cluster(
                "the key's slot moved to another node while this connection held state \
                 (MULTI, WATCH, a blocking command) on the old one; try again"
                    .into(),
            ))
            .to_resp(),
        )
    }

    pub(super) fn track_subscription(
        &mut self,
        kind: SubKind,
        subscribe: bool,
        channel: Option<Bytes>,
    ) {
        let Some(channel) = channel else { return };
        let changed = if subscribe {
            self.state.subs.set(kind).insert(channel.clone())
        } else {
            self.state.subs.set(kind).remove(&channel)
        };
        if changed && kind == SubKind::Pattern {
            if let Some(t) = &self.tenant {
                if subscribe {
                    self.ctx.clients.pattern_added(&t.id, channel);
                } else {
                    self.ctx.clients.pattern_removed(&t.id, channel);
                }
            }
        }
        let mut st = self.me.state.lock().unwrap();
        st.sub = self.state.subs.channels.len();
        st.psub = self.state.subs.patterns.len();
        st.ssub = self.state.subs.shard.len();
    }

    /// Redis failed this session's requests: every open slot becomes the error, in order. A
    /// pinned connection is closed; on the shared one the session moves to a new generation
    /// and ignores late replies. If Redis held state for the client (MULTI, WATCH,
    /// subscriptions, tracking), that state is gone, so the client connection is closed once
    /// the errors are out, as Redis would close it.
    pub(crate) fn fail_upstream(&mut self, e: UpstreamError) {
        tracing::warn!(error = %e, "upstream failed");
        if matches!(e, UpstreamError::Timeout(_)) {
            let c = &self.ctx.upstream.connector.counters;
            c.timeouts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let reply = Error::Upstream(e).to_resp();
        let now = Instant::now();
        for slot in self.up.pending.iter() {
            if let Slot::Reply { meta: Some(m), .. } = slot {
                self.figures.tally.done(m, Outcome::Error, None, now);
            }
        }
        self.settle_unanswered();
        for slot in self.up.pending.iter_mut() {
            match slot {
                Slot::Reply { mute: false, .. } | Slot::Confirm { mute: false, .. } => {
                    *slot = Slot::Ready(reply.clone())
                }
                Slot::Ready(_) => {}
                _ => *slot = Slot::Ready(Bytes::new()),
            }
        }
        self.up.awaiting = 0;
        self.up.to_up.clear();
        self.up.to_up_count = 0;
        self.up.plan.clear();
        self.up.plan_end = 0;
        self.up.blocked = None;
        self.up.reblock = None;
        self.up.detour = false;
        self.new_generation();
        if let Some(p) = self.up.pinned.take() {
            p.close();
        }
        if self.has_connection_state() {
            self.client.closing = true;
        }
        self.reset_connection_state();
    }

    /// Forgets everything Redis held for this client's connection.
    pub(crate) fn reset_connection_state(&mut self) {
        self.me
            .upstream_id
            .store(0, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = &self.tenant {
            for p in self.state.subs.patterns.drain() {
                self.ctx.clients.pattern_removed(&t.id, p);
            }
        }
        self.state.subs = Subscriptions::default();
        self.end_multi();
        // Before the tenant can change (RESET, AUTH): its writes settle with its ledger.
        self.settle();
        self.state.watching = false;
        self.state.tracking = false;
        self.state.no_evict = false;
        self.state.monitoring = false;
        let mut st = self.me.state.lock().unwrap();
        (st.sub, st.psub, st.ssub, st.multi) = (0, 0, 0, -1);
    }
}
