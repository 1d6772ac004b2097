//! A client connection from accept to close: the loop that reads requests, passes each
//! through the pipeline stages once, and writes the replies back in the order the requests
//! came.
//!
//! ```text
//! loop:  deliver() replies already read ─▶ for each whole request: handle()
//!                                auth gate ─▶ command table ─▶ respite's own command?
//!                                ─▶ policy ─▶ rewrite ─▶ forward (queued on the upstream)
//!        flush upstream writes ─▶ deliver() ─▶ write what the client socket takes
//!        wait for: client bytes | client writable | upstream bytes | head-of-line timeout
//!                  | kill | shutdown
//! ```
//!
//! Every request gets a [`Slot`] in `pending`, in arrival order: a reply respite already
//! knows, or a promise of one from Redis. Replies from Redis fill the oldest open slot, so a
//! local error (NOPERM, a protocol error) can never overtake an earlier forwarded command's
//! reply, and a failed upstream turns every open slot into an error, in order.
//!
//! Backpressure: at most [`MAX_IN_FLIGHT`] requests are in flight, and at most [`OUT_LIMIT`]
//! bytes of replies wait for a client that is not reading; past either, respite stops reading
//! from the client (and from Redis), so a client that never reads costs bounded memory while
//! one that writes 10,000 commands before reading still gets all 10,000 replies.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Buf;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::auth::Authenticator;
use crate::clients::{Client, Registry};
use crate::command::{self, Unknown};
use crate::error::{Error, UpstreamError};
use crate::local::{self, Local};
use crate::metrics::{Meta, Outcome, Tally};
use crate::policy;
use crate::protocol::{encode_marked, encode_request, parse_request, Limits, Request};
use crate::quota::{self, Quotas, WriteCost, Written};
use crate::reply::{self, ExecItem, Frame, Kind, Shape, SubKind};
use crate::rewrite::{self, Expect, Forward};
use crate::shared::SharedCache;
use crate::tenant::Tenant;
use crate::upstream::{shared, Pinned, Reply, Sink, Upstream};

/// Requests a connection may have in flight before respite stops reading from it.
pub const MAX_IN_FLIGHT: usize = 1024;
/// Reply bytes waiting for the client past which respite stops reading more requests.
pub const OUT_LIMIT: usize = 4 * 1024 * 1024;

/// What every session shares.
pub struct Context {
    pub limits: Limits,
    /// Sidecar mode: the tenant of connections that never authenticate.
    pub default_tenant: Option<Arc<Tenant>>,
    pub auth: Authenticator,
    pub upstream: Upstream,
    pub clients: Registry,
    /// Quota bookkeeping, when any tenant has a quota.
    pub quotas: Option<Arc<Quotas>>,
    /// The shared-key cache, when `[shared]` is configured.
    pub shared: Option<Arc<SharedCache>>,
    /// respite's own connections to Redis (quota bookkeeping, shared fills, health).
    pub own: crate::upstream::Own,
    /// Whether Redis answers (for /readyz).
    pub readiness: crate::admin::Readiness,
    /// Redis' settings that bound what may be forwarded (RESTORE, argument sizes).
    pub facts: crate::upstream::Facts,
    /// Per-tenant command figures are kept (`server.metrics`).
    pub metrics: bool,
}

/// The longest tenant prefix, `tenant:` + 64 + `:`.
const MAX_PREFIX: usize = 72;

impl Context {
    /// The request limits: `[server]`'s, and never so long that a key with its prefix would
    /// pass Redis' `proto-max-bulk-len` (Redis would close a connection other tenants share).
    pub fn request_limits(&self) -> Limits {
        Limits {
            max_bulk_bytes: self
                .limits
                .max_bulk_bytes
                .min(self.facts.max_bulk().saturating_sub(MAX_PREFIX)),
            ..self.limits
        }
    }
}

/// The place of one request's reply in the outgoing stream.
#[derive(Debug)]
pub(crate) enum Slot {
    /// Answered by respite.
    Ready(Bytes),
    /// One reply from Redis, rewritten by `shape`. `mute`: CLIENT REPLY OFF/SKIP.
    Reply {
        shape: Shape,
        blocking: bool,
        mute: bool,
        /// A write's charge: settled (its keys measured) once the reply is in.
        write: Option<Written>,
        /// The command, for the tenant's figures.
        meta: Option<Meta>,
    },
    /// (Un)subscribe confirmations; `left` is resolved when the slot reaches the head.
    Confirm {
        kind: SubKind,
        left: Option<usize>,
        mute: bool,
    },
    /// A reply to respite's own request (e.g. DISCARD for an aborted EXEC): dropped.
    Internal,
}

/// The channels, patterns and shard channels this connection's upstream is subscribed to,
/// by their names in Redis.
#[derive(Debug, Default)]
pub(crate) struct Subscriptions {
    channels: HashSet<Bytes>,
    patterns: HashSet<Bytes>,
    shard: HashSet<Bytes>,
}

