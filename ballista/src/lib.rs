//! quiver on Apache DataFusion Ballista (docs/scale-out.md).
//!
//! Ballista's stock scheduler and executor cannot decode quiver's plan nodes, so this
//! crate builds its own two binaries on Ballista's libraries, with quiver's codecs
//! composed with Ballista's ([`ballista_codecs`]) and, on the scheduler, quiver's
//! query planner (the point-in-time join is planned there):
//!
//! ```text
//! quiver-ballista-scheduler --bind-host 0.0.0.0 --bind-port 50050
//! quiver-ballista-executor --scheduler-host scheduler --scheduler-port 50050 --bind-port 50051 --bind-grpc-port 50052
//! quiver history --engine ballista://scheduler:50050 --entities labels.parquet --features ... --out train.parquet
//! ```
//!
//! Every flag of Ballista's own binaries is accepted (`--help`).

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::execution::SessionState;
use datafusion::prelude::SessionConfig;
use quiver_featurestore::offline::ClusterTls;
pub use quiver_featurestore::offline::ballista_codecs;

pub mod flight;
pub mod scheduler;
pub mod tls;

/// What goes wrong starting a scheduler or an executor.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or a file it names is wrong; the message names which.
    #[error("{0}")]
    Config(String),
    /// Reading or checking TLS material failed.
    #[error(transparent)]
    FeatureStore(#[from] quiver_featurestore::Error),
}

/// The TLS flags both binaries take (docs/ballista-tls.md). All four or none: with
/// them, every listener accepts only the allowlisted certificates of the cluster's CA
/// and every connection this process opens presents its own certificate; without
/// them, the process listens on loopback only.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// The cluster's CA certificate (PEM): every peer's certificate must chain to it.
    #[arg(
        long,
        env = "QUIVER_BALLISTA_TLS_CA",
        value_name = "FILE",
        requires_all = ["tls_cert", "tls_key", "tls_allow"]
    )]
    pub tls_ca: Option<PathBuf>,
    /// This process's certificate (PEM, signed by the cluster's CA): served to peers
    /// and presented to the processes it connects to. Its names must include the host
    /// others reach it by (`--external-host`).
    #[arg(
        long,
        env = "QUIVER_BALLISTA_TLS_CERT",
        value_name = "FILE",
        requires = "tls_ca"
    )]
    pub tls_cert: Option<PathBuf>,
    /// This process's private key (PEM).
    #[arg(
        long,
        env = "QUIVER_BALLISTA_TLS_KEY",
        value_name = "FILE",
        requires = "tls_ca"
    )]
    pub tls_key: Option<PathBuf>,
    /// The certificates this process accepts: one `ROLE SHA256-FINGERPRINT NAME` per
    /// line, ROLE `executor` or `client` (fingerprints as `openssl x509 -noout
    /// -fingerprint -sha256` prints them).
    #[arg(
        long,
        env = "QUIVER_BALLISTA_TLS_ALLOW",
        value_name = "FILE",
        requires = "tls_ca"
    )]
    pub tls_allow: Option<PathBuf>,
}

/// A process's TLS: its identity (for the connections it opens) and its listener's.
#[derive(Debug, Clone)]
pub struct ProcessTls {
    /// The CA, certificate and key, as clients use them.
    pub identity: ClusterTls,
    /// The listener's configuration with the allowlist.
    pub server: tls::ServerTls,
}

impl TlsArgs {
    /// Load the files the flags name (`None` when no flag is given).
    pub fn load(&self) -> Result<Option<ProcessTls>, Error> {
        let (Some(ca), Some(cert), Some(key), Some(allow)) =
            (&self.tls_ca, &self.tls_cert, &self.tls_key, &self.tls_allow)
        else {
            return Ok(None);
        };
        let identity = ClusterTls::from_files(ca, cert, key)?;
        let allow = tls::Allowlist::load(allow)?;
        let server = tls::ServerTls::new(&identity, allow)?;
        Ok(Some(ProcessTls { identity, server }))
    }
}

/// A startup error as Ballista's binaries report it.
pub fn config_error(e: impl std::fmt::Display) -> ballista_core::error::BallistaError {
    ballista_core::error::BallistaError::Configuration(e.to_string())
}

