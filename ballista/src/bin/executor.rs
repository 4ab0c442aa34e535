//! `quiver-ballista-executor`: Ballista's executor with quiver's codecs, pull-staged,
//! with mutual TLS on its Flight listener and on every connection it opens (to the
//! scheduler, to other executors for shuffle partitions) when `--tls-*` are given
//! (required to listen beyond loopback; docs/ballista-tls.md). Flags: Ballista's
//! (`--scheduler-host`, `--scheduler-port`, `--bind-port`, `--concurrent-tasks`, ...)
//! and quiver's TLS flags; `--help`. Credentials of object stores come from this
//! process's environment (docs/object-storage.md).

use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use ballista_core::error::BallistaError;
use ballista_core::extension::SessionConfigExt;
use ballista_executor::config::Config;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_executor::flight_service::BallistaFlightService;
use clap::Parser;
use datafusion::prelude::SessionConfig;
use quiver_ballista::flight::QuiverFlight;
use quiver_ballista::{TlsArgs, config_error};

#[derive(Parser)]
#[command(name = "quiver-ballista-executor", version, about)]
struct Args {
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    ballista: Config,
}

#[tokio::main]
async fn main() -> ballista_core::error::Result<()> {
    quiver_ballista::init_logging();
    let args = Args::parse_from(quiver_ballista::safe_defaults(
        std::env::args_os(),
        "--task-scheduling-policy",
    ));
    let opt = args.ballista;
    let tls = args.tls.load().map_err(config_error)?;
    quiver_ballista::check_in_the_clear("--bind-host", &opt.bind_host, tls.as_ref())
        .map_err(config_error)?;
    quiver_ballista::check_pull_staged(opt.task_scheduling_policy).map_err(config_error)?;
    quiver_ballista::check_in_the_clear("--scheduler-host", &opt.scheduler_host, tls.as_ref())
        .map_err(config_error)?;
    if let Some(external) = &opt.external_host {
        quiver_ballista::check_in_the_clear("--external-host", external, tls.as_ref())
            .map_err(config_error)?;
    }
    let mut config: ExecutorProcessConfig = opt.try_into()?;
    let (logical, physical) = quiver_ballista::codecs();
    config.override_logical_codec = Some(logical);
    config.override_physical_codec = Some(physical);
    if let Some(tls) = &tls {
        // To the scheduler.
        config.override_create_grpc_client_endpoint = Some(tls.identity.endpoint_override());
        // To other executors, for shuffle partitions (read from each task's session).
        let identity = tls.identity.clone();
        config.override_config_producer = Some(Arc::new(move || {
            identity.apply(SessionConfig::new_with_ballista())
        }));
    }
    // The Flight listener peers and clients fetch partitions from: Ballista's service
    // behind quiver's fetch check, over mutual TLS when configured.
    let (max_decoding, max_encoding) = (
        config.grpc_max_decoding_message_size as usize,
        config.grpc_max_encoding_message_size as usize,
    );
    let server = tls.map(|t| t.server);
    config.override_arrow_flight_service = Some(Arc::new(
        move |work_dir, addr, mut shutdown, grpc_config| {
            let server = server.clone();
            tokio::spawn(async move {
                let listener = tokio::net::TcpListener::bind(addr).await?;
                let flight =
                    FlightServiceServer::new(QuiverFlight(BallistaFlightService::new(work_dir)))
                        .max_decoding_message_size(max_decoding)
                        .max_encoding_message_size(max_encoding);
                let mut builder = ballista_core::utils::create_grpc_server(&grpc_config);
                match server {
                    Some(server) => {
                        tracing::info!(%addr, "executor Flight service listening with mutual TLS");
                        builder
                            .add_service(flight)
                            .serve_with_incoming_shutdown(server.incoming(listener), shutdown.recv())
                            .await
                    }
                    None => {
                        tracing::info!(%addr, "executor Flight service listening on loopback, without TLS");
                        let incoming = tonic::transport::server::TcpIncoming::from(listener)
                            .with_nodelay(Some(true));
                        builder
                            .add_service(flight)
                            .serve_with_incoming_shutdown(incoming, shutdown.recv())
                            .await
                    }
                }
                .map_err(BallistaError::TonicError)
            })
        },
    ));
    start_executor_process(Arc::new(config)).await
}
