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
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use bytes::Buf;
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tracing::Instrument;

use crate::auth::Authenticator;
use crate::clients::{Client, Switch};
use crate::command::{self, Unknown};
use crate::context::{Context, Waiting};
use crate::error::{Error, UpstreamError};
mod decide;
mod inbound;
mod keyspace;
mod local;
mod outbound;
mod routing;
mod scripting;

use crate::metrics::{Meta, Outcome, Tally};
use crate::namespace::reply::{self, ExecItem, Kind, Shape, SubKind};
use crate::namespace::{self as rewrite, Expect, Forward};
use crate::policy;
use crate::quota::{self, WriteCost, Written};
use crate::script::RunGuard;
use crate::tenant::{Seat, Tenant};
use crate::transport::{ClientReader, ClientStream, ClientWriter};
use crate::upstream::{cluster, OutputMeter, Pinned, Replies, Reply, Sink};
use crate::wire::Frame;
use crate::wire::{encode_marked, encode_request, parse_request_reusing, Request};
use local::Local;
use scripting::{ScriptCmd, ScriptSend};

/// Requests a connection may have in flight before respite stops reading from it.
pub const MAX_IN_FLIGHT: usize = 1024;
/// Reply bytes waiting for the client past which respite stops reading more requests.
pub const OUT_LIMIT: usize = 4 * 1024 * 1024;
/// Requests a session hands its shared connection at a time: a deep pipeline goes out in
/// turns of this many, between which the other sessions' requests go, so that it does not
/// starve them (Redis answers a connection's requests in the order they were written).
pub const FAIR_SHARE: usize = 64;
/// Requests a connection takes from its tenant's rate at once (`Rates::admit`).
const OPS_AT_ONCE: u32 = 16;
/// How long CLIENT LIST's `rbp` remembers a peak of the output buffer (Redis' 5 seconds).
const PEAK_WINDOW: std::time::Duration = std::time::Duration::from_secs(5);

/// Answers a connection respite will not serve with `error` (as Redis answers one past
/// `maxclients`, for instance), and closes it.
async fn refuse_connection(client: ClientStream, error: Error) {
    let (_, mut writer) = client.split();
    let work = async {
        let _ = writer.send_all(&error.to_resp()).await;
        writer.close().await;
    };
    // A client that does not read gets no more of respite's time than a login would.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), work).await;
}

/// The tenant a connection is logged in as from the start: the one its client certificate
/// names (`server.tls.tenant_from_cert`), else the default tenant (sidecar mode), else none.
/// `Err`: the certificate names no tenant.
fn starting_tenant(
    ctx: &Context,
    client: &ClientStream,
) -> Result<Option<(Arc<Tenant>, bool)>, Vec<String>> {
    if ctx.tls.as_ref().is_some_and(|t| t.tenant_from_cert) {
        if let ClientStream::Tls(_) = client {
            let names = client.certificate_names();
            return match names.iter().find_map(|n| ctx.auth.tenant(n)) {
                Some(t) => Ok(Some((t, false))),
                None => Err(names),
            };
        }
    }
    Ok(ctx.auth.default_tenant().map(|t| (t, true)))
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
        /// A write's charge waits in `Outbound::writes`: settled (its keys measured) once
        /// the reply is in. Kept apart, it does not make every slot twice as big.
        write: bool,
        /// The command, for the tenant's figures.
        meta: Option<Meta>,
        /// A tenant script (or EXEC of a transaction with scripts) in flight, held until its
        /// reply is in: the warden kills it past the tenant's `script_timeout_ms`. Boxed:
        /// most slots have none, and a slot fits one cache line.
        _script: Option<Box<RunGuard>>,
    },
    /// (Un)subscribe confirmations; `left` is resolved when the slot reaches the head.
    /// `mute` (CLIENT REPLY OFF/SKIP) silences an error in their place, never the
    /// confirmations themselves (pushes, which Redis sends regardless).
    Confirm {
        kind: SubKind,
        left: Option<usize>,
        mute: bool,
    },
    /// A reply to respite's own request (e.g. DISCARD for an aborted EXEC): dropped.
    Internal,
    /// The reply to respite's own login after a tenant's script: dropped, but an error
    /// means the connection is still logged in as the tenant's user.
    Relogin,
    /// The reply to the login as the tenant's ACL user before its script: dropped, but an
    /// error means the user is gone from Redis (a restart, ACL changes): it is set up again
    /// for the next script (this one refuses to run unconfined).
    ScriptLogin,
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

    /// Subscriptions of every kind.
    pub(crate) fn count(&self) -> usize {
        self.channels.len() + self.patterns.len() + self.shard.len()
    }

    /// How many of `names` (Redis' names) are not subscribed to yet.
    pub(crate) fn new_ones(&self, kind: SubKind, names: impl Iterator<Item = Bytes>) -> usize {
        let set = match kind {
            SubKind::Channel => &self.channels,
            SubKind::Pattern => &self.patterns,
            SubKind::Shard => &self.shard,
        };
        names
            .collect::<HashSet<_>>()
            .iter()
            .filter(|n| !set.contains(*n))
            .count()
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
    /// Scripts are queued: EXEC runs them, within the longest of their timeouts.
    pub script_timeout: Option<std::time::Duration>,
    /// A SELECT is queued: the database before it. The commands queued after it already
    /// name the new database's keys; it is taken back if the transaction does not run.
    pub db_before: Option<u32>,
    /// Cluster mode: MULTI is answered by respite and sent with the first command queued
    /// that has keys, to the node of their slot (`true` until then); the commands without
    /// keys queued before it wait in `held` (encoded, one each), answered +QUEUED by
    /// respite.
    pub begin_pending: bool,
    pub held: Vec<Bytes>,
    /// Cluster mode: the slot of the transaction's keys (of its WATCH, or its first keyed
    /// command); a command with keys of another slot is refused with CROSSSLOT.
    pub slot: Option<u16>,
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
    /// EVAL, EVALSHA and SCRIPT: run as `scripting` says.
    Script(ScriptCmd, Forward, Option<WriteCost>),
}