/// Refuse `host` of `flag` (`--bind-host`, `--scheduler-host`, `--external-host`)
/// beyond this machine in the clear: a scheduler or executor that listens or talks
/// beyond loopback always runs with mutual TLS.
pub fn check_in_the_clear(flag: &str, host: &str, tls: Option<&ProcessTls>) -> Result<(), Error> {
    if tls.is_none() && !quiver_featurestore::offline::tls::is_loopback_host(host) {
        return Err(Error::Config(format!(
            "{flag} {host}: beyond this machine a scheduler or executor needs mutual TLS \
             (--tls-ca, --tls-cert, --tls-key, --tls-allow; docs/ballista-tls.md)"
        )));
    }
    Ok(())
}

/// The scheduler's endpoint override: it refuses every connection. quiver's cluster is
/// pull-staged, so the scheduler has nothing to dial; Ballista would still dial an
/// executor's gRPC port in the clear (cancelling tasks, stopping a lost executor), at a
/// host and port the executor itself advertised.
pub fn scheduler_dials_nothing() -> ballista_core::extension::EndpointOverrideFn {
    Arc::new(|endpoint| {
        Err(format!(
            "quiver's scheduler does not connect to executors (pull-staged): {} refused",
            endpoint.uri()
        )
        .into())
    })
}

/// Refuse push-staged scheduling: its executor-side gRPC server (tasks pushed by the
/// scheduler) cannot be put behind the TLS listener, so quiver's cluster is
/// pull-staged only (executors poll the scheduler over mutual TLS).
pub fn check_pull_staged(policy: ballista_core::config::TaskSchedulingPolicy) -> Result<(), Error> {
    match policy {
        ballista_core::config::TaskSchedulingPolicy::PullStaged => Ok(()),
        ballista_core::config::TaskSchedulingPolicy::PushStaged => Err(Error::Config(
            "push-staged scheduling: quiver's cluster is pull-staged only (an executor's \
             push-staged gRPC server would take tasks from anyone; docs/ballista-tls.md)"
                .into(),
        )),
    }
}

/// The scheduler's session: quiver's query planner (the point-in-time join's physical
/// planner) on the configuration Ballista gives, behind
/// [`quiver_featurestore::plan::check_received_plan`]: a client's plan reads only
/// quiver's portable tables and in-memory entity tables, and writes and declares
/// nothing (no listing table over another job's shuffle files or a bucket).
pub fn scheduler_session(config: SessionConfig) -> datafusion::common::Result<SessionState> {
    Ok(quiver_featurestore::plan::received_plans_session(config).state())
}

/// Ballista's flags with quiver's defaults added where they are not given:
/// `--bind-host 127.0.0.1` (the scheduler and executors listen on loopback unless told
/// otherwise) and pull-staged scheduling (`policy_flag`: the scheduler's
/// `--scheduler-policy`, the executor's `--task-scheduling-policy`; push-staged is then
/// refused by [`check_pull_staged`]).
pub fn safe_defaults(
    args: impl IntoIterator<Item = std::ffi::OsString>,
    policy_flag: &str,
) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = args.into_iter().collect();
    let given = |flag: &str| {
        args.iter()
            .any(|a| a == flag || a.to_string_lossy().starts_with(&format!("{flag}=")))
    };
    let help = args
        .iter()
        .any(|a| a == "--help" || a == "-h" || a == "--version" || a == "-V");
    if help || args.is_empty() {
        return args;
    }
    let mut defaults: Vec<std::ffi::OsString> = Vec::new();
    if !given("--bind-host") {
        defaults.extend(["--bind-host".into(), "127.0.0.1".into()]);
    }
    if !given(policy_flag) && !given("-s") {
        defaults.extend([policy_flag.into(), "pull-staged".into()]);
    }
    args.splice(1..1, defaults);
    args
}

/// The logical and physical codecs, as Ballista's configuration takes them.
pub fn codecs() -> (
    Arc<dyn datafusion_proto::logical_plan::LogicalExtensionCodec>,
    Arc<dyn datafusion_proto::physical_plan::PhysicalExtensionCodec>,
) {
    (
        Arc::new(ballista_codecs::Logical::default()),
        Arc::new(ballista_codecs::Physical::default()),
    )
}

