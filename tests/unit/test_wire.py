"""How the writer groups outgoing pieces: order and bytes kept, large pieces uncopied."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from jobworker.transport._wire.wrapper import _SEND_ALONE, _coalesced

SIZES = st.lists(
    st.sampled_from([0, 1, 9, 5000, _SEND_ALONE - 1, _SEND_ALONE, 70_000]), max_size=12
)


@given(sizes=SIZES)
def test_coalesced_keeps_every_byte_in_order(sizes: list[int]) -> None:
    pieces = [bytes([index % 256]) * size for index, size in enumerate(sizes)]
    sends = list(_coalesced(list(pieces)))
    assert b"".join(sends) == b"".join(pieces)
    large = [piece for piece in pieces if len(piece) >= _SEND_ALONE]
    # every large piece is sent alone, as the very object it was (no copy) ...
    assert [send for send in sends if any(send is piece for piece in large)] == large
    # ... and no two sends in a row are both small (small runs are joined)
    small = [len(send) < _SEND_ALONE for send in sends]
    assert not any(a and b for a, b in zip(small, small[1:], strict=False))
