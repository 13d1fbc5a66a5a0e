"""Resource versions: a pure function of what determines a resource's bytes.

Two kinds, both deterministic (the same log gives the same version on every
worker, replica and replay), both 16 hex characters (64 bits) of a SHA-256:

- A per-node resource (its name carries a node id, ``naming.is_per_node``):
  ``version_of(body)``, the hash of its deterministic serialization
  (``msg.SerializeToString(deterministic=True)``). Only the worker owning the
  node renders it, so hashing its bytes costs nothing extra.
- A shared resource (a service's cluster, endpoints, API listener or route:
  held by many nodes, whose memberships each name its version):
  ``inputs_version(type_url, name, inputs)``, the hash of its *render inputs*
  — the slice of the folded state its renderer reads
  (``render_view.Renderer.shared_inputs``), from which the message is built
  by a pure function of those inputs alone (``Renderer.build_shared``) — and
  ``SHARED_RENDER_VERSION``. So a projector worker names the version of every
  shared body its nodes hold without rendering it; only the worker owning the
  body's shard (``projector.sharding``) builds, serializes and publishes it.
  A worker over the same log position computes the same inputs, hence the
  same version, as its owner.

What keeps a shared version honest (unit-tested in
tests/unit/projector/test_versioning.py):

- Same inputs, same bytes: the body is built from its inputs only. Different
  bytes therefore need different inputs, hence (but for a hash collision) a
  different version: a proxy is never told "you have this" about bytes it
  does not have. Checked over every shared resource of the render tests'
  states.
- A renderer change that alters the bytes of the same inputs must bump
  ``SHARED_RENDER_VERSION`` (a golden digest of fixed inputs' bytes fails
  otherwise), so a proxy reconnecting with ``initial_resource_versions``
  after the upgrade is sent the new bytes.
- Inputs may change without the bytes changing (a revision number of a rule
  whose routes are the same): the version then changes too and the proxy
  receives equal bytes again. Harmless, and rare: the inputs are the values
  the builder reads, not whole events.

The version of a shared body is therefore not recomputable from its bytes:
the projector publishes it with the body (header ``meshlog-version``,
``projector.publisher``), and readers (the gateway's view cache, a fresh
worker adopting the view topics) take it from there; a body record without
the header is a per-node one (or from before this scheme) and its version is
``version_of`` its value.

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

import orjson

VERSION_HEX_CHARS = 16

# Bump whenever ``render_view.Renderer.build_shared`` (or the render_envoy / mesh_tls helpers it calls)
# gives other bytes for the same inputs. tests/unit/projector/test_versioning.py holds the golden digests
# of fixed inputs per value of this constant and fails if the bytes change without a bump.
SHARED_RENDER_VERSION = 1


def version_of(body: bytes) -> str:
    return sha256(body).hexdigest()[:VERSION_HEX_CHARS]


def _plain(value):
    """An event model in the inputs (a destination policy, a route rule) as JSON: its fields in declaration
    order, dicts in their order in the event (conservative: a reordered dict is other inputs)."""
    return value.model_dump(mode="json")


def inputs_version(type_url: str, name: str, inputs: tuple) -> str:
    """The version of a shared resource whose render inputs are ``inputs``.

    ``inputs``: str, int, bool, None, tuples of them and event models (pydantic), encoded as JSON: the same
    in every process for the same log (no repr, no set order, no object identity).
    """
    head = f"{SHARED_RENDER_VERSION}|{type_url}|{name}|".encode()
    return sha256(head + orjson.dumps(inputs, default=_plain)).hexdigest()[:VERSION_HEX_CHARS]
