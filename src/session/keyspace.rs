//! Tenant-wide keyspace commands: DBSIZE, RANDOMKEY, FLUSHDB/FLUSHALL and the `# Keyspace`
//! section of INFO. Redis answers these for the whole database; respite answers them for the
//! tenant's namespace by walking it with `SCAN MATCH tenant:<id>:*`.
//!
//! They run on the session's own upstream connection after every earlier request has its
//! reply (`Session::drain`), so they see exactly the writes the client made before them, and
//! one at a time per tenant (a DBSIZE asked while another ran takes the next one's count).
//! The cost is a SCAN of the whole Redis keyspace (as `KEYS` costs in Redis), in steps of
//! [`SCAN_COUNT`] so that Redis keeps serving other clients in between.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};

use bytes::Bytes;
use redis_protocol::resp3::types::RangeFrame;

use super::local::KeyspaceCmd;
use super::Session;
use crate::error::{Error, UpstreamError};
use crate::metrics::Outcome;
use crate::upstream::cluster::{Node, SlotMap, Target};
use crate::wire::Resp;
use crate::wire::{all_keys, Marks};
use std::sync::Arc;

/// Keys a SCAN step asks for: each step holds Redis briefly, so other tenants' commands go
/// between steps (1,000 held them past 2 ms at p99 while a tenant looped DBSIZE over 200,000
/// keys; 250 did not, and made that DBSIZE 180 ms instead of 100 ms: benches/neighbours.py).
const SCAN_COUNT: &[u8] = b"250";

/// Where a walk over keys (SCAN MATCH `pattern`, step by step) stands.
struct Walk {
    pattern: Bytes,
    cursor: Bytes,
    /// Redis answered cursor 0: the walk has seen every key.
    done: bool,
    /// Cluster mode: the masters still to walk, the one being walked first, and the slot map
    /// when the walk began (see `moved_away`).
    nodes: std::collections::VecDeque<Arc<Node>>,
    began: Option<Arc<SlotMap>>,
}

impl Walk {
    fn new(pattern: Bytes) -> Walk {
        Walk {
            pattern,
            cursor: Bytes::from_static(b"0"),
            done: false,
            nodes: Default::default(),
            began: None,
        }
    }
}

/// The most masters a tenant's SCAN cursor can tell apart (cluster mode).
const CURSOR_NODES: u64 = 1024;

/// The tenant's SCAN cursor for a node's `cursor` on master `node` (of `nodes`, in address
/// order): the node's index in the low bits; the node's end (0) goes on to the next master,
/// and the last master's end is the whole iteration's, 0.
fn cluster_cursor(cursor: u64, node: u64, nodes: u64) -> u64 {
    match cursor {
        0 if node + 1 < nodes => node + 1,
        0 => 0,
        c => c.saturating_mul(CURSOR_NODES).saturating_add(node),
    }
}

/// SCAN's option `name` (MATCH, TYPE): its last value, the options read in pairs from the
/// third argument on, as Redis reads them.
fn scan_option(args: &[Bytes], name: &[u8]) -> Option<usize> {
    (2..args.len().saturating_sub(1))
        .step_by(2)
        .filter(|&i| args[i].eq_ignore_ascii_case(name))
        .last()
        .map(|i| i + 1)
}

/// SCAN's MATCH pattern as Redis gets it.
fn scan_pattern(args: &[Bytes], marks: &Marks, prefix: &[u8]) -> Vec<u8> {
    match scan_option(args, b"match") {
        Some(i) if marks.has(i) => [prefix, &args[i][..]].concat(),
        Some(i) => args[i].to_vec(),
        None => [prefix, b"*"].concat(),
    }
}

/// SCAN's TYPE, if asked for.
fn scan_type(args: &[Bytes]) -> Option<Bytes> {
    scan_option(args, b"type").map(|i| args[i].clone())
}

/// A node's own account of the cluster (its `CLUSTER NODES`): who serves each slot, and
/// the slots it is migrating away (`[slot->-<id>]` on its `myself` line) and to whom.
struct NodesView {
    /// Index into `addrs` per slot (`u16::MAX`: nobody).
    owner: Vec<u16>,
    /// Each node's (ip, port, hostname if it announces one).
    addrs: Vec<(String, u16, Option<String>)>,
    /// The index of the node that answered (the `myself` line).
    me: Option<u16>,
    /// (slot, index of the node it goes to).
    migrating: Vec<(u16, u16)>,
}

