//! Cluster mode, the session's side: the slot of each request, a transaction kept to one
//! slot (MULTI is sent with its first command, to that command's node), a pinned connection
//! on the right node, and the multi-key commands Redis Cluster refuses across slots (MGET,
//! DEL, UNLINK, EXISTS, TOUCH, MSET) split into one request per run of keys of one slot,
//! whose replies the flight joins (`upstream::cluster`).

use super::*;
use crate::upstream::cluster::{Merge, Node, Part, Target};
use crate::wire::Frame;

/// Redirects a blocked command follows before its client is told the slot moved.
const MAX_REBLOCKS: u8 = 5;

/// A blocking command in flight on a pinned connection (cluster mode): sent again, with the
/// time it has left, to the node its slot moved to (MOVED, ASK, or UNBLOCKED when its
/// master turned replica).
pub(crate) struct Blocked {
    args: Vec<Bytes>,
    marks: crate::wire::Marks,
    /// The prefix its marked arguments went behind (its database's when it was sent).
    prefix: Bytes,
    /// The timeout argument, and whether it counts milliseconds (XREAD BLOCK) rather than
    /// seconds (BLPOP and the like).
    timeout: (usize, bool),
    sent: std::time::Instant,
    redirects: u8,
    target: Target,
}

/// Ready to be sent again: the request, and whether `ASKING` goes first.
pub(crate) struct Reblock {
    node: Option<Arc<Node>>,
    asking: bool,
}

/// Where a blocking command's timeout is: (argument, in milliseconds).
fn block_timeout(top: &[u8], args: &[Bytes]) -> Option<(usize, bool)> {
    match top {
        b"blpop" | b"brpop" | b"bzpopmin" | b"bzpopmax" | b"blmove" | b"brpoplpush" => {
            Some((args.len() - 1, false))
        }
        b"blmpop" | b"bzmpop" => Some((1, false)),
        b"xread" | b"xreadgroup" => args
            .iter()
            .position(|a| a.eq_ignore_ascii_case(b"block"))
            .map(|i| (i + 1, true)),
        _ => None,
    }
}

/// What the cluster stage decided for a request.
pub(super) enum Routed {
    /// Send it (to `self.up.target`).
    Go,
    /// Answered already.
    Done,
}

/// The slot of argument `i` of `fwd` as Redis gets it: behind `prefix` (the request's) if
/// marked.
pub(super) fn slot_of(fwd: &Forward, i: usize, prefix: &[u8]) -> u16 {
    let prefix: &[u8] = match fwd.prefixed.has(i) {
        true => prefix,
        false => b"",
    };
    crate::wire::key_slot(prefix, &fwd.args[i])
}

/// EXEC's reply to a transaction of commands respite answered itself.
fn local_exec(items: &[crate::namespace::ExecItem]) -> Bytes {
    let mut out = bytes::BytesMut::new();
    let results: Vec<&Bytes> = items
        .iter()
        .filter_map(|i| match i {
            crate::namespace::ExecItem::Local(b) => Some(b),
            _ => None,
        })
        .collect();
    crate::wire::Resp::put_array_len(&mut out, results.len());
    for r in results {
        out.extend_from_slice(r);
    }
    out.freeze()
}

/// The multi-key commands answered whole across slots, and how their replies are joined:
/// (merge, the first key's index, arguments per key).
fn splits(top: &[u8]) -> Option<(Merge, usize)> {
    match top {
        b"mget" => Some((Merge::Concat(None), 1)),
        b"del" | b"unlink" | b"exists" | b"touch" => Some((Merge::Sum, 1)),
        b"mset" => Some((Merge::AllOk, 2)),
        _ => None,
    }
}

