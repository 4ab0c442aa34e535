//! The scheduler's gRPC service as quiver serves it: Ballista's, with the plans a
//! client may submit narrowed to logical plans. Ballista also accepts an already
//! built physical plan (and Substrait), which would skip the scheduler's planner and
//! with it [`quiver_featurestore::plan::check_received_plan`]: a physical plan can
//! name any file format over any path on the executors (another job's shuffle files)
//! or a sink that writes there. Refusing those two kinds here is what makes "the
//! scheduler plans only checked plans" hold for every submission.

use ballista_core::serde::protobuf::execute_query_params::Query;
use ballista_core::serde::protobuf::scheduler_grpc_server::SchedulerGrpc;
use ballista_core::serde::protobuf::{self as pb};
use ballista_scheduler::scheduler_server::SchedulerServer;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use tonic::{Request, Response, Status};

/// Ballista's scheduler server with quiver's submission rule.
#[derive(Clone)]
pub struct QuiverScheduler(pub SchedulerServer<LogicalPlanNode, PhysicalPlanNode>);

/// Refuse a submission that is not a logical plan.
pub fn check_submission(params: &pb::ExecuteQueryParams) -> Result<(), Status> {
    match &params.query {
        Some(Query::LogicalPlan(_)) => Ok(()),
        Some(Query::PhysicalPlan(_)) => Err(Status::invalid_argument(
            "quiver's scheduler takes logical plans only: a physical plan would skip the \
             check of what a plan may read and write (docs/scale-out.md)",
        )),
        Some(Query::SubstraitPlan(_)) => Err(Status::invalid_argument(
            "quiver's scheduler takes logical plans only, not Substrait",
        )),
        None => Err(Status::invalid_argument("the submission holds no plan")),
    }
}

type R<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl SchedulerGrpc for QuiverScheduler {
    async fn poll_work(&self, r: Request<pb::PollWorkParams>) -> R<pb::PollWorkResult> {
        self.0.poll_work(r).await
    }

    async fn register_executor(
        &self,
        r: Request<pb::RegisterExecutorParams>,
    ) -> R<pb::RegisterExecutorResult> {
        self.0.register_executor(r).await
    }

    async fn heart_beat_from_executor(
        &self,
        r: Request<pb::HeartBeatParams>,
    ) -> R<pb::HeartBeatResult> {
        self.0.heart_beat_from_executor(r).await
    }

    async fn update_task_status(
        &self,
        r: Request<pb::UpdateTaskStatusParams>,
    ) -> R<pb::UpdateTaskStatusResult> {
        self.0.update_task_status(r).await
    }

    async fn create_update_session(
        &self,
        r: Request<pb::CreateUpdateSessionParams>,
    ) -> R<pb::CreateUpdateSessionResult> {
        self.0.create_update_session(r).await
    }

    async fn remove_session(
        &self,
        r: Request<pb::RemoveSessionParams>,
    ) -> R<pb::RemoveSessionResult> {
        self.0.remove_session(r).await
    }

    type ExecuteQueryPushStream =
        <SchedulerServer<LogicalPlanNode, PhysicalPlanNode> as SchedulerGrpc>::ExecuteQueryPushStream;

    async fn execute_query_push(
        &self,
        r: Request<pb::ExecuteQueryParams>,
    ) -> R<Self::ExecuteQueryPushStream> {
        check_submission(r.get_ref())?;
        self.0.execute_query_push(r).await
    }

    async fn execute_query(&self, r: Request<pb::ExecuteQueryParams>) -> R<pb::ExecuteQueryResult> {
        check_submission(r.get_ref())?;
        self.0.execute_query(r).await
    }

    async fn get_job_status(
        &self,
        r: Request<pb::GetJobStatusParams>,
    ) -> R<pb::GetJobStatusResult> {
        self.0.get_job_status(r).await
    }

    async fn get_job_metrics(
        &self,
        r: Request<pb::GetJobMetricsParams>,
    ) -> R<pb::GetJobMetricsResult> {
        self.0.get_job_metrics(r).await
    }

    async fn executor_stopped(
        &self,
        r: Request<pb::ExecutorStoppedParams>,
    ) -> R<pb::ExecutorStoppedResult> {
        self.0.executor_stopped(r).await
    }

    async fn cancel_job(&self, r: Request<pb::CancelJobParams>) -> R<pb::CancelJobResult> {
        SchedulerGrpc::cancel_job(&self.0, r).await
    }

    async fn clean_job_data(
        &self,
        r: Request<pb::CleanJobDataParams>,
    ) -> R<pb::CleanJobDataResult> {
        self.0.clean_job_data(r).await
    }
}
