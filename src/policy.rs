//! Policy: which commands a tenant may not run because they would reach beyond its namespace.
//!
//! Mostly data-driven: anything Redis flags `admin` acts on the whole server and is refused;
//! scripts and functions run unless the tenant has `allow_scripts = false`, and
//! [`allowed_in_scripts`] says what a script may call. A short
//! table adds the commands that cross tenants without being `admin` (SWAPDB, ACL, MEMORY
//! STATS, SCRIPT DEBUG, ...); shared keys are
//! writable by publishers only, judged by each key's own flags. (SORT's BY/GET patterns are
//! not refused: `rewrite` moves them into the namespace.)
//!
//! An admin tenant (`role = "admin"`) may also run the server-wide commands of
//! `FOR_OPERATORS`, each recorded in the audit trail (`audit`), as are the server-wide
//! commands refused to a tenant. Everything else stays as for any tenant: what would let its
//! keys leave its namespace (SWAPDB, MIGRATE, CLUSTER GETKEYSINSLOT, a DEBUG subcommand whose
//! keys respite cannot tell), respite's own ACL users (ACL), and what Redis flags `admin`
//! beyond the table (SHUTDOWN, REPLICAOF, MODULE, SAVE...).

use std::net::SocketAddr;

use bytes::Bytes;

use crate::audit::Trail;
use crate::command::{Command, KeyMap, ACL_SCRIPTING, CMD_ADMIN, CMD_NOSCRIPT, KS_NOT_KEY, KS_RO};
use crate::error::Error;
use crate::tenant::Tenant;
use crate::upstream::Facts;

const SERVER_WIDE: &str = "it acts on the whole Redis server, which every tenant shares";

/// Commands refused although Redis does not flag them `admin`, keyed by
/// (container, name); `None` as the name covers every subcommand of the container.
const DENY: &[(&str, Option<&str>, &str)] = &[
    (
        "swapdb",
        None,
        "a tenant's databases are key prefixes in one Redis database, which cannot be \
         swapped at once",
    ),
    ("migrate", None, "it moves keys out of respite's reach"),
    ("restore-asking", None, "it is internal to Redis Cluster"),
    (
        "acl",
        None,
        "respite, not Redis ACLs, decides what a tenant may run",
    ),
    (
        "cluster",
        Some("getkeysinslot"),
        "it lists the keys of every tenant",
    ),
    (
        "cluster",
        Some("countkeysinslot"),
        "it counts the keys of every tenant",
    ),
    (
        "memory",
        Some("stats"),
        "it reports the whole server's keys and memory, every tenant's",
    ),
    (
        "memory",
        Some("doctor"),
        "it reports the whole server's memory, every tenant's",
    ),
    (
        "memory",
        Some("malloc-stats"),
        "it reports the whole server's allocator, every tenant's",
    ),
    (
        "memory",
        Some("purge"),
        "it acts on the whole server's allocator",
    ),
    (
        "function",
        Some("dump"),
        "it dumps every tenant's libraries",
    ),
    (
        "function",
        Some("restore"),
        "its payload names libraries and functions outside the tenant's own names",
    ),
    (
        "function",
        Some("stats"),
        "it reports the whole server's libraries and the script running, every tenant's",
    ),
    (
        "script",
        Some("debug"),
        "it turns a connection other tenants share into a Lua debugger session",
    ),
];

/// The server-wide commands an admin tenant may run, keyed by (container, name); `None` as
/// the name covers every subcommand. Its keys stay in its namespace: DEBUG's are found by
/// `command::grammar` (a subcommand it cannot tell is refused), and `rewrite` moves them.
const FOR_OPERATORS: &[(&str, Option<&str>)] = &[
    ("config", None),
    ("debug", None),
    ("slowlog", None),
    ("latency", None),
    ("memory", Some("doctor")),
    ("memory", Some("stats")),
    ("memory", Some("malloc-stats")),
    ("memory", Some("purge")),
    ("client", Some("pause")),
    ("client", Some("unpause")),
    ("monitor", None),
];

/// Settings whose CONFIG SET value the audit log leaves out: they unlock Redis, its
/// replication or its TLS keys (Redis' own SENSITIVE_CONFIG ones, and masteruser).
const SECRET_SETTINGS: &[&str] = &[
    "requirepass",
    "masterauth",
    "masteruser",
    "tls-key-file-pass",
    "tls-client-key-file-pass",
];

