//! The bytes' way in and out of respite: plain TCP or TLS (rustls with ring), for clients
//! and for Redis. Imports nothing of the crate.
//!
//! - [`server_config`] and [`client_config`] read PEM files into rustls configs. check-config
//!   calls them too, so a certificate that does not load is a config error, not a surprise
//!   at the first connection. [`ServerTls`] holds the listener's config, replaced on reload.
//! - [`ClientStream`] is an accepted client connection, split into a [`ClientReader`] and a
//!   [`ClientWriter`] for the session loop; [`Stream`] is one connection to Redis.
//!
//! TLS buffers what it encrypts: a write can take all of the plaintext and still hold
//! ciphertext the socket did not take. Both writers therefore say when they hold such bytes
//! ([`ClientWriter::unsent`], [`Stream::unsent`]), and their callers go on waiting to write
//! until it is gone, as they do for plaintext still in their own buffers; a send with
//! nothing new to write flushes.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{ready, Context, Poll, Waker};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

/// Why TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    #[error("client_ca_file: {0}")]
    ClientCa(String),
}

fn file_error(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Past this a file is no certificate, key or CA bundle (a log named by mistake).
const MAX_KEY_FILE_BYTES: u64 = 4 << 20;

/// The bytes of a certificate, key or CA file. Anything but a regular file is refused,
/// and opening never waits: a FIFO named by mistake would otherwise hold up check-config,
/// or a reload (and with it every session of its thread), until someone writes to it.
pub fn read_key_file(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut options = std::fs::File::options();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {MAX_KEY_FILE_BYTES} bytes"),
        ));
    }
    Ok(bytes)
}

/// Every certificate in a PEM file; an empty file or one with none is an error.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_key_file(path).map_err(|e| file_error(path, e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// A trust store of the certificates in a PEM file.
fn roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(path)? {
        roots
            .add(cert)
            .map_err(|e| file_error(path, format!("not a CA certificate ({e})")))?;
    }
    Ok(roots)
}

/// The TLS listener's config: `cert_file` (chain, leaf first) and `key_file` presented,
/// and with `client_ca_file` a certificate signed by that CA required of every client.
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
    client_ca_file: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certificates(cert_file)?;
    let pem = read_key_file(key_file).map_err(|e| file_error(key_file, e))?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            file_error(key_file, "no PEM private key in the file")
        }
        e => file_error(key_file, e),
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca_file {
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca)?),
                provider(),
            )
            .build()
            .map_err(|e| TlsError::ClientCa(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    // with_single_cert checks that the key is the certificate's.
    Ok(Arc::new(builder.with_single_cert(chain, key)?))
}

/// The config for connections to a `rediss://` Redis: its certificate must chain to
/// `ca_file` when given, else to a CA the system trusts.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let roots = match ca_file {
        Some(ca) => roots(ca)?,
        None => {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(
                    "no CA certificates found in the system's store: a rediss:// Redis is \
                     trusted only through upstream.ca_file"
                );
            }
            roots
        }
    };
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The TLS listener's settings in force; a reload puts new ones in for the connections
/// accepted after it.
pub struct ServerTls {
    config: RwLock<Arc<rustls::ServerConfig>>,
    /// `tenant_from_cert`: the client certificate names the connection's tenant.
    pub tenant_from_cert: bool,
}

impl ServerTls {
    pub fn new(config: Arc<rustls::ServerConfig>, tenant_from_cert: bool) -> ServerTls {
        ServerTls {
            config: RwLock::new(config),
            tenant_from_cert,
        }
    }

    pub fn replace(&self, config: Arc<rustls::ServerConfig>) {
        *self.config.write().unwrap() = config;
    }

    /// The TLS handshake on an accepted connection.
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<ClientStream> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.read().unwrap().clone());
        let tls = acceptor.accept(tcp).await?;
        Ok(ClientStream::Tls(Box::new(tls)))
    }
}

/// Whether a failed handshake failed on the client's certificate: one that does not verify,
/// or none where mutual TLS asks for one.
pub fn certificate_refused(e: &io::Error) -> bool {
    let rustls = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
    matches!(
        rustls,
        Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)
    )
}

/// The names a client certificate gives, in the order a tenant is looked for among them:
/// the subject's common name, then each DNS name (subjectAltName).
pub fn certificate_names(cert: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_string());
            }
        }
    }
    names
}

type ServerTlsStream = tokio_rustls::server::TlsStream<TcpStream>;

/// An accepted client connection.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<ServerTlsStream>),
}

