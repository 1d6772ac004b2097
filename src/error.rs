//! Every error a client can get from respite itself, and the one place each becomes the RESP
//! reply shared/DESIGN.md promises (`-NOAUTH`, `-WRONGPASS`, `-NOPERM`, `-ERR upstream
//! unavailable: ...`, `-ERR Protocol error: ...`) or the text Redis itself would send.

use bytes::Bytes;

use crate::wire::Resp;

/// Why Redis could not be reached or did not answer. `Display` is the part after
/// `upstream unavailable: `.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum UpstreamError {
    /// The address is for respite's log, not for the client's error (a tenant learns no
    /// address of Redis, nor of a cluster's nodes).
    #[error("cannot connect to Redis: {reason}")]
    Connect { addr: String, reason: String },
    #[error("no reply within {0} ms")]
    Timeout(u64),
    #[error("connection to Redis lost")]
    Closed,
    #[error("Redis refused respite's login: {0}")]
    Login(String),
    #[error("Redis sent a malformed reply: {0}")]
    Protocol(String),
    #[error("reconnecting after a failure ({0})")]
    Backoff(String),
    #[error("all {0} pinned connections are in use (upstream.pinned_max)")]
    PinnedExhausted(usize),
    #[error("all {0} pinned connections this tenant may hold are in use (pinned_max)")]
    ShareExhausted(usize),
    #[error("quota bookkeeping failed: {0}")]
    Bookkeeping(String),
    #[error("shared key fetch failed: {0}")]
    SharedFetch(String),
    #[error("{0}")]
    Cluster(String),
}

