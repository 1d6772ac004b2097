//! Real job queues through respite, with scripts on: BullMQ (npm, `tests/js/`), and RQ with
//! redis-py's Lock and the `limits` rate limiter (PyPI, `tests/py/`). Each runs its jobs to
//! completion against a tenant, and every key it leaves in Redis must be the tenant's. The
//! packages are installed on first use (pinned: `tests/js/package-lock.json`,
//! `tests/py/requirements.txt`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

use crate::harness::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd` to completion (within `limit`), failing the test with its output otherwise.
async fn run(cmd: &mut Command, what: &str, limit: Duration) -> String {
    let out = tokio::time::timeout(limit, cmd.kill_on_drop(true).output())
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {limit:?}"))
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

/// Every key in Redis is the tenant's own, or respite's bookkeeping.
async fn only_tenant_keys(redis: &Redis, tenant: &str) -> usize {
    let keys = redis.keys().await;
    let prefix = format!("tenant:{tenant}:");
    let outside: Vec<&String> = keys
        .iter()
        .filter(|k| !k.starts_with(&prefix) && !k.starts_with("respite:"))
        .collect();
    assert!(
        outside.is_empty(),
        "keys outside the namespace: {outside:?}"
    );
    keys.iter().filter(|k| k.starts_with(&prefix)).count()
}

fn proxy_config(redis: &Redis) -> String {
    format!(
        "[upstream]\nurl = \"{}\"\n[[tenants]]\nid = \"q\"\npassword = \"pq\"\n",
        redis.url()
    )
}

#[tokio::test]
async fn bullmq_queues_workers_and_flows_complete_inside_the_namespace() {
    let js = root().join("tests/js");
    if !js.join("node_modules/bullmq").exists() {
        run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&js),
            "npm ci (tests/js)",
            Duration::from_secs(300),
        )
        .await;
    }
    let redis = Redis::start();
    let proxy = Proxy::start_config(&proxy_config(&redis)).await;
    let port = proxy.addr.port().to_string();
    let out = run(
        Command::new("node")
            .args(["bullmq.mjs", &port, "q", "pq"])
            .current_dir(&js),
        "BullMQ through respite",
        Duration::from_secs(90),
    )
    .await;
    assert!(out.contains(r#""car":"2,3","value":42"#), "{out}");
    assert!(only_tenant_keys(&redis, "q").await > 10);
}

/// The virtualenv the Python queue test uses, made on first use.
async fn venv() -> PathBuf {
    let env = root().join("target/test-venv");
    let python = env.join("bin/python");
    let requirements = root().join("tests/py/requirements.txt");
    let stamp = env.join("requirements.txt");
    let wanted = std::fs::read(&requirements).unwrap();
    if std::fs::read(&stamp).ok().as_ref() != Some(&wanted) {
        if !python.exists() {
            run(
                Command::new("python3").args(["-m", "venv"]).arg(&env),
                "python3 -m venv",
                Duration::from_secs(120),
            )
            .await;
        }
        run(
            Command::new(&python)
                .args(["-m", "pip", "install", "-q", "-r"])
                .arg(&requirements),
            "pip install (tests/py)",
            Duration::from_secs(300),
        )
        .await;
        std::fs::write(&stamp, wanted).unwrap();
    }
    python
}

#[tokio::test]
async fn rq_jobs_redis_py_locks_and_limits_work_inside_the_namespace() {
    let python = venv().await;
    let redis = Redis::start();
    let proxy = Proxy::start_config(&proxy_config(&redis)).await;
    let port = proxy.addr.port().to_string();
    let dir: &Path = &root().join("tests/py");
    let out = run(
        Command::new(&python)
            .args(["queues.py", &port, "q", "pq"])
            .current_dir(dir),
        "RQ, redis-py Lock and limits through respite",
        Duration::from_secs(90),
    )
    .await;
    assert!(
        out.contains("'results': [2, 4, 42], 'lock': 'ok', 'limits': [True, True, True, False]"),
        "{out}"
    );
    assert!(only_tenant_keys(&redis, "q").await > 3);
}