/// [`Session::prefix_for`], borrowed from the session's fields (so that the request can be
/// encoded into another of them without a copy).
fn prefix_of<'a>(
    tenant: &'a Option<Arc<Tenant>>,
    state: &'a ConnectionState,
    channels: bool,
) -> &'a [u8] {
    match (tenant, channels || state.db == 0) {
        (None, _) => b"",
        (Some(t), true) => &t.prefix,
        (Some(_), false) => &state.db_prefix,
    }
}

/// Why a session ended.
#[derive(Debug)]
pub(crate) enum End {
    ClientGone,
    Killed,
    /// No AUTH within `server.auth_timeout_ms`.
    NoLogin,
    /// Its unread replies passed `client_output_limit_bytes` or its tenant's
    /// `output_limit_bytes`.
    OutputLimit,
}

/// What woke the session up.
enum Event {
    ClientRead(std::io::Result<usize>),
    ClientWrote(std::io::Result<usize>),
    UpstreamRead(std::io::Result<usize>),
    SharedReply(Reply),
    Timeout,
    /// CLIENT KILL and the like, seen while draining (`outbound::drain`).
    Killed,
    /// The kill or the shutdown token fired: the top of the loop acts on it.
    Cancelled,
}

/// One client connection: the loop in this file, the stages in `decide`, requests on their
/// way to Redis in `outbound`, replies on their way back in `inbound`, respite's own
/// commands in `local` and `keyspace`. Owned by its task (`serve`).
pub struct Session {
    pub(crate) ctx: Arc<Context>,
    /// This connection in the registry behind CLIENT LIST / KILL.
    pub(crate) me: Arc<Client>,
    pub(crate) tenant: Option<Arc<Tenant>>,
    /// The authenticator's generation `tenant` is from: a reload moves it on, and the
    /// session takes its tenant's new settings.
    tenant_generation: u64,
    /// Stops the watch that closes the connection when its login token expires.
    pub(crate) expiry: Option<tokio_util::sync::DropGuard>,
    /// This connection's place among its tenant's `max_clients`.
    seat: Option<Seat>,
    /// Until it authenticates: its place among the unauthenticated, and when it is closed.
    login: Option<(Waiting, Instant)>,
    /// The quota allowance this session holds, and the writes Redis has answered in this
    /// batch: settled together with the tenant's ledger at the end of `deliver`.
    account: quota::Account,
    pub(crate) client: ClientSide,
    pub(crate) up: Outbound,
    pub(crate) state: ConnectionState,
    figures: Figures,
    publishing: Publishing,
    /// Cluster mode: the slot map when this connection's last SCAN iteration began (see
    /// `keyspace::cluster_scan`).
    scan_began: Option<Arc<cluster::SlotMap>>,
    /// The tenant the client certificate named (`tenant_from_cert`): RESET logs in as it
    /// again (and as no other, the default tenant included, once it is gone), as it does
    /// as the default tenant in sidecar mode.
    pub(crate) certified: Option<String>,
}

/// The client's socket and its buffers.
pub(crate) struct ClientSide {
    reader: ClientReader,
    writer: ClientWriter,
    inbuf: BytesMut,
    pub(crate) out: BytesMut,
    /// `inbuf` holds whole requests not yet handled (a cap was reached): read no more until
    /// they are, or the buffer would grow without bound.
    backlog: bool,
    /// `inbuf` up to here holds no whole request: no request can end before a `\n` comes
    /// after it, so the parser is not run again until one does (a client dripping a long
    /// header a byte at a time would otherwise have it rescanned from the start each time).
    unfinished: usize,
    /// The argument vector of the last request sent on, emptied: the next request's
    /// arguments go in it, rather than in a new allocation for every request.
    pub(crate) spare_args: Vec<Bytes>,
    pub(crate) closing: bool,
    /// The tenant is past its rate (`rate_limit = "delay"`): no request is read or handled
    /// before this, `held` (parsed already) first.
    held_until: Option<Instant>,
    held: Option<Request>,
    /// Bytes read and written since they were last charged to the tenant's byte rate
    /// (charged once per request handled, not per read or write).
    unbilled: usize,
    /// Requests this connection has taken from its tenant's `ops_per_second` and not sent.
    credit: u32,
    /// The most `out` has held since `peak_since` (CLIENT LIST's `rbp`).
    out_peak: usize,
    peak_since: Instant,
}

/// What a tenant's rates say of its next request.
enum Rated {
    Go,
    Refused,
    Held,
}