/// Counts that size a reply without regard to the data, by (command, argument index): a
/// negative count to SRANDMEMBER and friends asks for that many elements with repeats, and
/// Redis builds the whole reply inside one command (`SRANDMEMBER s -9223372036854775807`
/// holds it for every tenant until it runs out of memory).
const REPEATING_COUNTS: &[(&str, usize)] =
    &[("srandmember", 2), ("hrandfield", 2), ("zrandmember", 2)];

/// Redis `admin` commands a tenant may still run: they only affect its own connection, or
/// (CONFIG GET) `rewrite` narrows them to what any tenant may read.
const ADMIN_ALLOWED: &[(&str, &str)] = &[("client", "no-evict"), ("config", "get")];

/// Commands a tenant may run directly but not from inside a script: there respite does not
/// see them, and Redis' ACL key patterns do not limit them (they act on or list the whole
/// keyspace, or change the script's database), Redis' ACL check reads other arguments as
/// keys than the command writes (GEORADIUS with two STORE options writes the last one and
/// is checked against the first: checked on Redis 7.0.15), or respite's own checks of the
/// command (RESTORE, COPY's DB) cannot run inside a script.
const NOT_IN_SCRIPTS: &[&str] = &[
    "keys",
    "scan",
    "randomkey",
    "dbsize",
    "flushdb",
    "flushall",
    "select",
    "info",
    "pubsub",
    "georadius",
    "georadiusbymember",
    // Its payload is not checked inside a script (sanitize-dump-payload or not), and what
    // it restores cannot be measured: a crafted one crashes Redis.
    "restore",
    // Its DB argument writes outside database 0, where no quota or scan sees it; ACLs
    // cannot restrict arguments. MOVE, always (a tenant's databases are prefixes in
    // Redis' database 0: the session rewrites MOVE, a script cannot).
    "copy",
    "move",
];

/// Commands that change keys Redis' ACLs let a read-only user name (PFCOUNT writes its
/// cached count into the HyperLogLog, XREADGROUP moves entries into a consumer group's
/// pending list): a script may run them on the tenant's own keys only, never on shared ones.
pub const WRITES_THROUGH_READ_ACCESS: &[&str] = &["pfcount", "xreadgroup"];

/// May a tenant's script call `cmd` (Redis' `redis.call`)? What `check` lets a tenant run
/// and Redis runs in scripts, less `NOT_IN_SCRIPTS`. Decided by name alone: the script's
/// arguments are not seen by respite, the tenant's ACL user and the prelude enforce it.
pub fn allowed_in_scripts(cmd: &Command) -> bool {
    let (name, _) = cmd.names();
    denied(cmd).is_none()
        && !server_wide(cmd)
        && !cmd.has(CMD_NOSCRIPT)
        && !cmd.in_category(ACL_SCRIPTING)
        && !NOT_IN_SCRIPTS.iter().any(|n| n.as_bytes() == name)
}

/// Is `cmd` one of the server-wide commands `FOR_OPERATORS` lists, which an admin tenant
/// may run (and which are audited when it does)?
pub fn for_operators(cmd: &Command) -> bool {
    let (name, sub) = cmd.names();
    FOR_OPERATORS
        .iter()
        .any(|(n, s)| n.as_bytes() == name && s.is_none_or(|s| Some(s.as_bytes()) == sub))
}

/// Records a server-wide command an admin tenant runs in the audit trail: the tenant,
/// where it connected from, the command, and its arguments (the values of secret settings
/// left out).
pub fn audit(trail: &Trail, tenant: &Tenant, peer: SocketAddr, command: &str, args: &[Bytes]) {
    trail.admin_command(&tenant.id, peer, command, &audited_args(command, args));
}

/// Why `cmd` is refused to `tenant` for acting beyond its namespace (the server-wide and
/// cross-tenant commands the audit trail records when refused), if it is.
pub fn refused_server_wide(cmd: &Command, tenant: &Tenant) -> Option<&'static str> {
    if tenant.admin && for_operators(cmd) {
        return None;
    }
    denied(cmd).or_else(|| server_wide(cmd).then_some(SERVER_WIDE))
}