impl NodesView {
    fn parse(text: &str) -> NodesView {
        let mut view = NodesView {
            owner: vec![u16::MAX; crate::wire::SLOTS as usize],
            addrs: Vec::new(),
            me: None,
            migrating: Vec::new(),
        };
        // `<id> <ip>:<port>@<cport>[,<hostname>] <flags> ...`
        let addr_of = |line: &str| {
            let field = line.split(' ').nth(1)?;
            let (addr, hostname) = match field.split_once(',') {
                Some((a, h)) => (a, Some(h.to_string()).filter(|h| !h.is_empty())),
                None => (field, None),
            };
            let (host, port) = addr.split('@').next()?.rsplit_once(':')?;
            Some((host.to_string(), port.parse::<u16>().ok()?, hostname))
        };
        let lines: Vec<&str> = text.lines().filter(|l| addr_of(l).is_some()).collect();
        let index_of = |id: &str| lines.iter().position(|l| l.starts_with(id));
        for (at, line) in lines.iter().enumerate() {
            let at = at as u16;
            view.addrs.push(addr_of(line).expect("filtered"));
            let myself = line.split(' ').nth(2).is_some_and(|f| f.contains("myself"));
            if myself {
                view.me = Some(at);
            }
            for field in line.split(' ').skip(8) {
                if let Some(mark) = field.strip_prefix('[').and_then(|f| f.strip_suffix(']')) {
                    let Some((slot, to)) = mark.split_once("->-") else {
                        continue;
                    };
                    if let (Ok(slot), Some(to), true) = (slot.parse(), index_of(to), myself) {
                        view.migrating.push((slot, to as u16));
                    }
                    continue;
                }
                let (a, b) = field.split_once('-').unwrap_or((field, field));
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    for o in view.owner.iter_mut().take(b + 1).skip(a) {
                        *o = at;
                    }
                }
            }
        }
        view
    }

    /// Does the node that answered serve `slot`, by its own account?
    fn mine(&self, slot: u16) -> bool {
        self.me
            .is_some_and(|me| self.owner.get(slot as usize) == Some(&me))
    }

    /// The node at `index`, as respite knows it: by the hostname it announces if respite
    /// met it so (`cluster-preferred-endpoint-type hostname`), else by its address.
    fn node(&self, index: u16, topology: &crate::upstream::cluster::Topology) -> Option<Arc<Node>> {
        let (ip, port, hostname) = self.addrs.get(index as usize)?;
        hostname
            .as_ref()
            .and_then(|h| topology.known(h, *port))
            .or_else(|| topology.known(ip, *port))
            .or_else(|| Some(topology.node(ip, *port)))
    }
}

/// A random u64 without a dependency: std's hasher keys are randomly seeded per process.
pub(crate) fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

impl Session {
    pub(crate) async fn keyspace(&mut self, cmd: KeyspaceCmd) -> Bytes {
        // One walk per tenant at a time, so that a tenant looping these from many
        // connections costs Redis one walk at a time; a DBSIZE whose walk began after this
        // one was asked is this one's answer too.
        let tenant = self.tenant.clone().expect("authenticated");
        let asked = std::time::Instant::now();
        let mut last = tenant.live.walks.lock().await;
        let db = self.state.db;
        if let (KeyspaceCmd::DbSize, Some((began, of, n))) = (&cmd, *last) {
            if began >= asked && of == db {
                return Resp::int(n as i64);
            }
        }
        let began = std::time::Instant::now();
        let result = match cmd {
            KeyspaceCmd::DbSize => self.count_keys().await.map(|n| {
                *last = Some((began, db, n));
                Resp::int(n as i64)
            }),
            KeyspaceCmd::Keys(pattern) => self.keys(&pattern).await,
            KeyspaceCmd::RandomKey => self.random_key().await,
            KeyspaceCmd::Flush { lazy, all } => self.flush(lazy, all).await.map(|_| Resp::ok()),
            KeyspaceCmd::Info(sections) => self.info(&sections).await,
        };
        result.unwrap_or_else(|e| Error::Upstream(e).to_resp())
    }

    /// The next batch of `walk`, or `None` once it is done.
    async fn step(&mut self, walk: &mut Walk) -> Result<Option<Vec<Bytes>>, UpstreamError> {
        if walk.done {
            return Ok(None);
        }
        let node = walk.nodes.front().cloned();
        let (next, mut batch) = self
            .scan_matching(&walk.cursor, &walk.pattern, node.clone())
            .await?;
        walk.done = &next[..] == b"0";
        walk.cursor = next;
        if let (true, Some(node), Some(began)) = (walk.done, &node, walk.began.clone()) {
            batch.extend(self.moved_away(node, &began, &walk.pattern).await?);
        }
        if walk.done && walk.nodes.len() > 1 {
            // That master is done: on to the next.
            walk.nodes.pop_front();
            walk.done = false;
        }
        Ok(Some(batch))
    }