/// Requests on their way to Redis and the replies they wait for, in order.
pub(crate) struct Outbound {
    /// The pinned connection, while Redis holds state for this client; otherwise requests
    /// go over the shared connection this session is assigned to.
    pub(crate) pinned: Option<Pinned>,
    /// Requests encoded for Redis, not yet written (pinned) or submitted (shared).
    to_up: BytesMut,
    to_up_count: usize,
    /// Replies from the shared connections.
    replies: Replies,
    sink: Sink,
    pending: VecDeque<Slot>,
    /// The charges of the writes in `pending` (its slots with `write`), in their order.
    writes: VecDeque<Written>,
    /// How many of `pending` wait on Redis (not `Ready`).
    awaiting: usize,
    /// When Redis last made progress on this connection (for the head-of-line timeout).
    progress: Instant,
    /// Reply bytes taken from the inbox in this pass, told to the meter once at its end.
    taken: usize,
    /// The head-of-line timer. It is re-armed lazily: it may fire early (then it is re-armed
    /// for the real deadline), never late, and costs no timer registration per request.
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    timer_at: Option<Instant>,
    /// The last request encoded is respite's own login after a tenant's script: the next
    /// script of the same tenant in the same batch goes inside the same AUTH pair.
    bracket: Option<Bracket>,
    /// Cluster mode: where each request in `to_up` goes, up to `plan_end` bytes of it, and
    /// the target of the request being encoded.
    plan: Vec<cluster::Part>,
    plan_end: usize,
    target: cluster::Target,
    /// The request being encoded is a tenant's script (or a login around one): the cluster
    /// flight never follows a redirect in its reply (see `cluster::Part::script`).
    script: bool,
    /// Cluster mode: this session's requests in flight to the cluster's nodes, put back in
    /// its order (see `upstream::cluster::Flight`).
    flight: Option<Box<cluster::Flight>>,
    /// Cluster mode: a transaction of commands without keys only, to begin at its EXEC on
    /// any node (see `routing::route_in_cluster`).
    begin_at_exec: Option<Vec<Bytes>>,
    /// Cluster mode: the blocking command waiting on the pinned connection, and whether it
    /// is to be sent again to another node (see `routing::resend_blocked`).
    blocked: Option<Box<routing::Blocked>>,
    reblock: Option<routing::Reblock>,
    /// Cluster mode: the requests in `to_up` (and in flight) go over the shared connections
    /// although a pinned one is held: they are for another node (see
    /// `routing::keep_to_node`).
    detour: bool,
}

/// Where the login after a tenant's script starts and ends in `to_up`, and for whom.
pub(crate) struct Bracket {
    pub(crate) at: usize,
    pub(crate) end: usize,
    pub(crate) user: Bytes,
    pub(crate) queued: bool,
}

/// What the client has set on its connection, in respite or in Redis.
pub(crate) struct ConnectionState {
    /// The RESP version (2 or 3), from HELLO.
    pub(crate) protocol: u8,
    pub(crate) multi: Option<Multi>,
    pub(crate) subs: Subscriptions,
    pub(crate) reply_mode: ReplyMode,
    pub(crate) watching: bool,
    /// Cluster mode: the slot of the keys watched.
    pub(crate) watch_slot: Option<u16>,
    pub(crate) tracking: bool,
    /// The connections its tracking's REDIRECTs named, as (the tenant's id, Redis' id of
    /// its upstream connection), the latest last: what CLIENT GETREDIR and TRACKINGINFO
    /// show Redis' answer as (Redis' current redirect is one of them, whichever it took).
    pub(crate) redirects: Vec<(i64, i64)>,
    /// Its pinned connection subscribed to `__redis__:invalidate`: another connection's
    /// REDIRECT may name it, so it is closed, never handed to another session, when let go.
    pub(crate) invalidation_target: bool,
    pub(crate) no_evict: bool,
    /// MONITOR (an admin tenant): Redis streams every command it runs to this connection,
    /// pinned until it closes or RESET.
    pub(crate) monitoring: bool,
    /// The database SELECT picked (0 to the tenant's `databases - 1`), and its keys'
    /// prefix beyond database 0 (`Tenant::db_prefix`).
    pub(crate) db: u32,
    pub(crate) db_prefix: Bytes,
    /// An EXEC whose transaction SELECTed is in flight: the database before it, taken
    /// back if Redis does not run the transaction.
    pub(crate) db_before_exec: Option<u32>,
}

/// This session's figures since they were last handed to its tenant.
struct Figures {
    tally: Tally,
    /// When the client's bytes were last read: the start of each request's latency.
    read_at: Instant,
    /// The command being handled.
    current: Option<Meta>,
    /// Read once per batch of replies: when they were ready (for latencies).
    clock: Instant,
    /// The last command handled, published to CLIENT LIST once per batch (not per request).
    noted: Option<(&'static [u8], Option<&'static [u8]>)>,
    /// Reads of shared keys, for the audit trail (handed over with the tally).
    shared_reads: crate::audit::SharedReads,
}

/// A publisher's writes to shared keys, dropped from the shared cache.
struct Publishing {
    /// Shared keys this connection wrote whose replies are not all in: dropped from the
    /// shared cache when written and again once Redis has answered.
    published: Vec<Bytes>,
    /// `published[..unpublished]` have been dropped from the cache once already.
    unpublished: usize,
    /// The last shared key this session read (see `shared::Memo`).
    memo: crate::market::Memo,
}

