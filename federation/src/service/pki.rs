//! Keys and certificates of a federation: a CA, the coordinator's TLS certificate,
//! and per bank a TLS client certificate (common name = bank name) and an Ed25519
//! identity that signs its protocol messages. `quiver-fed init` writes them; a real
//! deployment brings its own CA and keeps each bank's private files at that bank.

use std::path::{Path, PathBuf};

use ring::signature::KeyPair;
use serde::{Deserialize, Serialize};

use super::{ServiceError, io_err};

/// TLS files of one party (PEM paths).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// CA certificate that signed every party's certificate.
    pub ca: PathBuf,
    /// This party's certificate.
    pub cert: PathBuf,
    /// This party's private key.
    pub key: PathBuf,
}

/// TLS material read from [`TlsFiles`].
#[derive(Debug, Clone)]
pub struct TlsPem {
    /// CA certificate.
    pub ca: Vec<u8>,
    /// Certificate.
    pub cert: Vec<u8>,
    /// Private key.
    pub key: Vec<u8>,
}

impl TlsFiles {
    /// Read the three files (relative paths against `base`).
    pub fn read(&self, base: &Path) -> Result<TlsPem, ServiceError> {
        let read = |p: &Path| {
            let p = base.join(p);
            std::fs::read(&p).map_err(|e| io_err(&p, e))
        };
        Ok(TlsPem {
            ca: read(&self.ca)?,
            cert: read(&self.cert)?,
            key: read(&self.key)?,
        })
    }
}

/// One bank of the roster: its name and Ed25519 public key (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RosterEntry {
    /// Bank name (the common name of its TLS certificate).
    pub name: String,
    /// Ed25519 public key, 64 hex digits.
    pub public_key: String,
}

/// Everything `init` made, with paths relative to its folder.
#[derive(Debug, Clone)]
pub struct Federation {
    /// Folder written.
    pub dir: PathBuf,
    /// The roster.
    pub roster: Vec<RosterEntry>,
}

/// Host names the coordinator certificate is valid for.
pub const COORDINATOR_NAMES: [&str; 3] = ["quiver-coordinator", "localhost", "127.0.0.1"];

/// Write a CA, a coordinator certificate, and per bank a client certificate and an
/// Ed25519 identity into `dir`: `ca.pem`, `coordinator.{pem,key}`, `<bank>.{pem,key}`,
/// `<bank>.identity` (PKCS#8), and `roster.json`.
pub fn init(dir: &Path, banks: &[String]) -> Result<Federation, ServiceError> {
    for b in banks {
        super::check_bank_name(b)?;
    }
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let tls = |e: rcgen::Error| ServiceError::Config(format!("certificate generation: {e}"));
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "quiver federation CA");
    let ca_key = rcgen::KeyPair::generate().map_err(tls)?;
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).map_err(tls)?;
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).map_err(|e| io_err(&p, e))
    };
    write("ca.pem", ca.pem().as_bytes())?;
    let leaf = |cn: &str, sans: Vec<String>| -> Result<(String, String), ServiceError> {
        let mut p = rcgen::CertificateParams::new(sans).map_err(tls)?;
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().map_err(tls)?;
        let cert = p.signed_by(&key, &ca).map_err(tls)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (c, k) = leaf(
        "quiver-coordinator",
        COORDINATOR_NAMES.iter().map(|s| s.to_string()).collect(),
    )?;
    write("coordinator.pem", c.as_bytes())?;
    write("coordinator.key", k.as_bytes())?;
    let rng = ring::rand::SystemRandom::new();
    let mut roster = Vec::new();
    for b in banks {
        let (c, k) = leaf(b, vec!["quiver-bank".into()])?;
        write(&format!("{b}.pem"), c.as_bytes())?;
        write(&format!("{b}.key"), k.as_bytes())?;
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| ServiceError::Config("Ed25519 key generation failed".into()))?;
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|_| ServiceError::Config("Ed25519 key generation failed".into()))?;
        write(&format!("{b}.identity"), pkcs8.as_ref())?;
        roster.push(RosterEntry {
            name: b.clone(),
            public_key: hex::encode(pair.public_key().as_ref()),
        });
    }
    write(
        "roster.json",
        &serde_json::to_vec_pretty(&roster).expect("roster serialises"),
    )?;
    Ok(Federation {
        dir: dir.to_path_buf(),
        roster,
    })
}

/// Read a bank's Ed25519 identity (PKCS#8 v2, as `init` writes).
pub fn read_identity(path: &Path) -> Result<ring::signature::Ed25519KeyPair, ServiceError> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    ring::signature::Ed25519KeyPair::from_pkcs8(&bytes).map_err(|e| {
        ServiceError::Config(format!(
            "{} is not an Ed25519 PKCS#8 key ({e})",
            path.display()
        ))
    })
}

/// Choose rustls's crypto provider (ring) for the process, once: ring and aws-lc are
/// both in the dependency tree, so rustls cannot pick one itself.
pub fn ensure_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A gRPC endpoint to the coordinator at `url` (`https://host:port`), presenting this
/// party's client certificate and trusting only the federation CA.
pub fn coordinator_endpoint(
    url: &str,
    pem: &TlsPem,
) -> Result<tonic::transport::Endpoint, ServiceError> {
    ensure_crypto_provider();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&pem.ca))
        .identity(tonic::transport::Identity::from_pem(&pem.cert, &pem.key))
        .domain_name(COORDINATOR_NAMES[0]);
    Ok(tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|e| ServiceError::Config(format!("coordinator URL `{url}`: {e}")))?
        .tls_config(tls)
        .map_err(|e| ServiceError::Config(format!("TLS: {e}")))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(30)))
}

/// The common name of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
}
