"""A delta response as the machine decides it, encoded from bytes made once per resource.

A protobuf message on the wire is the concatenation of its encoded fields, in
any order, a repeated field once per element. So a
``DeltaDiscoveryResponse`` is assembled here from: its few per-stream scalars
(type URL, nonce, ``system_version_info``, removed names), encoded on the spot,
and the ``resources`` entries, which are the same bytes for every stream that
is sent the resource: :attr:`VersionedResource.delta_entry` encodes the
``Resource`` wrapper by hand (:func:`encode_delta_entry`), kept per resource
version from its second use on, and every stream reuses it. The
gateway hands the bytes to gRPC with an identity serializer.

Invariants:
- ``DeltaResponse`` carries decisions only (made by :mod:`.delta`); encoding
  adds nothing: ``DeltaDiscoveryResponse.FromString(r.encode()) ==
  r.to_proto()``, and the bytes are what protobuf's own serializer writes
  (fields in number order).
- Field numbers and wire types are read from the generated descriptor, not
  written down here.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.descriptor import FieldDescriptor

if TYPE_CHECKING:  # resources.py builds its entries with the helpers below
    from .resources import VersionedResource

__all__ = ["DeltaResponse", "length_delimited_key", "encode_length_delimited", "encode_delta_entry"]

_LENGTH_DELIMITED = 2  # protobuf wire type of strings, bytes and messages


def length_delimited_key(message, field: str) -> bytes:
    """The encoded key (tag) of a string/bytes/message field of ``message``'s descriptor."""
    fd = message.DESCRIPTOR.fields_by_name[field]
    if fd.type not in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES, FieldDescriptor.TYPE_MESSAGE):
        raise TypeError(f"{message.DESCRIPTOR.full_name}.{field} is not length-delimited")
    return _varint((fd.number << 3) | _LENGTH_DELIMITED)


def _varint_slow(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# the one-byte varints (lengths below 128: nonces, versions, names), looked up rather than built per field
_SHORT_VARINTS = tuple(bytes((n,)) for n in range(128))


def _varint(n: int) -> bytes:
    return _SHORT_VARINTS[n] if n < 128 else _varint_slow(n)


def encode_length_delimited(key: bytes, payload: bytes) -> bytes:
    """One encoded field: key, length, payload."""
    n = len(payload)
    return key + (_SHORT_VARINTS[n] if n < 128 else _varint_slow(n)) + payload


_Response = discovery_pb2.DeltaDiscoveryResponse
_VERSION_INFO = length_delimited_key(_Response, "system_version_info")  # field 1
_TYPE_URL = length_delimited_key(_Response, "type_url")  # field 4
_NONCE = length_delimited_key(_Response, "nonce")  # field 5
_REMOVED = length_delimited_key(_Response, "removed_resources")  # field 6
# the order protobuf itself writes them in, so the bytes match SerializeToString
assert [_Response.DESCRIPTOR.fields_by_name[f].number for f in
        ("system_version_info", "resources", "type_url", "nonce", "removed_resources")] == sorted(
    _Response.DESCRIPTOR.fields_by_name[f].number for f in
    ("system_version_info", "resources", "type_url", "nonce", "removed_resources"))


_Resource = discovery_pb2.Resource
_RESOURCE_VERSION = length_delimited_key(_Resource, "version")  # field 1
_RESOURCE_ANY = length_delimited_key(_Resource, "resource")  # field 2
_RESOURCE_NAME = length_delimited_key(_Resource, "name")  # field 3
_ANY_TYPE_URL = length_delimited_key(any_pb2.Any(), "type_url")  # field 1
_ANY_VALUE = length_delimited_key(any_pb2.Any(), "value")  # field 2
_RESOURCES = length_delimited_key(_Response, "resources")  # field 2
assert [_Resource.DESCRIPTOR.fields_by_name[f].number for f in ("version", "resource", "name")] == [1, 2, 3]
assert [any_pb2.Any.DESCRIPTOR.fields_by_name[f].number for f in ("type_url", "value")] == [1, 2]


def encode_delta_entry(name: str, version: str, type_url: str, body: bytes) -> bytes:
    """One ``resources`` entry of a ``DeltaDiscoveryResponse``: ``Resource{version, resource: Any{type_url,
    value: body}, name}`` with the response's key and length in front (the bytes protobuf writes, without
    building the messages: the body is copied once, not three times)."""
    wrapped = b"".join((_text(_RESOURCE_VERSION, version),
                        encode_length_delimited(_RESOURCE_ANY, _text(_ANY_TYPE_URL, type_url) + (
                            encode_length_delimited(_ANY_VALUE, body) if body else b"")),
                        _text(_RESOURCE_NAME, name)))
    return encode_length_delimited(_RESOURCES, wrapped)


def _text(key: bytes, value: str) -> bytes:
    return encode_length_delimited(key, value.encode()) if value else b""  # proto3 leaves empty strings out


@functools.lru_cache(maxsize=64)
def _type_url_field(type_url: str) -> bytes:
    """The encoded type URL field: a handful of type URLs, encoded once each."""
    return _text(_TYPE_URL, type_url)


class DeltaResponse:
    """One ``DeltaDiscoveryResponse`` to send: what the machine decided, readable like the message."""

    __slots__ = ("type_url", "nonce", "system_version_info", "resources", "removed_resources")

    def __init__(self, type_url: str, nonce: str, system_version_info: str,
                 resources: list[VersionedResource], removed_resources: list[str]) -> None:
        self.type_url = type_url
        self.nonce = nonce
        self.system_version_info = system_version_info
        self.resources = resources  # in the order sent
        self.removed_resources = removed_resources

    def encode(self) -> bytes:
        """The serialized message: per-stream fields around the resources' shared entries."""
        parts = [_text(_VERSION_INFO, self.system_version_info)]
        parts += [r.delta_entry for r in self.resources]
        parts.append(_type_url_field(self.type_url))
        parts.append(_text(_NONCE, self.nonce))
        if self.removed_resources:
            parts += [encode_length_delimited(_REMOVED, n.encode()) for n in self.removed_resources]
        return b"".join(parts)

    def to_proto(self) -> discovery_pb2.DeltaDiscoveryResponse:
        """The same response built as a protobuf message, field by field (tests, debugging)."""
        resp = discovery_pb2.DeltaDiscoveryResponse(type_url=self.type_url, nonce=self.nonce,
                                                    system_version_info=self.system_version_info)
        for r in self.resources:
            resp.resources.add(name=r.name, version=r.version).resource.CopyFrom(
                any_pb2.Any(type_url=r.type_url, value=r.body))
        resp.removed_resources.extend(self.removed_resources)
        return resp

    def __repr__(self) -> str:
        return (f"DeltaResponse({self.type_url!r}, nonce={self.nonce!r}, "
                f"resources={[r.name for r in self.resources]!r}, removed={self.removed_resources!r})")
