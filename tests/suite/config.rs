//! The config file: the documented example parses, and each kind of mistake is reported with
//! its own message and place.

use respite::config::Config;

#[test]
fn the_example_config_parses() {
    let text = std::fs::read_to_string("config/respite.example.toml").unwrap();
    let c = Config::parse(&text).unwrap();
    assert_eq!(c.tenants.len(), 3);
    assert_eq!(c.listen_addr().unwrap().to_string(), "127.0.0.1:6380");
    assert!(c.quotas_enabled());
    let shared = c.shared.expect("[shared]");
    assert_eq!(shared.get_ref().prefixes, ["shared:market:"]);
}

/// Each invalid config and a piece of the one error it must produce, with its line.
#[test]
fn each_mistake_has_its_own_error() {
    let cases: &[(&str, &str, Option<usize>)] = &[
        ("[server]\nlisten = \"nope\"\n", "server.listen", Some(2)),
        ("[server]\nbogus = 1\n", "unknown field `bogus`", Some(2)),
        ("[upstream]\nurl = \"http://x\"\n", "upstream.url: scheme must be redis://", Some(2)),
        ("[upstream]\nurl = \"ftp://x\"\n", "scheme must be redis:// or rediss://, not ftp://", Some(2)),
        ("[upstream]\nmode = \"sentinel\"\n", "upstream.mode must be", Some(2)),
        (
            "[upstream]\nseeds = [\"redis://a:1\"]\n",
            "seed nodes of a cluster: set upstream.mode",
            Some(2),
        ),
        (
            "[upstream]\nmode = \"cluster\"\nseeds = [\"http://a:1\"]\n",
            "upstream.seeds: scheme must be redis://",
            Some(3),
        ),
        (
            "[upstream]\nmode = \"cluster\"\nurl = \"redis://a:1/2\"\n",
            "a Redis Cluster has only database 0",
            Some(3),
        ),
        (
            "[upstream]\nread_from = \"replica-preferred\"\n",
            "reads a cluster's replicas: set upstream.mode",
            Some(2),
        ),
        (
            "[upstream]\nmode = \"cluster\"\nread_from = \"nearest\"\n",
            "upstream.read_from must be",
            Some(3),
        ),
        (
            "[[tenants]]\nid = \"a\"\npassword = \"p\"\nplan = \"gold\"\n",
            "tenants[0].plan: \"gold\" is not a [plans.<name>] table",
            Some(4),
        ),
        (
            "[plans.pro]\nops_per_second = 0\n",
            "plans.pro.ops_per_second and plans.pro.bytes_per_second must be at least 1",
            None,
        ),
        ("[plans.pro]\nrate_limit = \"slow\"\n", "plans.pro.rate_limit must be", None),
        ("[plans.pro]\nquota = 1\n", "unknown field `quota`", Some(2)),
        ("[plans.\"a b\"]\nquota_bytes = 1\n", "plans.a b: a plan's name must match", None),
        ("[admin]\nlisten = \"127.0.0.1:1\"\ntoken = 5\n", "invalid type", Some(3)),
        ("[[tenants]]\nid = \"a:b\"\npassword = \"p\"\n", "tenants[0].id", Some(2)),
        ("[[tenants]]\nid = \"a*\"\npassword = \"p\"\n", "must match [A-Za-z0-9_-]{1,64}", Some(2)),
        (
            "[[tenants]]\nid = \"a\"\npassword = \"p\"\n[[tenants]]\nid = \"a\"\npassword = \"q\"\n",
            "defined twice",
            Some(5),
        ),
        (
            "[[tenants]]\nid = \"a\"\npassword = \"p\"\n[[tenants]]\nid = \"b\"\npassword = \"p\"\n",
            "same password as another tenant",
            Some(5),
        ),
        ("[[tenants]]\nid = \"a\"\n", "nothing could authenticate it", Some(2)),
        (
            "[[tenants]]\nid = \"a\"\npassword = \"p\"\nmax_clients = 0\n",
            "tenants[0].max_clients must be at least 1",
            Some(4),
        ),
        (
            "[defaults]\nmax_clients = 0\n",
            "defaults.max_clients and defaults.pinned_max must be at least 1",
            None,
        ),
        (
            "[[tenants]]\nid = \"a\"\npassword = \"p\"\npinned_max = 0\n",
            "tenants[0].pinned_max must be at least 1",
            Some(4),
        ),
        (
            "[[tenants]]\nid = \"a\"\npassword = \"p\"\nops_per_second = 0\n",
            "tenants[0].ops_per_second must be at least 1",
            Some(4),
        ),
        (
            "[[tenants]]\nid = \"a\"\npassword = \"p\"\nrate_limit = \"drop\"\n",
            "tenants[0].rate_limit: \"drop\" is not \"delay\" or \"refuse\"",
            Some(4),
        ),
        (
            "[defaults]\nrate_limit = \"fast\"\n",
            "defaults.rate_limit must be \"delay\" or \"refuse\"",
            None,
        ),
        (
            "[server]\nmax_unauthenticated = 0\n",
            "server.auth_timeout_ms and server.max_unauthenticated must be at least 1",
            None,
        ),
        ("[[tenants]]\nid = \"a\"\npassword_sha256 = \"xyz\"\n", "64 hex digits", Some(3)),
        ("[server]\ndefault_tenant = \"zz\"\n", "server.default_tenant", Some(2)),
        ("[admin]\nlisten = \"nope\"\n", "admin.listen", Some(1)),
        ("[defaults]\nquota = 1\n", "unknown field `quota`", Some(2)),
        ("[shared]\nprefixes = [\"tenant:x\"]\n", "must not overlap tenant: or respite:", Some(1)),
        ("[shared]\nprefixes = [\"tenant\"]\n", "must not overlap tenant: or respite:", Some(1)),
        ("[shared]\nprefixes = [\"t\"]\n", "must not overlap tenant: or respite:", Some(1)),
        ("[shared]\nprefixes = [\"resp\"]\n", "must not overlap tenant: or respite:", Some(1)),
        (
            "[shared]\nprefixes = [\"shared:\", \"shared:market:\"]\n",
            "\"shared:market:\" overlaps \"shared:\"",
            Some(1),
        ),
        (
            "[shared.origin]\nurl = \"http://h/market\"\n",
            "must be an http:// URL with {key} in it",
            Some(1),
        ),
        ("[upstream]\npool_size = 0\n", "upstream.pool_size must be at least 1", None),
        ("[upstream]\nconnections = 0\n", "must be at least 1", None),
        ("[server]\nthreads = 0\n", "server.threads must be between 1 and 1024", None),
        (
            "[[tenants]]\nid = \"a\"\npassword = \"p\"\noverage_bytes = 5\n",
            "tenants[0].overage_bytes needs a quota_bytes",
            Some(4),
        ),
        ("[quota]\nflush_interval_ms = 0\n", "must be above 0", None),
        (
            "[[tenants]]\nid = \"a\"\npassword = \"p\"\nrole = \"publisher\"\n",
            "role = \"publisher\" needs a [shared] section",
            Some(4),
        ),
        (
            "[[tenants]]\nid = \"a\"\npassword = \"p\"\nrole = \"root\"\n",
            "tenants[0].role: \"root\" is not \"tenant\", \"publisher\" or \"admin\"",
            Some(4),
        ),
        (
            "[auth.jwt]\nhs256_secret = \"s\"\n[[tenants]]\nid = \"ops\"\nrole = \"admin\"\n",
            "role = \"admin\" needs a password or password_sha256",
            Some(5),
        ),
        (
            "[server]\ndefault_tenant = \"ops\"\n[[tenants]]\nid = \"ops\"\npassword = \"p\"\nrole = \"admin\"\n",
            "server.default_tenant: \"ops\" has role = \"admin\"",
            Some(2),
        ),
        ("[defaults]\nrole = \"admin\"\n", "unknown field `role`", Some(2)),
        ("[plans.x]\nrole = \"admin\"\n", "unknown field `role`", Some(2)),
        ("[auth.jwt]\ntenant_claim = \"t\"\n", "exactly one of hs256_secret", Some(1)),
        ("[auth.jwt]\nrs256_public_key_file = \"/nonexistent.pem\"\n", "rs256_public_key_file", Some(1)),
        ("[audit]\npath = \"\"\n", "audit.path \"\" must name a file, or \"-\"", Some(1)),
        ("[audit]\npath = \"/tmp\"\n", "audit.path \"/tmp\" names a directory", Some(1)),
        ("[audit]\npath = \"logs/\"\n", "names a directory", Some(1)),
        ("[audit]\nshared_reads_max_pairs = 5\n", "missing field `path`", Some(1)),
        ("[audit]\npath = \"-\"\nfile = \"x\"\n", "unknown field `file`", Some(3)),
    ];
    for (text, expect, line) in cases {
        let errs = Config::parse(text).expect_err(text).0;
        assert_eq!(errs.len(), 1, "{text}: {errs:?}");
        assert!(
            errs[0].message.contains(expect),
            "{text}: {}",
            errs[0].message
        );
        assert_eq!(errs[0].at.map(|(l, _)| l), *line, "{text}: {errs:?}");
    }
}

