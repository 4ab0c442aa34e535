//! Mutual TLS to a Ballista cluster (docs/ballista-tls.md): the cluster's CA, this
//! process's certificate and key, and the endpoint rewrite that makes every Ballista
//! connection (to the scheduler, to an executor for results or shuffle partitions) a
//! TLS connection presenting that certificate.
//!
//! Ballista builds `http://HOST:PORT` endpoints in several places (the executor's
//! scheduler URL, the client's result fetches); tonic sends plaintext to an `http`
//! URI whatever TLS configuration it carries. So the rewrite does not add TLS to the
//! endpoint it is given: it builds a new `https` endpoint for the same authority, and
//! a connection can never leave in the clear once a process holds a [`ClusterTls`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::{Error, Result};

/// The most bytes read from one PEM file (a CA bundle, a chain, a key).
pub const MAX_PEM_BYTES: u64 = 1 << 20;

/// TLS material of one cluster member or client, PEM encoded and checked on load.
///
/// ```no_run
/// use quiver_featurestore::offline::{ClusterTls, Engine};
/// let tls = ClusterTls::from_files("ca.pem".as_ref(), "me.pem".as_ref(), "me.key".as_ref())?;
/// let engine = Engine::parse("ballista://scheduler:50050")?.with_tls(tls);
/// # Ok::<(), quiver_featurestore::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterTls {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTls")
            .field("ca", &format_args!("{} bytes", self.ca.len()))
            .field("cert", &format_args!("{} bytes", self.cert.len()))
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Read a PEM file, at most [`MAX_PEM_BYTES`].
pub fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path.display().to_string(), e))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path.display().to_string(), e))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(Error::InvalidRequest(format!(
            "{what} {}: over {MAX_PEM_BYTES} bytes",
            path.display()
        )));
    }
    Ok(bytes)
}

/// The certificates of a PEM buffer; an error naming `what` when there is none or one
/// does not parse.
pub fn parse_certs(
    pem: &[u8],
    what: &str,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::InvalidRequest(format!("{what}: not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(Error::InvalidRequest(format!(
            "{what}: no `BEGIN CERTIFICATE` block"
        )));
    }
    Ok(certs)
}

/// The private key of a PEM buffer (PKCS#8, PKCS#1 or SEC1).
pub fn parse_key(pem: &[u8], what: &str) -> Result<rustls::pki_types::PrivateKeyDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| Error::InvalidRequest(format!("{what}: no usable private key: {e}")))
}

impl ClusterTls {
    /// From PEM bytes: the cluster's CA certificate(s), this process's certificate
    /// chain and its private key. Each is parsed here, so a bad file is named at
    /// startup rather than at the first connection.
    pub fn from_pem(ca: Vec<u8>, cert: Vec<u8>, key: Vec<u8>) -> Result<Self> {
        Self::checked(ca, cert, key, Default::default())
    }

    /// From three PEM files (each at most [`MAX_PEM_BYTES`]).
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<Self> {
        Self::checked(
            read_pem(ca, "cluster CA")?,
            read_pem(cert, "certificate")?,
            read_pem(key, "key")?,
            [ca, cert, key].map(|p| format!(" {}", p.display())),
        )
    }

    fn checked(ca: Vec<u8>, cert: Vec<u8>, key: Vec<u8>, at: [String; 3]) -> Result<Self> {
        parse_certs(&ca, &format!("cluster CA{}", at[0]))?;
        parse_certs(&cert, &format!("certificate{}", at[1]))?;
        parse_key(&key, &format!("key{}", at[2]))?;
        Ok(Self { ca, cert, key })
    }

    /// The CA certificate(s), PEM.
    pub fn ca_pem(&self) -> &[u8] {
        &self.ca
    }

    /// This process's certificate chain, PEM.
    pub fn cert_pem(&self) -> &[u8] {
        &self.cert
    }

    /// This process's private key, PEM.
    pub fn key_pem(&self) -> &[u8] {
        &self.key
    }

