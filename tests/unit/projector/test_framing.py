"""projector.framing: a framed record gives back its header and body; anything not whole is refused by name."""

from __future__ import annotations

import pytest

from projector.framing import frame, unframe


class Broken(ValueError):
    pass


def test_a_framed_record_gives_back_its_header_and_where_its_body_starts():
    data = frame(b"MLTEST", 3, {"format": 3, "n": 1}, b"body bytes")
    header, body_at = unframe(data, b"MLTEST", 3, "test record", Broken)
    assert header == {"format": 3, "n": 1} and data[body_at:] == b"body bytes"


@pytest.mark.parametrize("data, why", [
    (b"MLOTHER\x03\x00\x00\x00\x02{}", "not a meshlog test record (bad magic)"),
    (frame(b"MLTEST", 4, {"format": 4}, b""), "test record format 4 is not understood by this build (knows 3)"),
    (b"MLTEST\x03\x00\x00\x01\x00{}", "truncated test record header"),
    (b"MLTEST\x03\x00\x00\x00\x02{x", "test record header is not JSON"),
    (frame(b"MLTEST", 3, {"format": 2}, b""), "test record header format mismatch"),
    (b"MLTEST\x03\x00\x00\x00\x02[]", "test record header format mismatch"),
])
def test_bytes_that_are_not_a_whole_record_are_refused_with_the_reason(data, why):
    with pytest.raises(Broken) as info:
        unframe(data, b"MLTEST", 3, "test record", Broken)
    assert str(info.value).startswith(why)
