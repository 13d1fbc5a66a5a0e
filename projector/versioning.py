"""Resource versions: a pure function of a resource's deterministic bytes.

``version_of(body)`` is the first 16 hex characters (64 bits) of the SHA-256
of the body, where the body is ``msg.SerializeToString(deterministic=True)``.
The same state therefore yields the same version on every replica and in
every replay, and a proxy reconnecting with ``initial_resource_versions`` is
only sent what really changed.

Why 64 bits is enough: a version is only ever compared with another version
of the *same* resource (same type url and name) — "does the proxy already hold
this content?". A wrong answer needs two different bodies of one resource to
share a 64-bit prefix of a cryptographic hash. With n distinct bodies of one
resource over all history the chance of any such pair is about n²/2⁶⁵: for a
million versions of one resource that is ~3·10⁻⁸, and nobody can steer it
since resource bodies come from validated events, not from an adversary who
could search for SHA-256 prefix collisions (2³² work for a birthday attack on
64 bits is feasible, so this is not a security boundary; it is a cache key).
Short versions keep the membership views and the xDS messages small.
"""

from __future__ import annotations

from hashlib import sha256

VERSION_HEX_CHARS = 16


def version_of(body: bytes) -> str:
    return sha256(body).hexdigest()[:VERSION_HEX_CHARS]