/// Serves one client connection until it closes, is killed, or the server shuts down.
pub async fn serve(ctx: Arc<Context>, client: ClientStream, shutdown: Switch) {
    let tcp = client.tcp();
    let (Ok(peer), Ok(local)) = (tcp.peer_addr(), tcp.local_addr()) else {
        return;
    };
    let _ = tcp.set_nodelay(true);
    // The tenant its certificate names, or in sidecar mode the default tenant: the
    // connection is that tenant's from the start, if it has room.
    let seat = match starting_tenant(&ctx, &client) {
        Ok(Some((t, by_default))) => match t.seat() {
            Some(seat) => Some((t.clone(), seat, by_default)),
            None => {
                tracing::warn!(%peer, tenant = %t.id, "the tenant's max_clients reached; refusing connection");
                return refuse_connection(client, Error::MaxClients).await;
            }
        },
        Ok(None) => None,
        Err(names) => {
            tracing::warn!(%peer, ?names, "the client certificate names no tenant; refusing connection");
            ctx.audit.auth_failed(crate::audit::AuthFailed {
                via: "TLS",
                tenant: None,
                peer,
                reason: "certificate_names_no_tenant",
                detail: None,
            });
            return refuse_connection(client, Error::WrongPass).await;
        }
    };
    let me = ctx.clients.register(peer, local);
    // Until it logs in: a place among the connections waiting to (the oldest goes if there
    // is no room), and a deadline.
    let login = match &seat {
        Some(_) => None,
        None => Some((
            ctx.waiting(me.kill.clone()),
            Instant::now() + ctx.unauthenticated.timeout,
        )),
    };
    let certified = match &seat {
        Some((t, _, false)) => Some(t.id.clone()),
        _ => None,
    };
    let (reader, writer) = client.split();
    let span = tracing::info_span!("conn", %peer, id = me.id, tenant = tracing::field::Empty);
    let replies = Replies::new();
    let mut s = Session {
        ctx: ctx.clone(),
        me: me.clone(),
        tenant: None,
        tenant_generation: ctx.auth.generation(),
        expiry: None,
        seat: None,
        login,
        account: quota::Account::default(),
        client: ClientSide {
            reader,
            writer,
            inbuf: BytesMut::with_capacity(16 * 1024),
            out: BytesMut::with_capacity(16 * 1024),
            backlog: false,
            unfinished: 0,
            spare_args: Vec::new(),
            closing: false,
            held_until: None,
            held: None,
            unbilled: 0,
            credit: 0,
            out_peak: 0,
            peak_since: Instant::now(),
        },
        up: Outbound {
            pinned: None,
            to_up: BytesMut::with_capacity(16 * 1024),
            to_up_count: 0,
            sink: Sink {
                inbox: replies.inbox(),
                generation: 0,
                tag: 0,
                meter: Arc::new(OutputMeter::new(
                    ctx.client_output_limit,
                    None,
                    me.kill.clone(),
                )),
            },
            replies,
            pending: VecDeque::new(),
            writes: VecDeque::new(),
            awaiting: 0,
            progress: Instant::now(),
            taken: 0,
            timer: Box::pin(tokio::time::sleep(std::time::Duration::ZERO)),
            timer_at: None,
            bracket: None,
            plan: Vec::new(),
            plan_end: 0,
            target: cluster::Target::Any,
            script: false,
            blocked: None,
            reblock: None,
            detour: false,
            begin_at_exec: None,
            flight: None,
        },
        state: ConnectionState {
            protocol: 2,
            multi: None,
            subs: Subscriptions::default(),
            reply_mode: ReplyMode::On,
            watching: false,
            watch_slot: None,
            tracking: false,
            redirects: Vec::new(),
            invalidation_target: false,
            no_evict: false,
            monitoring: false,
            db: 0,
            db_prefix: Bytes::new(),
            db_before_exec: None,
        },
        figures: Figures {
            tally: Tally::default(),
            read_at: Instant::now(),
            current: None,
            clock: Instant::now(),
            noted: None,
            shared_reads: Default::default(),
        },
        publishing: Publishing {
            published: Vec::new(),
            unpublished: 0,
            memo: None,
        },
        scan_began: None,
        certified,
    };
    if let Some(topology) = &ctx.upstream.cluster {
        let flight =
            crate::upstream::cluster::Flight::new(topology.clone(), s.up.sink.clone(), me.id);
        s.up.flight = Some(Box::new(flight));
    }
    if let Some((t, seat, by_default)) = seat {
        s.set_tenant(t, seat);
        me.state.lock().unwrap().by_default = by_default;
    }
    let ended = s.run(shutdown).instrument(span.clone()).await;
    span.in_scope(|| tracing::debug!(?ended, "connection closed"));
    if !matches!(ended, Err(End::ClientGone)) {
        // TLS: what it still holds, then its close_notify, within a bound.
        let writer = &mut s.client.writer;
        let last = async {
            if writer.send_all(&[]).await.is_ok() {
                writer.close().await;
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), last).await;
    }
    s.unpin();
    s.settle_unanswered();
    s.reset_connection_state();
    s.hand_over_tally();
    ctx.clients.unregister(me.id);
}

/// A request's argument vector up to this many places is kept for the next request; a
/// larger one (an MSET of thousands) is let go.
const SPARE_ARGS: usize = 16;

impl ClientSide {
    /// Keeps a used argument vector for the next request's parse: no allocation per request.
    pub(super) fn spare(&mut self, mut args: Vec<Bytes>) {
        if args.capacity() <= SPARE_ARGS {
            args.clear();
            self.spare_args = args;
        }
    }

    /// Whether a request may have ended in what came since the parser last found none whole:
    /// a `\n` among the new bytes. Past `MAX_INLINE` the parser runs anyway, as its limits
    /// on header and inline lines need no newline to refuse one.
    fn ended_since_parsed(&mut self) -> bool {
        let len = self.inbuf.len();
        if self.unfinished == 0 || len > crate::wire::MAX_INLINE {
            // A stale mark would hide the whole requests left once the buffer shrinks.
            self.unfinished = 0;
            return true;
        }
        let from = self.unfinished.min(len);
        let ended = self.inbuf[from..].contains(&b'\n');
        self.unfinished = if ended { 0 } else { len };
        ended
    }
}