    /// Cluster mode, at the end of `node`'s walk: the keys matching `pattern` that left it
    /// for another node during the walk (a key migrating from a master not walked yet to one
    /// walked already would be missed otherwise). They are in the slots `node` is migrating
    /// now (`[slot->-id]` in its CLUSTER NODES), and in those it owned when the walk began
    /// (`began`) and, by its own account, no longer does; each is read where it went
    /// (CLUSTER GETKEYSINSLOT). Nothing to read but CLUSTER NODES when no slot moves.
    async fn moved_away(
        &mut self,
        node: &Arc<Node>,
        began: &SlotMap,
        pattern: &[u8],
    ) -> Result<Vec<Bytes>, UpstreamError> {
        let Some(topology) = self.ctx.upstream.cluster.clone() else {
            return Ok(Vec::new());
        };
        let nodes = self
            .call_routed(&[&[b"CLUSTER", b"NODES"]], vec![Target::Node(node.clone())])
            .await?
            .remove(0);
        let text = nodes
            .text()
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .unwrap_or_default();
        let view = NodesView::parse(&text);
        let mut gone: Vec<(u16, Arc<Node>)> = view
            .migrating
            .iter()
            .filter_map(|&(slot, to)| Some((slot, view.node(to, &topology)?)))
            .collect();
        for slot in 0..crate::wire::SLOTS {
            let owned = began.master(slot).is_some_and(|m| Arc::ptr_eq(m, node));
            if !owned || view.mine(slot) || gone.iter().any(|(s, _)| *s == slot) {
                continue;
            }
            let to = view.owner.get(slot as usize).copied().unwrap_or(u16::MAX);
            if let Some(to) = view.node(to, &topology) {
                gone.push((slot, to));
            }
        }
        let mut keys = Vec::new();
        for (slot, to) in gone {
            let slot = slot.to_string();
            let target = || vec![Target::Node(to.clone())];
            let count = self
                .call_routed(
                    &[&[b"CLUSTER", b"COUNTKEYSINSLOT", slot.as_bytes()]],
                    target(),
                )
                .await?
                .remove(0);
            let RangeFrame::Number { data: n, .. } = *count.tree() else {
                continue;
            };
            if n <= 0 {
                continue;
            }
            let n = n.to_string();
            let ask: &[&[u8]] = &[b"CLUSTER", b"GETKEYSINSLOT", slot.as_bytes(), n.as_bytes()];
            let found = self.call_routed(&[ask], target()).await?.remove(0);
            for k in found.elements().unwrap_or_default() {
                if let Some(k) = found
                    .str_at(k)
                    .filter(|k| crate::wire::glob_match(pattern, k))
                {
                    keys.push(Bytes::copy_from_slice(k));
                }
            }
        }
        Ok(keys)
    }

    /// Cluster mode: a tenant's SCAN (`args` rewritten, `marks` its namespaced arguments),
    /// over every master in turn. The cursor carries the master's index in its low bits
    /// (`cursor = node cursor × 1024 + master`, masters in address order); at the end of
    /// each master, the keys that migrated away from it meanwhile are added (`moved_away`;
    /// SCAN may return a key twice, never miss one that existed throughout). Answered by
    /// respite, after the requests before it.
    pub(super) async fn cluster_scan(&mut self, args: &[Bytes], marks: &Marks) -> Bytes {
        match self.try_cluster_scan(args, marks).await {
            Ok(reply) => reply,
            Err(e) => Error::Upstream(e).to_resp(),
        }
    }