    /// `endpoint` rebuilt as an `https` endpoint for the same authority that trusts
    /// only the cluster's CA and presents this certificate. Timeouts and keepalives are
    /// Ballista's defaults (the rebuilt endpoint cannot read those of the old one).
    pub fn secure(
        &self,
        endpoint: &tonic::transport::Endpoint,
    ) -> std::result::Result<tonic::transport::Endpoint, Box<dyn std::error::Error + Send + Sync>>
    {
        ensure_crypto_provider();
        let uri = endpoint.uri();
        let authority = uri
            .authority()
            .ok_or_else(|| format!("endpoint {uri} has no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca))
            .identity(tonic::transport::Identity::from_pem(&self.cert, &self.key))
            .domain_name(host.to_owned());
        let defaults = ballista_core::utils::GrpcClientConfig::default();
        let secured = tonic::transport::Endpoint::from_shared(format!("https://{authority}"))?
            .connect_timeout(Duration::from_secs(defaults.connect_timeout_seconds))
            .timeout(Duration::from_secs(defaults.timeout_seconds))
            .tcp_nodelay(true)
            .tcp_keepalive(Some(Duration::from_secs(defaults.tcp_keepalive_seconds)))
            .http2_keep_alive_interval(Duration::from_secs(
                defaults.http2_keepalive_interval_seconds,
            ))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true)
            .initial_connection_window_size(Some(defaults.initial_connection_window_size))
            .initial_stream_window_size(Some(defaults.initial_stream_window_size))
            .tls_config(tls)?;
        Ok(secured)
    }

    /// The rewrite as Ballista takes it (`override_create_grpc_client_endpoint`).
    pub fn endpoint_override(&self) -> ballista_core::extension::EndpointOverrideFn {
        let tls = self.clone();
        Arc::new(move |endpoint| tls.secure(&endpoint))
    }

    /// `config` with every Ballista connection made through [`Self::secure`]: a
    /// client's connections to the scheduler and executors, an executor's shuffle
    /// fetches from its peers.
    pub fn apply(
        &self,
        config: datafusion::prelude::SessionConfig,
    ) -> datafusion::prelude::SessionConfig {
        use ballista::prelude::SessionConfigExt;
        config
            .with_ballista_use_tls(true)
            .with_ballista_override_create_grpc_client_endpoint(self.endpoint_override())
    }
}

/// The endpoint override of a process without TLS: it refuses every endpoint that
/// is not on this machine, so a scheduler on loopback cannot send this process to an
/// executor elsewhere in the clear.
pub fn loopback_only() -> ballista_core::extension::EndpointOverrideFn {
    Arc::new(|endpoint| {
        let host = endpoint.uri().host().unwrap_or("");
        if is_loopback_host(host) {
            Ok(endpoint)
        } else {
            Err(format!(
                "{}: a connection beyond this machine needs mutual TLS (docs/ballista-tls.md)",
                endpoint.uri()
            )
            .into())
        }
    })
}

pub use quiver_flight_proto::ensure_crypto_provider;

/// Whether `host` (a name or an IP literal, brackets allowed) is this machine.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_recognised() {
        for h in ["127.0.0.1", "localhost", "[::1]", "::1", "127.3.2.1"] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in ["10.0.0.1", "scheduler", "0.0.0.0", "localhost.evil.com"] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn without_tls_only_loopback_endpoints_are_reached() {
        let f = loopback_only();
        assert!(
            f(tonic::transport::Endpoint::from_static(
                "http://127.0.0.1:1"
            ))
            .is_ok()
        );
        let e = f(tonic::transport::Endpoint::from_static(
            "http://10.0.0.7:50051",
        ))
        .unwrap_err();
        assert!(e.to_string().contains("10.0.0.7"), "{e}");
    }

    #[test]
    fn bad_pem_is_named() {
        let err = ClusterTls::from_pem(b"nope".to_vec(), b"".to_vec(), b"".to_vec()).unwrap_err();
        assert!(err.to_string().contains("cluster CA"), "{err}");
    }

    #[test]
    fn an_http_endpoint_is_rebuilt_as_https_for_the_same_authority() {
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let tls = ClusterTls::from_pem(
            ca.cert.pem().into_bytes(),
            ca.cert.pem().into_bytes(),
            ca.signing_key.serialize_pem().into_bytes(),
        )
        .unwrap();
        let plain = tonic::transport::Endpoint::from_static("http://10.1.2.3:50050");
        let secured = tls.secure(&plain).unwrap();
        assert_eq!(secured.uri().to_string(), "https://10.1.2.3:50050/");
    }
}
