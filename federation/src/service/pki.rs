//! Keys and certificates of a federation: a CA, the coordinator's TLS certificate,
//! and per bank a TLS client certificate (common name = bank name) and an Ed25519
//! identity that signs its protocol messages. Each bank makes its own keys
//! ([`keygen`]) and hands over only public material; the federation operator signs
//! certificates ([`ca_init`], [`ca_sign`]). [`init`] does all of it in one folder, for
//! demos and tests only.

use std::path::{Path, PathBuf};

use ring::signature::KeyPair;
use serde::{Deserialize, Serialize};

use super::{ServiceError, io_err};

/// TLS files of one party (PEM paths).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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

/// What a bank hands the federation operator: its name, its Ed25519 public key and a
/// certificate signing request for its TLS key. No private key is in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BankRequest {
    /// Bank name (becomes the certificate's common name).
    pub name: String,
    /// Ed25519 public key of the bank's protocol identity, 64 hex digits.
    pub public_key: String,
    /// PKCS#10 request (PEM) for the bank's TLS client certificate.
    pub csr: String,
}

fn tls_err(e: rcgen::Error) -> ServiceError {
    ServiceError::Config(format!("certificate: {e}"))
}

/// Write `bytes` to `dir/name`; private keys (`secret`) readable by the owner only.
fn write_file(dir: &Path, name: &str, bytes: &[u8], secret: bool) -> Result<(), ServiceError> {
    let p = dir.join(name);
    #[cfg(unix)]
    if secret {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&p)
            .map_err(|e| io_err(&p, e))?;
        return f.write_all(bytes).map_err(|e| io_err(&p, e));
    }
    let _ = secret;
    std::fs::write(&p, bytes).map_err(|e| io_err(&p, e))
}

/// At a bank, on its own machine: make its Ed25519 identity (`<bank>.identity`) and TLS
/// key (`<bank>.key`), both kept there, and write `<bank>.request.json`, the only file
/// that goes to the federation operator (`quiver-fed keygen`).
pub fn keygen(dir: &Path, bank: &str) -> Result<BankRequest, ServiceError> {
    super::check_bank_name(bank)?;
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    for f in [format!("{bank}.identity"), format!("{bank}.key")] {
        if dir.join(&f).exists() {
            return Err(ServiceError::Config(format!(
                "{} exists; refusing to overwrite a bank's private key",
                dir.join(f).display()
            )));
        }
    }
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| ServiceError::Config("Ed25519 key generation failed".into()))?;
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| ServiceError::Config("Ed25519 key generation failed".into()))?;
    let key = rcgen::KeyPair::generate().map_err(tls_err)?;
    let mut params =
        rcgen::CertificateParams::new(vec!["quiver-bank".to_string()]).map_err(tls_err)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, bank);
    let csr = params.serialize_request(&key).map_err(tls_err)?;
    let request = BankRequest {
        name: bank.to_string(),
        public_key: hex::encode(pair.public_key().as_ref()),
        csr: csr.pem().map_err(tls_err)?,
    };
    write_file(dir, &format!("{bank}.identity"), pkcs8.as_ref(), true)?;
    write_file(
        dir,
        &format!("{bank}.key"),
        key.serialize_pem().as_bytes(),
        true,
    )?;
    write_file(
        dir,
        &format!("{bank}.request.json"),
        &serde_json::to_vec_pretty(&request).expect("request serialises"),
        false,
    )?;
    Ok(request)
}