    async fn try_cluster_scan(
        &mut self,
        args: &[Bytes],
        marks: &Marks,
    ) -> Result<Bytes, UpstreamError> {
        let topology = self.ctx.upstream.cluster.clone().expect("cluster mode");
        let prefix = self.keys_prefix();
        let mut masters = topology.map().masters().to_vec();
        masters.sort_by(|a, b| a.addr.cmp(&b.addr));
        let cursor = std::str::from_utf8(&args[1])
            .ok()
            .and_then(|c| c.parse::<u64>().ok());
        let Some(cursor) = cursor else {
            // Redis says why (any master does).
            return Ok(Resp::error("ERR invalid cursor"));
        };
        let (i, at) = (cursor % CURSOR_NODES, cursor / CURSOR_NODES);
        let Some(node) = masters.get(i as usize).cloned() else {
            // Past the last master (the cluster shrank): the iteration is over.
            return Ok(Bytes::from_static(b"*2\r\n$1\r\n0\r\n*0\r\n"));
        };
        if cursor == 0 {
            self.scan_began = Some(topology.map());
        }
        let mut request = bytes::BytesMut::new();
        let mut sent = args.to_vec();
        sent[1] = Bytes::from(at.to_string());
        crate::wire::encode_marked(&mut request, &sent, &prefix, marks);
        let reply = self
            .call_encoded(request.freeze(), Target::Node(node.clone()))
            .await?;
        if reply.is_error() {
            return Ok(reply.raw);
        }
        let bad = || UpstreamError::Protocol("unexpected SCAN reply".into());
        let elems = reply.elements().ok_or_else(bad)?;
        let next: u64 = reply
            .str_at(elems.first().ok_or_else(bad)?)
            .and_then(|c| std::str::from_utf8(c).ok()?.parse().ok())
            .ok_or_else(bad)?;
        let mut keys: Vec<Bytes> = crate::wire::elements(elems.get(1).ok_or_else(bad)?)
            .unwrap_or_default()
            .iter()
            .filter_map(|k| reply.str_at(k).map(Bytes::copy_from_slice))
            .collect();
        if next == 0 {
            let began = match &self.scan_began {
                Some(map) => map.clone(),
                // The iteration began on another connection: the slots migrating now.
                None => topology.map(),
            };
            let pattern = scan_pattern(&sent, marks, &prefix);
            let mut moved = self.moved_away(&node, &began, &pattern).await?;
            if let Some(kind) = scan_type(&sent) {
                moved = self.of_type(moved, &kind).await?;
            }
            keys.extend(moved);
        }
        let cursor = cluster_cursor(next, i, masters.len() as u64).to_string();
        let mut out = bytes::BytesMut::new();
        Resp::put_array_len(&mut out, 2);
        Resp::put_bulk(&mut out, cursor.as_bytes());
        Resp::put_array_len(&mut out, keys.len());
        for k in &keys {
            Resp::put_bulk(&mut out, k.strip_prefix(&prefix[..]).unwrap_or(k));
        }
        Ok(out.freeze())
    }

    /// Cluster mode: PUBSUB CHANNELS, NUMSUB and their shard forms (`args` rewritten into
    /// the namespace) over every master: subscribers are spread over the masters (a
    /// connection subscribes on one), so each is asked and the answers merged: channels
    /// once each, counts summed per channel.
    pub(super) async fn cluster_pubsub(&mut self, args: &[Bytes], marks: &Marks) -> Bytes {
        let topology = self.ctx.upstream.cluster.clone().expect("cluster mode");
        let prefix = self.tenant.as_ref().expect("authenticated").prefix.clone();
        let mut request = bytes::BytesMut::new();
        crate::wire::encode_marked(&mut request, args, &prefix, marks);
        let request = request.freeze();
        let counting =
            args[1].eq_ignore_ascii_case(b"numsub") || args[1].eq_ignore_ascii_case(b"shardnumsub");
        // CHANNELS: each name once, in the order first seen. NUMSUB: one (name, count) per
        // channel asked, in the order asked (as Redis answers, repeats included), the
        // counts summed over the masters.
        let mut merged: Vec<(Bytes, i64)> = match counting {
            true => args[2..].iter().map(|c| (c.clone(), 0)).collect(),
            false => Vec::new(),
        };
        for node in topology.map().masters().to_vec() {
            let reply = match self.call_encoded(request.clone(), Target::Node(node)).await {
                Ok(r) if r.is_error() => return r.raw,
                Ok(r) => r,
                Err(e) => return Error::Upstream(e).to_resp(),
            };
            let tree = reply.tree();
            let flat: Vec<&RangeFrame> = match &*tree {
                RangeFrame::Map { data, .. } => data.iter().flat_map(|(k, v)| [k, v]).collect(),
                other => crate::wire::elements(other)
                    .unwrap_or_default()
                    .iter()
                    .collect(),
            };
            if counting {
                for (i, pair) in flat.chunks(2).enumerate() {
                    if let (Some((_, total)), Some(RangeFrame::Number { data, .. })) =
                        (merged.get_mut(i), pair.get(1))
                    {
                        *total += *data;
                    }
                }
                continue;
            }
            for name in flat.iter().filter_map(|f| reply.str_at(f)) {
                if !merged.iter().any(|(m, _)| &m[..] == name) {
                    merged.push((Bytes::copy_from_slice(name), 0));
                }
            }
        }
        let mut out = bytes::BytesMut::new();
        Resp::put_array_len(&mut out, merged.len() * if counting { 2 } else { 1 });
        for (name, n) in &merged {
            Resp::put_bulk(&mut out, name.strip_prefix(&prefix[..]).unwrap_or(name));
            if counting {
                out.extend_from_slice(&Resp::int(*n));
            }
        }
        out.freeze()
    }

