"""Framed projector records: what snapshots and attestations share on the wire.

A record is ``MAGIC`` (which kind of record), one format byte, the header's
length (4 bytes, big-endian), the header (a JSON object, keys sorted, its
``format`` equal to the format byte), then the body, which only the kind's
own module reads.

Invariants: ``unframe(frame(m, f, h, b), m, f, ...)`` gives back ``h`` and
where ``b`` starts; bytes that are not a whole record of that kind (another
magic, another format, a header length past the end, a header that is not a
JSON object of that format) raise the caller's error type, with a message
that names the kind of record and the problem (bounded: it may quote the
JSON parser). Nothing here checks a signature or reads the body.
"""

from __future__ import annotations

import struct

import orjson

HEADER_LEN = struct.Struct(">I")


def frame(magic: bytes, fmt: int, header: dict, body: bytes) -> bytes:
    head = orjson.dumps(header, option=orjson.OPT_SORT_KEYS)
    return magic + bytes((fmt,)) + HEADER_LEN.pack(len(head)) + head + body


def unframe(data: bytes, magic: bytes, fmt: int, what: str, error: type[Exception]) -> tuple[dict, int]:
    """The header of a ``what`` record and the offset its body starts at; ``error`` if it is not a whole one."""
    prefix = len(magic) + 1 + HEADER_LEN.size
    if not isinstance(data, (bytes, bytearray)) or len(data) < prefix or not data.startswith(magic):
        raise error(f"not a meshlog {what} (bad magic)")
    if data[len(magic)] != fmt:
        raise error(f"{what} format {data[len(magic)]} is not understood by this build (knows {fmt})")
    (hlen,) = HEADER_LEN.unpack_from(data, len(magic) + 1)
    end = prefix + hlen
    if end > len(data):
        raise error(f"truncated {what} header")
    try:
        header = orjson.loads(data[prefix:end])
    except orjson.JSONDecodeError as exc:
        raise error(f"{what} header is not JSON: {str(exc)[:120]}") from None
    if not isinstance(header, dict) or header.get("format") != fmt:
        raise error(f"{what} header format mismatch")
    return header, end
