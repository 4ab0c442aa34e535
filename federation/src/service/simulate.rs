//! A whole federation in one process: fresh certificates and identities, the
//! coordinator and one worker per bank on loopback, talking real gRPC over mutual TLS.
//! `quiver-fed simulate`, the fraud example and the tests use it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::coordinator::{Coordinator, CoordinatorConfig, RunSummary};
use super::pki::{self, TlsFiles};
use super::worker::{BankData, Worker, WorkerConfig, WorkerOutcome};
use super::{PrivacyPolicy, ServiceError};
use crate::train::Device;

/// Where a simulated bank's rows come from.
#[derive(Debug, Clone)]
pub enum BankSource {
    /// A Parquet training set.
    TrainingSet(PathBuf),
    /// Rows in memory.
    Data(BankData),
}

/// One simulated bank.
#[derive(Debug, Clone)]
pub struct SimBank {
    /// Name.
    pub name: String,
    /// Its rows.
    pub source: BankSource,
    /// Its privacy policy.
    pub privacy: PrivacyPolicy,
    /// Never connect (a bank that is down for the whole run), for tests and demos.
    pub offline: bool,
    /// Where it trains.
    pub device: Device,
}

/// What a simulation ends with.
#[derive(Debug, Clone)]
pub struct SimulationResult {
    /// The coordinator's summary.
    pub summary: RunSummary,
    /// Each bank's outcome, in roster order (an error for a bank that failed).
    pub banks: Vec<(String, Result<WorkerOutcome, String>)>,
    /// The coordinator's `/metrics` text at the end of the run, fetched over HTTP,
    /// when `metrics_listen` was set.
    pub metrics: Option<String>,
}

/// `GET /metrics` over plain HTTP/1.1, bounded to 4 MiB and 5 seconds.
async fn scrape(addr: std::net::SocketAddr) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let get = async {
        let mut c = tokio::net::TcpStream::connect(addr).await?;
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut body = Vec::new();
        c.take(4 << 20).read_to_end(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    let body = tokio::time::timeout(Duration::from_secs(5), get)
        .await
        .map_err(|_| format!("{addr}: no answer within 5 s"))?
        .map_err(|e| format!("{addr}: {e}"))?;
    let text = String::from_utf8_lossy(&body);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr}: not an HTTP answer"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "{addr}: {}",
            head.lines().next().unwrap_or_default()
        ));
    }
    Ok(body.to_string())
}

/// Run `coordinator` (its `listen`, `tls` and `roster` are filled in here) with
/// `banks` on loopback; certificates go to `dir`.
pub async fn simulate(
    dir: &Path,
    mut coordinator: CoordinatorConfig,
    banks: Vec<SimBank>,
) -> Result<SimulationResult, ServiceError> {
    let names: Vec<String> = banks.iter().map(|b| b.name.clone()).collect();
    let fed = pki::init(dir, &names)?;
    coordinator.listen = "127.0.0.1:0".parse().expect("loopback address");
    coordinator.roster = fed.roster.clone();
    coordinator.tls = TlsFiles {
        ca: "ca.pem".into(),
        cert: "coordinator.pem".into(),
        key: "coordinator.key".into(),
    };
    let mut coord = Coordinator::start(coordinator, dir).await?;
    let url = format!("https://{}", coord.addr());
    let mut handles = Vec::new();
    for b in banks {
        let cfg = WorkerConfig {
            name: b.name.clone(),
            coordinator: url.clone(),
            tls: TlsFiles {
                ca: "ca.pem".into(),
                cert: format!("{}.pem", b.name).into(),
                key: format!("{}.key", b.name).into(),
            },
            identity: format!("{}.identity", b.name).into(),
            roster: fed.roster.clone(),
            training_set: PathBuf::new(),
            holdout: 0.2,
            privacy: b.privacy,
            connect_timeout_s: 30.0,
            seed: None,
            ledger: None,
            dataset: None,
            secagg: None,
            device: b.device,
        };
        if b.offline {
            handles.push((b.name.clone(), None));
            continue;
        }
        let dir = dir.to_path_buf();
        handles.push((
            b.name.clone(),
            Some(tokio::spawn(async move {
                Worker::run_with(cfg, &dir, move |features: &[String], label: &str| {
                    match b.source {
                        BankSource::TrainingSet(p) => BankData::load(&p, features, label),
                        BankSource::Data(d) => Ok(d),
                    }
                })
                .await
            })),
        ));
    }
    // The run's end, as a scraper sees it, before the servers stop.
    let _ = coord.wait().await;
    let metrics = match coord.metrics_addr() {
        Some(a) => Some(scrape(a).await.map_err(ServiceError::Transport)?),
        None => None,
    };
    let summary = coord.finish(Duration::from_secs(10)).await;
    let mut outcomes = Vec::new();
    for (name, h) in handles {
        let Some(h) = h else {
            outcomes.push((name, Err("offline".to_string())));
            continue;
        };
        let r = match tokio::time::timeout(Duration::from_secs(30), h).await {
            Ok(Ok(r)) => r.map_err(|e| e.to_string()),
            Ok(Err(e)) => Err(format!("worker task: {e}")),
            Err(_) => Err("worker did not finish within 30 s of the run's end".into()),
        };
        outcomes.push((name, r));
    }
    Ok(SimulationResult {
        summary: summary?,
        banks: outcomes,
        metrics,
    })
}