impl Session {
    async fn run(&mut self, shutdown: Switch) -> Result<(), End> {
        // Made once: a cancellation future made anew for every wait registers with its
        // token again each time, in every pass of the loop.
        let killed = self.me.kill.clone().cancelled_owned();
        let stopping = shutdown.clone();
        let shutdown = shutdown.cancelled_owned();
        tokio::pin!(killed, shutdown);
        // The two cancellations are polled once, here: that registers the session's task
        // with them for as long as these futures live, so a kill or a shutdown wakes it
        // whatever it waits on, and the checks at the top of the loop see it. Polled in
        // every wait instead, each took a lock each time (about 700 instructions per
        // request for the two, callgrind).
        std::future::poll_fn(|cx| {
            use std::future::Future;
            let _ = killed.as_mut().poll(cx);
            let _ = shutdown.as_mut().poll(cx);
            std::task::Poll::Ready(())
        })
        .await;
        loop {
            // Acted on here: `wait` only ends on them (its first branch looks at the tokens).
            if self.me.kill.is_cancelled() {
                return Err(self.killed());
            }
            if stopping.is_cancelled() {
                self.client.closing = true;
            }
            if self.tenant_generation != self.ctx.auth.generation() {
                self.retake_tenant();
            }
            // Replies read during the last wait free their slots before new requests count
            // against MAX_IN_FLIGHT.
            self.deliver();
            if !self.publishing.published.is_empty() && self.up.awaiting == 0 {
                // The shared writes are done: drop what a reader may have cached meanwhile.
                self.unpublish().await;
            }
            if self.up.reblock.is_some() {
                self.reblock().await?;
            }
            self.handle_buffered().await?;
            self.publish_noted();
            self.flush_upstream().await;
            self.deliver();
            self.client.out_peak = self.client.out_peak.max(self.client.out.len());
            self.write_client_now()?;
            self.publish_buffers(0);
            if self.client.closing
                && self.up.pending.is_empty()
                && self.client.out.is_empty()
                && !self.client.writer.unsent()
            {
                return Ok(());
            }
            match self.wait(&stopping).await {
                Event::ClientRead(Ok(n)) if n > 0 => {
                    self.figures.read_at = Instant::now();
                    self.figures.tally.bytes_in += n as u64;
                    self.client.unbilled += n;
                }
                Event::ClientRead(_) => return Err(End::ClientGone),
                // 0: TLS sent what it held.
                Event::ClientWrote(Ok(n)) => self.wrote(n),
                Event::ClientWrote(Err(_)) => return Err(End::ClientGone),
                Event::UpstreamRead(Ok(n)) if n > 0 => {}
                Event::UpstreamRead(_) => {
                    if !self.reblock_on_close() {
                        self.fail_upstream(UpstreamError::Closed)
                    }
                }
                Event::SharedReply(r) => {
                    self.figures.clock = Instant::now();
                    self.take_reply(r)
                }
                Event::Timeout => {
                    self.up.timer_at = None;
                    self.retry_due();
                    if self
                        .login
                        .as_ref()
                        .is_some_and(|(_, by)| *by <= Instant::now())
                    {
                        return Err(End::NoLogin);
                    }
                    if self.deadline().is_some_and(|d| d <= Instant::now()) {
                        self.fail_upstream(self.ctx.upstream.timed_out());
                    }
                }
                Event::Killed => return Err(self.killed()),
                Event::Cancelled => {}
            }
        }
    }