impl Subscriptions {
    fn set(&mut self, kind: SubKind) -> &mut HashSet<Bytes> {
        match kind {
            SubKind::Channel => &mut self.channels,
            SubKind::Pattern => &mut self.patterns,
            SubKind::Shard => &mut self.shard,
        }
    }

    pub(crate) fn any(&self) -> bool {
        !(self.channels.is_empty() && self.patterns.is_empty() && self.shard.is_empty())
    }
}

/// MULTI in progress: what EXEC's reply will hold.
#[derive(Debug, Default)]
pub(crate) struct Multi {
    pub items: Vec<ExecItem>,
    /// A command was refused while queuing: EXEC must abort, as in Redis.
    pub dirty: bool,
    /// The queued writes' charges, settled with EXEC's reply (or when the MULTI ends).
    pub writes: Option<Written>,
}

/// CLIENT REPLY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyMode {
    On,
    Off,
    SkipNext,
}

/// What the pipeline decided for one request.
enum Action {
    /// Answer with this error.
    Refuse(Error),
    /// One of respite's own commands.
    Local(Local),
    /// GET of a shared key: answered by the shared cache.
    SharedGet(Bytes),
    /// Send to Redis; the name is the command's (or its container's); a write under a quota
    /// has its cost.
    Forward(Forward, &'static [u8], Option<WriteCost>),
}

/// Why a session ended.
#[derive(Debug)]
pub(crate) enum End {
    ClientGone,
    Killed,
}

/// What woke the session up.
enum Event {
    ClientRead(std::io::Result<usize>),
    ClientWrote(std::io::Result<usize>),
    UpstreamRead(std::io::Result<usize>),
    SharedReply(Option<Reply>),
    Timeout,
    Killed,
    Shutdown,
}

pub struct Session {
    pub(crate) ctx: Arc<Context>,
    pub(crate) me: Arc<Client>,
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    inbuf: BytesMut,
    pub(crate) out: BytesMut,
    /// The pinned connection, while Redis holds state for this client; otherwise requests
    /// go over the shared connection this session is assigned to.
    pub(crate) pinned: Option<Pinned>,
    /// Requests encoded for Redis, not yet written (pinned) or submitted (shared).
    to_up: BytesMut,
    to_up_count: usize,
    /// Replies from the shared connection.
    replies: tokio::sync::mpsc::UnboundedReceiver<Reply>,
    sink: Sink,
    pending: VecDeque<Slot>,
    /// How many of `pending` wait on Redis (not `Ready`).
    awaiting: usize,
    /// When Redis last made progress on this connection (for the head-of-line timeout).
    progress: Instant,
    pub(crate) tenant: Option<Arc<Tenant>>,
    /// Shared keys this (publisher) connection wrote whose replies are not all in: dropped
    /// from the shared cache when written and again once Redis has answered.
    published: Vec<Bytes>,
    /// The last shared key this session read (see `shared::Memo`).
    memo: crate::shared::Memo,
    /// `published[..unpublished]` have been dropped from the cache once already.
    unpublished: usize,
    /// This session's figures since they were last handed to its tenant.
    tally: Tally,
    /// When the client's bytes were last read: the start of each request's latency.
    read_at: Instant,
    /// The command being handled.
    current: Option<Meta>,
    /// Read once per batch of replies: when they were ready (for latencies).
    clock: Instant,
    /// The quota allowance this session holds, and the writes Redis has answered in this
    /// batch: settled together with the tenant's ledger at the end of `deliver`.
    account: quota::Account,
    pub(crate) protocol: u8,
    pub(crate) multi: Option<Multi>,
    pub(crate) subs: Subscriptions,
    pub(crate) reply_mode: ReplyMode,
    pub(crate) watching: bool,
    pub(crate) tracking: bool,
    pub(crate) no_evict: bool,
    pub(crate) closing: bool,
    /// `inbuf` holds whole requests not yet handled (a cap was reached): read no more until
    /// they are, or the buffer would grow without bound.
    backlog: bool,
    /// The last command handled, published to CLIENT LIST once per batch (not per request).
    noted: Option<(&'static [u8], Option<&'static [u8]>)>,
    /// The head-of-line timer. It is re-armed lazily: it may fire early (then it is re-armed
    /// for the real deadline), never late, and costs no timer registration per request.
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    timer_at: Option<Instant>,
}

/// Serves one client connection until it closes, is killed, or the server shuts down.
pub async fn serve(ctx: Arc<Context>, client: TcpStream, shutdown: CancellationToken) {
    let (Ok(peer), Ok(local)) = (client.peer_addr(), client.local_addr()) else {
        return;
    };
    let _ = client.set_nodelay(true);
    let me = ctx.clients.register(peer, local);
    let (reader, writer) = client.into_split();
    let span = tracing::info_span!("conn", %peer, id = me.id, tenant = tracing::field::Empty);
    let (reply_tx, replies) = tokio::sync::mpsc::unbounded_channel();
    let mut s = Session {
        ctx: ctx.clone(),
        me: me.clone(),
        reader,
        writer,
        inbuf: BytesMut::with_capacity(16 * 1024),
        out: BytesMut::with_capacity(16 * 1024),
        pinned: None,
        to_up: BytesMut::with_capacity(16 * 1024),
        to_up_count: 0,
        replies,
        sink: Sink {
            tx: reply_tx,
            generation: 0,
        },
        pending: VecDeque::new(),
        awaiting: 0,
        progress: Instant::now(),
        tenant: None,
        account: quota::Account::default(),
        tally: Tally::default(),
        read_at: Instant::now(),
        current: None,
        clock: Instant::now(),
        published: Vec::new(),
        memo: None,
        unpublished: 0,
        protocol: 2,
        multi: None,
        subs: Subscriptions::default(),
        reply_mode: ReplyMode::On,
        watching: false,
        tracking: false,
        no_evict: false,
        closing: false,
        backlog: false,
        noted: None,
        timer: Box::pin(tokio::time::sleep(std::time::Duration::ZERO)),
        timer_at: None,
    };
    if let Some(t) = ctx.default_tenant.clone() {
        s.set_tenant(t);
    }
    let ended = s.run(shutdown).instrument(span.clone()).await;
    span.in_scope(|| tracing::debug!(?ended, "connection closed"));
    s.unpin();
    s.settle_unanswered();
    s.reset_connection_state();
    s.hand_over_tally();
    ctx.clients.unregister(me.id);
}

impl Session {
    async fn run(&mut self, shutdown: CancellationToken) -> Result<(), End> {
        loop {
            // Replies read during the last wait free their slots before new requests count
            // against MAX_IN_FLIGHT.
            self.deliver();
            if !self.published.is_empty() && self.awaiting == 0 {
                // The shared writes are done: drop what a reader may have cached meanwhile.
                self.unpublish().await;
            }
            self.handle_buffered().await?;
            self.publish_noted();
            self.flush_upstream().await;
            self.deliver();
            self.write_client_now()?;
            if self.closing && self.pending.is_empty() && self.out.is_empty() {
                return Ok(());
            }
            match self.wait(&shutdown).await {
                Event::ClientRead(Ok(n)) if n > 0 => {
                    self.read_at = Instant::now();
                    self.tally.bytes_in += n as u64;
                }
                Event::ClientRead(_) => return Err(End::ClientGone),
                Event::ClientWrote(Ok(n)) if n > 0 => self.wrote(n),
                Event::ClientWrote(_) => return Err(End::ClientGone),
                Event::UpstreamRead(Ok(n)) if n > 0 => {}
                Event::UpstreamRead(_) => self.fail_upstream(UpstreamError::Closed),
                Event::SharedReply(r) => {
                    self.clock = Instant::now();
                    self.take_reply(r)
                }
                Event::Timeout => {
                    self.timer_at = None;
                    if self.deadline().is_some_and(|d| d <= Instant::now()) {
                        self.fail_upstream(UpstreamError::Timeout(
                            self.ctx.upstream.command_timeout_ms(),
                        ));
                    }
                }
                Event::Killed => return Err(End::Killed),
                Event::Shutdown => self.closing = true,
            }
        }
    }