impl ClientStream {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            ClientStream::Plain(s) => s,
            ClientStream::Tls(s) => s.get_ref().0,
        }
    }

    /// The names in the certificate the client presented (mutual TLS), if it did.
    pub fn certificate_names(&self) -> Vec<String> {
        match self {
            ClientStream::Plain(_) => Vec::new(),
            ClientStream::Tls(s) => match s.get_ref().1.peer_certificates() {
                Some([leaf, ..]) => certificate_names(leaf),
                _ => Vec::new(),
            },
        }
    }

    /// A reader and a writer the session can wait on at once. A plain socket splits for
    /// free; a TLS one shares its state between the two halves behind a lock only this
    /// connection's task ever takes.
    pub fn split(self) -> (ClientReader, ClientWriter) {
        match self {
            ClientStream::Plain(s) => {
                let (r, w) = s.into_split();
                (ClientReader::Plain(r), ClientWriter::plain(w))
            }
            ClientStream::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (
                    ClientReader::Tls(r),
                    ClientWriter {
                        half: WriteHalf::Tls(w),
                        unsent: false,
                    },
                )
            }
        }
    }
}

/// The reading half of a client connection.
pub enum ClientReader {
    Plain(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<ServerTlsStream>),
}

impl AsyncRead for ClientReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientReader::Plain(r) => Pin::new(r).poll_read(cx, buf),
            ClientReader::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

enum WriteHalf {
    Plain(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<ServerTlsStream>),
}

/// The writing half of a client connection.
pub struct ClientWriter {
    half: WriteHalf,
    /// TLS: ciphertext made and not yet taken by the socket.
    unsent: bool,
}

impl ClientWriter {
    fn plain(w: OwnedWriteHalf) -> ClientWriter {
        ClientWriter {
            half: WriteHalf::Plain(w),
            unsent: false,
        }
    }

    /// Writes what the socket takes now, without waiting (`WouldBlock` when nothing).
    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.half {
            WriteHalf::Plain(w) => w.try_write(buf),
            WriteHalf::Tls(w) => try_now(|cx| poll_send(w, cx, buf, &mut self.unsent)),
        }
    }

    /// Bytes the connection holds that the socket has not taken yet (TLS only).
    pub fn unsent(&self) -> bool {
        self.unsent
    }

    /// Writes some of `buf` (`Ok(n)`, n > 0), or with `buf` empty sends what TLS still
    /// holds (`Ok(0)`).
    pub async fn send(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.half {
            WriteHalf::Plain(w) => {
                use tokio::io::AsyncWriteExt;
                match w.write(buf).await? {
                    0 if !buf.is_empty() => Err(io::ErrorKind::WriteZero.into()),
                    n => Ok(n),
                }
            }
            WriteHalf::Tls(w) => {
                std::future::poll_fn(|cx| poll_send(w, cx, buf, &mut self.unsent)).await
            }
        }
    }

    /// Writes all of `buf` and whatever TLS holds; for a connection's last words.
    pub async fn send_all(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let n = self.send(buf).await?;
            buf = &buf[n..];
        }
        while self.unsent {
            self.send(&[]).await?;
        }
        Ok(())
    }

    /// Ends the connection's output cleanly: TLS sends its close_notify.
    pub async fn close(&mut self) {
        use tokio::io::AsyncWriteExt;
        if let WriteHalf::Tls(w) = &mut self.half {
            let _ = w.shutdown().await;
        }
    }
}

/// Polls once with a waker that wakes nothing: what is ready now, `WouldBlock` otherwise.
/// The next wait polls again with the task's own waker, which registers it.
fn try_now(poll: impl FnOnce(&mut Context<'_>) -> Poll<io::Result<usize>>) -> io::Result<usize> {
    match poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(r) => r,
        Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
    }
}

/// Writes some of `buf` and sends as much of the ciphertext as the socket takes; with
/// `buf` empty, only the latter (`Ok(0)` once all of it is gone). `unsent` says whether
/// ciphertext is left.
fn poll_send<W: AsyncWrite + Unpin>(
    w: &mut W,
    cx: &mut Context<'_>,
    buf: &[u8],
    unsent: &mut bool,
) -> Poll<io::Result<usize>> {
    if buf.is_empty() {
        ready!(Pin::new(&mut *w).poll_flush(cx))?;
        *unsent = false;
        return Poll::Ready(Ok(0));
    }
    let n = ready!(Pin::new(&mut *w).poll_write(cx, buf))?;
    if n == 0 {
        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
    }
    // The write took the plaintext; whatever the socket did not take of its ciphertext
    // waits for the next send.
    *unsent = !matches!(Pin::new(&mut *w).poll_flush(cx), Poll::Ready(Ok(())));
    Poll::Ready(Ok(n))
}

type ClientTlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// One connection to Redis.
pub struct Stream {
    inner: StreamInner,
    unsent: bool,
}

enum StreamInner {
    Plain(TcpStream),
    Tls(Box<ClientTlsStream>),
}

impl Stream {
    pub fn plain(tcp: TcpStream) -> Stream {
        Stream {
            inner: StreamInner::Plain(tcp),
            unsent: false,
        }
    }

    /// The TLS handshake with Redis, with `host` as SNI and as the name its certificate
    /// must carry.
    pub async fn tls(
        tcp: TcpStream,
        config: Arc<rustls::ClientConfig>,
        host: &str,
    ) -> io::Result<Stream> {
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        Ok(Stream {
            inner: StreamInner::Tls(Box::new(tls)),
            unsent: false,
        })
    }

