"""The committed generated code matches protos/, and the API keeps the seed's wire format."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor

from jobworker.v1 import health_pb2, jobworker_grpc, jobworker_pb2

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ["jobworker/v1/jobworker.proto", "jobworker/v1/health.proto"]
GENERATED = [
    f"{name}{suffix}"
    for name in ("jobworker", "health")
    for suffix in ("_pb2.py", "_pb2.pyi", "_grpc.py")
]

# The seed's messages, verbatim (seeds/000_*.txt, "Proto Specifications").
SEED_PROTO = """
syntax = "proto3";
message StartJobRequest { string cmd = 1; }
message StartJobResponse { string job_id = 1; }
message StopJobRequest { string job_id = 1; }
message StopJobResponse {}
message GetJobStatusRequest { string job_id = 1; }
message GetJobStatusResponse { string status = 1; }
message GetJobOutputRequest { string job_id = 1; }
message GetJobOutputResponse { string output_msg = 1; }
"""


def _protoc(*args: str, cwd: Path) -> None:
    # protoc finds protoc-gen-purerpc on PATH; it sits beside this interpreter in the venv.
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"protoc failed: {result.stderr}"


def test_committed_generated_code_is_what_protoc_generates_now(tmp_path: Path) -> None:
    """Every committed file in jobworker/v1/ equals a fresh `just protos` output."""
    _protoc(
        f"-I{ROOT / 'protos'}",
        f"--python_out={tmp_path}",
        f"--pyi_out={tmp_path}",
        f"--purerpc_out={tmp_path}",
        *(str(ROOT / "protos" / proto) for proto in PROTOS),
        cwd=ROOT,
    )
    stale = [
        name
        for name in GENERATED
        if (tmp_path / "jobworker/v1" / name).read_bytes()
        != (ROOT / "jobworker/v1" / name).read_bytes()
    ]
    assert not stale, (
        f"generated code in jobworker/v1/ is stale ({', '.join(stale)}): "
        "run `just protos` and commit the result"
    )


def test_purerpc_stub_offers_servicer_and_stub_with_every_method() -> None:
    """The purerpc module has the servicer base and client stub, with every method."""
    methods = {
        "StartJob",
        "StopJob",
        "GetJobStatus",
        "GetJobOutput",
        "ListJobs",
        "RemoveJob",
        "WatchJobs",
        "GetAuditLog",
    }
    servicer = jobworker_grpc.JobWorkerServiceServicer()
    assert set(servicer.service.methods) == methods
    assert servicer.service.name == "jobworker.v1.JobWorkerService"
    assert hasattr(jobworker_grpc, "JobWorkerServiceStub")


@pytest.mark.parametrize(
    ("message", "field", "number", "kind"),
    [
        ("StartJobRequest", "cmd", 1, FieldDescriptor.TYPE_STRING),
        ("StartJobResponse", "job_id", 1, FieldDescriptor.TYPE_STRING),
        ("StopJobRequest", "job_id", 1, FieldDescriptor.TYPE_STRING),
        ("GetJobStatusRequest", "job_id", 1, FieldDescriptor.TYPE_STRING),
        ("GetJobOutputRequest", "job_id", 1, FieldDescriptor.TYPE_STRING),
        ("GetJobStatusResponse", "status", 1, FieldDescriptor.TYPE_STRING),
        # bytes, not the seed's string: the same wire type (length-delimited), any byte allowed.
        ("GetJobOutputResponse", "output_msg", 1, FieldDescriptor.TYPE_BYTES),
    ],
)
def test_seed_fields_keep_their_numbers_and_types(
    message: str, field: str, number: int, kind: int
) -> None:
    """The seed's fields keep the numbers and types its clients send and expect."""
    descriptor = jobworker_pb2.DESCRIPTOR.message_types_by_name[message].fields_by_name[field]
    assert (descriptor.number, descriptor.type) == (number, kind)


def test_service_streams_only_output_and_events() -> None:
    """GetJobOutput (the seed's) and WatchJobs are server streaming; every other method
    is unary, as in the seed."""
    service = jobworker_pb2.DESCRIPTOR.services_by_name["JobWorkerService"]
    streaming = {m.name for m in service.methods if m.server_streaming or m.client_streaming}
    assert streaming == {"GetJobOutput", "WatchJobs"}
    assert not any(service.methods_by_name[name].client_streaming for name in streaming)


def test_optional_fields_report_presence() -> None:
    """Fields whose absence means something (limits, exit code...) distinguish unset from zero."""
    limits = jobworker_pb2.Limits()
    assert not limits.HasField("cpu")
    limits.memory_bytes = 0
    assert limits.HasField("memory_bytes")
    assert jobworker_pb2.Limits.FromString(limits.SerializeToString()).HasField("memory_bytes")
    status = jobworker_pb2.GetJobStatusResponse(exit_code=0)
    assert status.HasField("exit_code")
    assert not status.HasField("signal")
    assert not jobworker_pb2.StopJobRequest().HasField("grace_seconds")


def test_seed_messages_and_ours_parse_each_other(tmp_path: Path) -> None:
    """Bytes written by a client built from the seed's proto parse here, and ours parse there."""
    (tmp_path / "seed.proto").write_text(SEED_PROTO)
    _protoc("-I.", "--include_imports", "--descriptor_set_out=seed.pb", "seed.proto", cwd=tmp_path)
    files = descriptor_pb2.FileDescriptorSet.FromString((tmp_path / "seed.pb").read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)

    def seed(name: str) -> type:
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))

    wire = seed("StartJobRequest")(cmd="ping -c 1 localhost").SerializeToString()
    assert jobworker_pb2.StartJobRequest.FromString(wire).cmd == "ping -c 1 localhost"
    ours = jobworker_pb2.GetJobStatusResponse(status="Active", job_id="x", owner="alex")
    assert seed("GetJobStatusResponse").FromString(ours.SerializeToString()).status == "Active"
    ours_output = jobworker_pb2.GetJobOutputResponse(output_msg="héllo\n".encode(), offset=7)
    assert seed("GetJobOutputResponse").FromString(ours_output.SerializeToString()).output_msg == (
        "héllo\n"
    )
    wire = seed("GetJobOutputResponse")(output_msg="ok").SerializeToString()
    assert jobworker_pb2.GetJobOutputResponse.FromString(wire).output_msg == b"ok"
    for name in (
        "StartJobResponse",
        "StopJobRequest",
        "GetJobStatusRequest",
        "GetJobOutputRequest",
    ):
        wire = seed(name)(job_id="4f1c").SerializeToString()
        assert getattr(jobworker_pb2, name).FromString(wire).job_id == "4f1c"
    # A seed peer keeps the fields it does not know and passes them on unchanged.
    wire = jobworker_pb2.StopJobResponse(job=ours).SerializeToString()
    assert seed("StopJobResponse").FromString(wire).SerializeToString() == wire


def test_health_service_has_the_standard_wire_names() -> None:
    """Load balancers call /grpc.health.v1.Health/Check and /Watch with the standard messages."""
    service = health_pb2.DESCRIPTOR.services_by_name["Health"]
    assert service.full_name == "grpc.health.v1.Health"
    assert {m.name for m in service.methods} == {"Check", "Watch"}
    assert service.methods_by_name["Watch"].server_streaming
    status = health_pb2.HealthCheckResponse.ServingStatus
    assert (status.SERVING, status.NOT_SERVING, status.SERVICE_UNKNOWN) == (1, 2, 3)