impl Session {
    /// Cluster mode, before a request is sent: a MULTI is held until its first command
    /// (whose slot picks the node), a transaction or WATCH stays on one slot, and the
    /// request's target is set.
    pub(super) fn route_in_cluster(
        &mut self,
        top: &[u8],
        slot: Option<u16>,
        read_only: bool,
        queued: bool,
    ) -> Routed {
        if !self.state.watching {
            self.state.watch_slot = None;
        }
        if let Some(m) = self.state.multi.as_mut().filter(|m| m.begin_pending) {
            if top == b"exec" && !m.held.is_empty() {
                // Only commands without keys: the transaction runs on any master.
                self.up.begin_at_exec = Some(std::mem::take(&mut m.held));
                self.up.target = Target::Any;
                return Routed::Go;
            }
            let reply = match top {
                // Nothing went to Redis: the results are respite's own (SELECT, CLIENT ...).
                b"exec" => Some(local_exec(&m.items)),
                b"discard" => Some(crate::wire::Resp::ok()),
                b"multi" => {
                    Some(Error::Redis("ERR MULTI calls can not be nested".into()).to_resp())
                }
                b"watch" => {
                    Some(Error::Redis("ERR WATCH inside MULTI is not allowed".into()).to_resp())
                }
                _ => None,
            };
            if let Some(reply) = reply {
                if top == b"discard" {
                    self.unselect_queued();
                }
                if matches!(top, b"exec" | b"discard") {
                    self.end_multi();
                    self.state.watching = false;
                }
                self.answer(reply);
                return Routed::Done;
            }
        }
        // Deferred unless state holds the connection to a node (WATCH, subscriptions,
        // tracking, NO-EVICT): a connection pinned only for replies in flight (an EXEC just
        // sent) is let go when the transaction's node is known.
        if top == b"multi" && self.state.multi.is_none() && !self.needs_pinned() {
            self.state.multi = Some(Multi {
                begin_pending: true,
                slot: self.state.watch_slot,
                ..Default::default()
            });
            self.answer(crate::wire::Resp::ok());
            return Routed::Done;
        }
        let watched = self.state.watch_slot;
        if let (true, Some(s), Some(m)) = (queued, slot, self.state.multi.as_mut()) {
            // WATCH pinned the connection to its key's node: the transaction stays there.
            match m.slot.or(watched) {
                None => m.slot = Some(s),
                Some(t) if t != s => {
                    self.refuse(Error::CrossSlot);
                    return Routed::Done;
                }
                _ => {}
            }
        }
        if top == b"watch" {
            if let Some(s) = slot {
                if self.state.watch_slot.is_some_and(|t| t != s) {
                    self.refuse(Error::CrossSlot);
                    return Routed::Done;
                }
                self.state.watch_slot = Some(s);
            }
        }
        let target = self
            .state
            .multi
            .as_ref()
            .and_then(|m| m.slot)
            .or(slot)
            .map_or(Target::Any, Target::Slot);
        self.up.target = match target {
            Target::Slot(s) if read_only && self.reads_replicas() => Target::Replica(s),
            t => t,
        };
        Routed::Go
    }

    /// State other than a transaction that holds the connection to its node.
    fn state_outside_multi(&self) -> bool {
        self.state.watching || self.state.tracking || self.state.subs.any() || self.state.no_evict
    }

    /// May this request be read from a replica: the tenant opted in, and the connection
    /// holds no state (a transaction, WATCH, a pinned connection) that needs its master.
    fn reads_replicas(&self) -> bool {
        self.tenant.as_ref().is_some_and(|t| t.reads_replicas)
            && self.state.multi.is_none()
            && !self.state.watching
            && self.up.pinned.is_none()
    }

    /// The node of the request about to be sent, for a pinned connection.
    pub(super) fn target_node(&self) -> Result<Option<Arc<Node>>, UpstreamError> {
        let Some(topology) = &self.ctx.upstream.cluster else {
            return Ok(None);
        };
        let map = topology.map();
        let node = match &self.up.target {
            Target::Slot(s) | Target::Replica(s) => map.master(*s).cloned(),
            Target::Node(n) => Some(n.clone()),
            Target::Any => map
                .masters()
                .get((self.me.id % map.masters().len().max(1) as u64) as usize)
                .cloned(),
        };
        match node {
            Some(n) => Ok(Some(n)),
            None => {
                topology.refresh_soon();
                tracing::warn!(why = %topology.last_error(), "no master known for a slot");
                Err(UpstreamError::Cluster(
                    "no master of the cluster serves the key's slot".into(),
                ))
            }
        }
    }