    /// Arms the head-of-line timer for `deadline` unless it already fires no later.
    fn arm_timer(&mut self, deadline: Option<Instant>) -> bool {
        let Some(d) = deadline else {
            return false;
        };
        if self.timer_at.is_none_or(|t| t > d) {
            self.timer.as_mut().reset(d.into());
            self.timer_at = Some(d);
        }
        true
    }

    pub(crate) fn publish_noted(&mut self) {
        self.hand_over_tally();
        if let Some(cmd) = self.noted.take() {
            let mut st = self.me.state.lock().unwrap();
            st.last_active = Some(Instant::now());
            st.last_command = Some(cmd);
        }
    }

    async fn wait(&mut self, shutdown: &CancellationToken) -> Event {
        let deadline = self.deadline();
        let timed = self.arm_timer(deadline);
        let room = self.out.len() < OUT_LIMIT;
        let read_client = !self.closing && !self.backlog;
        let up = &mut self.pinned;
        let out = &self.out;
        tokio::select! {
            _ = self.me.kill.cancelled() => Event::Killed,
            _ = shutdown.cancelled(), if !self.closing => Event::Shutdown,
            n = self.reader.read_buf(&mut self.inbuf), if read_client => Event::ClientRead(n),
            n = self.writer.write(out), if !out.is_empty() => Event::ClientWrote(n),
            n = read_upstream(up), if up.is_some() && room => Event::UpstreamRead(n),
            r = self.replies.recv(), if room => Event::SharedReply(r),
            _ = self.timer.as_mut(), if timed => Event::Timeout,
        }
    }