#[test]
fn secrets_never_show_in_debug_output() {
    let c = Config::parse(
        "[upstream]\nurl = \"redis://u:upstream-pw@h:1\"\n[[tenants]]\nid = \"a\"\npassword = \"tenant-pw\"\n\
         [auth.jwt]\nhs256_secret = \"jwt-secret\"\n",
    )
    .unwrap();
    let dump = format!("{c:?} {:?}", c.upstream_addr());
    for secret in ["tenant-pw", "jwt-secret", "upstream-pw"] {
        assert!(!dump.contains(secret), "{secret} leaked: {dump}");
    }
    assert!(dump.contains("MASKED"));
}

#[test]
fn check_config_cli_reports_line_and_column_and_exits_2() {
    let bin = env!("CARGO_BIN_EXE_respite");
    let ok = std::process::Command::new(bin)
        .args(["check-config", "config/respite.example.toml"])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let dir = crate::harness::TempDir::new();
    let bad = dir.0.join("bad.toml");
    std::fs::write(
        &bad,
        "[server]\nlisten = \"x\"\n[[tenants]]\nid = \"no:colons\"\npassword = \"p\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin)
        .args(["check-config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2, column 10: server.listen"), "{err}");
    assert!(err.contains("line 4, column 6: tenants[0].id"), "{err}");
}

/// check-config accepts `role = "admin"` and refuses a role respite does not know, with its
/// line and column.
#[test]
fn check_config_knows_the_admin_role() {
    let bin = env!("CARGO_BIN_EXE_respite");
    let dir = crate::harness::TempDir::new();
    let check = |text: &str| {
        let file = dir.0.join("roles.toml");
        std::fs::write(&file, text).unwrap();
        std::process::Command::new(bin)
            .args(["check-config", file.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let admin = "[[tenants]]\nid = \"ops\"\npassword = \"p\"\nrole = \"admin\"\n";
    let ok = check(admin);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let out = check(&admin.replace("admin", "root"));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "line 4, column 8: tenants[0].role: \"root\" is not \"tenant\", \"publisher\" or \"admin\""
        ),
        "{err}"
    );
}