    /// The `keys` whose type is `kind` (SCAN ... TYPE), asked of each key's node.
    async fn of_type(
        &mut self,
        keys: Vec<Bytes>,
        kind: &[u8],
    ) -> Result<Vec<Bytes>, UpstreamError> {
        let types = self.per_key(b"TYPE", &keys).await?;
        Ok(keys
            .into_iter()
            .zip(types)
            .filter(|(_, t)| t.text().is_some_and(|t| t.eq_ignore_ascii_case(kind)))
            .map(|(k, _)| k)
            .collect())
    }

    /// A walk over the keys matching `pattern` (as Redis sees it): on every master of a
    /// cluster, one after the other.
    fn walk(&self, pattern: Bytes) -> Walk {
        let mut walk = Walk::new(pattern);
        if let Some(topology) = &self.ctx.upstream.cluster {
            let mut masters = topology.map().masters().to_vec();
            masters.sort_by(|a, b| a.addr.cmp(&b.addr));
            walk.nodes = masters.into();
            walk.began = Some(topology.map());
        }
        walk
    }

    /// A walk over the keys of the database the connection has selected.
    fn namespace_walk(&self) -> Walk {
        self.walk(all_keys(&self.keys_prefix()))
    }

    /// A walk over the keys of every database of the tenant's: `tenant:<id>:*` and
    /// `tenant:<id>@*` in one pattern (an id has no glob character). What it yields
    /// beyond the tenant's own prefixes (`namespace::own_prefix`) is not the tenant's.
    fn databases_walk(&self) -> Walk {
        let id = &self.tenant.as_ref().expect("authenticated").id;
        self.walk(Bytes::from(format!("tenant:{id}[:@]*")))
    }

    /// One SCAN step over the keys that match `pattern` (a pattern as Redis sees it).
    async fn scan_matching(
        &mut self,
        cursor: &[u8],
        pattern: &[u8],
        node: Option<Arc<Node>>,
    ) -> Result<(Bytes, Vec<Bytes>), UpstreamError> {
        let scan: &[&[u8]] = &[b"SCAN", cursor, b"MATCH", pattern, b"COUNT", SCAN_COUNT];
        let targets = node.map(Target::Node).into_iter().collect();
        let frame = self.call_routed(&[scan], targets).await?.remove(0);
        let bad = || UpstreamError::Protocol("unexpected SCAN reply".into());
        let elems = frame.elements().ok_or_else(bad)?;
        let next = frame
            .str_at(elems.first().ok_or_else(bad)?)
            .map(Bytes::copy_from_slice)
            .ok_or_else(bad)?;
        let keys = match elems.get(1) {
            Some(RangeFrame::Array { data, .. }) => data
                .iter()
                .filter_map(|k| frame.str_at(k).map(Bytes::copy_from_slice))
                .collect(),
            _ => return Err(bad()),
        };
        Ok((next, keys))
    }

    /// One request per key, pipelined, and their replies; never on a connection that
    /// tracks keys for the client (see `call_on_keys`).
    async fn per_key(
        &mut self,
        command: &[u8],
        keys: &[Bytes],
    ) -> Result<Vec<crate::wire::Frame>, UpstreamError> {
        let args: Vec<[&[u8]; 2]> = keys.iter().map(|k| [command, &k[..]]).collect();
        let requests: Vec<&[&[u8]]> = args.iter().map(|a| &a[..]).collect();
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        self.call_on_keys(&requests, self.slots(keys)).await
    }

    /// Cluster mode: each key's slot (the keys as Redis names them), for `call_on_keys`.
    fn slots(&self, keys: &[Bytes]) -> Vec<Target> {
        match self.ctx.upstream.cluster {
            Some(_) => keys
                .iter()
                .map(|k| Target::Slot(crate::wire::key_slot(b"", k)))
                .collect(),
            None => Vec::new(),
        }
    }

