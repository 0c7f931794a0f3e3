import purerpc
import jobworker.v1.jobworker_pb2 as jobworker_dot_v1_dot_jobworker__pb2


class JobWorkerServiceServicer(purerpc.Servicer):
    async def StartJob(self, input_message):
        raise NotImplementedError()

    async def StopJob(self, input_message):
        raise NotImplementedError()

    async def GetJobStatus(self, input_message):
        raise NotImplementedError()

    async def GetJobOutput(self, input_message):
        raise NotImplementedError()

    async def ListJobs(self, input_message):
        raise NotImplementedError()

    async def RemoveJob(self, input_message):
        raise NotImplementedError()

    async def WatchJobs(self, input_message):
        raise NotImplementedError()

    async def GetAuditLog(self, input_message):
        raise NotImplementedError()

    @property
    def service(self) -> purerpc.Service:
        service_obj = purerpc.Service(
            "jobworker.v1.JobWorkerService"
        )
        service_obj.add_method(
            "StartJob",
            self.StartJob,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                jobworker_dot_v1_dot_jobworker__pb2.StartJobRequest,
                jobworker_dot_v1_dot_jobworker__pb2.StartJobResponse,
            )
        )
        service_obj.add_method(
            "StopJob",
            self.StopJob,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                jobworker_dot_v1_dot_jobworker__pb2.StopJobRequest,
                jobworker_dot_v1_dot_jobworker__pb2.StopJobResponse,
            )
        )
        service_obj.add_method(
            "GetJobStatus",
            self.GetJobStatus,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                jobworker_dot_v1_dot_jobworker__pb2.GetJobStatusRequest,
                jobworker_dot_v1_dot_jobworker__pb2.GetJobStatusResponse,
            )
        )
        service_obj.add_method(
            "GetJobOutput",
            self.GetJobOutput,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_STREAM,
                jobworker_dot_v1_dot_jobworker__pb2.GetJobOutputRequest,
                jobworker_dot_v1_dot_jobworker__pb2.GetJobOutputResponse,
            )
        )
        service_obj.add_method(
            "ListJobs",
            self.ListJobs,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                jobworker_dot_v1_dot_jobworker__pb2.ListJobsRequest,
                jobworker_dot_v1_dot_jobworker__pb2.ListJobsResponse,
            )
        )
        service_obj.add_method(
            "RemoveJob",
            self.RemoveJob,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                jobworker_dot_v1_dot_jobworker__pb2.RemoveJobRequest,
                jobworker_dot_v1_dot_jobworker__pb2.RemoveJobResponse,
            )
        )
        service_obj.add_method(
            "WatchJobs",
            self.WatchJobs,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_STREAM,
                jobworker_dot_v1_dot_jobworker__pb2.WatchJobsRequest,
                jobworker_dot_v1_dot_jobworker__pb2.JobEvent,
            )
        )
        service_obj.add_method(
            "GetAuditLog",
            self.GetAuditLog,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                jobworker_dot_v1_dot_jobworker__pb2.GetAuditLogRequest,
                jobworker_dot_v1_dot_jobworker__pb2.GetAuditLogResponse,
            )
        )
        return service_obj


class JobWorkerServiceStub:
    def __init__(self, channel):
        self._client = purerpc.Client(
            "jobworker.v1.JobWorkerService",
            channel
        )
        self.StartJob = self._client.get_method_stub(
            "StartJob",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                jobworker_dot_v1_dot_jobworker__pb2.StartJobRequest,
                jobworker_dot_v1_dot_jobworker__pb2.StartJobResponse,
            )
        )
        self.StopJob = self._client.get_method_stub(
            "StopJob",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                jobworker_dot_v1_dot_jobworker__pb2.StopJobRequest,
                jobworker_dot_v1_dot_jobworker__pb2.StopJobResponse,
            )
        )
        self.GetJobStatus = self._client.get_method_stub(
            "GetJobStatus",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                jobworker_dot_v1_dot_jobworker__pb2.GetJobStatusRequest,
                jobworker_dot_v1_dot_jobworker__pb2.GetJobStatusResponse,
            )
        )
        self.GetJobOutput = self._client.get_method_stub(
            "GetJobOutput",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_STREAM,
                jobworker_dot_v1_dot_jobworker__pb2.GetJobOutputRequest,
                jobworker_dot_v1_dot_jobworker__pb2.GetJobOutputResponse,
            )
        )
        self.ListJobs = self._client.get_method_stub(
            "ListJobs",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                jobworker_dot_v1_dot_jobworker__pb2.ListJobsRequest,
                jobworker_dot_v1_dot_jobworker__pb2.ListJobsResponse,
            )
        )
        self.RemoveJob = self._client.get_method_stub(
            "RemoveJob",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                jobworker_dot_v1_dot_jobworker__pb2.RemoveJobRequest,
                jobworker_dot_v1_dot_jobworker__pb2.RemoveJobResponse,
            )
        )
        self.WatchJobs = self._client.get_method_stub(
            "WatchJobs",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_STREAM,
                jobworker_dot_v1_dot_jobworker__pb2.WatchJobsRequest,
                jobworker_dot_v1_dot_jobworker__pb2.JobEvent,
            )
        )
        self.GetAuditLog = self._client.get_method_stub(
            "GetAuditLog",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                jobworker_dot_v1_dot_jobworker__pb2.GetAuditLogRequest,
                jobworker_dot_v1_dot_jobworker__pb2.GetAuditLogResponse,
            )
        )