/// Log to stderr (`RUST_LOG`, default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// A scheduler and executors started as processes on 127.0.0.1, for tests and
/// benchmarks (stopped when dropped), in the clear or with mutual TLS
/// ([`local_cluster::Pki`]). Production runs the two binaries as services
/// (docs/scale-out.md).
pub mod local_cluster {
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use quiver_featurestore::offline::ClusterTls;

    /// Processes of a local cluster.
    #[derive(Debug)]
    pub struct LocalCluster {
        /// The scheduler's address.
        pub scheduler: SocketAddr,
        /// Each executor's Flight address.
        pub executors: Vec<SocketAddr>,
        children: Vec<Child>,
    }

    /// A certificate and its key, as files.
    #[derive(Debug, Clone)]
    pub struct Identity {
        /// The certificate (PEM).
        pub cert: PathBuf,
        /// The private key (PEM).
        pub key: PathBuf,
    }

    /// A throwaway PKI for a local cluster, written under one folder: a cluster CA,
    /// certificates for 127.0.0.1 and `localhost` of the scheduler, the executors and
    /// a client, all on the allowlist with their roles; and, for attack tests, a
    /// certificate the CA signed that nobody listed and one of another CA.
    #[derive(Debug, Clone)]
    pub struct Pki {
        /// The cluster CA (PEM).
        pub ca: PathBuf,
        /// The allowlist (`ROLE FINGERPRINT NAME` lines).
        pub allow: PathBuf,
        /// The scheduler's identity (not on the allowlist: the scheduler opens no
        /// connections, so nobody needs to accept its certificate).
        pub scheduler: Identity,
        /// The executors' identity (role `executor`).
        pub executor: Identity,
        /// A client's identity (role `client`).
        pub client: Identity,
        /// Signed by the cluster CA, not on the allowlist.
        pub unlisted: Identity,
        /// Signed by another CA, its fingerprint on the allowlist as a `client`.
        pub foreign: Identity,
    }

    fn pki_err(e: impl std::fmt::Display) -> std::io::Error {
        std::io::Error::other(format!("test PKI: {e}"))
    }

    impl Pki {
        /// Generate one under `dir`.
        pub fn generate(dir: &Path) -> std::io::Result<Self> {
            std::fs::create_dir_all(dir)?;
            let ca =
                |name: &str| -> std::io::Result<rcgen::CertifiedIssuer<'static, rcgen::KeyPair>> {
                    let mut params =
                        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(pki_err)?;
                    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
                    params
                        .distinguished_name
                        .push(rcgen::DnType::CommonName, name);
                    let key = rcgen::KeyPair::generate().map_err(pki_err)?;
                    rcgen::CertifiedIssuer::self_signed(params, key).map_err(pki_err)
                };
            let cluster = ca("quiver test cluster CA")?;
            let other = ca("another CA")?;
            let leaf = |name: &str,
                        issuer: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>|
             -> std::io::Result<(Identity, String)> {
                let mut params =
                    rcgen::CertificateParams::new(vec!["localhost".to_owned()]).map_err(pki_err)?;
                params
                    .subject_alt_names
                    .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
                params
                    .distinguished_name
                    .push(rcgen::DnType::CommonName, name);
                let key = rcgen::KeyPair::generate().map_err(pki_err)?;
                let cert = params.signed_by(&key, issuer).map_err(pki_err)?;
                let id = Identity {
                    cert: dir.join(format!("{name}.pem")),
                    key: dir.join(format!("{name}.key")),
                };
                std::fs::write(&id.cert, cert.pem())?;
                std::fs::write(&id.key, key.serialize_pem())?;
                Ok((id, hex::encode(crate::tls::fingerprint(cert.der()))))
            };
            let ca_path = dir.join("ca.pem");
            std::fs::write(&ca_path, cluster.pem())?;
            let (scheduler, _) = leaf("scheduler", &cluster)?;
            let (executor, executor_print) = leaf("executor", &cluster)?;
            let (client, client_print) = leaf("client", &cluster)?;
            let (unlisted, _) = leaf("unlisted", &cluster)?;
            let (foreign, foreign_print) = leaf("foreign", &other)?;
            let allow = dir.join("allow.txt");
            std::fs::write(
                &allow,
                format!(
                    "# role fingerprint name\nexecutor {executor_print} executor\n\
                     client {client_print} client\nclient {foreign_print} foreign\n"
                ),
            )?;
            Ok(Self {
                ca: ca_path,
                allow,
                scheduler,
                executor,
                client,
                unlisted,
                foreign,
            })
        }

