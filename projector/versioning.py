"""Resource versions: a pure function of what determines a resource's bytes.

Every resource's version is the hash of its *render inputs* — the slice of
the folded state its renderer reads (``render_view.Renderer.inputs``:
``shared_inputs`` for a service's cluster, endpoints, API listener or route,
``node_inputs`` for a node's own listeners, local cluster and routes), from
which the message is built by a pure function of those inputs alone
(``Renderer.build``) — and ``RENDER_VERSION``:
``inputs_version(type_url, name, inputs)``, 16 hex characters (64 bits) of a
SHA-256. It is deterministic: the same log gives the same version on every
worker, replica and replay.

Why inputs and not bytes: a version is then known without building the
message. A projector worker names the version of every shared body its nodes
hold without rendering it (only the worker owning the body's shard,
``projector.sharding``, builds, serializes and publishes it); an incremental
render rebuilds a node's resource only when its inputs moved; and replay
answers "what was every proxy told" (versions only) without building a
single message (``render_mesh.render_all(..., bodies=False)``).

What keeps a version honest (unit-tested in
tests/unit/projector/test_versioning.py):

- Same inputs, same bytes: the body is built from its inputs only. Different
  bytes therefore need different inputs, hence (but for a hash collision) a
  different version: a proxy is never told "you have this" about bytes it
  does not have. Checked over every resource of the render tests' states and
  of random logs.
- A renderer change that alters the bytes of the same inputs must bump
  ``RENDER_VERSION`` (a golden digest of fixed inputs' bytes fails
  otherwise), so a proxy reconnecting with ``initial_resource_versions``
  after the upgrade is sent the new bytes.
- Inputs may change without the bytes changing (a revision number of a rule
  whose routes are the same): the version then changes too and the proxy
  receives equal bytes again. Harmless, and rare: the inputs are the values
  the builder reads, not whole events.

A version is therefore not recomputable from the bytes: the projector
publishes it with the body (header ``meshlog-version``,
``projector.publisher``), and readers (the gateway's view cache, a fresh
worker adopting the view topics) take it from there; a body record without
the header (from before this scheme, or a test's) has ``version_of`` its
value. Per-node resources were versioned by their bytes until
``RENDER_VERSION`` 1 covered them too: their versions changed once with
that upgrade, and proxies were sent equal bytes again once.

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

from projector.typeurls import ENDPOINT

VERSION_HEX_CHARS = 16

#: The version a membership gives a name whose node holds the latest body of it (``publisher.on_the_wire``).
LATEST = ""
#: The types a membership record names without versions: leaves, which nothing else names by version (a
#: ClusterLoadAssignment). A render with ``endpoint_versions=False`` names them so too (``render_mesh``).
VERSIONLESS_TYPES = frozenset({ENDPOINT})

# Bump whenever ``render_view.Renderer.build`` (or the render_envoy / mesh_tls helpers it calls) gives
# other bytes for the same inputs. tests/unit/projector/test_versioning.py holds the golden digests of fixed
# inputs per value of this constant and fails if the bytes change without a bump.
RENDER_VERSION = 1


def version_of(body: bytes) -> str:
    return sha256(body).hexdigest()[:VERSION_HEX_CHARS]


def plain(value):
    """An event model in the inputs (a destination policy, a route rule) as JSON: its fields in declaration
    order, dicts in their order in the event (conservative: a reordered dict is other inputs)."""
    return value.model_dump(mode="json")


def inputs_version(type_url: str, name: str, inputs: tuple, encode_model=plain) -> str:
    """The version of the resource whose render inputs are ``inputs``.

    ``inputs``: str, int, bool, None, tuples of them and event models (pydantic), encoded as JSON: the same
    in every process for the same log (no repr, no set order, no object identity). ``encode_model``: ``plain``
    or a memo of it (``Renderer`` encodes each model once per pass).
    """
    head = f"{RENDER_VERSION}|{type_url}|{name}|".encode()
    return sha256(head + orjson.dumps(inputs, default=encode_model)).hexdigest()[:VERSION_HEX_CHARS]
