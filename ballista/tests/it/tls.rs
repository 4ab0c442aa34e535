//! The cluster with mutual TLS (docs/ballista-tls.md): what reaches the scheduler's
//! and an executor's ports without a listed certificate is refused, each scheduler RPC
//! is served to one role, and a listed client cannot submit a plan that skips the
//! scheduler's checks. A scheduler and one executor run as processes on 127.0.0.1.

use std::time::{Duration, Instant};

use arrow_flight::flight_service_client::FlightServiceClient;
use ballista::prelude::SessionContextExt;
use ballista_core::extension::SessionConfigExt;
use ballista_core::serde::protobuf as pb;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_proto::physical_plan::AsExecutionPlan;
use prost::Message;
use quiver_ballista::local_cluster::{Identity, LocalCluster, Pki};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity as TonicId};

const DEADLINE: Duration = Duration::from_secs(20);

fn cluster(dir: &std::path::Path, pki: &Pki) -> LocalCluster {
    LocalCluster::builder(
        env!("CARGO_BIN_EXE_quiver-ballista-scheduler").as_ref(),
        env!("CARGO_BIN_EXE_quiver-ballista-executor").as_ref(),
    )
    .executors(1)
    .work_dir(&dir.join("work"))
    .tls(pki)
    .start()
    .unwrap()
}

/// A channel to `addr`: plaintext (`tls: None`), or TLS trusting the cluster CA and
/// presenting `who` (or no certificate).
async fn channel(
    addr: std::net::SocketAddr,
    pki: &Pki,
    tls: Option<Option<&Identity>>,
) -> Result<Channel, String> {
    quiver_featurestore::offline::tls::ensure_crypto_provider();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .unwrap()
        .connect_timeout(DEADLINE)
        .timeout(DEADLINE);
    if let Some(who) = tls {
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(&pki.ca).unwrap()))
            .domain_name("localhost");
        if let Some(id) = who {
            config = config.identity(TonicId::from_pem(
                std::fs::read(&id.cert).unwrap(),
                std::fs::read(&id.key).unwrap(),
            ));
        }
        endpoint = endpoint.tls_config(config).unwrap();
    }
    endpoint
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))
}

