//! `quiver-ballista-executor`: Ballista's executor with quiver's codecs. Flags:
//! Ballista's (`--scheduler-host`, `--scheduler-port`, `--bind-port`,
//! `--bind-grpc-port`, `--concurrent-tasks`, ...; `--help`). Credentials of object
//! stores come from this process's environment (docs/object-storage.md).

use std::sync::Arc;

use ballista_executor::config::Config;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use clap::Parser;

#[tokio::main]
async fn main() -> ballista_core::error::Result<()> {
    quiver_ballista::init_logging();
    let opt = Config::parse_from(quiver_ballista::loopback_by_default(std::env::args_os()));
    let mut config: ExecutorProcessConfig = opt.try_into()?;
    let (logical, physical) = quiver_ballista::codecs();
    config.override_logical_codec = Some(logical);
    config.override_physical_codec = Some(physical);
    start_executor_process(Arc::new(config)).await
}
