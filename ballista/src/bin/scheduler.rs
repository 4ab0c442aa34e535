//! `quiver-ballista-scheduler`: Ballista's scheduler with quiver's codecs and query
//! planner, pull-staged, with mutual TLS on its listener when `--tls-*` are given
//! (required to listen beyond loopback; docs/ballista-tls.md). Flags: Ballista's
//! (`--bind-host`, `--bind-port`, ...) and quiver's TLS flags; `--help`.
//!
//! The listener serves Ballista's scheduler gRPC service only (Ballista's REST API,
//! Flight SQL front end and Flight proxy are not served), taking logical plans only
//! ([`quiver_ballista::scheduler`]); with TLS, each RPC only to the role the allowlist
//! gives the caller's certificate.

use std::sync::Arc;

use ballista_core::error::BallistaError;
use ballista_core::serde::protobuf::scheduler_grpc_server::SchedulerGrpcServer;
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::{Config, SchedulerConfig};
use ballista_scheduler::scheduler_process::create_scheduler;
use clap::Parser;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use quiver_ballista::scheduler::QuiverScheduler;
use quiver_ballista::tls::{RoleGate, scheduler_rpc_role};
use quiver_ballista::{TlsArgs, config_error};

#[derive(Parser)]
#[command(name = "quiver-ballista-scheduler", version, about)]
struct Args {
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    ballista: Config,
}

fn main() -> ballista_core::error::Result<()> {
    quiver_ballista::init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(32 * 1024 * 1024)
        .build()
        .map_err(|e| BallistaError::General(e.to_string()))?;
    runtime.block_on(async {
        let args = Args::parse_from(quiver_ballista::safe_defaults(
            std::env::args_os(),
            "--scheduler-policy",
        ));
        let opt = args.ballista;
        let tls = args.tls.load().map_err(config_error)?;
        quiver_ballista::check_in_the_clear("--bind-host", &opt.bind_host, tls.as_ref()).map_err(config_error)?;
        quiver_ballista::check_pull_staged(opt.scheduler_policy).map_err(config_error)?;
        let addr: std::net::SocketAddr = format!("{}:{}", opt.bind_host, opt.bind_port)
            .parse()
            .map_err(config_error)?;
        let mut config: SchedulerConfig = opt.try_into()?;
        let (logical, physical) = quiver_ballista::codecs();
        config.override_logical_codec = Some(logical);
        config.override_physical_codec = Some(physical);
        config.override_create_grpc_client_endpoint = Some(quiver_ballista::scheduler_dials_nothing());
        let config =
            config.with_override_session_builder(Arc::new(quiver_ballista::scheduler_session));
        let cluster = BallistaCluster::new_from_config(&config).await?;
        if config.enable_embedded_flight_proxy || config.advertise_flight_endpoint.is_some() {
            return Err(config_error(
                "quiver's scheduler serves no Flight proxy: clients fetch results from the executors",
            ));
        }
        config.validate()?;
        let config = Arc::new(config);
        let scheduler =
            create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, config.clone()).await?;
        let grpc = SchedulerGrpcServer::new(QuiverScheduler(scheduler))
            .max_encoding_message_size(config.grpc_server_max_encoding_message_size as usize)
            .max_decoding_message_size(config.grpc_server_max_decoding_message_size as usize);
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let mut server = tonic::transport::Server::builder();
        match tls {
            Some(tls) => {
                tracing::info!(%addr, "quiver's Ballista scheduler listening with mutual TLS");
                server
                    .add_service(RoleGate::new(grpc, scheduler_rpc_role))
                    .serve_with_incoming(tls.server.incoming(listener))
                    .await
            }
            None => {
                tracing::info!(%addr, "quiver's Ballista scheduler listening on loopback, without TLS");
                let incoming = tonic::transport::server::TcpIncoming::from(listener)
                    .with_nodelay(Some(true));
                server.add_service(grpc).serve_with_incoming(incoming).await
            }
        }
        .map_err(BallistaError::TonicError)
    })
}
