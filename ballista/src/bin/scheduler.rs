//! `quiver-ballista-scheduler`: Ballista's scheduler with quiver's codecs and query
//! planner. Flags: Ballista's (`--bind-host`, `--bind-port`, ...; `--help`).

use std::sync::Arc;

use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::{Config, SchedulerConfig};
use ballista_scheduler::scheduler_process::start_server;
use clap::Parser;

fn main() -> ballista_core::error::Result<()> {
    quiver_ballista::init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(32 * 1024 * 1024)
        .build()
        .map_err(|e| ballista_core::error::BallistaError::General(e.to_string()))?;
    runtime.block_on(async {
        let opt = Config::parse_from(quiver_ballista::loopback_by_default(std::env::args_os()));
        let addr = format!("{}:{}", opt.bind_host, opt.bind_port)
            .parse()
            .map_err(|e: std::net::AddrParseError| {
                ballista_core::error::BallistaError::Configuration(e.to_string())
            })?;
        let mut config: SchedulerConfig = opt.try_into()?;
        let (logical, physical) = quiver_ballista::codecs();
        config.override_logical_codec = Some(logical);
        config.override_physical_codec = Some(physical);
        let config =
            config.with_override_session_builder(Arc::new(quiver_ballista::scheduler_session));
        let cluster = BallistaCluster::new_from_config(&config).await?;
        start_server(cluster, addr, Arc::new(config)).await
    })
}