    /// Per database of the tenant's that has keys: (keys, keys with a TTL, sum of those
    /// TTLs in ms), by database.
    async fn count_keys_with_ttl(
        &mut self,
    ) -> Result<BTreeMap<u32, (u64, u64, u64)>, UpstreamError> {
        let base = self.prefix();
        let mut dbs: BTreeMap<u32, (u64, u64, u64)> = BTreeMap::new();
        let mut walk = self.databases_walk();
        while let Some(batch) = self.step(&mut walk).await? {
            let batch: Vec<(Bytes, u32)> = batch
                .into_iter()
                .filter_map(|k| {
                    let (_, db) = crate::namespace::own_prefix(&base, &k)?;
                    Some((k, db))
                })
                .collect();
            let keys: Vec<Bytes> = batch.iter().map(|(k, _)| k.clone()).collect();
            let ttls = self.per_key(b"PTTL", &keys).await?;
            for ((_, db), f) in batch.iter().zip(ttls) {
                let e = dbs.entry(*db).or_default();
                e.0 += 1;
                if let RangeFrame::Number { data, .. } = *f.tree() {
                    if data > 0 {
                        e.1 += 1;
                        e.2 += data as u64;
                    }
                }
            }
        }
        Ok(dbs)
    }

    /// KEYS `pattern` within the namespace, as SCAN steps: each key once (SCAN may return a
    /// key twice), in no particular order (as KEYS), named as the tenant names it.
    async fn keys(&mut self, pattern: &[u8]) -> Result<Bytes, UpstreamError> {
        let prefix = self.keys_prefix();
        let mut walk = self.walk(crate::wire::namespaced(&prefix, pattern));
        let mut found = std::collections::HashSet::new();
        while let Some(batch) = self.step(&mut walk).await? {
            found.extend(batch);
        }
        let mut out = bytes::BytesMut::new();
        Resp::put_array_len(&mut out, found.len());
        for k in &found {
            Resp::put_bulk(&mut out, &k[prefix.len()..]);
        }
        Ok(out.freeze())
    }

    async fn count_keys(&mut self) -> Result<u64, UpstreamError> {
        let mut n = 0;
        let mut walk = self.namespace_walk();
        // In a cluster, a key migrating while the walk goes may be met on both nodes: the
        // names are kept, so it counts once.
        let mut seen = std::collections::HashSet::new();
        let cluster = !walk.nodes.is_empty();
        while let Some(batch) = self.step(&mut walk).await? {
            match cluster {
                true => seen.extend(batch),
                false => n += batch.len() as u64,
            }
        }
        Ok(n + seen.len() as u64)
    }

    /// A key of the tenant's, picked at random: the scan starts at a random cursor and wraps.
    async fn random_key(&mut self) -> Result<Bytes, UpstreamError> {
        let prefix = self.keys_prefix();
        let mut walk = self.namespace_walk();
        walk.cursor = Bytes::from((random_u64() % (1 << 32)).to_string());
        // In a cluster: from a master picked at random, on through the others.
        let turn = random_u64() as usize % walk.nodes.len().max(1);
        walk.nodes.rotate_left(turn);
        let all = walk.nodes.clone();
        let mut wrapped = false;
        loop {
            let Some(batch) = self.step(&mut walk).await? else {
                if wrapped {
                    return Ok(Resp(self.state.protocol).null());
                }
                // From the random cursor to the end, then once more from the start.
                wrapped = true;
                walk.done = false;
                walk.nodes = all.clone();
                continue;
            };
            if !batch.is_empty() {
                let k = &batch[(random_u64() % batch.len() as u64) as usize];
                return Ok(Resp::bulk(&k[prefix.len()..]));
            }
        }
    }

    /// Deletes every key of the selected database, or of `all` the tenant's (UNLINK when
    /// `lazy`, as FLUSHDB ASYNC).
    async fn flush(&mut self, lazy: bool, all: bool) -> Result<(), UpstreamError> {
        let del: &[u8] = if lazy { b"UNLINK" } else { b"DEL" };
        let mut walk = match all {
            true => self.databases_walk(),
            false => self.namespace_walk(),
        };
        let base = self.prefix();
        while let Some(mut batch) = self.step(&mut walk).await? {
            batch.retain(|k| crate::namespace::own_prefix(&base, k).is_some());
            if !batch.is_empty() {
                if self.ctx.upstream.cluster.is_some() {
                    // One slot per request in a cluster: one key each, pipelined.
                    self.per_key(del, &batch).await?;
                } else {
                    let mut args: Vec<&[u8]> = vec![del];
                    args.extend(batch.iter().map(|k| &k[..]));
                    self.call(&args).await?;
                }
                if let Some(ledger) = self.tenant.as_ref().and_then(|t| t.ledger.as_ref()) {
                    ledger.settle(batch, 0);
                }
            }
        }
        Ok(())
    }

