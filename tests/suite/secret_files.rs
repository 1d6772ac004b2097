//! Secrets in files (`password_file`, `token_file`, `[upstream] password_file`), as a
//! Kubernetes Secret or a Compose secret mounts them: a tenant logs in with the password a
//! file holds, respite logs in to a Redis with `requirepass` from one, and a reload (POST
//! /reload with the token a file holds, or SIGHUP to the binary) takes a rotated file as it
//! takes a changed password. No secret ever reaches the log.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::admin::{answers, http};
use crate::harness::*;

const WRONGPASS: &str = "-WRONGPASS invalid username-password pair or user is disabled.\r\n";

/// Writes a secret as `echo` and Kubernetes leave it: with a trailing newline.
fn secret(dir: &TempDir, name: &str, value: &str) -> String {
    let path = dir.0.join(name);
    std::fs::write(&path, format!("{value}\n")).unwrap();
    path.display().to_string()
}

/// A config with every secret in a file of `dir`: Redis' password, the admin token, and
/// tenants acme (in a file) and globex (in the config, as before).
fn config(redis: &Redis, dir: &TempDir, listen: SocketAddr, admin: SocketAddr) -> String {
    format!(
        "[server]\nlisten = \"{listen}\"\n\
         [upstream]\nurl = \"{}\"\npassword_file = \"{}\"\n\
         [admin]\nlisten = \"{admin}\"\ntoken_file = \"{}\"\n\
         [[tenants]]\nid = \"acme\"\npassword_file = \"{}\"\n\
         [[tenants]]\nid = \"globex\"\npassword = \"globex-secret\"\n",
        redis.url(),
        secret(dir, "redis-password", "redis-secret"),
        secret(dir, "admin-token", "token-1"),
        secret(dir, "acme", "acme-1"),
    )
}

fn addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_come_from_files_and_a_reload_takes_rotated_ones() {
    let redis = Redis::start_with(&["--requirepass", "redis-secret"]);
    let dir = TempDir::new();
    let file = dir.0.join("respite.toml");
    let admin = addr();
    std::fs::write(&file, config(&redis, &dir, addr(), admin)).unwrap();
    let proxy = Proxy::start_file(&file).await;
    answers(admin, "/readyz", 200, Duration::from_secs(5)).await;

    // acme's password from its file; respite's own to Redis from another.
    let mut before = proxy.raw_as("acme", "acme-1").await;
    assert_eq!(before.cmd(&["SET", "k", "v"]).await, "+OK\r\n");
    assert_eq!(redis.keys().await, ["tenant:acme:k"]);
    let mut globex = proxy.raw_as("globex", "globex-secret").await;

    // Rotated: the old password works until the reload, the new one after it.
    secret(&dir, "acme", "acme-2");
    let mut c = proxy.raw().await;
    assert_eq!(c.cmd(&["AUTH", "acme", "acme-2"]).await, WRONGPASS);
    let (status, body) = http(admin, "POST", "/reload", Some("token-1")).await;
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["new_credentials"], json!(["acme"]));
    assert_eq!(report["closed"], json!(1));
    assert_eq!(report["needs_restart"], json!([]));
    assert!(before.closed().await, "a changed password closes");
    assert_eq!(c.cmd(&["AUTH", "acme", "acme-1"]).await, WRONGPASS);
    assert_eq!(c.cmd(&["AUTH", "acme", "acme-2"]).await, "+OK\r\n");
    assert_eq!(c.cmd(&["GET", "k"]).await, "$1\r\nv\r\n");
    assert_eq!(globex.cmd(&["PING"]).await, "+PONG\r\n", "others untouched");

    // The admin token rotates the same way.
    secret(&dir, "admin-token", "token-2");
    assert_eq!(http(admin, "POST", "/reload", Some("token-1")).await.0, 200);
    assert_eq!(http(admin, "POST", "/reload", Some("token-1")).await.0, 401);
    assert_eq!(http(admin, "POST", "/reload", Some("token-2")).await.0, 200);

    // Redis' password is in every upstream connection: like a changed URL, a rotated file
    // waits for a restart, and says so.
    secret(&dir, "redis-password", "redis-secret-2");
    let (status, body) = http(admin, "POST", "/reload", Some("token-2")).await;
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["needs_restart"], json!(["upstream"]));
    assert_eq!(c.cmd(&["GET", "k"]).await, "$1\r\nv\r\n");

    // A file emptied by mistake changes nothing and is named, its content never.
    secret(&dir, "acme", "");
    let (status, body) = http(admin, "POST", "/reload", Some("token-2")).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("tenants[0].password_file"), "{body}");
    assert!(body.contains(&format!("{} is empty", dir.0.join("acme").display())));
    assert_eq!(c.cmd(&["AUTH", "acme", "acme-2"]).await, "+OK\r\n");
}