/// An error answered by respite instead of (or before) Redis.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("NOAUTH Authentication required.")]
    NoAuth,
    #[error("CROSSSLOT Keys in request don't hash to the same slot")]
    CrossSlot,
    /// What a standalone Redis answers to CLUSTER, READONLY, READWRITE and ASKING: what a
    /// tenant sees of a cluster behind respite is one plain Redis.
    #[error("ERR This instance has cluster support disabled")]
    ClusterDisabled,
    #[error(
        "ERR this connection's WATCH, subscriptions or tracking are on another node of the \
         cluster than this key's slot: use another connection for it"
    )]
    OtherNode,
    /// In the words of the Redis upstream: 7.2 added `<proto> ` (the field).
    #[error(
        "NOAUTH HELLO must be called with the client already authenticated, otherwise the \
         HELLO {0}AUTH <user> <pass> option can be used to authenticate the client and \
         select the RESP protocol version at the same time"
    )]
    HelloNoAuth(&'static str),
    #[error("WRONGPASS invalid username-password pair or user is disabled.")]
    WrongPass,
    #[error("NOPERM this user has no permissions to run the '{command}' command: {why}")]
    NoPerm { command: String, why: &'static str },
    #[error("NOPROTO unsupported protocol version")]
    NoProto,
    #[error("ERR unknown command '{name}', with args beginning with: {args}")]
    UnknownCommand { name: String, args: String },
    #[error("ERR unknown subcommand '{sub}'. Try {container} HELP.")]
    UnknownSubcommand { sub: String, container: String },
    #[error("ERR wrong number of arguments for '{0}' command")]
    WrongArity(String),
    #[error("ERR syntax error")]
    Syntax,
    #[error("ERR value is not an integer or out of range")]
    NotInteger,
    #[error("ERR DB index is out of range")]
    DbIndex,
    #[error("ERR {0}")]
    Unsupported(String),
    #[error("ERR upstream unavailable: {0}")]
    Upstream(#[from] UpstreamError),
    #[error(
        "OOM command not allowed: tenant '{tenant}' is at {used} of its {limit} bytes (quota \
         {quota} + overage {overage}) and this write may need {need}"
    )]
    Oom {
        tenant: String,
        used: u64,
        limit: u64,
        quota: u64,
        overage: u64,
        need: u64,
    },
    #[error("ERR origin {url} failed: {why}")]
    Origin { url: String, why: String },
    /// Redis' own error reply to one of respite's requests, passed on as the client's.
    #[error("{0}")]
    Redis(String),
    #[error("EXECABORT Transaction discarded because of previous errors.")]
    ExecAbort,
    #[error("ERR Protocol error: {0}")]
    Protocol(String),
    /// respite's last check found a key of this command outside the tenant's namespace.
    #[error("ERR internal error: respite refused to send '{0}' with a key outside your namespace")]
    Isolation(String),
    #[error("ERR max number of clients reached")]
    MaxClients,
    #[error("ERR max number of subscriptions per connection reached ({0}, max_subscriptions)")]
    MaxSubscriptions(usize),
    /// A shared key's miss past the origin's fetch rates: not fetched (the session answers
    /// nil, or this for a tenant with `rate_limit = "refuse"`).
    #[error("ERR {0}")]
    OriginLimited(String),
    /// A tenant past its rate with `rate_limit = "refuse"`.
    #[error("ERR {0}")]
    RateLimited(String),
    #[error("ERR Protocol version is not an integer or out of range")]
    BadProtover,
    #[error("ERR Syntax error in HELLO option '{0}'")]
    HelloOption(String),
    /// Any command but these on a RESP2 connection with subscriptions.
    #[error(
        "ERR Can't execute '{0}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET \
         are allowed in this context"
    )]
    SubscribedOnly(String),
    #[error("ERR respite does not run this command inside MULTI")]
    NotInMulti,
    #[error("ERR Command not allowed inside a transaction")]
    NotInTransaction,
    #[error("ERR Client names cannot contain spaces, newlines or special characters.")]
    BadClientName,
    #[error("ERR {0} cannot contain spaces, newlines or special characters.")]
    BadClientInfo(String),
    #[error("ERR Unrecognized option '{0}'")]
    UnknownOption(String),
    #[error("ERR Unknown client type '{0}'")]
    UnknownClientType(String),
    #[error("ERR Invalid client ID")]
    InvalidClientId,
    #[error("ERR No such client")]
    NoSuchClient,
    #[error("ERR client-id should be greater than 0")]
    ClientIdNotPositive,
    #[error("ERR No such user '{0}'")]
    NoSuchUser(String),
    #[error("ERR maxage is not an integer or out of range")]
    MaxAgeNotInteger,
    #[error("ERR maxage should be greater than 0")]
    MaxAgeNotPositive,
    #[error("ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR")]
    UnblockReason,
}

impl Error {
    /// The RESP error reply for this error.
    pub fn to_resp(&self) -> Bytes {
        Resp::error(&self.to_string())
    }

    /// Redis' text for an unknown command: the name and the first arguments, quoted.
    pub fn unknown_command(args: &[Bytes]) -> Error {
        let clip = |b: &[u8], n: usize| String::from_utf8_lossy(&b[..b.len().min(n)]).into_owned();
        let mut rest = String::new();
        for a in &args[1..] {
            if rest.len() >= 128 {
                break;
            }
            rest.push_str(&format!("'{}' ", clip(a, 128 - rest.len())));
        }
        Error::UnknownCommand {
            name: clip(&args[0], 128),
            args: rest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_match_the_design() {
        assert_eq!(
            &Error::NoAuth.to_resp()[..],
            b"-NOAUTH Authentication required.\r\n"
        );
        assert_eq!(
            &Error::WrongPass.to_resp()[..],
            b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
        );
        assert_eq!(
            &Error::Upstream(UpstreamError::Timeout(5)).to_resp()[..],
            b"-ERR upstream unavailable: no reply within 5 ms\r\n"
        );
        let args: Vec<Bytes> = ["foo", "a", "b"]
            .map(|s| Bytes::from_static(s.as_bytes()))
            .to_vec();
        assert_eq!(
            Error::unknown_command(&args).to_string(),
            "ERR unknown command 'foo', with args beginning with: 'a' 'b' "
        );
    }
}
