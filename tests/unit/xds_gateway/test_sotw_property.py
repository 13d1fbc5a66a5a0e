"""Property: random interleavings on a state-of-the-world stream converge.

A model client (grpcio-like: it ACKs/NACKs responses in order, may change its
lists at any time, sends its latest processed nonce, reconnects) against
random view changes. Invariants: no response names a resource twice, nonces
are unique, and once everything is ACKed the client holds the view restricted
to its subscriptions (LDS/CDS exactly; RDS/EDS for the names that exist, since
SotW cannot delete those) -- unless the last response of the type was NACKed.
"""

from __future__ import annotations

from collections import deque
from functools import lru_cache

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xds_gateway.protocol import SotwStream

from .helpers import CDS, EDS, LDS, res, sreq

TYPES = (CDS, EDS, LDS)
FULL_STATE = (CDS, LDS)
NAMES = ("a", "b", "c", "d")
WILD = "*"


@lru_cache(maxsize=None)
def cached_res(t, n, tag):
    return res(t, n, tag)


def build_view(spec):
    return {t: {n: cached_res(t, n, tag) for n, tag in names.items()} for t, names in spec.items()}


views = st.fixed_dictionaries(
    {t: st.dictionaries(st.sampled_from(NAMES), st.integers(1, 3), max_size=4) for t in TYPES}
)
lists = st.one_of(st.none(), st.lists(st.sampled_from(NAMES + (WILD,)), max_size=3, unique=True))
ops = st.one_of(
    st.tuples(st.just("view"), views),
    st.tuples(st.just("req"), st.sampled_from(TYPES), lists),
    st.tuples(st.just("process"), st.booleans(), lists),
    st.tuples(st.just("process"), st.just(True), st.none()),
    st.tuples(st.just("reconnect")),
)


class Client:
    def __init__(self, stream):
        self.stream = stream
        self.lists: dict[str, list[str] | None] = {t: None for t in TYPES}  # None: never requested
        self.explicit_ever = {t: False for t in TYPES}
        self.cache: dict[str, dict[str, str]] = {t: {} for t in TYPES}
        self.last_nonce: dict[str, str] = {}
        self.last_nacked: dict[str, bool] = {t: False for t in TYPES}
        self.inbox: deque = deque()
        self.nonces: set[str] = set()

    def wildcard(self, t):
        names = self.lists[t]
        if t not in FULL_STATE or names is None:
            return False
        return WILD in names if self.explicit_ever[t] else not names

    def in_scope(self, t, n):
        names = self.lists[t] or []
        return self.wildcard(t) or n in names

    def set_list(self, t, names):
        self.lists[t] = list(names)
        if names:
            self.explicit_ever[t] = True
        for n in list(self.cache[t]):
            if not self.in_scope(t, n):
                del self.cache[t][n]

    def send(self, t, error=None):
        r = sreq(t, self.lists[t], nonce=self.last_nonce.get(t, ""), error=error)
        self.receive(self.stream.on_request(r))

    def receive(self, resps):
        for r in resps:
            names = [a.value for a in r.resources]
            assert len(names) == len(set(names))
            assert r.nonce not in self.nonces and r.type_url in TYPES
            self.nonces.add(r.nonce)
            self.inbox.append(r)

    def process(self, accept, new_list):
        if not self.inbox:
            return
        r = self.inbox.popleft()
        t = r.type_url
        self.last_nonce[t] = r.nonce
        if accept:
            got = {}
            for a in r.resources:
                n = name_of(t, a.value)
                if self.in_scope(t, n):
                    got[n] = version_of(t, n, a.value)
            if t in FULL_STATE:
                self.cache[t] = got
            else:
                self.cache[t].update(got)
        self.last_nacked[t] = not accept
        if new_list is not None:
            self.set_list(t, new_list)
        self.send(t, error=None if accept else "rejected")


def name_of(t, value):
    from .helpers import sotw_names
    from envoy.service.discovery.v3 import discovery_pb2

    resp = discovery_pb2.DiscoveryResponse()
    resp.resources.add(type_url=t, value=value)
    return sotw_names(resp)[0]


def version_of(t, n, value):
    from xds_gateway.protocol import version_of as v

    return v(value)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    initial=views,
    script=st.lists(ops, max_size=40),
    wildcard_allowed=st.booleans(),
    allow_nack=st.booleans(),
)
def test_random_interleavings_converge(initial, script, wildcard_allowed, allow_nack):
    v = build_view(initial)
    gen = 0

    def new_stream():
        nonlocal gen
        gen += 1
        return SotwStream(f"st{gen}", v, wildcard_allowed=wildcard_allowed)

    c = Client(new_stream())
    for op in script:
        if op[0] == "view":
            v = build_view(op[1])
            c.receive(c.stream.on_view(v))
        elif op[0] == "req":
            t, names = op[1], op[2]
            if names is not None:
                c.set_list(t, names)
            if c.lists[t] is None:
                c.set_list(t, [])
            c.send(t)
        elif op[0] == "process":
            c.process(op[1] or not allow_nack, op[2])
        else:
            c.stream = new_stream()
            c.inbox.clear()
            c.last_nonce.clear()
            for t in TYPES:
                if c.lists[t] is not None:
                    c.send(t)
    while c.inbox:
        c.process(True, None)

    s = c.stream
    assert s.pending_nonces() == {} and not s.has_deferred
    for t in TYPES:
        if c.lists[t] is None:
            continue
        want = {
            n: r.version
            for n, r in v.get(t, {}).items()
            if (c.wildcard(t) and wildcard_allowed) or n in (c.lists[t] or [])
        }
        if c.last_nacked[t]:
            continue
        if t in FULL_STATE:
            assert c.cache[t] == want, t
        else:
            assert {n: c.cache[t].get(n) for n in want} == want, t
