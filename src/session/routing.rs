//! Cluster mode, the session's side: the slot of each request, a transaction kept to one
//! slot (MULTI is sent with its first command, to that command's node), a pinned connection
//! on the right node, and the multi-key commands Redis Cluster refuses across slots (MGET,
//! DEL, UNLINK, EXISTS, TOUCH, MSET) split into one request per run of keys of one slot,
//! whose replies the router joins (`upstream::cluster`).

use super::*;
use crate::namespace::reply::CURSOR_NODES;
use crate::upstream::cluster::{Login, Merge, Node, Part, Target};

/// What the cluster stage decided for a request.
pub(super) enum Routed {
    /// Send it (to `self.up.target`).
    Go,
    /// Answered already.
    Done,
}

/// The slot of argument `i` of `fwd` as Redis gets it: behind the tenant's prefix if marked.
pub(super) fn slot_of(fwd: &Forward, i: usize, tenant: &Tenant) -> u16 {
    let prefix: &[u8] = match fwd.prefixed.has(i) {
        true => &tenant.prefix,
        false => b"",
    };
    crate::wire::key_slot(prefix, &fwd.args[i])
}

/// The multi-key commands answered whole across slots, and how their replies are joined:
/// (merge, the first key's index, arguments per key).
fn splits(top: &[u8]) -> Option<(Merge, usize)> {
    match top {
        b"mget" => Some((Merge::Concat, 1)),
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
        queued: bool,
    ) -> Routed {
        if !self.state.watching {
            self.state.watch_slot = None;
        }
        if self.state.multi.as_ref().is_some_and(|m| m.begin_pending) {
            let reply = match top {
                b"exec" => Some(Bytes::from_static(b"*0\r\n")),
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
                if matches!(top, b"exec" | b"discard") {
                    self.end_multi();
                    self.state.watching = false;
                }
                self.answer(reply);
                return Routed::Done;
            }
        }
        if top == b"multi" && self.state.multi.is_none() && self.up.pinned.is_none() {
            self.state.multi = Some(Multi {
                begin_pending: true,
                slot: self.state.watch_slot,
                ..Default::default()
            });
            self.answer(crate::wire::Resp::ok());
            return Routed::Done;
        }
        if let (true, Some(s), Some(m)) = (queued, slot, self.state.multi.as_mut()) {
            match m.slot {
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
        self.up.target = target;
        Routed::Go
    }

    /// SCAN over every master in turn: the tenant's cursor says which master (its low bits)
    /// and where on it; the reply's cursor goes on to the next master when one is done.
    pub(super) fn cluster_scan(&mut self, args: &mut [Bytes], expect: &mut Expect) -> Routed {
        let Some(topology) = &self.ctx.upstream.cluster else {
            return Routed::Go;
        };
        let Some(cursor) = std::str::from_utf8(&args[1])
            .ok()
            .and_then(|c| c.parse::<u64>().ok())
        else {
            // Redis says why.
            return Routed::Go;
        };
        let mut masters = topology.map().masters().to_vec();
        masters.sort_by(|a, b| a.addr.cmp(&b.addr));
        let (node, at) = (cursor % CURSOR_NODES, cursor / CURSOR_NODES);
        let Some(master) = masters.get(node as usize) else {
            // A cursor past the last master (the cluster shrank): the iteration is over.
            self.answer(Bytes::from_static(b"*2\r\n$1\r\n0\r\n*0\r\n"));
            return Routed::Done;
        };
        args[1] = Bytes::from(at.to_string());
        *expect = Expect::Reply(Shape::ClusterScan {
            node,
            nodes: masters.len() as u64,
        });
        self.up.target = Target::Node(master.clone());
        Routed::Go
    }

    /// The node of the request about to be sent, for a pinned connection.
    pub(super) fn target_node(&self) -> Result<Option<Arc<Node>>, UpstreamError> {
        let Some(topology) = &self.ctx.upstream.cluster else {
            return Ok(None);
        };
        let map = topology.map();
        let node = match &self.up.target {
            Target::Slot(s) => map.master(*s).cloned(),
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
                Err(UpstreamError::Cluster(format!(
                    "no master known for the slot ({})",
                    topology.last_error()
                )))
            }
        }
    }

    /// Cluster mode, over a pinned connection: a request for another node than the one the
    /// connection is on cannot be sent on it. Outside a transaction, a connection pinned
    /// only for replies in flight is given back first (`true`: go on); one that holds state
    /// (WATCH, subscriptions, tracking) cannot follow the key to its node.
    pub(super) async fn keep_to_node(&mut self) -> Result<bool, End> {
        let Some(pinned) = &self.up.pinned else {
            return Ok(true);
        };
        let Ok(Some(node)) = self.target_node() else {
            return Ok(true);
        };
        if matches!(self.up.target, Target::Any) || Arc::ptr_eq(&node.connector, pinned.connector())
        {
            return Ok(true);
        }
        if !self.needs_pinned() {
            self.drain().await?;
            return Ok(true);
        }
        if self.state.multi.is_none() {
            self.refuse(Error::OtherNode);
            return Ok(false);
        }
        Ok(true)
    }

    /// Encodes a multi-key request whose keys span slots as one request per run of keys of
    /// one slot (`true`), each a part the router sends to its slot's master; `false` when
    /// the request is not one of those or its keys share a slot.
    pub(super) fn split(&mut self, top: &[u8], args: &[Bytes], marks: &crate::wire::Marks) -> bool {
        let Some((merge, step)) = splits(top) else {
            return false;
        };
        if args.len() < 1 + 2 * step || (args.len() - 1) % step != 0 {
            return false;
        }
        let prefix = self
            .tenant
            .as_ref()
            .map_or(Bytes::new(), |t| t.prefix.clone());
        let slot = |i: usize| {
            let p: &[u8] = if marks.has(i) { &prefix } else { b"" };
            crate::wire::key_slot(p, &args[i])
        };
        // Runs of consecutive keys in one slot: (slot, first key index, past the last).
        let mut runs: Vec<(u16, usize, usize)> = Vec::new();
        for i in (1..args.len()).step_by(step) {
            let s = slot(i);
            match runs.last_mut() {
                Some((rs, _, end)) if *rs == s => *end = i + step,
                _ => runs.push((s, i, i + step)),
            }
        }
        if runs.len() == 1 {
            return false;
        }
        self.plan_part();
        let n = runs.len();
        for (k, (s, from, to)) in runs.into_iter().enumerate() {
            let mut sub = Vec::with_capacity(1 + to - from);
            let mut sub_marks = crate::wire::Marks::default();
            sub.push(args[0].clone());
            for (i, arg) in args.iter().enumerate().take(to).skip(from) {
                if marks.has(i) {
                    sub_marks.set(sub.len());
                }
                sub.push(arg.clone());
            }
            encode_marked(&mut self.up.to_up, &sub, &prefix, &sub_marks);
            self.up.plan.push(Part {
                len: self.up.to_up.len() - self.up.plan_end,
                target: Target::Slot(s),
                join: (k == 0).then_some((merge, n)),
                login: None,
            });
            self.up.plan_end = self.up.to_up.len();
        }
        true
    }

    /// Cluster mode: the script about to be encoded runs between these logins (`auth`, then
    /// respite's own): should a redirect send it to another node, it goes between them
    /// there too.
    pub(super) fn login_around(&mut self, auth: &[Bytes; 3]) {
        let mut as_tenant = bytes::BytesMut::new();
        encode_request(&mut as_tenant, auth.iter().map(|a| &a[..]));
        let mut back = bytes::BytesMut::new();
        let relogin = self.ctx.scripts.relogin();
        encode_request(&mut back, relogin.iter().map(|a| &a[..]));
        self.up.login = Some(Arc::new(Login {
            as_tenant: as_tenant.freeze(),
            back: back.freeze(),
        }));
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
                login: self.up.login.take(),
            });
            self.up.plan_end = self.up.to_up.len();
        }
    }
}