    /// INFO from Redis, scoped to the tenant (`info`), with its own `# Keyspace` section; for
    /// an admin, Redis' text as it is (audited). respite's own sections follow either way.
    async fn info(&mut self, sections: &[Bytes]) -> Result<Bytes, UpstreamError> {
        let mut args: Vec<&[u8]> = vec![b"INFO"];
        args.extend(sections.iter().map(|s| &s[..]));
        let frame = self.call(&args).await?;
        if frame.is_error() {
            return Ok(frame.raw.clone());
        }
        let text = frame
            .text()
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .unwrap_or_default();
        let tenant = self.tenant.clone().expect("authenticated");
        if tenant.admin {
            crate::policy::audit(&self.ctx.audit, &tenant, self.me.addr, "info", sections);
        }
        // Redis' own `# Keyspace` is the admin's, with every tenant's keys.
        let wants_keyspace = wants(sections, b"keyspace") && !tenant.admin;
        let wants_tenant = wants(sections, b"tenant");
        let mut out = match tenant.admin {
            true => text,
            false => self.scoped_info(&text, sections).await,
        };
        let wants_shared = wants(sections, b"shared");
        if let Some(shared) = self.ctx.market.as_ref().filter(|_| wants_shared) {
            if !out.is_empty() && !out.ends_with("\r\n\r\n") {
                out.push_str("\r\n");
            }
            out.push_str(&shared.info());
        }
        if wants_tenant {
            let section = self.tenant_section().await;
            if !out.is_empty() && !out.ends_with("\r\n\r\n") {
                out.push_str("\r\n");
            }
            out.push_str(&section);
        }
        if wants_keyspace {
            let dbs = self.count_keys_with_ttl().await?;
            if !out.is_empty() && !out.ends_with("\r\n\r\n") {
                out.push_str("\r\n");
            }
            out.push_str("# Keyspace\r\n");
            for (db, (keys, expires, ttl_sum)) in dbs {
                let avg = ttl_sum.checked_div(expires).unwrap_or(0);
                out.push_str(&format!(
                    "db{db}:keys={keys},expires={expires},avg_ttl={avg}\r\n"
                ));
            }
        }
        Ok(Resp(self.state.protocol).text(out.as_bytes()))
    }
}

impl Session {
    /// Redis' INFO `text` as the tenant may see it (see `info::scope`).
    async fn scoped_info(&self, text: &str, sections: &[Bytes]) -> String {
        let mut figures = self.info_figures();
        if wants(sections, b"memory") {
            figures.memory = self.tenant_memory().await;
        }
        crate::info::scope(text, &figures)
    }

    /// The tenant's own figures for INFO's clients, stats and commandstats.
    fn info_figures(&self) -> crate::info::Figures {
        let tenant = self.tenant.as_ref().expect("authenticated");
        let st = tenant.stats.snapshot();
        let mut by_name = std::collections::BTreeMap::<&[u8], (u64, u64, u64)>::new();
        for ((name, outcome), n) in &st.commands {
            let e = by_name.entry(name).or_default();
            e.0 += n;
            match outcome {
                Outcome::Error => e.1 += n,
                Outcome::Refused => e.2 += n,
                Outcome::Ok => {}
            }
        }
        crate::info::Figures {
            connections: self.ctx.clients.of_tenant(&tenant.id).len(),
            max_clients: tenant
                .max_clients
                .unwrap_or(self.ctx.auth.config().server.max_clients),
            memory: None,
            hits: st.hits,
            misses: st.misses,
            commands: by_name
                .into_iter()
                .map(|(n, (c, f, r))| (String::from_utf8_lossy(n).into_owned(), c, f, r))
                .collect(),
        }
    }

    /// What the tenant's keys take and its limit (quota + overage), when it has a quota.
    async fn tenant_memory(&self) -> Option<(u64, Option<u64>)> {
        let tenant = self.tenant.as_ref()?;
        let (quotas, ledger) = (self.ctx.quotas.as_ref()?, tenant.ledger.as_ref()?);
        let st = quotas.status(ledger).await;
        Some((
            st.used.max(0) as u64,
            st.limits.map(|l| l.quota.saturating_add(l.overage)),
        ))
    }

