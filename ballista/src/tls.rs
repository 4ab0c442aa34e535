//! Mutual TLS on the scheduler's and executors' listeners (docs/ballista-tls.md).
//!
//! A connection is accepted only when the TLS handshake succeeds with a client
//! certificate that chains to the cluster's CA **and** whose SHA-256 fingerprint is on
//! this process's allowlist; anything else (a stock Ballista client speaking plain
//! HTTP/2, a TLS client without a certificate, a certificate of another CA or one the
//! CA signed but nobody listed) is refused before a byte of gRPC is read. Each listed
//! certificate has a role, `executor` or `client`, and the scheduler serves each RPC
//! to one role only ([`RoleGate`]): a client cannot poll for other jobs' tasks (their
//! plans carry the entity rows) and an executor cannot submit jobs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use quiver_featurestore::offline::ClusterTls;
use quiver_featurestore::offline::tls::{ensure_crypto_provider, parse_certs, parse_key, read_pem};
use rustls::pki_types::CertificateDer;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use sha2::Digest;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::Error;

/// The most entries an allowlist may hold.
pub const MAX_ALLOWLIST_ENTRIES: usize = 10_000;
/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// The most handshakes in progress at once; connections beyond it are dropped.
pub const MAX_HANDSHAKES: usize = 256;
/// The most handshakes in progress at once from one address, so one host cannot hold
/// every slot with idle connections.
pub const MAX_HANDSHAKES_PER_ADDRESS: usize = 16;

/// What a certificate on the allowlist may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// An executor: polls the scheduler for tasks, reports their status, serves and
    /// fetches shuffle partitions.
    Executor,
    /// A client (`quiver history`/`materialize --engine`, `quiver serve`): submits
    /// jobs, follows them, fetches their results from the executors.
    Client,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Executor => "executor",
            Role::Client => "client",
        })
    }
}

/// The certificates a listener accepts, by SHA-256 fingerprint of the DER
/// certificate, each with its role and a name for logs.
///
/// The file holds one entry per line, `ROLE FINGERPRINT NAME`, `#` starting a
/// comment; the fingerprint is hex with or without colons, as
/// `openssl x509 -noout -fingerprint -sha256 -in cert.pem` prints it:
///
/// ```
/// use quiver_ballista::tls::Allowlist;
/// let text = "\
/// ## quiver's Ballista cluster
/// executor 4F:1A:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:01 executor-1
/// client   4f1a000000000000000000000000000000000000000000000000000000000002 quiver-serve
/// ";
/// let allow = Allowlist::parse(text, "allow.txt").unwrap();
/// assert_eq!(allow.len(), 2);
/// assert!(Allowlist::parse("admin 00 x", "allow.txt").is_err());
/// ```
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    entries: HashMap<[u8; 32], (Role, String)>,
}

impl Allowlist {
    /// Parse the allowlist text of the file `origin` (named in errors with the line).
    pub fn parse(text: &str, origin: &str) -> Result<Self, Error> {
        let mut entries = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let at = || format!("{origin}:{}", i + 1);
            let mut words = line.split_whitespace();
            let (role, print, name) = (words.next(), words.next(), words.next());
            let (Some(role), Some(print)) = (role, print) else {
                return Err(Error::Config(format!(
                    "{}: expected `ROLE SHA256-FINGERPRINT NAME`",
                    at()
                )));
            };
            let role = match role {
                "executor" => Role::Executor,
                "client" => Role::Client,
                other => {
                    return Err(Error::Config(format!(
                        "{}: role `{other}`: expected `executor` or `client`",
                        at()
                    )));
                }
            };
            let hex_digits: String = print.chars().filter(|c| *c != ':').collect();
            let bytes = hex::decode(&hex_digits)
                .ok()
                .filter(|b| b.len() == 32)
                .ok_or_else(|| {
                    Error::Config(format!(
                        "{}: `{print}` is not a SHA-256 fingerprint (64 hex digits)",
                        at()
                    ))
                })?;
            let mut key = [0u8; 32];
            key.copy_from_slice(&bytes);
            let name = name.unwrap_or(print).to_owned();
            if words.next().is_some() {
                return Err(Error::Config(format!(
                    "{}: expected `ROLE SHA256-FINGERPRINT NAME` (a name has no spaces)",
                    at()
                )));
            }
            if entries.insert(key, (role, name)).is_some() {
                return Err(Error::Config(format!("{}: fingerprint listed twice", at())));
            }
            if entries.len() > MAX_ALLOWLIST_ENTRIES {
                return Err(Error::Config(format!(
                    "{origin}: more than {MAX_ALLOWLIST_ENTRIES} entries"
                )));
            }
        }
        if entries.is_empty() {
            return Err(Error::Config(format!(
                "{origin}: no certificate listed; a cluster that accepts nobody cannot run"
            )));
        }
        Ok(Self { entries })
    }

    /// Read and parse the allowlist file at `path` (at most 1 MiB).
    pub fn load(path: &Path) -> Result<Self, Error> {
        let bytes = read_pem(path, "allowlist")?;
        let text = String::from_utf8(bytes)
            .map_err(|_| Error::Config(format!("{}: not UTF-8", path.display())))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// An allowlist of the certificates in `pem` (PEM), each with `role` and `name`
    /// (tests and tools building a list from certificate files).
    pub fn with_pem(mut self, pem: &[u8], role: Role, name: &str) -> Result<Self, Error> {
        for cert in parse_certs(pem, name)? {
            self.entries
                .insert(fingerprint(&cert), (role, name.to_owned()));
        }
        Ok(self)
    }

    /// How many certificates are listed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is listed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The role and name of `cert`, if it is listed.
    pub fn lookup(&self, cert: &CertificateDer<'_>) -> Option<&(Role, String)> {
        self.entries.get(&fingerprint(cert))
    }
}