/// The arguments as the audit log shows them: CONFIG SET's values of [`SECRET_SETTINGS`]
/// redacted (names at 2, 4, ...; each value after its name).
fn audited_args<'a>(command: &str, args: &'a [Bytes]) -> Vec<std::borrow::Cow<'a, str>> {
    let config_set = command == "config|set";
    let secret = |i: usize| {
        config_set
            && i > 2
            && i % 2 == 1
            && SECRET_SETTINGS
                .iter()
                .any(|s| args[i - 1].eq_ignore_ascii_case(s.as_bytes()))
    };
    args.iter()
        .enumerate()
        .map(|(i, a)| match secret(i) {
            true => "(redacted)".into(),
            false => String::from_utf8_lossy(a),
        })
        .collect()
}

/// Why `cmd` is in the [`DENY`] table, if it is.
fn denied(cmd: &Command) -> Option<&'static str> {
    let (name, sub) = cmd.names();
    DENY.iter()
        .find(|(n, s, _)| n.as_bytes() == name && s.is_none_or(|s| Some(s.as_bytes()) == sub))
        .map(|(_, _, why)| *why)
}

/// Does `cmd` act on the whole server (Redis' `admin` flag, less [`ADMIN_ALLOWED`])?
fn server_wide(cmd: &Command) -> bool {
    let (name, sub) = cmd.names();
    cmd.has(CMD_ADMIN)
        && !ADMIN_ALLOWED
            .iter()
            .any(|(n, s)| n.as_bytes() == name && Some(s.as_bytes()) == sub)
}

/// Refuses `cmd` with `-NOPERM` (or Redis' own error) when the tenant may not run it.
/// `keys` is the request's key map, `None` when its keys cannot be found (`decide` refuses
/// it after this, unless a refusal here comes first).
pub fn check(
    cmd: &Command,
    args: &[Bytes],
    keys: Option<&KeyMap>,
    tenant: &Tenant,
    facts: &Facts,
) -> Result<(), Error> {
    let (name, _) = cmd.names();
    let noperm = |why: &'static str| Error::NoPerm {
        command: cmd.full_name(),
        why,
    };
    if let Some(why) = refused_server_wide(cmd, tenant) {
        return Err(noperm(why));
    }
    // Scripts and functions run confined to the tenant (`script`), unless switched off.
    if cmd.in_category(ACL_SCRIPTING) && !tenant.scripts.allowed {
        return Err(noperm("this tenant has allow_scripts = false"));
    }
    if !tenant.publisher && keys.is_some_and(|k| writes_shared(cmd, args, k, tenant)) {
        return Err(noperm(
            "shared keys are read-only (only a publisher tenant writes them)",
        ));
    }
    // The name first: parsing every request's argument as a count would cost every request.
    if let Some((_, i)) = REPEATING_COUNTS.iter().find(|(n, _)| n.as_bytes() == name) {
        let count = args
            .get(*i)
            .and_then(|c| crate::command::grammar::redis_int(c));
        // The tenant's `max_random_count`.
        let max = tenant.caps.max_random_count.min(i64::MAX as u64) as i64;
        if count.is_some_and(|c| c < -max) {
            return Err(Error::Unsupported(format!(
                "value is out of range: respite allows counts down to -{max} \
                 (max_random_count), a larger reply would hold the Redis every tenant shares"
            )));
        }
    }
    match name {
        b"restore" if !facts.sanitized_dumps() => Err(noperm(
            "Redis does not check DUMP payloads (sanitize-dump-payload is not yes) and a \
             crafted one can crash the server every tenant shares",
        )),
        _ => Ok(()),
    }
}