    /// Cluster mode, over a pinned connection: a request for another node than the one the
    /// connection is on cannot be sent on it. Outside a transaction, a connection pinned
    /// only for replies in flight is given back first; under WATCH or subscriptions, a
    /// request that starts no state of its own takes a detour over the shared connections
    /// (after the pinned connection's replies, and before its next request). A request that
    /// would need a second pinned connection (a blocking command, a WATCH or SUBSCRIBE of
    /// another node), and any other node's request under CLIENT TRACKING (whose
    /// invalidations come on one connection), is refused (`false`).
    pub(super) async fn keep_to_node(&mut self, top: &[u8], pins: bool) -> Result<bool, End> {
        let Some(pinned) = &self.up.pinned else {
            return Ok(true);
        };
        let elsewhere = match self.target_node() {
            Ok(Some(node)) => {
                !matches!(self.up.target, Target::Any)
                    && !Arc::ptr_eq(&node.connector, pinned.connector())
            }
            _ => false,
        };
        if !elsewhere {
            if self.up.detour {
                // Back to the pinned connection, once the detour's replies are in.
                self.drain().await?;
            }
            return Ok(true);
        }
        if !self.needs_pinned() {
            // Pinned only for replies in flight: given back once they are in.
            self.drain().await?;
            return Ok(true);
        }
        if self.state.multi.as_ref().is_some_and(|m| m.begin_pending) {
            // The transaction begins now, on the key's node: the connection pinned only for
            // replies in flight (an earlier EXEC) goes back once they are in; one that state
            // holds to another node cannot follow.
            if self.state_outside_multi() {
                self.refuse(Error::OtherNode);
                return Ok(false);
            }
            self.drain().await?;
            self.unpin();
            return Ok(true);
        }
        if self.state.multi.is_some() {
            // Redis answers MOVED and dooms the transaction (see `moved_under_state`).
            return Ok(true);
        }
        let starts_state = pins || matches!(top, b"watch" | b"client");
        if starts_state || self.state.tracking {
            self.refuse(Error::OtherNode);
            return Ok(false);
        }
        if !self.up.detour {
            self.drain().await?;
            self.up.detour = true;
        }
        Ok(true)
    }

    /// Encodes a multi-key request whose keys span slots as one request per run of keys of
    /// one slot (`true`), each a part the flight sends to its slot's master; `false` when
    /// the request is not one of those or its keys share a slot.
    pub(super) fn split(
        &mut self,
        top: &[u8],
        args: &[Bytes],
        marks: &crate::wire::Marks,
        prefix: &[u8],
    ) -> bool {
        let Some((merge, step)) = splits(top) else {
            return false;
        };
        if args.len() < 1 + 2 * step || (args.len() - 1) % step != 0 {
            return false;
        }
        let slot = |i: usize| {
            let p: &[u8] = if marks.has(i) { prefix } else { b"" };
            crate::wire::key_slot(p, &args[i])
        };
        // The keys (their first argument's index) of each slot, slots in order of first
        // appearance: one request per slot, however the keys interleave (at most 16,384).
        let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
        let mut of_slot: std::collections::HashMap<u16, usize> = Default::default();
        for i in (1..args.len()).step_by(step) {
            let s = slot(i);
            let g = *of_slot.entry(s).or_insert_with(|| {
                groups.push((s, Vec::new()));
                groups.len() - 1
            });
            groups[g].1.push(i);
        }
        if groups.len() == 1 {
            return false;
        }
        let merge = match merge {
            // MGET: the values go back to the order of the keys.
            Merge::Concat(_) => {
                let mut at = vec![0u32; (args.len() - 1) / step];
                let mut flat = 0u32;
                for (_, keys) in &groups {
                    for &i in keys {
                        at[(i - 1) / step] = flat;
                        flat += 1;
                    }
                }
                let sorted = at.iter().enumerate().all(|(k, &f)| f as usize == k);
                Merge::Concat((!sorted).then(|| at.into()))
            }
            other => other,
        };
        let read_only = matches!(self.up.target, Target::Replica(_));
        self.plan_part();
        let n = groups.len();
        for (k, (s, keys)) in groups.into_iter().enumerate() {
            let mut sub = Vec::with_capacity(1 + keys.len() * step);
            let mut sub_marks = crate::wire::Marks::default();
            sub.push(args[0].clone());
            for i in keys {
                for (j, arg) in args[i..i + step].iter().enumerate() {
                    if marks.has(i + j) {
                        sub_marks.set(sub.len());
                    }
                    sub.push(arg.clone());
                }
            }
            encode_marked(&mut self.up.to_up, &sub, prefix, &sub_marks);
            self.up.plan.push(Part {
                len: self.up.to_up.len() - self.up.plan_end,
                target: match read_only {
                    true => Target::Replica(s),
                    false => Target::Slot(s),
                },
                join: (k == 0).then(|| (merge.clone(), n)),
                script: false,
            });
            self.up.plan_end = self.up.to_up.len();
        }
        true
    }

