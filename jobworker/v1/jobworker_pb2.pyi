from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Limits(_message.Message):
    __slots__ = ("cpu", "memory_bytes", "io_read_bps", "io_write_bps", "pids", "output_bytes", "timeout_seconds")
    CPU_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    IO_READ_BPS_FIELD_NUMBER: _ClassVar[int]
    IO_WRITE_BPS_FIELD_NUMBER: _ClassVar[int]
    PIDS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    cpu: float
    memory_bytes: int
    io_read_bps: int
    io_write_bps: int
    pids: int
    output_bytes: int
    timeout_seconds: float
    def __init__(self, cpu: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., io_read_bps: _Optional[int] = ..., io_write_bps: _Optional[int] = ..., pids: _Optional[int] = ..., output_bytes: _Optional[int] = ..., timeout_seconds: _Optional[float] = ...) -> None: ...

class StartJobRequest(_message.Message):
    __slots__ = ("cmd", "args", "limits", "env", "workdir", "host_network", "network", "name", "labels")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CMD_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    WORKDIR_FIELD_NUMBER: _ClassVar[int]
    HOST_NETWORK_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    cmd: str
    args: _containers.RepeatedScalarFieldContainer[str]
    limits: Limits
    env: _containers.ScalarMap[str, str]
    workdir: str
    host_network: bool
    network: str
    name: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, cmd: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., env: _Optional[_Mapping[str, str]] = ..., workdir: _Optional[str] = ..., host_network: _Optional[bool] = ..., network: _Optional[str] = ..., name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class StartJobResponse(_message.Message):
    __slots__ = ("job_id", "job")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    job: GetJobStatusResponse
    def __init__(self, job_id: _Optional[str] = ..., job: _Optional[_Union[GetJobStatusResponse, _Mapping]] = ...) -> None: ...

class StopJobRequest(_message.Message):
    __slots__ = ("job_id", "grace_seconds")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    grace_seconds: float
    def __init__(self, job_id: _Optional[str] = ..., grace_seconds: _Optional[float] = ...) -> None: ...

class StopJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: GetJobStatusResponse
    def __init__(self, job: _Optional[_Union[GetJobStatusResponse, _Mapping]] = ...) -> None: ...

class GetJobStatusRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetJobStatusResponse(_message.Message):
    __slots__ = ("status", "job_id", "owner", "args", "limits", "outcome", "exit_code", "signal", "oom_killed", "stopped_by_user", "created_at", "started_at", "ended_at", "cpu_time_ns", "peak_memory_bytes", "output_bytes", "signal_name", "output_truncated", "output_truncated_reason", "output_disk_bytes", "workdir_bytes", "outcome_reason", "network", "name", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STATUS_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    OOM_KILLED_FIELD_NUMBER: _ClassVar[int]
    STOPPED_BY_USER_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    CPU_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    PEAK_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_NAME_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TRUNCATED_REASON_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    WORKDIR_BYTES_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_REASON_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    status: str
    job_id: str
    owner: str
    args: _containers.RepeatedScalarFieldContainer[str]
    limits: Limits
    outcome: str
    exit_code: int
    signal: int
    oom_killed: bool
    stopped_by_user: bool
    created_at: float
    started_at: float
    ended_at: float
    cpu_time_ns: int
    peak_memory_bytes: int
    output_bytes: int
    signal_name: str
    output_truncated: bool
    output_truncated_reason: str
    output_disk_bytes: int
    workdir_bytes: int
    outcome_reason: str
    network: str
    name: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, status: _Optional[str] = ..., job_id: _Optional[str] = ..., owner: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., outcome: _Optional[str] = ..., exit_code: _Optional[int] = ..., signal: _Optional[int] = ..., oom_killed: _Optional[bool] = ..., stopped_by_user: _Optional[bool] = ..., created_at: _Optional[float] = ..., started_at: _Optional[float] = ..., ended_at: _Optional[float] = ..., cpu_time_ns: _Optional[int] = ..., peak_memory_bytes: _Optional[int] = ..., output_bytes: _Optional[int] = ..., signal_name: _Optional[str] = ..., output_truncated: _Optional[bool] = ..., output_truncated_reason: _Optional[str] = ..., output_disk_bytes: _Optional[int] = ..., workdir_bytes: _Optional[int] = ..., outcome_reason: _Optional[str] = ..., network: _Optional[str] = ..., name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GetJobOutputRequest(_message.Message):
    __slots__ = ("job_id", "offset")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    offset: int
    def __init__(self, job_id: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class GetJobOutputResponse(_message.Message):
    __slots__ = ("output_msg", "offset")
    OUTPUT_MSG_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    output_msg: bytes
    offset: int
    def __init__(self, output_msg: _Optional[bytes] = ..., offset: _Optional[int] = ...) -> None: ...

class RemoveJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class RemoveJobResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "labels", "state", "name", "owner", "created_after")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    CREATED_AFTER_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    labels: _containers.ScalarMap[str, str]
    state: str
    name: str
    owner: str
    created_after: float
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., state: _Optional[str] = ..., name: _Optional[str] = ..., owner: _Optional[str] = ..., created_after: _Optional[float] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token", "args_cut")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ARGS_CUT_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[GetJobStatusResponse]
    next_page_token: str
    args_cut: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, jobs: _Optional[_Iterable[_Union[GetJobStatusResponse, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., args_cut: _Optional[_Iterable[bool]] = ...) -> None: ...

class WatchJobsRequest(_message.Message):
    __slots__ = ("since", "job_ids", "labels", "state", "owner")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SINCE_FIELD_NUMBER: _ClassVar[int]
    JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    since: str
    job_ids: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    state: str
    owner: str
    def __init__(self, since: _Optional[str] = ..., job_ids: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., state: _Optional[str] = ..., owner: _Optional[str] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("cursor", "kind", "at", "job")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    cursor: str
    kind: str
    at: float
    job: GetJobStatusResponse
    def __init__(self, cursor: _Optional[str] = ..., kind: _Optional[str] = ..., at: _Optional[float] = ..., job: _Optional[_Union[GetJobStatusResponse, _Mapping]] = ...) -> None: ...

class GetAuditLogRequest(_message.Message):
    __slots__ = ("user", "job_id", "since", "before_id", "limit")
    USER_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    BEFORE_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    user: str
    job_id: str
    since: float
    before_id: int
    limit: int
    def __init__(self, user: _Optional[str] = ..., job_id: _Optional[str] = ..., since: _Optional[float] = ..., before_id: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("id", "time", "user", "common_name", "serial", "fingerprint_sha256", "peer", "method", "job_id", "code", "detail_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    COMMON_NAME_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_SHA256_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_JSON_FIELD_NUMBER: _ClassVar[int]
    id: int
    time: float
    user: str
    common_name: str
    serial: str
    fingerprint_sha256: str
    peer: str
    method: str
    job_id: str
    code: str
    detail_json: str
    def __init__(self, id: _Optional[int] = ..., time: _Optional[float] = ..., user: _Optional[str] = ..., common_name: _Optional[str] = ..., serial: _Optional[str] = ..., fingerprint_sha256: _Optional[str] = ..., peer: _Optional[str] = ..., method: _Optional[str] = ..., job_id: _Optional[str] = ..., code: _Optional[str] = ..., detail_json: _Optional[str] = ...) -> None: ...

class GetAuditLogResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[AuditRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[AuditRecord, _Mapping]]] = ...) -> None: ...