/// A harmless scheduler call (the status of a job that does not exist).
async fn ask_scheduler(
    addr: std::net::SocketAddr,
    pki: &Pki,
    tls: Option<Option<&Identity>>,
) -> Result<(), String> {
    let channel = channel(addr, pki, tls).await?;
    SchedulerGrpcClient::new(channel)
        .get_job_status(pb::GetJobStatusParams {
            job_id: "none".into(),
        })
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

/// A harmless Flight call on an executor (its list of flights).
async fn ask_executor(
    addr: std::net::SocketAddr,
    pki: &Pki,
    tls: Option<Option<&Identity>>,
) -> Result<tonic::Code, String> {
    let channel = channel(addr, pki, tls).await?;
    let call = FlightServiceClient::new(channel)
        .list_flights(arrow_flight::Criteria::default())
        .await;
    match call {
        Ok(_) => Ok(tonic::Code::Ok),
        // Ballista's Flight service answers "unimplemented": the call got through.
        Err(s) if s.code() == tonic::Code::Unimplemented => Ok(s.code()),
        Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_ballista_client_without_a_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki")).unwrap();
    let cluster = cluster(dir.path(), &pki);
    let (scheduler, executor) = (cluster.scheduler, cluster.executors[0]);

    // The listed client runs a query end to end through Ballista's own client (the
    // scheduler, then the executor for the result), so the refusals below are the
    // certificates' doing and not a cluster that does not work.
    let client_tls = pki.client_tls(&pki.client).unwrap();
    let started = Instant::now();
    loop {
        let state = datafusion::execution::session_state::SessionStateBuilder::new()
            .with_config(client_tls.apply(SessionConfig::new_with_ballista()))
            .with_default_features()
            .build();
        let ctx = SessionContext::remote_with_state(&format!("df://{scheduler}"), state)
            .await
            .unwrap();
        let run = async { ctx.sql("SELECT 41 + 1 AS x").await?.collect().await };
        match tokio::time::timeout(DEADLINE, run).await {
            Ok(Ok(batches)) => {
                assert_eq!(
                    arrow::util::pretty::pretty_format_batches(&batches)
                        .unwrap()
                        .to_string()
                        .matches("42")
                        .count(),
                    1
                );
                break;
            }
            other if started.elapsed() < Duration::from_secs(60) => {
                eprintln!("retrying (the executor registers after it listens): {other:?}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => panic!(
                "the listed client's query did not run: {other:?}\n{}",
                std::fs::read_to_string(dir.path().join("work/scheduler.log")).unwrap_or_default()
            ),
        }
    }
    assert!(
        ask_scheduler(scheduler, &pki, Some(Some(&pki.client)))
            .await
            .is_ok()
    );
    assert!(
        ask_executor(executor, &pki, Some(Some(&pki.client)))
            .await
            .is_ok()
    );

    // A stock Ballista client: plaintext, no certificate.
    let stock = SessionContext::remote(&format!("df://{scheduler}"))
        .await
        .unwrap();
    let run = async { stock.sql("SELECT 1").await?.collect().await };
    let refused = tokio::time::timeout(DEADLINE, run)
        .await
        .expect("refused within the deadline");
    assert!(refused.is_err(), "a plaintext Ballista client ran a query");

    // TLS without a certificate, with one the CA signed that nobody listed, and with
    // a listed fingerprint whose certificate another CA signed: refused by both.
    for (what, tls) in [
        ("plaintext", None),
        ("no certificate", Some(None)),
        ("unlisted certificate", Some(Some(&pki.unlisted))),
        ("another CA's certificate", Some(Some(&pki.foreign))),
    ] {
        let s = ask_scheduler(scheduler, &pki, tls).await;
        assert!(s.is_err(), "scheduler served a caller with {what}");
        let e = ask_executor(executor, &pki, tls).await;
        assert!(e.is_err(), "executor served a caller with {what}: {e:?}");
    }

    // Roles: a client cannot poll for tasks (other jobs' plans carry their entity
    // rows), an executor cannot submit jobs.
    let as_client = channel(scheduler, &pki, Some(Some(&pki.client)))
        .await
        .unwrap();
    let poll = SchedulerGrpcClient::new(as_client.clone())
        .poll_work(pb::PollWorkParams::default())
        .await
        .unwrap_err();
    assert_eq!(poll.code(), tonic::Code::PermissionDenied, "{poll:?}");
    assert!(
        poll.message().contains("executors only"),
        "{}",
        poll.message()
    );
    let as_executor = channel(scheduler, &pki, Some(Some(&pki.executor)))
        .await
        .unwrap();
    let submit = SchedulerGrpcClient::new(as_executor)
        .execute_query(pb::ExecuteQueryParams::default())
        .await
        .unwrap_err();
    assert_eq!(submit.code(), tonic::Code::PermissionDenied, "{submit:?}");

    // A listed client's physical plan (a CSV scan of a file on the executor's disk)
    // would skip the scheduler's check of what a plan reads: refused.
    let secret = dir.path().join("secret.csv");
    std::fs::write(&secret, "card_number\n4111111111111111\n").unwrap();
    let local = SessionContext::new();
    local
        .register_csv("secret", secret.to_str().unwrap(), Default::default())
        .await
        .unwrap();
    let plan = local
        .sql("SELECT * FROM secret")
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    let codec = ballista_core::serde::BallistaPhysicalExtensionCodec::default();
    let bytes = datafusion_proto::protobuf::PhysicalPlanNode::try_from_physical_plan(plan, &codec)
        .unwrap()
        .encode_to_vec();
    let mut request = tonic::Request::new(pb::ExecuteQueryParams {
        query: Some(pb::execute_query_params::Query::PhysicalPlan(bytes)),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "ballista-version",
        ballista_core::BALLISTA_VERSION.parse().unwrap(),
    );
    let submitted = SchedulerGrpcClient::new(as_client)
        .execute_query(request)
        .await;
    let refused = submitted.expect_err("a physical plan was accepted");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("logical plans only"),
        "{}",
        refused.message()
    );
}

/// A listed client's fetch whose job id is a path outside the executor's work
/// directory (another cluster's on the same host): Ballista joins it onto the work
/// directory unchecked. Refused before any file is opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_cannot_name_a_job_outside_the_executors_work_directory() {
    use arrow::array::{RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki")).unwrap();
    let cluster = cluster(dir.path(), &pki);
    // Shuffle output of another job, outside this executor's work directory.
    let victim = dir.path().join("other-cluster").join("job");
    std::fs::create_dir_all(victim.join("1").join("0")).unwrap();
    let schema = std::sync::Arc::new(Schema::new(vec![Field::new(
        "card_number",
        DataType::Utf8,
        false,
    )]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![std::sync::Arc::new(StringArray::from(vec![
            "4111111111111111",
        ]))],
    )
    .unwrap();
    let file = std::fs::File::create(victim.join("1").join("0").join("data.arrow")).unwrap();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(file, &schema).unwrap();
    w.write(&batch).unwrap();
    w.finish().unwrap();

    let executor = cluster.executors[0];
    let action = pb::Action {
        action_type: Some(pb::action::ActionType::FetchPartition(pb::FetchPartition {
            job_id: victim.to_str().unwrap().to_owned(),
            stage_id: 1,
            partition_id: 0,
            host: "127.0.0.1".into(),
            port: u32::from(executor.port()),
            ..Default::default()
        })),
        settings: vec![],
    };
    let ticket = arrow_flight::Ticket::new(action.encode_to_vec());
    let channel = channel(executor, &pki, Some(Some(&pki.client)))
        .await
        .unwrap();
    let answer = FlightServiceClient::new(channel.clone())
        .do_get(ticket.clone())
        .await;
    let refused = match answer {
        Ok(stream) => {
            let mut stream = stream.into_inner();
            let first = futures::StreamExt::next(&mut stream).await;
            panic!("the executor served another job's file: {first:?}")
        }
        Err(status) => status,
    };
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("job id"),
        "{}",
        refused.message()
    );
    // The block-transport action takes the same fetch: refused the same way.
    let action = arrow_flight::Action::new("IO_BLOCK_TRANSPORT", ticket.ticket);
    let refused = FlightServiceClient::new(channel)
        .do_action(action)
        .await
        .map(|_| ())
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
}

#[test]
fn the_binaries_refuse_to_listen_beyond_loopback_in_the_clear_or_to_push_tasks() {
    let run = |bin: &str, args: &[&str]| {
        let out = std::process::Command::new(bin).args(args).output().unwrap();
        assert!(!out.status.success(), "{bin} {args:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let scheduler = env!("CARGO_BIN_EXE_quiver-ballista-scheduler");
    let executor = env!("CARGO_BIN_EXE_quiver-ballista-executor");
    let err = run(scheduler, &["--bind-host", "0.0.0.0", "--bind-port", "1"]);
    assert!(err.contains("--tls-ca"), "{err}");
    let err = run(executor, &["--bind-host", "0.0.0.0", "--bind-port", "1"]);
    assert!(err.contains("--tls-ca"), "{err}");
    let err = run(
        scheduler,
        &["--scheduler-policy", "push-staged", "--bind-port", "1"],
    );
    assert!(err.contains("pull-staged only"), "{err}");
    let err = run(scheduler, &["--tls-ca", "ca.pem"]);
    assert!(err.contains("--tls-cert"), "{err}");
    let err = run(
        executor,
        &["--scheduler-host", "scheduler", "--bind-port", "1"],
    );
    assert!(err.contains("--scheduler-host scheduler"), "{err}");
}
