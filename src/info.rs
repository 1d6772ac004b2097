//! INFO as a tenant sees it: Redis' own text, with every figure that shows other tenants'
//! data or activity taken out or replaced by the tenant's own (clients, stats, command
//! counts); what clients and libraries read to learn about the server (version, mode,
//! `maxmemory_policy`, `loading`, `role`) stays as Redis says it.

use std::fmt::Write;

/// What becomes of one INFO section.
enum Scope {
    /// Redis' lines as they are: nothing in them depends on other tenants.
    Keep,
    /// Only the lines of these fields.
    Only(&'static [&'static str]),
    /// Replaced by the tenant's own figures.
    Tenant,
    /// Only the lines of these fields, then the tenant's own figures.
    OnlyThenTenant(&'static [&'static str]),
    /// Left out: every line speaks of the whole server's traffic.
    Drop,
    /// Redis' lines, with these fields' values replaced: what a tenant sees of a cluster
    /// behind respite is one plain Redis.
    Standalone(&'static [(&'static str, &'static str)]),
}

/// Sections by header (`# Memory`), as Redis 7 names them; an unknown section is dropped.
const SECTIONS: &[(&str, Scope)] = &[
    ("Server", Scope::Standalone(&[("redis_mode", "standalone")])),
    ("Clients", Scope::Tenant),
    (
        "Memory",
        Scope::OnlyThenTenant(&[
            "maxmemory",
            "maxmemory_human",
            "maxmemory_policy",
            "mem_allocator",
        ]),
    ),
    ("Persistence", Scope::Only(&["loading", "async_loading"])),
    ("Stats", Scope::Tenant),
    ("Replication", Scope::Only(&["role"])),
    ("CPU", Scope::Drop),
    ("Modules", Scope::Keep),
    ("Commandstats", Scope::Tenant),
    ("Errorstats", Scope::Drop),
    ("Latencystats", Scope::Drop),
    ("Cluster", Scope::Standalone(&[("cluster_enabled", "0")])),
    ("Keyspace", Scope::Drop),
];

/// The tenant's own figures, for the sections it replaces.
#[derive(Debug, Default)]
pub struct Figures {
    /// Its connections to this instance, and how many it may hold.
    pub connections: usize,
    pub max_clients: usize,
    /// What its keys take (its quota's figure) and its limit (quota + overage), when it has
    /// a quota.
    pub memory: Option<(u64, Option<u64>)>,
    pub hits: u64,
    pub misses: u64,
    /// Calls, failed calls and refused calls, by command name.
    pub commands: Vec<(String, u64, u64, u64)>,
}

/// Redis' INFO text, scoped to the tenant whose `figures` these are.
pub fn scope(text: &str, figures: &Figures) -> String {
    let mut out = String::with_capacity(text.len());
    for section in text.split("\r\n\r\n").filter(|s| !s.trim().is_empty()) {
        let mut lines = section.lines();
        let Some(header) = lines.next() else { continue };
        let name = header.trim_start_matches('#').trim();
        let scope = SECTIONS
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map_or(&Scope::Drop, |(_, s)| s);
        let body = match scope {
            Scope::Keep => lines.map(|l| format!("{l}\r\n")).collect(),
            Scope::Only(fields) => lines
                .filter(|l| fields.contains(&l.split(':').next().unwrap_or_default()))
                .map(|l| format!("{l}\r\n"))
                .collect(),
            Scope::Tenant => tenant_section(name, figures),
            Scope::OnlyThenTenant(fields) => lines
                .filter(|l| fields.contains(&l.split(':').next().unwrap_or_default()))
                .map(|l| format!("{l}\r\n"))
                .chain(std::iter::once(tenant_section(name, figures)))
                .collect(),
            Scope::Drop => continue,
            Scope::Standalone(values) => lines
                .map(|l| {
                    let field = l.split(':').next().unwrap_or_default();
                    match values.iter().find(|(f, _)| *f == field) {
                        Some((f, v)) => format!("{f}:{v}\r\n"),
                        None => format!("{l}\r\n"),
                    }
                })
                .collect(),
        };
        if !out.is_empty() {
            out.push_str("\r\n");
        }
        let _ = write!(out, "{header}\r\n{body}");
    }
    out
}

fn tenant_section(name: &str, f: &Figures) -> String {
    let mut out = String::new();
    match name.to_ascii_lowercase().as_str() {
        "clients" => {
            let _ = write!(
                out,
                "connected_clients:{}\r\nmaxclients:{}\r\n",
                f.connections, f.max_clients
            );
        }
        // Named for the tenant: Redis' used_memory would be every tenant's.
        "memory" => {
            if let Some((used, limit)) = f.memory {
                let limit = limit.unwrap_or(0);
                let _ = write!(
                    out,
                    "tenant_used_memory:{used}\r\ntenant_used_memory_human:{}\r\n\
                     tenant_maxmemory:{limit}\r\ntenant_maxmemory_human:{}\r\n",
                    human(used),
                    human(limit)
                );
            }
        }
        "stats" => {
            let calls: u64 = f.commands.iter().map(|c| c.1).sum();
            let _ = write!(
                out,
                "total_commands_processed:{calls}\r\nkeyspace_hits:{}\r\nkeyspace_misses:{}\r\n",
                f.hits, f.misses
            );
        }
        _ => {
            for (cmd, calls, failed, rejected) in &f.commands {
                let _ = write!(
                    out,
                    "cmdstat_{cmd}:calls={calls},rejected_calls={rejected},failed_calls={failed}\r\n"
                );
            }
        }
    }
    out
}

/// Bytes as Redis' `bytesToHuman` writes them (`0B`, `106.00K`, `1.89M`).
fn human(n: u64) -> String {
    let units = ["K", "M", "G", "T", "P"];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2}{}", units[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_tenants_figures_are_left_out() {
        let redis = "# Server\r\nredis_version:7.0.15\r\n\r\n# Clients\r\nconnected_clients:93\r\n\
                     \r\n# Memory\r\nused_memory:123456\r\nmaxmemory:0\r\nmaxmemory_policy:noeviction\r\n\
                     \r\n# Persistence\r\nloading:1\r\nloading_loaded_bytes:999\r\n\
                     \r\n# Stats\r\ntotal_commands_processed:99999\r\n\r\n# CPU\r\nused_cpu_sys:1\r\n\
                     \r\n# Commandstats\r\ncmdstat_get:calls=777\r\n\r\n# Keyspace\r\ndb0:keys=5000\r\n";
        let f = Figures {
            connections: 2,
            max_clients: 10,
            memory: Some((2048, Some(1024 * 1024))),
            hits: 3,
            misses: 1,
            commands: vec![("get".into(), 4, 1, 0)],
        };
        assert_eq!(
            scope(redis, &f),
            "# Server\r\nredis_version:7.0.15\r\n\r\n# Clients\r\nconnected_clients:2\r\n\
             maxclients:10\r\n\r\n# Memory\r\nmaxmemory:0\r\nmaxmemory_policy:noeviction\r\n\
             tenant_used_memory:2048\r\ntenant_used_memory_human:2.00K\r\n\
             tenant_maxmemory:1048576\r\ntenant_maxmemory_human:1.00M\r\n\
             \r\n# Persistence\r\nloading:1\r\n\
             \r\n# Stats\r\ntotal_commands_processed:4\r\nkeyspace_hits:3\r\nkeyspace_misses:1\r\n\
             \r\n# Commandstats\r\ncmdstat_get:calls=4,rejected_calls=0,failed_calls=1\r\n"
        );
    }
}