    /// Cluster mode: remembers a blocking command sent on a pinned connection, to send it
    /// again if its slot moves while it waits.
    pub(super) fn remember_blocked(
        &mut self,
        top: &[u8],
        args: &[Bytes],
        marks: &crate::wire::Marks,
        prefix: &Bytes,
    ) {
        self.up.blocked = block_timeout(top, args).map(|timeout| {
            Box::new(Blocked {
                args: args.to_vec(),
                marks: marks.clone(),
                prefix: prefix.clone(),
                timeout,
                sent: std::time::Instant::now(),
                redirects: 0,
                target: self.up.target.clone(),
            })
        });
    }

    /// A redirect (MOVED, ASK, UNBLOCKED) answering the blocked command this connection is
    /// waiting on alone: the pinned connection is let go and the command is sent again, with
    /// the time it has left, to the slot's node now (`true`; `reblock` does it).
    pub(super) fn resend_blocked(&mut self, frame: &Frame) -> bool {
        let Some(topology) = self.ctx.upstream.cluster.clone() else {
            return false;
        };
        // UNBLOCKED by Redis as its master turned replica; not by a CLIENT UNBLOCK ... ERROR
        // ("-UNBLOCKED client unblocked via CLIENT UNBLOCK"), which is the client's answer.
        let redirect = frame.raw.starts_with(b"-MOVED ")
            || frame.raw.starts_with(b"-ASK ")
            || frame.raw.starts_with(b"-UNBLOCKED force unblock");
        if !(redirect && self.blocked_alone()) {
            return false;
        }
        let (Some(b), Some(pinned)) = (self.up.blocked.as_mut(), self.up.pinned.as_ref()) else {
            return false;
        };
        b.redirects += 1;
        if b.redirects > MAX_REBLOCKS {
            return false;
        }
        let (node, asking) = match topology.follow(&frame.raw, pinned.connector()) {
            Some((node, asking)) => (Some(node), asking),
            // UNBLOCKED: the slot's master is wherever the map says once read again.
            None => (None, false),
        };
        self.let_go_blocked(Reblock { node, asking });
        true
    }

    /// Is a remembered blocking command the only request in flight on a connection with no
    /// other state (nothing else would be lost with the connection)?
    fn blocked_alone(&self) -> bool {
        let head_blocks = matches!(
            self.up.pending.front(),
            Some(Slot::Reply { blocking: true, .. })
        );
        let stateless = self.state.multi.is_none()
            && !self.state.watching
            && !self.state.subs.any()
            && !self.state.tracking;
        self.up.blocked.is_some()
            && head_blocks
            && self.up.awaiting == 1
            && self.up.to_up.is_empty()
            && stateless
    }

    /// Lets the blocked command's pinned connection go; `reblock` sends it again, as
    /// `again` says.
    fn let_go_blocked(&mut self, again: Reblock) {
        if let Some(topology) = &self.ctx.upstream.cluster {
            topology.refresh_soon();
        }
        if let Some(p) = self.up.pinned.take() {
            p.close();
        }
        self.me
            .upstream_id
            .store(0, std::sync::atomic::Ordering::Relaxed);
        self.up.reblock = Some(again);
    }

