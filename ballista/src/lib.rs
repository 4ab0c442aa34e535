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

use std::sync::Arc;

use datafusion::execution::SessionState;
use datafusion::prelude::SessionConfig;
pub use quiver_featurestore::offline::ballista_codecs;

/// The scheduler's session: quiver's query planner (the point-in-time join's physical
/// planner) on the configuration Ballista gives, behind
/// [`quiver_featurestore::plan::check_received_plan`]: a client's plan reads only
/// quiver's portable tables and in-memory entity tables, and writes and declares
/// nothing (no listing table over another job's shuffle files or a bucket).
pub fn scheduler_session(config: SessionConfig) -> datafusion::common::Result<SessionState> {
    Ok(quiver_featurestore::plan::received_plans_session(config).state())
}

/// Ballista's flags with `--bind-host 127.0.0.1` added when none is given: the
/// scheduler and executors listen on loopback unless told otherwise (they take no
/// credentials of their own; see docs/scale-out.md).
pub fn loopback_by_default(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = args.into_iter().collect();
    let given = args
        .iter()
        .any(|a| a == "--bind-host" || a.to_string_lossy().starts_with("--bind-host="));
    let help = args
        .iter()
        .any(|a| a == "--help" || a == "-h" || a == "--version" || a == "-V");
    if !given && !help && !args.is_empty() {
        args.splice(1..1, ["--bind-host".into(), "127.0.0.1".into()]);
    }
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
/// benchmarks (stopped when dropped). Production runs the two binaries as services
/// (docs/scale-out.md).
pub mod local_cluster {
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// Processes of a local cluster.
    #[derive(Debug)]
    pub struct LocalCluster {
        /// The scheduler's address.
        pub scheduler: SocketAddr,
        children: Vec<Child>,
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
        /// Start the scheduler binary `scheduler_bin` and `executors` executor
        /// processes of `executor_bin` (each running `tasks` tasks at once, spilling
        /// shuffle files under `work_dir`); waits (at most 60 s) until all listen.
        pub fn start(
            scheduler_bin: &Path,
            executor_bin: &Path,
            executors: usize,
            tasks: usize,
            work_dir: &Path,
        ) -> std::io::Result<Self> {
            let deadline = Instant::now() + Duration::from_secs(60);
            std::fs::create_dir_all(work_dir)?;
            let port = free_port()?;
            let scheduler: SocketAddr = ([127, 0, 0, 1], port).into();
            let mut cluster = Self {
                scheduler,
                children: Vec::new(),
            };
            cluster.children.push(
                Command::new(scheduler_bin)
                    .args(["--bind-host", "127.0.0.1", "--external-host", "127.0.0.1"])
                    .args(["--bind-port", &port.to_string()])
                    .stdout(Stdio::null())
                    .stderr(log(work_dir, "scheduler.log")?)
                    .spawn()?,
            );
            wait_listening(scheduler, "the scheduler", deadline)?;
            for i in 0..executors {
                let (flight, grpc, health) = (free_port()?, free_port()?, free_port()?);
                let dir = work_dir.join(format!("executor-{i}"));
                std::fs::create_dir_all(&dir)?;
                cluster.children.push(
                    Command::new(executor_bin)
                        .args(["--scheduler-host", "127.0.0.1"])
                        .args(["--scheduler-port", &port.to_string()])
                        .args(["--bind-host", "127.0.0.1", "--external-host", "127.0.0.1"])
                        .args(["--bind-port", &flight.to_string()])
                        .args(["--bind-grpc-port", &grpc.to_string()])
                        .args(["--bind-health-port", &health.to_string()])
                        .args(["--concurrent-tasks", &tasks.to_string()])
                        .arg("--work-dir")
                        .arg(&dir)
                        .stdout(Stdio::null())
                        .stderr(log(work_dir, &format!("executor-{i}.log"))?)
                        .spawn()?,
                );
                wait_listening(([127, 0, 0, 1], flight).into(), "an executor", deadline)?;
            }
            Ok(cluster)
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
    use super::loopback_by_default;

    #[test]
    fn the_binaries_listen_on_loopback_unless_told_otherwise() {
        let args = |v: &[&str]| v.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        let out = loopback_by_default(args(&["scheduler", "--bind-port", "50050"]));
        assert_eq!(
            out,
            args(&[
                "scheduler",
                "--bind-host",
                "127.0.0.1",
                "--bind-port",
                "50050"
            ])
        );
        let given = args(&["executor", "--bind-host", "0.0.0.0"]);
        assert_eq!(loopback_by_default(given.clone()), given);
        let eq = args(&["executor", "--bind-host=10.0.0.2"]);
        assert_eq!(loopback_by_default(eq.clone()), eq);
        let help = args(&["executor", "--help"]);
        assert_eq!(loopback_by_default(help.clone()), help);
    }
}
