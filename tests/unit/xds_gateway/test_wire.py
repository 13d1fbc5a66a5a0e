"""Story: a delta response assembled from each resource's ready bytes is exactly the message protobuf would write."""

from hypothesis import given, settings
from hypothesis import strategies as st

from envoy.service.discovery.v3 import discovery_pb2
from xds_gateway.protocol.resources import CLUSTER, ENDPOINT, make_resource
from xds_gateway.protocol.wire import DeltaResponse

names = st.text(min_size=1, max_size=40)
bodies = st.binary(max_size=400)  # past 127 bytes the lengths take two varint bytes


@settings(max_examples=200, deadline=None)
@given(type_url=st.sampled_from([CLUSTER, ENDPOINT, ""]), nonce=st.text(max_size=20),
       version_info=st.text(max_size=20), resources=st.dictionaries(names, bodies, max_size=5),
       removed=st.lists(names, max_size=5))
def test_encoded_bytes_are_the_protobuf_serialization(type_url, nonce, version_info, resources, removed):
    res = [make_resource(ENDPOINT, n, b) for n, b in sorted(resources.items())]
    r = DeltaResponse(type_url, nonce, version_info, res, removed)
    expected = r.to_proto()
    assert r.encode() == expected.SerializeToString()
    assert discovery_pb2.DeltaDiscoveryResponse.FromString(r.encode()) == expected


def test_the_resource_entry_is_kept_from_its_second_use_and_shared():
    res = make_resource(CLUSTER, "reviews", b"x" * 300)
    a = DeltaResponse(CLUSTER, "1-1", "00", [res], [])
    b = DeltaResponse(CLUSTER, "2-1", "01", [res], ["gone"])
    first = a.encode()
    assert res._entry is not None and not isinstance(res._entry, bytes)  # used once: nothing kept
    assert res.delta_entry in first and res.delta_entry in b.encode()
    assert res.delta_entry is res.delta_entry  # used again: built once more, then reused by every stream
    parsed = discovery_pb2.DeltaDiscoveryResponse.FromString(b.encode())
    assert (parsed.resources[0].name, parsed.resources[0].version, parsed.resources[0].resource.value,
            parsed.resources[0].resource.type_url, list(parsed.removed_resources), parsed.nonce) == (
        "reviews", res.version, b"x" * 300, CLUSTER, ["gone"], "2-1")