/// At the federation operator: a CA (`ca.pem`, `ca.key`, which stays with the operator)
/// and the coordinator's TLS certificate and key (`quiver-fed ca init`).
pub fn ca_init(dir: &Path) -> Result<(), ServiceError> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    if dir.join("ca.key").exists() {
        return Err(ServiceError::Config(format!(
            "{} exists; refusing to replace the federation's CA",
            dir.join("ca.key").display()
        )));
    }
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "quiver federation CA");
    let ca_key = rcgen::KeyPair::generate().map_err(tls_err)?;
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).map_err(tls_err)?;
    write_file(dir, "ca.pem", ca.pem().as_bytes(), false)?;
    write_file(dir, "ca.key", ca.key().serialize_pem().as_bytes(), true)?;
    let mut p = rcgen::CertificateParams::new(
        COORDINATOR_NAMES
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
    )
    .map_err(tls_err)?;
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "quiver-coordinator");
    let key = rcgen::KeyPair::generate().map_err(tls_err)?;
    let cert = p.signed_by(&key, &ca).map_err(tls_err)?;
    write_file(dir, "coordinator.pem", cert.pem().as_bytes(), false)?;
    write_file(dir, "coordinator.key", key.serialize_pem().as_bytes(), true)?;
    Ok(())
}

/// At the federation operator: check each bank's request (its CSR's signature, its
/// Ed25519 key), issue `<bank>.pem` with the bank's name as common name whatever the
/// CSR asked, and write `roster.json` (`quiver-fed ca sign`). Only public files result.
pub fn ca_sign(dir: &Path, requests: &[BankRequest]) -> Result<Federation, ServiceError> {
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read_to_string(&p).map_err(|e| io_err(&p, e))
    };
    let ca_key = rcgen::KeyPair::from_pem(&read("ca.key")?).map_err(tls_err)?;
    let ca = rcgen::Issuer::from_ca_cert_pem(&read("ca.pem")?, ca_key).map_err(tls_err)?;
    let mut roster = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for r in requests {
        super::check_bank_name(&r.name)?;
        if !names.insert(r.name.clone()) {
            return Err(ServiceError::Config(format!(
                "bank `{}` has two requests",
                r.name
            )));
        }
        let key = hex::decode(&r.public_key).unwrap_or_default();
        if key.len() != 32 {
            return Err(ServiceError::Config(format!(
                "request of `{}`: public_key must be 64 hex digits (Ed25519)",
                r.name
            )));
        }
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(&r.csr).map_err(|e| {
            ServiceError::Config(format!(
                "request of `{}`: the certificate request does not verify ({e})",
                r.name
            ))
        })?;
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, r.name.as_str());
        csr.params.distinguished_name = dn;
        csr.params.subject_alt_names = vec![rcgen::SanType::DnsName(
            "quiver-bank".try_into().map_err(tls_err)?,
        )];
        csr.params.is_ca = rcgen::IsCa::NoCa;
        let cert = csr.signed_by(&ca).map_err(tls_err)?;
        write_file(
            dir,
            &format!("{}.pem", r.name),
            cert.pem().as_bytes(),
            false,
        )?;
        roster.push(RosterEntry {
            name: r.name.clone(),
            public_key: r.public_key.clone(),
        });
    }
    write_file(
        dir,
        "roster.json",
        &serde_json::to_vec_pretty(&roster).expect("roster serialises"),
        false,
    )?;
    Ok(Federation {
        dir: dir.to_path_buf(),
        roster,
    })
}

/// **Demo and test convenience only**: one folder holding every party's private keys
/// (`quiver-fed init-demo`, `simulate`, the fraud example). It runs [`ca_init`], then
/// [`keygen`] for each bank and [`ca_sign`], in one place. A real federation runs
/// `keygen` at each bank and `ca init` / `ca sign` at the operator, so no one holds
/// another bank's keys.
pub fn init(dir: &Path, banks: &[String]) -> Result<Federation, ServiceError> {
    for b in banks {
        super::check_bank_name(b)?;
    }
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    // A demo folder is remade from scratch each time.
    for f in ["ca.key"].into_iter().map(String::from).chain(
        banks
            .iter()
            .flat_map(|b| [format!("{b}.identity"), format!("{b}.key")]),
    ) {
        let _ = std::fs::remove_file(dir.join(f));
    }
    ca_init(dir)?;
    let requests = banks
        .iter()
        .map(|b| keygen(dir, b))
        .collect::<Result<Vec<_>, _>>()?;
    ca_sign(dir, &requests)
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

pub use quiver_flight_proto::ensure_crypto_provider;

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