    /// INFO's `# Tenant` section: the caller's own figures, nobody else's.
    async fn tenant_section(&mut self) -> String {
        let tenant = self.tenant.clone().expect("authenticated");
        let mut out = format!(
            "# Tenant\r\ntenant:{}\r\nrole:{}\r\n",
            tenant.id,
            tenant.role()
        );
        if let Some(plan) = &tenant.plan {
            out.push_str(&format!("plan:{plan}\r\n"));
        }
        out.push_str(&format!(
            "databases:{}\r\ndb:{}\r\n",
            tenant.databases, self.state.db
        ));
        let st = tenant.stats.snapshot();
        let p = st.percentiles(None).unwrap_or([0; 4]);
        out.push_str(&format!(
            "connections:{}\r\ncommands:{}\r\ncache_hits:{}\r\ncache_misses:{}\r\n\
             cache_hit_rate:{:.4}\r\nlatency_p50_us:{}\r\nlatency_p90_us:{}\r\n\
             latency_p99_us:{}\r\nlatency_p999_us:{}\r\n",
            self.ctx.clients.of_tenant(&tenant.id).len(),
            st.commands.values().sum::<u64>(),
            st.hits,
            st.misses,
            st.hit_rate(),
            p[0],
            p[1],
            p[2],
            p[3],
        ));
        let scripts = match (tenant.scripts, self.ctx.scripts.can_confine()) {
            (s, _) if !s.allowed => "off",
            (s, _) if s.unconfined => "unconfined",
            (_, Some(false)) => "refused (respite's Redis user cannot run ACL SETUSER)",
            _ => "confined",
        };
        out.push_str(&format!(
            "scripts:{scripts}\r\nscript_timeout_ms:{}\r\n",
            tenant.scripts.timeout_ms
        ));
        out.push_str(&limits(&tenant, self.ctx.client_output_limit));
        let (Some(quotas), Some(ledger)) = (self.ctx.quotas.clone(), tenant.ledger.as_ref()) else {
            out.push_str("quota:off\r\n");
            return out;
        };
        let st = quotas.status(ledger).await;
        out.push_str(&format!("used_bytes:{}\r\n", st.used));
        match st.limits {
            Some(l) => out.push_str(&format!(
                "quota_bytes:{}\r\noverage_bytes:{}\r\nover_quota_bytes:{}\r\n",
                l.quota,
                l.overage,
                (st.used.max(0) as u64).saturating_sub(l.quota)
            )),
            None => out.push_str("quota:unlimited\r\n"),
        }
        out.push_str(&format!(
            "quota_refusals:{}\r\noverage_writes:{}\r\nquota_reconciliations:{}\r\n",
            st.refusals, st.overage_writes, st.reconciled
        ));
        out
    }
}

/// Does INFO with these section arguments ask for `section` (by name, or as part of the
/// default or all sections)?
fn wants(sections: &[Bytes], section: &[u8]) -> bool {
    sections.is_empty()
        || sections.iter().any(|s| {
            let s = s.to_ascii_lowercase();
            s == section || matches!(s.as_slice(), b"default" | b"all" | b"everything")
        })
}

/// INFO `# Tenant`'s limits: what is set (0: no bound), and where the tenant stands.
fn limits(tenant: &crate::tenant::Tenant, client_output_limit: usize) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let rates = tenant.rates.as_ref();
    let rate = |b: Option<&crate::rate::Bucket>| b.map_or(0, |b| b.per_second);
    format!(
        "max_clients:{}\r\nconnected_clients:{}\r\npinned_max:{}\r\nops_per_second:{}\r\n\
         bytes_per_second:{}\r\nrate_limit:{}\r\nrate_throttled_us:{}\r\nrate_refusals:{}\r\n\
         client_output_limit_bytes:{client_output_limit}\r\noutput_limit_bytes:{}\r\n\
         output_unread_bytes:{}\r\nclients_closed_output:{}\r\n",
        tenant.max_clients.unwrap_or(0),
        tenant.connections(),
        tenant.pinned.as_ref().map_or(0, |p| p.max()),
        rate(rates.and_then(|r| r.ops.as_ref())),
        rate(rates.and_then(|r| r.bytes.as_ref())),
        match rates.map(|r| r.past) {
            Some(crate::rate::Past::Refuse) => "refuse",
            _ => "delay",
        },
        rates.map_or(0, |r| r.throttled_us.load(Relaxed)),
        rates.map_or(0, |r| r.refused.load(Relaxed)),
        tenant.output.as_ref().map_or(0, |o| o.limit()),
        tenant.output.as_ref().map_or(0, |o| o.bytes()),
        tenant.live.limited.closed_for_output.load(Relaxed),
    )
}