/// The SHA-256 fingerprint of a DER certificate.
pub fn fingerprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    sha2::Sha256::digest(cert.as_ref()).into()
}

/// WebPKI verification against the cluster's CA, then the allowlist.
#[derive(Debug)]
struct Allowlisted {
    chain: Arc<dyn ClientCertVerifier>,
    allow: Arc<Allowlist>,
}

impl ClientCertVerifier for Allowlisted {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.chain
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.allow.lookup(end_entity).is_none() {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// A listener's TLS: this process's certificate, the cluster's CA and the allowlist.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
    allow: Arc<Allowlist>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("allowlisted", &self.allow.len())
            .finish()
    }
}

impl ServerTls {
    /// Serve with `identity`'s certificate and key, accepting the clients on `allow`
    /// whose certificates chain to `identity`'s CA.
    pub fn new(identity: &ClusterTls, allow: Allowlist) -> Result<Self, Error> {
        ensure_crypto_provider();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for ca in parse_certs(identity.ca_pem(), "cluster CA")? {
            roots
                .add(ca)
                .map_err(|e| Error::Config(format!("cluster CA: {e}")))?;
        }
        let chain = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| Error::Config(format!("cluster CA: {e}")))?;
        let allow = Arc::new(allow);
        let verifier = Arc::new(Allowlisted {
            chain,
            allow: allow.clone(),
        });
        let certs = parse_certs(identity.cert_pem(), "certificate")?;
        let key = parse_key(identity.key_pem(), "key")?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("TLS: {e}")))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| Error::Config(format!("certificate and key: {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            allow,
        })
    }

    /// The connections of `listener` that complete the handshake with a listed
    /// certificate, as tonic's `serve_with_incoming` takes them. Handshakes run
    /// concurrently (at most [`MAX_HANDSHAKES`], each within [`HANDSHAKE_DEADLINE`]);
    /// refusals are logged with the peer's address and the reason.
    pub fn incoming(
        &self,
        listener: TcpListener,
    ) -> impl futures::Stream<Item = std::io::Result<TlsIo>> + Send + 'static {
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<TlsIo>>(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.clone());
        let allow = self.allow.clone();
        let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        let per_address: PerAddress = Arc::default();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    () = tx.closed() => return,
                };
                let (tcp, addr) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                    tracing::debug!(%addr, "dropped: {MAX_HANDSHAKES} TLS handshakes already in progress");
                    continue;
                };
                let Some(slot) = AddressSlot::take(&per_address, addr.ip()) else {
                    tracing::debug!(%addr, "dropped: {MAX_HANDSHAKES_PER_ADDRESS} TLS handshakes from this address in progress");
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, tx, allow) = (acceptor.clone(), tx.clone(), allow.clone());
                tokio::spawn(async move {
                    let _permit = (permit, slot);
                    match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let listed = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .and_then(|c| allow.lookup(c).cloned());
                            // The verifier refused every certificate not listed.
                            let Some((role, name)) = listed else { return };
                            tracing::debug!(%addr, %role, %name, "TLS connection accepted");
                            let peer = Peer { addr, role, name };
                            let _ = tx.send(Ok(TlsIo { stream, peer })).await;
                        }
                        // A port probe (connect, then close) is not worth a warning.
                        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                            tracing::debug!(%addr, "connection closed before a TLS handshake")
                        }
                        Ok(Err(e)) => tracing::warn!(%addr, error = %e, "TLS handshake refused"),
                        Err(_) => tracing::warn!(
                            %addr,
                            "TLS handshake not finished within {HANDSHAKE_DEADLINE:?}; dropped"
                        ),
                    }
                });
            }
        });
        futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|io| (io, rx)) },
        )
    }
}

