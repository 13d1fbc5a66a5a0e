"""``projector.addressing``: the address facts render inputs are made of."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from projector.addressing import bind_address, is_ip


def _ipaddress_says(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False


OCTETS = st.one_of(st.integers(0, 300).map(str), st.sampled_from(["00", "01", "010", "0255", "1e1", "", " 1", "٣"]))
IPV4_LIKE = st.lists(OCTETS, min_size=3, max_size=5).map(".".join)
SUFFIXES = st.sampled_from(["", "\n", " ", ".", "x", "%eth0"])


@settings(max_examples=400)
@given(IPV4_LIKE, SUFFIXES)
def test_an_ipv4_looking_address_is_an_ip_exactly_when_ipaddress_says_so(address, suffix):
    value = address + suffix
    is_ip.cache_clear()
    assert is_ip(value) == _ipaddress_says(value), value


@settings(max_examples=200)
@given(st.one_of(st.ip_addresses().map(str), st.text(max_size=40)))
def test_any_text_is_an_ip_exactly_when_ipaddress_says_so(value):
    is_ip.cache_clear()
    assert is_ip(value) == _ipaddress_says(value), value


def test_an_inbound_listener_binds_the_instance_ip_or_every_address_for_a_host_name():
    assert bind_address("10.0.0.7") == "10.0.0.7"
    assert bind_address("::1") == "::1"
    assert bind_address("010.0.0.7") == "0.0.0.0"  # leading zeros: not an IP to ipaddress, so not to the mesh
    assert bind_address("reviews.internal") == "0.0.0.0"