    /// Writes as much output as the socket takes without waiting.
    fn write_client_now(&mut self) -> Result<(), End> {
        while !self.out.is_empty() {
            match self.writer.try_write(&self.out) {
                Ok(0) => return Err(End::ClientGone),
                Ok(n) => self.wrote(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => return Err(End::ClientGone),
            }
        }
        Ok(())
    }

    fn wrote(&mut self, n: usize) {
        let was_full = self.out.len() >= OUT_LIMIT;
        self.tally.bytes_out += n as u64;
        self.out.advance(n);
        if self.out.is_empty() && self.out.capacity() > 1 << 20 {
            // Let a one-off huge reply's buffer go.
            self.out = BytesMut::with_capacity(16 * 1024);
        }
        if was_full && self.out.len() < OUT_LIMIT {
            // Redis was not read while the client caught up: restart its clock.
            self.progress = Instant::now();
        }
    }

    /// Runs every whole request in the input buffer through the pipeline.
    async fn handle_buffered(&mut self) -> Result<(), End> {
        self.backlog = false;
        while !self.closing {
            if self.pending.len() >= MAX_IN_FLIGHT || self.out.len() >= OUT_LIMIT {
                self.backlog = true;
                break;
            }
            let authenticated = self.tenant.is_some();
            match parse_request(&mut self.inbuf, &self.ctx.request_limits(), authenticated) {
                Ok(Some(req)) => self.handle(req).await?,
                Ok(None) => break,
                Err(e) => {
                    // As Redis: answer, then close once earlier replies are out.
                    tracing::debug!(error = %e, "protocol error");
                    self.pending
                        .push_back(Slot::Ready(Error::Protocol(e.0).to_resp()));
                    self.inbuf.clear();
                    self.closing = true;
                }
            }
        }
        Ok(())
    }

    /// One request through the stages, then acting on what they decided.
    async fn handle(&mut self, req: Request) -> Result<(), End> {
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
    async fn restore(&mut self, fwd: Forward, mut written: Written) -> Result<(), End> {
        self.drain().await?;
        let (Some(quotas), Some(ledger)) = (
            self.ctx.quotas.clone(),
            self.tenant.as_ref().and_then(|t| t.ledger.clone()),
        ) else {
            return self.forward(fwd, b"restore", Some(written)).await;
        };
        written.keys.clone_from(&fwd.args);
        let key = rewrite::namespaced(&self.prefix(), &fwd.args[1]);
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
                self.answer(crate::protocol::Resp::ok());
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
    async fn shared_get(&mut self, key: Bytes) -> Result<(), End> {
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
    async fn unpublish(&mut self) {
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
    fn admit_now(&mut self, cost: WriteCost) -> Result<Written, WriteCost> {
        match (
            &self.ctx.quotas,
            self.tenant.as_ref().and_then(|t| t.ledger.as_ref()),
        ) {
            (Some(quotas), Some(ledger)) => self.account.admit_now(ledger, cost, quotas.recent()),
            _ => Err(cost),
        }
    }

    /// The quota stage with a round trip to the shared figure: a reservation, or `-OOM`.
    async fn admit(&mut self, cost: WriteCost) -> Result<Written, Error> {
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
    fn decide(&mut self, req: Request) -> Action {
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
    fn note_command(&mut self, looked_up: &Result<command::Command, Unknown>) {
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

    fn take_mute(&mut self) -> bool {
        match self.reply_mode {
            ReplyMode::On => false,
            ReplyMode::Off => true,
            ReplyMode::SkipNext => {
                self.reply_mode = ReplyMode::On;
                true
            }
        }
    }

    /// Queues a rewritten request for Redis. `top` is the command's (container's) name;
    /// `write` its charge, if it is a write under a quota.
    pub(crate) async fn forward(
        &mut self,
        fwd: Forward,
        top: &[u8],
        mut write: Option<Written>,
    ) -> Result<(), End> {
        let Forward {
            mut args,
            prefixed,
            mut expect,
            blocking,
        } = fwd;
        let in_multi = self.multi.is_some();
        if in_multi && !matches!(top, b"exec" | b"discard" | b"multi" | b"watch") {
            // Redis queues it and answers +QUEUED; its real reply comes inside EXEC's.
            match expect {
                Expect::Confirm { .. } => {
                    self.refuse(Error::Other(
                        "Command not allowed inside a transaction".into(),
                    ));
                    return Ok(());
                }
                Expect::Reply(shape) => {
                    if let Some(m) = &mut self.multi {
                        m.items.push(ExecItem::Upstream(shape));
                        if let Some(mut w) = write.take() {
                            w.keys.clone_from(&args);
                            match &mut m.writes {
                                Some(all) => all.absorb(&mut w),
                                None => m.writes = Some(w),
                            }
                        }
                    }
                    expect = Expect::Reply(Shape::Plain);
                }
            }
        } else {
            match top {
                b"multi" if !in_multi => self.multi = Some(Multi::default()),
                b"exec" => {
                    self.watching = false;
                    if let Some(m) = self.multi.take() {
                        if m.dirty {
                            if let Some(w) = m.writes {
                                self.account.add(w);
                            }
                            if self.open(false, false).await? {
                                encode_request(&mut self.to_up, [&b"DISCARD"[..]].into_iter());
                                self.queue(Slot::Internal);
                            }
                            self.answer(Error::ExecAbort.to_resp());
                            return Ok(());
                        }
                        expect = Expect::Reply(Shape::Exec(m.items));
                        write = m.writes;
                    }
                }
                b"discard" => {
                    self.end_multi();
                    self.watching = false;
                }
                b"watch" if !in_multi => self.watching = true,
                b"unwatch" => self.watching = false,
                b"client" if args[1].eq_ignore_ascii_case(b"tracking") => {
                    self.tracking = args[2].eq_ignore_ascii_case(b"on");
                }
                b"client" if args[1].eq_ignore_ascii_case(b"no-evict") => {
                    self.no_evict = args[2].eq_ignore_ascii_case(b"on");
                }
                _ => {}
            }
        }
        // Connection state begins (or a command may block): it needs a connection of its own.
        let pin = blocking || matches!(expect, Expect::Confirm { .. }) || self.needs_pinned();
        let mute = self.take_mute();
        let slot = match expect {
            Expect::Reply(shape) => Slot::Reply {
                shape,
                blocking,
                mute,
                write,
                meta: self.current.take(),
            },
            Expect::Confirm { kind, count } => Slot::Confirm {
                kind,
                left: count,
                mute,
            },
        };
        if !self.open(pin, matches!(slot, Slot::Internal)).await? {
            if let Slot::Reply { write: Some(w), .. } = slot {
                self.account.add(w);
            }
            return Ok(());
        }
        let prefix = self.tenant.as_ref().map_or(&[][..], |t| &t.prefix[..]);
        encode_marked(&mut self.to_up, &args, prefix, &prefixed);
        self.queue(slot);
        if let Some(Slot::Reply { write: Some(w), .. }) = self.pending.back_mut() {
            // Encoded: the write's key can leave the request rather than be copied.
            w.keys.take_from(&mut args);
        }
        Ok(())
    }

    /// Makes sure the next request can go to Redis. With `pin`, it goes over a pinned
    /// connection, taken now (after the replies of whatever went over the shared one) if the
    /// session has none. `false` when no pinned connection can be had: the request is not
    /// sent, and is answered with the error instead (unless it is respite's own, `internal`).
    async fn open(&mut self, pin: bool, internal: bool) -> Result<bool, End> {
        if pin && self.pinned.is_none() {
            self.drain().await?;
            match self.ctx.upstream.pinned.acquire(self.protocol).await {
                Ok(p) => {
                    self.me
                        .upstream_id
                        .store(p.conn.client_id, std::sync::atomic::Ordering::Relaxed);
                    self.pinned = Some(p);
                }
                Err(e) => {
                    if let Some(m) = &mut self.multi {
                        m.dirty = true;
                    }
                    // The state the command would have begun does not exist.
                    (self.watching, self.tracking, self.no_evict) = (false, false, false);
                    if self.multi.as_ref().is_some_and(|m| m.items.is_empty()) {
                        self.end_multi();
                    }
                    if !internal {
                        self.pending
                            .push_back(Slot::Ready(Error::Upstream(e).to_resp()));
                    }
                    return Ok(false);
                }
            }
        }
        if self.awaiting == 0 {
            self.progress = Instant::now();
        }
        Ok(true)
    }

    /// Opens the slot of the request just encoded into `to_up`.
    fn queue(&mut self, slot: Slot) {
        self.to_up_count += 1;
        self.pending.push_back(slot);
        self.awaiting += 1;
    }

    /// Sends what is queued for Redis: written to the pinned connection, or handed to the
    /// shared one as one batch.
    async fn flush_upstream(&mut self) {
        if self.to_up.is_empty() {
            return;
        }
        let count = std::mem::take(&mut self.to_up_count);
        let Some(p) = self.pinned.as_mut() else {
            let data = self.to_up.split().freeze();
            if self.to_up.capacity() < 4096 {
                self.to_up.reserve(16 * 1024);
            }
            self.ctx
                .upstream
                .shared(self.protocol, self.me.id)
                .submit(shared::Submit {
                    data,
                    count,
                    to: self.sink.clone(),
                });
            return;
        };
        let up = &mut p.conn;
        // Almost always the socket takes it all at once: no timer needed for that.
        match up.stream.try_write(&self.to_up) {
            Ok(n) => self.to_up.advance(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                self.to_up.clear();
                return self.fail_upstream(UpstreamError::Closed);
            }
        }
        if self.to_up.is_empty() {
            return;
        }
        let timeout = self.ctx.upstream.command_timeout();
        let result = match tokio::time::timeout(timeout, up.write_all(&self.to_up)).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout(
                self.ctx.upstream.command_timeout_ms(),
            )),
        };
        self.to_up.clear();
        if let Err(e) = result {
            self.fail_upstream(e);
        }
    }

    /// Moves every reply that is ready, in order, into the client's output buffer.
    pub(crate) fn deliver(&mut self) {
        let mut routed = false;
        loop {
            while let Some(Slot::Ready(_)) = self.pending.front() {
                if let Some(Slot::Ready(b)) = self.pending.pop_front() {
                    self.out.extend_from_slice(&b);
                }
            }
            if let Some(p) = self.pinned.as_mut() {
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
            match self.replies.try_recv() {
                Ok(r) => {
                    self.tick(&mut routed);
                    self.take_reply(Some(r));
                }
                Err(_) => break,
            }
        }
        if routed {
            self.progress = self.clock;
        }
        if self.pinned.is_some() && self.awaiting == 0 && !self.needs_pinned() {
            self.unpin();
        }
        self.settle();
    }

    /// Settles the writes answered so far and hands back the unused allowance (see
    /// `quota::Account`).
    fn settle(&mut self) {
        let ledger = self.tenant.as_ref().and_then(|t| t.ledger.as_deref());
        self.account.finish(ledger);
    }

    /// The writes still waiting for their replies, which will not come: Redis may or may
    /// not have run them, so they are settled (measured) either way.
    fn settle_unanswered(&mut self) {
        for slot in self.pending.iter_mut() {
            if let Slot::Reply { write, .. } = slot {
                if let Some(w) = write.take() {
                    self.account.add(w);
                }
            }
        }
    }

    /// Ends the transaction in progress, if any; its queued writes will not run as queued,
    /// but are settled (their keys measured) all the same.
    fn end_multi(&mut self) {
        if let Some(w) = self.multi.take().and_then(|m| m.writes) {
            self.account.add(w);
        }
    }

    /// Reads the clock for the first reply of a batch: one reading serves the batch's
    /// latencies and Redis' progress.
    fn tick(&mut self, routed: &mut bool) {
        if !*routed {
            self.clock = Instant::now();
            *routed = true;
        }
    }

    /// A reply from the shared connection: routed, unless it answers a request this session
    /// already gave up on (an earlier generation).
    fn take_reply(&mut self, r: Option<Reply>) {
        let Some(r) = r else { return };
        if r.generation != self.sink.generation {
            return;
        }
        match r.result {
            Ok(frame) => self.route(frame),
            Err(e) => {
                let mute = match self.answered() {
                    Some(Slot::Reply { mute, .. }) | Some(Slot::Confirm { mute, .. }) => mute,
                    _ => true,
                };
                if !mute {
                    self.out.extend_from_slice(&Error::Upstream(e).to_resp());
                }
            }
        }
    }

    /// Does Redis hold state for this client, so that its requests must keep one connection?
    fn needs_pinned(&self) -> bool {
        self.has_connection_state() || self.no_evict
    }

    /// Gives the pinned connection back: to the pool, reset, if nothing is in flight on it;
    /// otherwise closed.
    pub(crate) fn unpin(&mut self) {
        if let Some(p) = self.pinned.take() {
            self.me
                .upstream_id
                .store(0, std::sync::atomic::Ordering::Relaxed);
            if self.awaiting == 0 && self.to_up.is_empty() {
                self.ctx.upstream.pinned.release(p);
            } else {
                p.close();
            }
        }
    }

    /// Takes the head slot, which Redis has just answered.
    fn answered(&mut self) -> Option<Slot> {
        let mut slot = self.pending.pop_front();
        if let Some(Slot::Reply { write, .. }) = &mut slot {
            if let Some(w) = write.take() {
                // Redis has run the write: its keys can be measured (with the batch).
                self.account.add(w);
            }
        }
        if slot.as_ref().is_some_and(is_upstream_slot) {
            self.awaiting -= 1;
        }
        slot
    }

    /// Puts one frame from Redis where it belongs.
    fn route(&mut self, frame: Frame) {
        let prefix = self.prefix();
        // A no-argument UNSUBSCRIBE answers once per subscription held when Redis ran it,
        // i.e. now that every earlier confirmation has been counted.
        if let Some(Slot::Confirm {
            kind,
            left: left @ None,
            ..
        }) = self.pending.front_mut()
        {
            let held = match kind {
                SubKind::Channel => self.subs.channels.len(),
                SubKind::Pattern => self.subs.patterns.len(),
                SubKind::Shard => self.subs.shard.len(),
            };
            *left = Some(held.max(1));
        }
        let head_confirms = matches!(self.pending.front(), Some(Slot::Confirm { .. }));
        match reply::classify(&frame, self.subs.any() || head_confirms) {
            Kind::Message => self
                .out
                .extend_from_slice(&reply::strip_push(&frame, &prefix)),
            Kind::Confirmation {
                kind, subscribe, ..
            } => {
                self.track_subscription(kind, subscribe, reply::confirmation_channel(&frame));
                let mute = match self.pending.front_mut() {
                    Some(Slot::Confirm { left, mute, .. }) => {
                        let m = *mute;
                        let l = left.get_or_insert(1);
                        *l = l.saturating_sub(1);
                        if *l == 0 {
                            self.answered();
                        }
                        m
                    }
                    // Redis may also unsubscribe on its own (e.g. a shard channel moving).
                    _ => false,
                };
                if !mute {
                    self.out
                        .extend_from_slice(&reply::strip_push(&frame, &prefix));
                }
            }
            Kind::Reply => match self.answered() {
                Some(Slot::Reply {
                    shape, mute, meta, ..
                }) => {
                    if let Some(meta) = meta {
                        let (outcome, hit) = if frame.is_error() {
                            (Outcome::Error, None)
                        } else {
                            (Outcome::Ok, meta.read.then(|| reply::found(&frame)))
                        };
                        self.tally.done(&meta, outcome, hit, self.clock);
                    }
                    if !mute {
                        self.out
                            .extend_from_slice(&reply::strip(&frame, &shape, &prefix));
                    }
                }
                // An error instead of confirmations (e.g. wrong arity): one reply.
                Some(Slot::Confirm { mute, .. }) => {
                    if !mute {
                        self.out.extend_from_slice(&frame.raw);
                    }
                }
                Some(Slot::Internal) => {}
                Some(Slot::Ready(_)) => unreachable!("ready slots are delivered first"),
                None => {
                    tracing::warn!("Redis sent a reply nobody asked for; dropping the connection");
                    self.fail_upstream(UpstreamError::Protocol("unexpected reply".into()));
                }
            },
        }
    }

    fn track_subscription(&mut self, kind: SubKind, subscribe: bool, channel: Option<Bytes>) {
        let Some(channel) = channel else { return };
        let changed = if subscribe {
            self.subs.set(kind).insert(channel.clone())
        } else {
            self.subs.set(kind).remove(&channel)
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
        st.sub = self.subs.channels.len();
        st.psub = self.subs.patterns.len();
        st.ssub = self.subs.shard.len();
    }

    fn prefix(&self) -> Bytes {
        self.tenant
            .as_ref()
            .map(|t| t.prefix.clone())
            .unwrap_or_default()
    }

    /// The instant the head request times out, if it is waiting on Redis and may not block.
    fn deadline(&self) -> Option<Instant> {
        if self.out.len() >= OUT_LIMIT {
            // Not reading Redis while the client catches up: not Redis' delay.
            return None;
        }
        match self.pending.front()? {
            Slot::Reply { blocking: true, .. } | Slot::Ready(_) => None,
            _ => Some(self.progress + self.ctx.upstream.command_timeout()),
        }
    }

    /// Does Redis hold state for this connection that a new connection would not have?
    fn has_connection_state(&self) -> bool {
        self.multi.is_some() || self.watching || self.tracking || self.subs.any()
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
        for slot in self.pending.iter() {
            if let Slot::Reply { meta: Some(m), .. } = slot {
                self.tally.done(m, Outcome::Error, None, now);
            }
        }
        self.settle_unanswered();
        for slot in self.pending.iter_mut() {
            match slot {
                Slot::Reply { mute: false, .. } | Slot::Confirm { mute: false, .. } => {
                    *slot = Slot::Ready(reply.clone())
                }
                Slot::Ready(_) => {}
                _ => *slot = Slot::Ready(Bytes::new()),
            }
        }
        self.awaiting = 0;
        self.to_up.clear();
        self.to_up_count = 0;
        self.sink.generation += 1;
        if let Some(p) = self.pinned.take() {
            p.close();
        }
        if self.has_connection_state() {
            self.closing = true;
        }
        self.reset_connection_state();
    }

    /// Forgets everything Redis held for this client's connection.
    pub(crate) fn reset_connection_state(&mut self) {
        self.me
            .upstream_id
            .store(0, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = &self.tenant {
            for p in self.subs.patterns.drain() {
                self.ctx.clients.pattern_removed(&t.id, p);
            }
        }
        self.subs = Subscriptions::default();
        self.end_multi();
        // Before the tenant can change (RESET, AUTH): its writes settle with its ledger.
        self.settle();
        self.watching = false;
        self.tracking = false;
        self.no_evict = false;
        let mut st = self.me.state.lock().unwrap();
        (st.sub, st.psub, st.ssub, st.multi) = (0, 0, 0, -1);
    }

    /// Gives the session's figures to its tenant (once per pass of the loop).
    fn hand_over_tally(&mut self) {
        if let Some(t) = &self.tenant {
            if !self.tally.is_empty() {
                t.stats.absorb(&mut self.tally);
            }
        }
    }

    /// Notes how the current command ended (refusals and respite's own answers).
    fn count(&mut self, outcome: Outcome, hit: Option<bool>) {
        if self.tenant.is_none() || !self.ctx.metrics {
            return;
        }
        let meta = self.current.take().unwrap_or(Meta {
            name: b"unknown",
            family: "other",
            read: false,
            at: self.read_at,
        });
        self.tally.done(&meta, outcome, hit, Instant::now());
    }

    /// The outcome of the answer respite just queued.
    fn last_outcome(&self) -> Outcome {
        match self.pending.back() {
            Some(Slot::Ready(b)) if b.first() == Some(&b'-') => Outcome::Error,
            _ => Outcome::Ok,
        }
    }

    pub(crate) fn set_tenant(&mut self, tenant: Arc<Tenant>) {
        self.hand_over_tally();
        tracing::Span::current().record("tenant", tenant.id.as_str());
        let mut state = self.me.state.lock().unwrap();
        if state.tenant.as_ref() != Some(&tenant.id) {
            // A connection keeps its number while it stays with one tenant.
            self.me
                .shown_id
                .store(tenant.number_client(), std::sync::atomic::Ordering::Relaxed);
            state.tenant = Some(tenant.id.clone());
        }
        drop(state);
        self.tenant = Some(tenant);
    }

    /// Waits until every request sent to Redis has its reply, so that respite can act on the
    /// connection itself (switch tenant, change protocol, pin, run a tenant-wide scan) in
    /// order.
    pub(crate) async fn drain(&mut self) -> Result<(), End> {
        loop {
            self.flush_upstream().await;
            self.deliver();
            if self.awaiting == 0 {
                return Ok(());
            }
            let deadline = self.deadline();
            let up = &mut self.pinned;
            let event = tokio::select! {
                _ = self.me.kill.cancelled() => Event::Killed,
                n = read_upstream(up), if up.is_some() => Event::UpstreamRead(n),
                r = self.replies.recv() => Event::SharedReply(r),
                _ = sleep_until(deadline), if deadline.is_some() => Event::Timeout,
            };
            match event {
                Event::UpstreamRead(Ok(n)) if n > 0 => {}
                Event::UpstreamRead(_) => self.fail_upstream(UpstreamError::Closed),
                Event::SharedReply(r) => self.take_reply(r),
                Event::Timeout => self.fail_upstream(UpstreamError::Timeout(
                    self.ctx.upstream.command_timeout_ms(),
                )),
                _ => return Err(End::Killed),
            }
        }
    }

    /// Runs one of respite's own requests (after a drain) and returns Redis' reply.
    pub(crate) async fn call(&mut self, args: &[&[u8]]) -> Result<Frame, UpstreamError> {
        let mut replies = self.call_many(&[args]).await?;
        Ok(replies.pop().expect("one reply per request"))
    }

    /// Runs several of respite's own requests, pipelined, on the session's connection
    /// (pinned or shared) after a drain, and returns their replies in order. Pub/sub
    /// messages that arrive meanwhile on a pinned connection go on to the client.
    pub(crate) async fn call_many(
        &mut self,
        requests: &[&[&[u8]]],
    ) -> Result<Vec<Frame>, UpstreamError> {
        let mut data = BytesMut::new();
        for r in requests {
            encode_request(&mut data, r.iter().copied());
        }
        let n = requests.len();
        let timeout = self.ctx.upstream.command_timeout();
        let result = match self.pinned.as_mut() {
            Some(p) => {
                let pubsub = self.subs.any();
                let prefix = self
                    .tenant
                    .as_ref()
                    .map(|t| t.prefix.clone())
                    .unwrap_or_default();
                let up = &mut p.conn;
                let out = &mut self.out;
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
                self.ctx
                    .upstream
                    .shared(self.protocol, self.me.id)
                    .submit(shared::Submit {
                        data: data.freeze(),
                        count: n,
                        to: self.sink.clone(),
                    });
                let generation = self.sink.generation;
                let replies = &mut self.replies;
                let exchange = async {
                    let mut frames = Vec::with_capacity(n);
                    while frames.len() < n {
                        let r = replies.recv().await.ok_or(UpstreamError::Closed)?;
                        if r.generation == generation {
                            frames.push(r.result?);
                        }
                    }
                    Ok(frames)
                };
                tokio::time::timeout(timeout, exchange).await
            }
        };
        let result = result.unwrap_or_else(|_| {
            Err(UpstreamError::Timeout(
                self.ctx.upstream.command_timeout_ms(),
            ))
        });
        if let Err(e) = &result {
            self.fail_upstream(e.clone());
        }
        result
    }

    /// Gives back the pinned connection (after a drain) so the next command starts clean.
    pub(crate) fn drop_upstream(&mut self) {
        self.unpin();
        self.reset_connection_state();
    }

    /// The authority that decides logins.
    pub(crate) fn authenticator(&self) -> &Authenticator {
        &self.ctx.auth
    }
}

fn is_upstream_slot(s: &Slot) -> bool {
    !matches!(s, Slot::Ready(_))
}

async fn read_upstream(up: &mut Option<Pinned>) -> std::io::Result<usize> {
    match up {
        Some(p) => p.conn.read_more().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