type PerAddress = Arc<std::sync::Mutex<HashMap<std::net::IpAddr, usize>>>;

/// One address's share of the handshakes in progress, given back when dropped.
struct AddressSlot {
    counts: PerAddress,
    ip: std::net::IpAddr,
}

impl AddressSlot {
    fn take(counts: &PerAddress, ip: std::net::IpAddr) -> Option<Self> {
        let mut map = counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= MAX_HANDSHAKES_PER_ADDRESS {
            return None;
        }
        *n += 1;
        Some(Self {
            counts: counts.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Who is on the other end of an accepted connection (in each request's extensions).
#[derive(Debug, Clone)]
pub struct Peer {
    /// The peer's address.
    pub addr: SocketAddr,
    /// Its role on the allowlist.
    pub role: Role,
    /// Its name on the allowlist.
    pub name: String,
}

/// An accepted TLS connection with its [`Peer`].
pub struct TlsIo {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: Peer,
}

impl tonic::transport::server::Connected for TlsIo {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The role a scheduler RPC is served to (`None`: an RPC quiver's cluster does not
/// serve to anyone).
pub fn scheduler_rpc_role(path: &str) -> Option<Role> {
    let method = path.strip_prefix("/ballista.protobuf.SchedulerGrpc/")?;
    match method {
        "PollWork"
        | "RegisterExecutor"
        | "HeartBeatFromExecutor"
        | "UpdateTaskStatus"
        | "ExecutorStopped" => Some(Role::Executor),
        "ExecuteQuery"
        | "ExecuteQueryPush"
        | "GetJobStatus"
        | "GetJobMetrics"
        | "CancelJob"
        | "CleanJobData"
        | "CreateUpdateSession"
        | "RemoveSession" => Some(Role::Client),
        _ => None,
    }
}

/// A service that serves each request only to the peer whose allowlisted role
/// `rule` names for the request's path; others get `PERMISSION_DENIED`. A request
/// without a [`Peer`] (not from [`ServerTls::incoming`]) is refused too.
#[derive(Clone)]
pub struct RoleGate<S> {
    inner: S,
    rule: fn(&str) -> Option<Role>,
}

impl<S> RoleGate<S> {
    /// Wrap `inner`.
    pub fn new(inner: S, rule: fn(&str) -> Option<Role>) -> Self {
        Self { inner, rule }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for RoleGate<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower_service::Service<http::Request<B>> for RoleGate<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        let needed = (self.rule)(path);
        let peer = req.extensions().get::<Peer>();
        match (needed, peer) {
            (Some(role), Some(peer)) if peer.role == role => Box::pin(self.inner.call(req)),
            (needed, peer) => {
                let who = peer.map_or_else(
                    || "an unauthenticated connection".to_owned(),
                    |p| format!("{} `{}` ({})", p.role, p.name, p.addr),
                );
                let what = match needed {
                    Some(role) => format!("{path} is served to {role}s only"),
                    None => format!("{path} is not served by quiver's scheduler"),
                };
                tracing::warn!(%who, %what, "request refused");
                let status =
                    tonic::Status::permission_denied(format!("{what}; the caller is {who}"));
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_errors_name_the_line() {
        let err = Allowlist::parse("# c\nexecutor zz e1\n", "allow.txt").unwrap_err();
        assert!(err.to_string().contains("allow.txt:2"), "{err}");
        let good = format!("client {} c", "ab".repeat(32));
        let err = Allowlist::parse(&format!("{good}\n{good}\n"), "a").unwrap_err();
        assert!(err.to_string().contains("listed twice"), "{err}");
        assert!(Allowlist::parse("\n# nothing\n", "a").is_err());
        assert_eq!(Allowlist::parse(&good, "a").unwrap().len(), 1);
    }

    #[test]
    fn every_scheduler_rpc_has_one_role_and_others_none() {
        assert_eq!(
            scheduler_rpc_role("/ballista.protobuf.SchedulerGrpc/PollWork"),
            Some(Role::Executor)
        );
        assert_eq!(
            scheduler_rpc_role("/ballista.protobuf.SchedulerGrpc/ExecuteQuery"),
            Some(Role::Client)
        );
        assert_eq!(
            scheduler_rpc_role("/ballista.protobuf.SchedulerGrpc/Other"),
            None
        );
        assert_eq!(scheduler_rpc_role("/grpc.health.v1.Health/Check"), None);
    }
}