    /// Sends the blocked command again (see `resend_blocked`) over a pinned connection to
    /// its slot's node, with the time it has left.
    pub(super) async fn reblock(&mut self) -> Result<(), End> {
        let Some(Reblock { node, asking }) = self.up.reblock.take() else {
            return Ok(());
        };
        let acquired = match node {
            Some(node) => self.pin_to(&node).await,
            // UNBLOCKED, or the node went away: the slot's master once the map shows one
            // that answers (a replica promoted), within `command_timeout_ms`.
            None => {
                let gave_up = std::time::Instant::now() + self.ctx.upstream.command_timeout();
                if let Some(b) = &self.up.blocked {
                    self.up.target = b.target.clone();
                }
                loop {
                    let gap = tokio::time::sleep(crate::upstream::cluster::REFRESH_GAP);
                    tokio::select! {
                        _ = gap => {}
                        _ = self.me.kill.cancelled() => return Err(self.killed()),
                    }
                    let tried = match self.target_node() {
                        Ok(Some(node)) => self.pin_to(&node).await,
                        Ok(None) => Err(UpstreamError::Closed),
                        Err(e) => Err(e),
                    };
                    if tried.is_ok() || std::time::Instant::now() >= gave_up {
                        break tried;
                    }
                }
            }
        };
        let (p, Some(b)) = (acquired, &self.up.blocked) else {
            return Ok(());
        };
        let p = match p {
            Ok(p) => p,
            Err(e) => {
                self.fail_upstream(e);
                return Ok(());
            }
        };
        // The time it has left, counted from when it was first sent.
        let (at, millis) = b.timeout;
        let mut args = b.args.clone();
        let total = std::str::from_utf8(&b.args[at])
            .ok()
            .and_then(|t| t.parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .map(|t| if millis { t / 1000.0 } else { t });
        if let Some(total) = total {
            // Out of time: one millisecond, so that Redis answers the timeout itself.
            let left = (total - b.sent.elapsed().as_secs_f64()).max(0.001);
            args[at] = Bytes::from(match millis {
                true => format!("{}", (left * 1000.0).ceil() as u64),
                false => format!("{left:.3}"),
            });
        }
        let (marks, prefix) = (b.marks.clone(), b.prefix.clone());
        self.hold(p);
        if asking {
            encode_request(&mut self.up.to_up, [&b"ASKING"[..]].into_iter());
            // Its +OK comes before the command's reply: a slot of its own.
            self.up.pending.push_front(Slot::Internal);
            self.up.awaiting += 1;
        }
        encode_marked(&mut self.up.to_up, &args, &prefix, &marks);
        self.flush_upstream().await;
        Ok(())
    }

    /// Holds `p` as the session's pinned connection, and tells CLIENT LIST / UNBLOCK its id
    /// (and, in cluster mode, its node).
    pub(super) fn hold(&mut self, p: Pinned) {
        self.me
            .upstream_id
            .store(p.conn.client_id, std::sync::atomic::Ordering::Relaxed);
        if self.ctx.upstream.cluster.is_some() {
            let node = (p.connector().host().to_string(), p.connector().port());
            self.me.state.lock().unwrap().upstream_node = Some(node);
        }
        self.up.pinned = Some(p);
    }

    /// Cluster mode: CLIENT UNBLOCK of a connection blocked on `node` (its `upstream_id`
    /// there): sent to that node, after the requests before it.
    pub(super) async fn unblock_on(
        &mut self,
        node: (String, u16),
        args: Vec<Bytes>,
    ) -> Result<(), End> {
        let topology = self.ctx.upstream.cluster.clone().expect("cluster mode");
        self.drain().await?;
        let mut request = bytes::BytesMut::new();
        encode_request(&mut request, args.iter().map(|a| &a[..]));
        let target = Target::Node(topology.node(&node.0, node.1));
        let reply = match self.call_encoded(request.freeze(), target).await {
            Ok(frame) => frame.raw,
            Err(e) => Error::Upstream(e).to_resp(),
        };
        self.answer(reply);
        Ok(())
    }

    /// A pinned connection to `node`.
    async fn pin_to(&mut self, node: &Arc<Node>) -> Result<Pinned, UpstreamError> {
        let share = self.tenant.as_ref().and_then(|t| t.pinned.as_deref());
        let protocol = self.state.protocol;
        let pinned = &self.ctx.upstream.pinned;
        pinned.acquire(Some(&node.connector), protocol, share).await
    }

    /// The pinned connection under a lone blocked command broke (its master died): the
    /// command is sent again to the slot's master once there is one (`true`).
    pub(super) fn reblock_on_close(&mut self) -> bool {
        if self.ctx.upstream.cluster.is_none() || !self.blocked_alone() {
            return false;
        }
        self.let_go_blocked(Reblock {
            node: None,
            asking: false,
        });
        true
    }

    /// Cluster mode: the request encoded last in `to_up` is a part of the batch's plan,
    /// for the target set for it.
    pub(super) fn plan_part(&mut self) {
        let len = self.up.to_up.len() - self.up.plan_end;
        if len > 0 {
            // The target stays for what else this request brings (a script's AUTH pair).
            self.up.plan.push(Part {
                len,
                target: self.up.target.clone(),
                join: None,
                script: self.up.script,
            });
            self.up.plan_end = self.up.to_up.len();
        }
    }
}