        /// `identity` as a client's [`ClusterTls`] with this PKI's CA.
        pub fn client_tls(&self, identity: &Identity) -> quiver_featurestore::Result<ClusterTls> {
            ClusterTls::from_files(&self.ca, &identity.cert, &identity.key)
        }

        fn flags(&self, identity: &Identity) -> Vec<std::ffi::OsString> {
            vec![
                "--tls-ca".into(),
                self.ca.clone().into(),
                "--tls-cert".into(),
                identity.cert.clone().into(),
                "--tls-key".into(),
                identity.key.clone().into(),
                "--tls-allow".into(),
                self.allow.clone().into(),
            ]
        }
    }

    /// How to start a [`LocalCluster`] ([`LocalCluster::builder`]).
    #[derive(Debug, Clone)]
    pub struct Builder {
        scheduler_bin: PathBuf,
        executor_bin: PathBuf,
        executors: usize,
        tasks: usize,
        work_dir: PathBuf,
        pki: Option<Pki>,
        deadline: Duration,
    }

    impl Builder {
        /// How many executor processes (default 1).
        pub fn executors(mut self, n: usize) -> Self {
            self.executors = n;
            self
        }

        /// How many tasks each executor runs at once (default 2).
        pub fn tasks(mut self, n: usize) -> Self {
            self.tasks = n;
            self
        }

        /// Where the processes write logs (`scheduler.log`, `executor-N.log`) and
        /// the executors their shuffle files (default: the system's temporary folder).
        pub fn work_dir(mut self, dir: &Path) -> Self {
            self.work_dir = dir.to_owned();
            self
        }

        /// Run every listener and connection over mutual TLS with `pki`.
        pub fn tls(mut self, pki: &Pki) -> Self {
            self.pki = Some(pki.clone());
            self
        }

        /// Start the processes; waits (at most 60 s) until all listen.
        pub fn start(self) -> std::io::Result<LocalCluster> {
            let deadline = Instant::now() + self.deadline;
            let work_dir = &self.work_dir;
            std::fs::create_dir_all(work_dir)?;
            let port = free_port()?;
            let scheduler: SocketAddr = ([127, 0, 0, 1], port).into();
            let mut cluster = LocalCluster {
                scheduler,
                executors: Vec::new(),
                children: Vec::new(),
            };
            let tls = |id: fn(&Pki) -> &Identity| {
                self.pki
                    .as_ref()
                    .map(|p| p.flags(id(p)))
                    .unwrap_or_default()
            };
            cluster.children.push(
                Command::new(&self.scheduler_bin)
                    .args(["--bind-host", "127.0.0.1", "--external-host", "127.0.0.1"])
                    .args(["--bind-port", &port.to_string()])
                    .args(tls(|p| &p.scheduler))
                    .stdout(Stdio::null())
                    .stderr(log(work_dir, "scheduler.log")?)
                    .spawn()?,
            );
            wait_listening(scheduler, "the scheduler", deadline)?;
            for i in 0..self.executors {
                let (flight, grpc) = (free_port()?, free_port()?);
                let dir = work_dir.join(format!("executor-{i}"));
                std::fs::create_dir_all(&dir)?;
                cluster.children.push(
                    Command::new(&self.executor_bin)
                        .args(["--scheduler-host", "127.0.0.1"])
                        .args(["--scheduler-port", &port.to_string()])
                        .args(["--bind-host", "127.0.0.1", "--external-host", "127.0.0.1"])
                        .args(["--bind-port", &flight.to_string()])
                        .args(["--bind-grpc-port", &grpc.to_string()])
                        .args(["--concurrent-tasks", &self.tasks.to_string()])
                        .args(tls(|p| &p.executor))
                        .arg("--work-dir")
                        .arg(&dir)
                        .stdout(Stdio::null())
                        .stderr(log(work_dir, &format!("executor-{i}.log"))?)
                        .spawn()?,
                );
                let addr = ([127, 0, 0, 1], flight).into();
                wait_listening(addr, "an executor", deadline)?;
                cluster.executors.push(addr);
            }
            Ok(cluster)
        }
    }

    /// A log file under `dir` for a process's stderr.
    fn log(dir: &Path, name: &str) -> std::io::Result<std::fs::File> {
        std::fs::create_dir_all(dir)?;
        std::fs::File::create(dir.join(name))
    }

    fn free_port() -> std::io::Result<u16> {
        Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
    }

    fn wait_listening(addr: SocketAddr, what: &str, deadline: Instant) -> std::io::Result<()> {
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{what} did not listen on {addr} within its deadline"),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    impl LocalCluster {
        /// A cluster of the scheduler binary `scheduler_bin` and executors of
        /// `executor_bin`, to configure and [`Builder::start`].
        pub fn builder(scheduler_bin: &Path, executor_bin: &Path) -> Builder {
            Builder {
                scheduler_bin: scheduler_bin.to_owned(),
                executor_bin: executor_bin.to_owned(),
                executors: 1,
                tasks: 2,
                work_dir: std::env::temp_dir().join("quiver-local-cluster"),
                pki: None,
                deadline: Duration::from_secs(60),
            }
        }

        /// Start a plaintext cluster on loopback: the scheduler binary
        /// `scheduler_bin` and `executors` executor processes of `executor_bin` (each
        /// running `tasks` tasks at once, spilling shuffle files under `work_dir`).
        pub fn start(
            scheduler_bin: &Path,
            executor_bin: &Path,
            executors: usize,
            tasks: usize,
            work_dir: &Path,
        ) -> std::io::Result<Self> {
            Self::builder(scheduler_bin, executor_bin)
                .executors(executors)
                .tasks(tasks)
                .work_dir(work_dir)
                .start()
        }

        /// The engine URL of the scheduler: `ballista://127.0.0.1:PORT`.
        pub fn engine_url(&self) -> String {
            format!("ballista://{}", self.scheduler)
        }
    }

    impl Drop for LocalCluster {
        fn drop(&mut self) {
            for c in &mut self.children {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{check_in_the_clear, check_pull_staged, safe_defaults};

    #[test]
    fn the_binaries_listen_on_loopback_and_pull_unless_told_otherwise() {
        let args = |v: &[&str]| v.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        let flag = "--scheduler-policy";
        let out = safe_defaults(args(&["scheduler", "--bind-port", "50050"]), flag);
        assert_eq!(
            out,
            args(&[
                "scheduler",
                "--bind-host",
                "127.0.0.1",
                "--scheduler-policy",
                "pull-staged",
                "--bind-port",
                "50050"
            ])
        );
        let given = args(&["executor", "--bind-host", "0.0.0.0", "-s", "push-staged"]);
        assert_eq!(
            safe_defaults(given.clone(), "--task-scheduling-policy"),
            given
        );
        let eq = args(&[
            "executor",
            "--bind-host=10.0.0.2",
            "--task-scheduling-policy=pull-staged",
        ]);
        assert_eq!(safe_defaults(eq.clone(), "--task-scheduling-policy"), eq);
        let help = args(&["executor", "--help"]);
        assert_eq!(safe_defaults(help.clone(), flag), help);
        assert!(
            check_pull_staged(ballista_core::config::TaskSchedulingPolicy::PushStaged).is_err()
        );
    }

    #[test]
    fn listening_beyond_loopback_needs_tls() {
        assert!(check_in_the_clear("--bind-host", "127.0.0.1", None).is_ok());
        let err = check_in_the_clear("--bind-host", "0.0.0.0", None).unwrap_err();
        assert!(err.to_string().contains("--tls-ca"), "{err}");
        assert!(check_in_the_clear("--scheduler-host", "localhost", None).is_ok());
        let err = check_in_the_clear("--scheduler-host", "scheduler", None).unwrap_err();
        assert!(
            err.to_string().contains("--scheduler-host scheduler"),
            "{err}"
        );
    }

    #[test]
    fn the_scheduler_dials_no_executor() {
        let f = super::scheduler_dials_nothing();
        let e = f(tonic::transport::Endpoint::from_static(
            "http://10.0.0.9:50052",
        ))
        .unwrap_err();
        assert!(e.to_string().contains("10.0.0.9:50052"), "{e}");
    }
}