    /// Why the session's kill token fired: CLIENT KILL, or its unread replies passed a
    /// bound (logged, and counted for its tenant).
    pub(super) fn killed(&self) -> End {
        let meter = &self.up.sink.meter;
        if !meter.exceeded() {
            return End::Killed;
        }
        let tenant = self.tenant.as_ref().map_or("", |t| t.id.as_str());
        tracing::warn!(
            tenant,
            unread_bytes = meter.unread(),
            "closing a client past its output limit (client_output_limit_bytes or the \
             tenant's output_limit_bytes)"
        );
        if let Some(t) = &self.tenant {
            t.live
                .limited
                .closed_for_output
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        End::OutputLimit
    }

    /// A meter for the session's replies from now on (a new tenant, or a new generation of
    /// replies after the old ones were given up on).
    /// Gives up on the requests in flight: their late replies (of the old generation) are
    /// ignored, and count on the old meter.
    pub(super) fn new_generation(&mut self) {
        self.up.sink.generation += 1;
        self.new_meter();
        if let Some(f) = self.up.flight.as_mut() {
            f.reset(&self.up.sink);
        }
    }

    pub(super) fn new_meter(&mut self) {
        // What the old meter counted as taken goes to it, not to the new one (and is not
        // judged against its bounds again: the old replies are left behind).
        self.up.sink.meter.taken(std::mem::take(&mut self.up.taken));
        let total = self.tenant.as_ref().and_then(|t| t.output.clone());
        self.up.sink.meter = Arc::new(OutputMeter::new(
            self.ctx.client_output_limit,
            total,
            self.me.kill.clone(),
        ));
    }

    /// Arms the head-of-line timer for `deadline` unless it already fires no later.
    fn arm_timer(&mut self, deadline: Option<Instant>) -> bool {
        let Some(d) = deadline else {
            return false;
        };
        if self.up.timer_at.is_none_or(|t| t > d) {
            self.up.timer.as_mut().reset(d.into());
            self.up.timer_at = Some(d);
        }
        true
    }

    pub(crate) fn publish_noted(&mut self) {
        // Bytes alone wait for the command they carry (or for the session to have nothing
        // in flight): at pipeline 1, one hand-over per request rather than two. Not on a
        // pinned connection: what it waits on may never answer (BLPOP q 0, subscriptions),
        // and the bytes read and written meanwhile would wait with it.
        let tally = &self.figures.tally;
        if tally.has_commands() || self.up.awaiting == 0 || self.up.pinned.is_some() {
            self.hand_over_tally();
        }
        if let Some(cmd) = self.figures.noted.take() {
            let mut st = self.me.state.lock().unwrap();
            // When its bytes were read: the clock is not read again for this.
            st.last_active = Some(self.figures.read_at);
            st.last_command = Some(cmd);
        }
    }

    /// Shows the connection's buffers to CLIENT LIST; `argv`: the bytes of the arguments
    /// of the command being run.
    ///
    /// The output meter hears first what this pass took from the inbox and what the
    /// output buffer holds: once per pass, not per reply.
    pub(crate) fn publish_buffers(&mut self, argv: usize) {
        let taken = std::mem::take(&mut self.up.taken);
        self.up.sink.meter.settle(taken, self.client.out.len());
        let c = &mut self.client;
        let b = &self.me.buffers;
        // The last reply's time, read already: no clock reading per pass for this.
        let now = self.figures.clock;
        if now.duration_since(c.peak_since) >= PEAK_WINDOW {
            // As Redis' `rbp`: the peak of the last few seconds, not of all time.
            (c.out_peak, c.peak_since) = (c.out.len(), now);
        }
        let waiting = self.up.replies.waiting();
        let waiting_bytes = self.up.sink.meter.queued();
        let held = [
            c.inbuf.capacity(),
            c.out.capacity(),
            self.up.to_up.capacity(),
        ];
        let total = std::mem::size_of::<Session>() + held.iter().sum::<usize>() + waiting_bytes;
        let set = |a: &std::sync::atomic::AtomicUsize, v| a.store(v, Relaxed);
        set(&b.unparsed, c.inbuf.len());
        set(&b.unparsed_room, c.inbuf.capacity() - c.inbuf.len());
        set(&b.argv, argv);
        set(&b.out_size, c.out.capacity());
        set(&b.out_peak, c.out_peak.max(c.out.len()));
        set(&b.out_len, c.out.len());
        set(&b.waiting, waiting);
        set(&b.waiting_bytes, waiting_bytes);
        set(&b.total, total + argv);
        let reading = !c.closing && !c.backlog && c.held_until.is_none();
        b.reading.store(reading, Relaxed);
        b.writing.store(!c.out.is_empty(), Relaxed);
    }

    /// The next event. A kill or a shutdown (`stopping`) wakes the session's task through
    /// the registration `run` made, and a look at the two tokens (no lock) ends the wait.
    /// That registration is the task's own waker: `run` must be polled by its task alone
    /// (not inside a `select!` or a timeout of another waker), or kills would be missed.
    async fn wait(&mut self, stopping: &Switch) -> Event {
        let login_by = self.login.as_ref().map(|(_, by)| *by);
        let retry = self.up.flight.as_ref().and_then(|f| f.next_retry());
        let deadline = [self.deadline(), login_by, self.client.held_until, retry]
            .into_iter()
            .flatten()
            .min();
        let timed = self.arm_timer(deadline);
        let room = self.client.out.len() < OUT_LIMIT;
        let read_client =
            !self.client.closing && !self.client.backlog && self.client.held_until.is_none();
        let up = &mut self.up.pinned;
        let out = &self.client.out;
        let unsent = self.client.writer.unsent();
        let kill = &self.me.kill;
        let closing = self.client.closing;
        let cancelled = std::future::poll_fn(|_| {
            match kill.is_cancelled() || (stopping.is_cancelled() && !closing) {
                true => std::task::Poll::Ready(()),
                false => std::task::Poll::Pending,
            }
        });
        // In order, the commonest first: a poll stops at the first branch ready, so a reply
        // or a request costs no poll of the branches after it (and no random start). The
        // timer goes before the pinned connection's reads, the one source with no bound
        // (MONITOR, a flood of messages), so that a deadline is never starved.
        tokio::select! {
            biased;
            _ = cancelled => Event::Cancelled,
            r = self.up.replies.recv(), if room => Event::SharedReply(r),
            n = self.client.reader.read_buf(&mut self.client.inbuf), if read_client => Event::ClientRead(n),
            _ = self.up.timer.as_mut(), if timed => Event::Timeout,
            n = read_upstream(up), if up.is_some() && room => Event::UpstreamRead(n),
            n = self.client.writer.send(out), if !out.is_empty() || unsent => Event::ClientWrote(n),
        }
    }

    /// Writes as much output as the socket takes without waiting.
    fn write_client_now(&mut self) -> Result<(), End> {
        while !self.client.out.is_empty() {
            match self.client.writer.try_write(&self.client.out) {
                Ok(0) => return Err(End::ClientGone),
                Ok(n) => self.wrote(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => return Err(End::ClientGone),
            }
        }
        Ok(())
    }

    fn wrote(&mut self, n: usize) {
        let was_full = self.client.out.len() >= OUT_LIMIT;
        self.figures.tally.bytes_out += n as u64;
        self.client.unbilled += n;
        self.client.out.advance(n);
        crate::wire::reuse_emptied(&mut self.client.out, 16 * 1024);
        if was_full && self.client.out.len() < OUT_LIMIT {
            // Redis was not read while the client caught up: restart its clock.
            self.up.progress = Instant::now();
        }
    }

    /// Runs every whole request in the input buffer through the pipeline.
    async fn handle_buffered(&mut self) -> Result<(), End> {
        self.client.backlog = false;
        while !self.client.closing {
            if self.up.pending.len() >= MAX_IN_FLIGHT || self.client.out.len() >= OUT_LIMIT {
                self.client.backlog = true;
                break;
            }
            if let Some(until) = self.client.held_until {
                if Instant::now() < until {
                    break;
                }
                self.client.held_until = None;
            }
            let authenticated = self.tenant.is_some();
            if self.client.held.is_none() && !self.client.ended_since_parsed() {
                break;
            }
            let parsed = match self.client.held.take() {
                Some(req) => Ok(Some(req)),
                None => parse_request_reusing(
                    &mut self.client.inbuf,
                    &self.ctx.request_limits(),
                    authenticated,
                    &mut self.client.spare_args,
                ),
            };
            match parsed {
                Ok(Some(req)) => match self.within_rate() {
                    Rated::Go => {
                        self.handle(req).await?;
                        self.take_turns().await;
                    }
                    Rated::Refused => {}
                    Rated::Held => {
                        self.client.held = Some(req);
                        break;
                    }
                },
                Ok(None) => {
                    self.client.unfinished = self.client.inbuf.len();
                    // Once no argument holds on to it (a write's key waits for its reply).
                    crate::wire::reuse_emptied(&mut self.client.inbuf, 16 * 1024);
                    break;
                }
                Err(e) => {
                    // As Redis: answer, then close once earlier replies are out.
                    tracing::debug!(error = %e, "protocol error");
                    self.up
                        .pending
                        .push_back(Slot::Ready(Error::Protocol(e.0).to_resp()));
                    self.client.inbuf.clear();
                    self.client.closing = true;
                }
            }
        }
        Ok(())
    }

    /// Past [`FAIR_SHARE`] requests queued for the shared connection, hands them over and
    /// lets the other runnable sessions hand theirs before queuing more.
    async fn take_turns(&mut self) {
        if self.up.to_up_count >= FAIR_SHARE && self.up.pinned.is_none() {
            self.flush_upstream().await;
            tokio::task::yield_now().await;
        }
    }

    /// The tenant's rates, for the next request: go, refused (answered), or held until the
    /// bucket refills (`rate_limit = "delay"`: nothing more is read meanwhile).
    fn within_rate(&mut self) -> Rated {
        let Some(rates) = self.tenant.as_ref().and_then(|t| t.rates.as_ref()) else {
            return Rated::Go;
        };
        // The time of the read that brought the request: close enough for a bucket, and no
        // clock reading per request.
        let read_at = self.figures.read_at;
        if self.client.unbilled > 0 {
            rates.bytes(std::mem::take(&mut self.client.unbilled), read_at);
        }
        let credit = &mut self.client.credit;
        if rates.admit(read_at, credit, OPS_AT_ONCE).is_ok() {
            return Rated::Go;
        }
        // Past the rate at the read's time: ask again with the clock (a held connection
        // reads nothing, so its last read's time does not move).
        let now = Instant::now();
        let Err(wait) = rates.admit(now, credit, 1) else {
            return Rated::Go;
        };
        match rates.past {
            crate::rate::Past::Delay => {
                rates.throttled_us.fetch_add(
                    wait.as_micros() as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
                self.client.held_until = Some(now + wait);
                Rated::Held
            }
            crate::rate::Past::Refuse => {
                rates
                    .refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let why = rates.refusal(self.tenant.as_ref().map_or("", |t| t.id.as_str()));
                self.refuse(Error::RateLimited(why));
                self.count(Outcome::Refused, None);
                Rated::Refused
            }
        }
    }

    /// The tenant's prefix: its channels', and its keys' in database 0 (what replies are
    /// stripped of, in any database: `namespace::own_prefix`).
    fn prefix(&self) -> Bytes {
        self.tenant
            .as_ref()
            .map(|t| t.prefix.clone())
            .unwrap_or_default()
    }

    /// The prefix of the keys of the database the connection has selected.
    pub(crate) fn keys_prefix(&self) -> Bytes {
        match self.state.db {
            0 => self.prefix(),
            _ => self.state.db_prefix.clone(),
        }
    }

    /// The prefix a request's marked arguments go behind: its channels' or its keys'.
    pub(crate) fn prefix_for(&self, fwd_channels: bool) -> Bytes {
        match fwd_channels {
            true => self.prefix(),
            false => self.keys_prefix(),
        }
    }

    /// The length of [`Session::prefix_for`].
    pub(crate) fn prefix_len(&self, fwd_channels: bool) -> usize {
        prefix_of(&self.tenant, &self.state, fwd_channels).len()
    }

    /// Back to database `db`, which a SELECT that did not run replaced; a reload may have
    /// taken it away meanwhile (`databases` lowered): then the connection closes, as
    /// `retake_tenant` closes those in a database that is gone.
    pub(crate) fn select_back(&mut self, db: u32) {
        match self.tenant.as_ref().is_some_and(|t| db >= t.databases) {
            true => self.me.kill.cancel(),
            false => self.select_db(db),
        }
    }

    /// Selects database `db` of the tenant's (checked by the caller).
    pub(crate) fn select_db(&mut self, db: u32) {
        self.state.db = db;
        self.state.db_prefix = match (&self.tenant, db) {
            (Some(t), 1..) => t.db_prefix(db),
            _ => Bytes::new(),
        };
        self.me.state.lock().unwrap().db = db;
    }

    /// The instant the head request times out, if it is waiting on Redis and may not block.
    fn deadline(&self) -> Option<Instant> {
        if self.client.out.len() >= OUT_LIMIT {
            // Not reading Redis while the client catches up: not Redis' delay.
            return None;
        }
        match self.up.pending.front()? {
            Slot::Reply { blocking: true, .. } | Slot::Ready(_) => None,
            _ => Some(self.up.progress + self.ctx.upstream.command_timeout()),
        }
    }

    /// Does Redis hold state for this connection that a new connection would not have?
    fn has_connection_state(&self) -> bool {
        self.state.multi.is_some()
            || self.state.watching
            || self.state.tracking
            || self.state.subs.any()
            || self.state.monitoring
    }

    /// Gives the session's figures to its tenant, and its shared reads to the audit trail
    /// (once per pass of the loop).
    fn hand_over_tally(&mut self) {
        if let Some(t) = &self.tenant {
            if !self.figures.tally.is_empty() {
                t.stats
                    .absorb(&mut self.figures.tally, self.figures.read_at);
            }
            if !self.figures.shared_reads.is_empty() {
                let reads = &mut self.figures.shared_reads;
                self.ctx.audit.hand_over(&t.id, reads);
            }
        }
    }

    /// Notes how the current command ended (refusals and respite's own answers).
    fn count(&mut self, outcome: Outcome, hit: Option<bool>) {
        if self.tenant.is_none() || !self.ctx.metrics {
            return;
        }
        let meta = self
            .figures
            .current
            .take()
            .unwrap_or(Meta::unknown(self.figures.read_at));
        self.figures.tally.done(&meta, outcome, hit, Instant::now());
    }

    /// The outcome of the answer respite just queued.
    fn last_outcome(&self) -> Outcome {
        match self.up.pending.back() {
            Some(Slot::Ready(b)) if b.first() == Some(&b'-') => Outcome::Error,
            _ => Outcome::Ok,
        }
    }

    /// The connection acts as `tenant` from now on, in the place `seat` holds.
    pub(crate) fn set_tenant(&mut self, tenant: Arc<Tenant>, seat: Seat) {
        self.hand_over_tally();
        tracing::Span::current().record("tenant", tenant.id.as_str());
        let mut state = self.me.state.lock().unwrap();
        if state.tenant.as_ref() != Some(&tenant.id) {
            // A connection keeps its number while it stays with one tenant.
            self.me
                .shown_id
                .store(tenant.number_client(), std::sync::atomic::Ordering::Relaxed);
            state.tenant = Some(tenant.id.clone());
            // Another tenant's databases: the connection starts in its database 0 (the
            // prefix of the last one's would name the other tenant's keys).
            state.db = 0;
            self.state.db = 0;
            self.state.db_prefix = Bytes::new();
        }
        drop(state);
        self.tenant = Some(tenant);
        self.seat = Some(seat);
        self.login = None;
        self.new_meter();
    }

    /// A reload (or a new plan) made tenants anew: the session takes its tenant's new
    /// settings, and keeps its place and its connection state. A tenant that is gone has
    /// had its connections closed by the reload.
    fn retake_tenant(&mut self) {
        self.tenant_generation = self.ctx.auth.generation();
        let Some(id) = self.tenant.as_ref().map(|t| t.id.clone()) else {
            return;
        };
        match self.ctx.auth.tenant(&id) {
            // The role is the login's: a connection becomes an admin's (or stops being one,
            // with a MONITOR running) only by logging in again. The reload closes it too;
            // this holds between the two.
            Some(t) if self.tenant.as_ref().is_some_and(|was| was.admin != t.admin) => {
                self.me.kill.cancel()
            }
            // Its database is gone (`databases` lowered): closed, rather than moved into
            // another database's keys.
            Some(t) if self.state.db >= t.databases => self.me.kill.cancel(),
            Some(t) => {
                self.hand_over_tally();
                let was = self.tenant.replace(t);
                let total = |t: Option<&Arc<Tenant>>| t.and_then(|t| t.output.clone());
                // The output total carries over rebuilds; a new one (a bound set where
                // there was none) needs a meter that counts into it.
                let same = match (total(was.as_ref()), total(self.tenant.as_ref())) {
                    (Some(a), Some(b)) => Arc::ptr_eq(&a, &b),
                    (a, b) => a.is_none() && b.is_none(),
                };
                if !same {
                    self.new_meter();
                }
            }
            None => self.me.kill.cancel(),
        }
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

#[cfg(test)]
mod tests {
    /// Every request's slot is moved into `pending` and out again: past 128 bytes, each
    /// move became a call to `memcpy` (4% of respite's time at pipeline 16, perf). And each
    /// slot written is a cache line to fetch, as the queues of fifty sessions do not stay
    /// in the cache together: at 112 bytes it was two.
    #[test]
    fn a_slot_fits_one_cache_line() {
        assert!(std::mem::size_of::<super::Slot>() <= 64);
    }

    /// A write's charge waits in `writes` beside its slot, for the same reason kept small:
    /// what transactions and other databases add is boxed (it was 120 bytes).
    #[test]
    fn a_charge_waiting_for_its_reply_stays_small() {
        assert!(std::mem::size_of::<crate::quota::Written>() <= 72);
    }
}
