//! `respite healthcheck`: asks the admin listener for `/healthz` (or `/readyz`) from the same
//! host, for a container's HEALTHCHECK. The runtime image (debian:bookworm-slim) has no curl
//! or wget, and installing one would add megabytes and a package to keep patched for one GET;
//! respite already is in the image. Plain HTTP/1.1 over std's blocking `TcpStream`: no async
//! runtime, nothing more to link.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

/// The `[admin] listen` address of the config file at `path`, read without validating the
/// rest of the file or reading its secrets: a probe runs every few seconds and needs only
/// this.
pub fn admin_listen(path: &Path) -> Result<SocketAddr, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| format!("{shown}: {e}"))?;
    let listen = table
        .get("admin")
        .and_then(|a| a.get("listen"))
        .and_then(|l| l.as_str())
        .ok_or_else(|| format!("{shown} has no [admin] listen: there is nothing to ask"))?;
    listen
        .parse()
        .map_err(|_| format!("{shown}: admin.listen {listen:?} is not an address"))
}

/// Where to reach a listener from its own host: one on every address (`0.0.0.0`, `::`)
/// answers on loopback.
pub fn local(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// GETs `path` of the admin listener at `addr`: `Ok` on 200, else why not (the status line
/// and the first line of the body, or the connection's error), all within `timeout`.
pub fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(), String> {
    let url = format!("http://{addr}{path}");
    let failed = |e: std::io::Error| format!("{url}: {e}");
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(failed)?;
    stream.set_read_timeout(Some(timeout)).map_err(failed)?;
    stream.set_write_timeout(Some(timeout)).map_err(failed)?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(failed)?;
    // The status line and a little of the body are all a probe needs.
    let mut reply = Vec::new();
    stream.take(4096).read_to_end(&mut reply).map_err(failed)?;
    let reply = String::from_utf8_lossy(&reply);
    let status = reply.lines().next().unwrap_or("");
    if status.starts_with("HTTP/1.") && status.split(' ').nth(1) == Some("200") {
        return Ok(());
    }
    let body = reply
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b.lines().next().unwrap_or(""));
    Err(format!("{url} answered {status:?} {body}")
        .trim_end()
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listener_is_asked_on_loopback() {
        let at = |s: &str| local(s.parse().unwrap()).to_string();
        assert_eq!(at("0.0.0.0:9121"), "127.0.0.1:9121");
        assert_eq!(at("[::]:9121"), "[::1]:9121");
        assert_eq!(at("10.1.2.3:9121"), "10.1.2.3:9121");
    }

    /// One HTTP exchange on a listener of this test: the request it got comes back.
    fn serve(reply: &'static str) -> (SocketAddr, std::thread::JoinHandle<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = [0u8; 1024];
            let n = s.read(&mut got).unwrap();
            s.write_all(reply.as_bytes()).unwrap();
            String::from_utf8_lossy(&got[..n]).into_owned()
        });
        (addr, server)
    }

    #[test]
    fn only_a_200_is_healthy() {
        let wait = Duration::from_secs(5);
        let (addr, server) = serve("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n");
        assert_eq!(probe(addr, "/healthz", wait), Ok(()));
        assert!(server
            .join()
            .unwrap()
            .starts_with("GET /healthz HTTP/1.1\r\n"));

        let (addr, _server) =
            serve("HTTP/1.1 503 Service Unavailable\r\n\r\nRedis does not answer\n");
        let e = probe(addr, "/readyz", wait).unwrap_err();
        assert!(
            e.ends_with(
                "/readyz answered \"HTTP/1.1 503 Service Unavailable\" Redis does not answer"
            ),
            "{e}"
        );

        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let e = probe(addr, "/healthz", wait).unwrap_err();
        assert!(e.starts_with(&format!("http://{addr}/healthz: ")), "{e}");
    }

    #[test]
    fn the_address_comes_from_the_config_file() {
        let dir = std::env::temp_dir().join(format!("respite-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("respite.toml");
        // Not a valid config (a secret file that is not there): the probe does not care.
        std::fs::write(
            &file,
            "[admin]\nlisten = \"0.0.0.0:9121\"\ntoken_file = \"/nowhere\"\n",
        )
        .unwrap();
        assert_eq!(admin_listen(&file).unwrap().to_string(), "0.0.0.0:9121");
        std::fs::write(&file, "[server]\nlisten = \"127.0.0.1:6380\"\n").unwrap();
        assert!(admin_listen(&file)
            .unwrap_err()
            .contains("has no [admin] listen"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
