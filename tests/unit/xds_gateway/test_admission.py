"""Transport-level stream caps of one gateway process."""

import pytest

from xds_gateway.admission import GatewayLimits, StreamSlots
from xds_gateway.protocol import Refused


def test_streams_per_connection_are_capped_per_connection():
    slots = StreamSlots(GatewayLimits(max_streams_per_connection=2, max_streams=10))
    slots.take("ipv4:127.0.0.1:1")
    slots.take("ipv4:127.0.0.1:1")
    with pytest.raises(Refused) as exc:
        slots.take("ipv4:127.0.0.1:1")
    assert exc.value.limit == "max_streams_per_connection"
    slots.take("ipv4:127.0.0.1:2")  # another connection is not affected
    assert slots.open == 3


def test_streams_per_process_are_capped_and_released():
    slots = StreamSlots(GatewayLimits(max_streams_per_connection=5, max_streams=2))
    slots.take("a")
    slots.take("b")
    with pytest.raises(Refused) as exc:
        slots.take("c")
    assert exc.value.limit == "max_streams" and slots.open == 2
    slots.give_back("a")
    slots.take("c")
    assert slots.open == 2


def test_a_connection_entry_goes_with_its_last_stream():
    slots = StreamSlots(GatewayLimits())
    slots.take("a")
    slots.give_back("a")
    assert slots._by_connection == {} and slots.open == 0


def test_limits_must_be_positive():
    with pytest.raises(ValueError, match="max_streams must be at least 1"):
        GatewayLimits(max_streams=0)
