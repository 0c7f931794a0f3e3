"""The hand-made GetJobOutputResponse encoding is byte for byte protobuf's own."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from jobworker.server.convert import output_response
from jobworker.v1 import jobworker_pb2 as pb

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@given(chunk=st.binary(max_size=300), offset=INT64)
def test_output_response_is_protobufs_encoding(chunk: bytes, offset: int) -> None:
    expected = pb.GetJobOutputResponse(output_msg=chunk, offset=offset).SerializeToString()
    assert output_response(chunk, offset).SerializeToString() == expected


def test_output_response_at_size_boundaries_parses_back() -> None:
    # Varint lengths change width at 2**7, 2**14, 2**21: cover each edge with real sizes.
    for size in (0, 1, 127, 128, 16_383, 16_384, 2**21 - 1, 2**21, 256 << 10):
        chunk = bytes(range(256)) * (size // 256) + bytes(size % 256)
        for offset in (0, 1, 2**35 + 7, 2**63 - 1):
            wire = b"".join(output_response(chunk, offset).parts)
            # gRPC's prefix: not compressed, then the protobuf length, big-endian.
            assert wire[0] == 0
            assert int.from_bytes(wire[1:5], "big") == len(wire) - 5
            parsed = pb.GetJobOutputResponse.FromString(wire[5:])
            assert parsed.output_msg == chunk
            assert parsed.offset == offset