/// The binary, started as a container starts it, with its log captured in `dir`.
fn spawn(file: &Path, dir: &TempDir) -> Child {
    let log = std::fs::File::create(dir.0.join("respite.log")).unwrap();
    Command::new(env!("CARGO_BIN_EXE_respite"))
        .arg("--config")
        .arg(file)
        .env("RUST_LOG", "debug")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// `respite healthcheck --config FILE [more]`: did it exit 0?
fn healthcheck(file: &Path, more: &[&str]) -> bool {
    Command::new(env!("CARGO_BIN_EXE_respite"))
        .arg("healthcheck")
        .arg("--config")
        .arg(file)
        .args(more)
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[tokio::test]
async fn sighup_rereads_the_files_and_the_log_holds_no_secret() {
    let redis = Redis::start_with(&["--requirepass", "redis-secret"]);
    let dir = TempDir::new();
    let file = dir.0.join("respite.toml");
    let listen = addr();
    std::fs::write(&file, config(&redis, &dir, listen, addr())).unwrap();
    assert!(!healthcheck(&file, &[]), "healthy before it runs");
    let mut child = spawn(&file, &dir);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !healthcheck(&file, &["--ready"]) {
        assert!(Instant::now() < deadline, "respite did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(healthcheck(&file, &[]));

    let mut c = Raw::connect(listen).await;
    assert_eq!(c.cmd(&["AUTH", "acme", "acme-1"]).await, "+OK\r\n");
    assert_eq!(c.cmd(&["SET", "k", "v"]).await, "+OK\r\n");
    secret(&dir, "acme", "acme-2");
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let mut c = Raw::connect(listen).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.cmd(&["AUTH", "acme", "acme-2"]).await != "+OK\r\n" {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not take the new password"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.cmd(&["AUTH", "acme", "acme-1"]).await, WRONGPASS);
    // A wrong login and a failed reload are logged too, with no secret in them.
    assert_eq!(c.cmd(&["AUTH", "acme", "guess"]).await, WRONGPASS);
    // The password typed as the tenant's name, the name as the password.
    assert_eq!(c.cmd(&["AUTH", "acme-2", "acme"]).await, WRONGPASS);
    secret(&dir, "redis-password", "");
    Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(dir.0.join("respite.log")).unwrap();
    assert!(log.contains("config reloaded"), "{log}");
    assert!(log.contains("redis-password is empty"), "{log}");
    for s in [
        "redis-secret",
        "token-1",
        "acme-1",
        "acme-2",
        "globex-secret",
        "guess",
    ] {
        assert!(!log.contains(s), "{s} is in the log:\n{log}");
    }
}

/// `respite check-config` on `file`: its exit code and what it printed, or None if it was
/// still running after 5 s (killed then).
fn check_config(file: &Path) -> Option<(i32, String)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_respite"))
        .arg("check-config")
        .arg(file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    Some((out.status.code().unwrap_or(-1), text.into_owned()))
}

/// A secret "file" that is a FIFO (or any file that is not a regular one) is refused at
/// once: opening a FIFO waits for a writer that may never come, and a wait there hung
/// check-config, and a SIGHUP's reload for good (no later SIGHUP was ever heard).
#[tokio::test]
async fn a_secret_file_that_is_a_fifo_is_refused_never_waited_on() {
    let redis = Redis::start_with(&["--requirepass", "redis-secret"]);
    let dir = TempDir::new();
    let file = dir.0.join("respite.toml");
    let listen = addr();
    std::fs::write(&file, config(&redis, &dir, listen, addr())).unwrap();
    // acme's password "file": a FIFO no one writes to.
    let fifo = dir.0.join("acme");
    std::fs::remove_file(&fifo).unwrap();
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let (code, text) = check_config(&file).expect("check-config waited on the FIFO");
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("tenants[0].password_file") && text.contains("not a regular file"),
        "{text}"
    );

    // Running: a reload to the FIFO is refused, and the next SIGHUP still reloads.
    std::fs::remove_file(&fifo).unwrap();
    secret(&dir, "acme", "acme-1");
    let mut child = spawn(&file, &dir);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !healthcheck(&file, &["--ready"]) {
        assert!(Instant::now() < deadline, "respite did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::remove_file(&fifo).unwrap();
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let hup = || {
        let sent = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    };
    hup();
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::remove_file(&fifo).unwrap();
    secret(&dir, "acme", "acme-2");
    hup();
    let mut c = Raw::connect(listen).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut reloaded = false;
    while !reloaded && Instant::now() < deadline {
        reloaded = c.cmd(&["AUTH", "acme", "acme-2"]).await == "+OK\r\n";
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(reloaded, "the SIGHUP after the FIFO was never heard");
    let log = std::fs::read_to_string(dir.0.join("respite.log")).unwrap();
    assert!(log.contains("not a regular file"), "{log}");
}