/// Would the request write (or, in a script, could it write) a shared key?
fn writes_shared(cmd: &Command, args: &[Bytes], keys: &KeyMap, tenant: &Tenant) -> bool {
    if tenant.shared.is_empty() {
        return false;
    }
    // By the keys' own flags, not the command's: PFCOUNT is a "read" that writes its cache
    // into the HyperLogLog (its key is RW).
    let all_written = cmd.in_category(ACL_SCRIPTING) || cmd.writes_read_keys();
    keys.iter().any(|(i, flags)| {
        // A shard channel (NOT_KEY) is never shared, whatever its name.
        let written = flags & KS_NOT_KEY == 0 && (flags & KS_RO == 0 || all_written);
        written && tenant.is_shared(&args[i])
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::lookup;

    fn run(line: &str, scripts: bool) -> Result<(), Error> {
        run_as(line, scripts, false)
    }

    fn run_as(line: &str, scripts: bool, admin: bool) -> Result<(), Error> {
        let args: Vec<Bytes> = line
            .split(' ')
            .map(|a| Bytes::from(a.to_string()))
            .collect();
        let cmd = lookup(&args).unwrap();
        let keys = KeyMap::find(&cmd, &args).ok();
        let mut tenant = Tenant::new(
            "a",
            crate::config::ScriptRights {
                allowed: scripts,
                ..Default::default()
            },
        );
        tenant.admin = admin;
        check(&cmd, &args, keys.as_ref(), &tenant, &Facts::default())
    }

    /// An admin runs the server-wide commands operators need, and nothing that would let its
    /// keys (or its scripts) out, nor what Redis flags `admin` beyond them.
    #[test]
    fn an_admin_runs_the_operators_commands_only() {
        for line in [
            "CONFIG SET maxmemory 0",
            "CONFIG RESETSTAT",
            "CONFIG REWRITE",
            "DEBUG SLEEP 0",
            "DEBUG OBJECT k",
            "SLOWLOG GET",
            "LATENCY LATEST",
            "MEMORY STATS",
            "MEMORY DOCTOR",
            "MEMORY MALLOC-STATS",
            "MEMORY PURGE",
            "CLIENT PAUSE 10",
            "CLIENT UNPAUSE",
            "MONITOR",
        ] {
            assert_eq!(run_as(line, false, true), Ok(()), "{line}");
            assert!(noperm(line), "{line} must stay refused to a tenant");
        }
        // Every tenant reads CONFIG GET (`rewrite` narrows it, but for an admin).
        assert_eq!(run_as("CONFIG GET *", false, true), Ok(()));
        for line in [
            "SWAPDB 0 1",
            "MIGRATE h 1 k 0 5",
            "ACL WHOAMI",
            "CLUSTER GETKEYSINSLOT 1 1",
            "FUNCTION DUMP",
            "SCRIPT DEBUG YES",
            "SHUTDOWN",
            "REPLICAOF no one",
            "MODULE LIST",
            "SAVE",
            "EVAL s 0",
        ] {
            let refused = matches!(run_as(line, false, true), Err(Error::NoPerm { .. }));
            assert!(refused, "{line} must stay refused to an admin");
        }
    }

    fn noperm(line: &str) -> bool {
        matches!(run(line, false), Err(Error::NoPerm { .. }))
    }

    #[test]
    fn the_audit_log_leaves_passwords_out() {
        let args: Vec<Bytes> = "CONFIG SET maxmemory 1 REQUIREPASS secret masterauth other"
            .split(' ')
            .map(|a| Bytes::from(a.to_string()))
            .collect();
        assert_eq!(
            audited_args("config|set", &args).join(" "),
            "CONFIG SET maxmemory 1 REQUIREPASS (redacted) masterauth (redacted)"
        );
        assert_eq!(
            audited_args("debug", &args[..3]).join(" "),
            "CONFIG SET maxmemory"
        );
    }

    #[test]
    fn cross_tenant_commands_are_refused() {
        for line in [
            "CONFIG SET x y",
            "DEBUG SLEEP 0",
            "MONITOR",
            "SHUTDOWN",
            "REPLICAOF no one",
            "SYNC",
            "MIGRATE h 1 k 0 5",
            "MODULE LIST",
            "ACL WHOAMI",
            "SWAPDB 0 1",
            "CLUSTER GETKEYSINSLOT 1 1",
            "CLIENT PAUSE 10",
            "EVAL s 0",
            "FCALL f 0",
            "SCRIPT FLUSH",
            "FUNCTION LIST",
            "MEMORY STATS",
            "MEMORY DOCTOR",
            "SCRIPT DEBUG YES",
        ] {
            assert!(noperm(line), "{line} must be refused");
        }
    }

    #[test]
    fn ordinary_and_own_connection_commands_pass() {
        for line in [
            "GET k",
            "CLIENT NO-EVICT on",
            "SORT k BY nosort GET # LIMIT 0 1",
            "COPY a b DB 0",
            "COPY a b DB 1",
            "MOVE k 1",
        ] {
            assert_eq!(run(line, false), Ok(()), "{line}");
        }
        assert_eq!(run("EVAL s 0", true), Ok(()));
    }
}