    /// Writes what the socket takes now, without waiting (`WouldBlock` when nothing).
    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            StreamInner::Plain(s) => s.try_write(buf),
            StreamInner::Tls(s) => try_now(|cx| poll_send(&mut **s, cx, buf, &mut self.unsent)),
        }
    }

    /// Bytes the connection holds that the socket has not taken yet (TLS only).
    pub fn unsent(&self) -> bool {
        self.unsent
    }

    /// Whether the connection is still open and quiet, looked at without waiting: a
    /// connection at rest (idle in a pool) that Redis closed reads its end, and one with
    /// bytes nobody asked for is no use either.
    pub fn open(&mut self) -> bool {
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(&mut *self)
            .poll_read(&mut cx, &mut buf)
            .is_pending()
    }

    /// Writes some of `buf` (or, `buf` empty, sends what TLS holds): the bytes taken, 0
    /// when only TLS' ciphertext was sent.
    pub fn poll_send(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.inner {
            StreamInner::Plain(s) => match ready!(Pin::new(s).poll_write(cx, buf)) {
                Ok(0) if !buf.is_empty() => Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                r => Poll::Ready(r),
            },
            StreamInner::Tls(s) => poll_send(&mut **s, cx, buf, &mut self.unsent),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            StreamInner::Plain(s) => Pin::new(s).poll_read(cx, buf),
            StreamInner::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_send(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &mut this.inner {
            StreamInner::Plain(s) => Pin::new(s).poll_flush(cx),
            StreamInner::Tls(s) => {
                ready!(Pin::new(&mut **s).poll_flush(cx))?;
                this.unsent = false;
                Poll::Ready(Ok(()))
            }
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            StreamInner::Plain(s) => Pin::new(s).poll_shutdown(cx),
            StreamInner::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes every write, and whose flush is not done until `ready`: TLS
    /// holding ciphertext the socket has not taken.
    struct Holding {
        ready: bool,
        written: Vec<u8>,
    }

    impl AsyncWrite for Holding {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.get_mut().written.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            match self.ready {
                true => Poll::Ready(Ok(())),
                false => Poll::Pending,
            }
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn a_send_says_what_tls_still_holds_until_it_is_sent() {
        let mut w = Holding {
            ready: false,
            written: Vec::new(),
        };
        let mut unsent = false;
        let mut cx = Context::from_waker(Waker::noop());
        // The plaintext is taken, the ciphertext is not gone: unsent.
        let sent = poll_send(&mut w, &mut cx, b"+OK\r\n", &mut unsent);
        assert!(matches!(sent, Poll::Ready(Ok(5))));
        assert!(unsent);
        // A send of nothing waits for it, then says so.
        assert!(poll_send(&mut w, &mut cx, b"", &mut unsent).is_pending());
        assert!(unsent);
        w.ready = true;
        assert!(matches!(
            poll_send(&mut w, &mut cx, b"", &mut unsent),
            Poll::Ready(Ok(0))
        ));
        assert!(!unsent);
        // Taken and sent at once: nothing held.
        assert!(matches!(
            poll_send(&mut w, &mut cx, b"+PONG\r\n", &mut unsent),
            Poll::Ready(Ok(7))
        ));
        assert!(!unsent);
        assert_eq!(w.written, b"+OK\r\n+PONG\r\n");
    }

    /// A TLS connection whose peer reads nothing, over sockets with small buffers: the
    /// writer takes all of a 32 KiB reply, holds what the socket did not take, says so, and
    /// sends it once the peer reads.
    #[tokio::test]
    async fn a_client_writer_holds_ciphertext_until_the_socket_takes_it() {
        use tokio::io::AsyncReadExt;
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let (connected, accepted) = tokio::join!(socket.connect(addr), listener.accept());
        let (tcp, _) = accepted.unwrap();
        // SAFETY: setsockopt on a socket this test owns, with a valid int.
        unsafe {
            use std::os::fd::AsRawFd;
            let size: libc::c_int = 4096;
            libc::setsockopt(
                tcp.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                &size as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        let tls = ServerTls::new(Arc::new(server), false);
        let name = ServerName::try_from("localhost").unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let (mut peer, accepted) =
            tokio::join!(connector.connect(name, connected.unwrap()), tls.accept(tcp));
        let (_reader, mut writer) = accepted.unwrap().split();
        let peer = peer.as_mut().unwrap();

        let reply = vec![b'x'; 32 * 1024];
        assert_eq!(writer.try_write(&reply).unwrap(), reply.len());
        assert!(
            writer.unsent(),
            "the sockets cannot have taken 32 KiB of ciphertext"
        );
        let read_all = async {
            let mut got = vec![0u8; reply.len()];
            peer.read_exact(&mut got).await.unwrap();
            got
        };
        let (sent, got) = tokio::join!(writer.send(&[]), read_all);
        assert_eq!(sent.unwrap(), 0);
        assert!(!writer.unsent());
        assert_eq!(got, reply);
    }
}
