"""Property: random interleavings of view changes and client requests.

A model client (Envoy-like) subscribes, unsubscribes, ACKs, NACKs and
reconnects in any order while the view changes. Invariants:

* no response names a resource twice (resources and removed_resources together);
* nonces are unique; the server's subscriptions equal the client's;
* after the client ACKs everything, what it holds equals the server's view
  restricted to its subscriptions -- except names whose last update it NACKed
  (the server must not resend those: no resend loop); and what the server
  *offered* (responses applied regardless of ACK/NACK) equals it exactly.
"""

from __future__ import annotations

from collections import deque
from functools import lru_cache

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xds_gateway.protocol import DeltaStream

from .helpers import CDS, EDS, LDS, dreq, res

TYPES = (CDS, EDS, LDS)
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
name_lists = st.lists(st.sampled_from(NAMES + (WILD,)), max_size=3)
ops = st.one_of(
    st.tuples(st.just("view"), views),
    st.tuples(st.just("req"), st.sampled_from(TYPES), name_lists, name_lists),
    st.tuples(st.just("process"), st.booleans(), name_lists, name_lists),
    st.tuples(st.just("process"), st.just(True), st.just([]), st.just([])),
    st.tuples(st.just("reconnect")),
)


class Client:
    def __init__(self, stream: DeltaStream):
        self.stream = stream
        self.started: set[str] = set()
        self.subs: dict[str, set[str]] = {t: set() for t in TYPES}
        self.cache: dict[str, dict[str, str]] = {t: {} for t in TYPES}  # accepted
        self.offered: dict[str, dict[str, str]] = {t: {} for t in TYPES}  # applied regardless
        self.tainted: set[tuple[str, str]] = set()  # last update of the name was NACKed
        self.inbox: deque = deque()
        self.nonces: set[str] = set()
        # names the client waits to hear about (subscribed, or unsubscribed under "*")
        self.unresolved: dict[str, set[str]] = {t: set() for t in TYPES}

    # -- requests
    def send(self, t, sub=(), unsub=(), nonce="", error=None, irv=None):
        sub, unsub = list(sub), list(unsub)
        if t not in self.started:
            self.started.add(t)
            if not sub and not unsub:
                self.subs[t].add(WILD)
        subs = self.subs[t]
        before = set(subs)
        subs.update(sub)
        gone = [n for n in unsub if n not in sub]
        subs.difference_update(gone)
        self.unresolved[t].update(n for n in sub if n != WILD)
        for n in gone:
            if n == WILD:
                continue
            if WILD in subs:
                if n in before:  # phantom unsubscribes are ignored
                    self.unresolved[t].add(n)
            else:
                self.unresolved[t].discard(n)
        if WILD not in subs:
            # the client forgets what it no longer asks for; under "*" it waits
            # for the server's answer instead (spec exception)
            for model in (self.cache, self.offered):
                for n in list(model[t]):
                    if n not in subs and (n in gone or WILD in gone):
                        self.drop(t, n)
        self.receive(self.stream.on_request(dreq(t, sub, unsub, nonce=nonce, error=error, irv=irv)))
        assert self.stream.subscriptions(t) == frozenset(subs)

    def drop(self, t, n):
        self.cache[t].pop(n, None)
        self.offered[t].pop(n, None)
        self.tainted.discard((t, n))

    def receive(self, resps):
        for r in resps:
            both = [x.name for x in r.resources] + list(r.removed_resources)
            assert len(both) == len(set(both)), f"duplicate name in {r}"
            assert r.nonce not in self.nonces
            assert r.type_url in TYPES
            self.nonces.add(r.nonce)
            self.inbox.append(r)
        per_type = {}
        for r in resps:
            per_type[r.type_url] = per_type.get(r.type_url, 0) + 1
        assert all(c <= 2 for c in per_type.values())

    def apply(self, model, r):
        t, subs = r.type_url, self.subs[r.type_url]
        for x in r.resources:
            if WILD in subs or x.name in subs:  # unrequested resources are ignored
                model[t][x.name] = x.version
        for n in r.removed_resources:
            model[t].pop(n, None)

    def process(self, accept, sub=(), unsub=()):
        if not self.inbox:
            return
        r = self.inbox.popleft()
        self.apply(self.offered, r)
        self.unresolved[r.type_url].difference_update(x.name for x in r.resources)
        self.unresolved[r.type_url].difference_update(r.removed_resources)
        touched = {(r.type_url, x.name) for x in r.resources} | {(r.type_url, n) for n in r.removed_resources}
        if accept:
            self.apply(self.cache, r)
            self.tainted -= touched
        else:
            self.tainted |= touched
        self.send(r.type_url, sub, unsub, nonce=r.nonce, error=None if accept else "rejected")

    def reconnect(self, stream: DeltaStream):
        self.stream = stream
        self.inbox.clear()
        self.unresolved = {t: set() for t in TYPES}
        self.offered = {t: dict(m) for t, m in self.cache.items()}
        self.tainted.clear()
        started, self.started = self.started, set()
        for t in TYPES:
            if t not in started or not self.subs[t]:
                continue
            subs = self.subs[t]
            self.subs[t] = set()
            self.started.add(t)
            sub = [] if subs == {WILD} else sorted(subs)
            self.subs[t] = set(subs)  # legacy wildcard when only "*" (Envoy does this)
            self.unresolved[t] = {n for n in subs if n != WILD and n not in self.cache[t]}
            self.receive(stream.on_request(dreq(t, sub, irv=self.cache[t])))
            assert stream.subscriptions(t) == frozenset(subs)


def expected(client: Client, v, wildcard_allowed, allowed) -> dict[str, dict[str, str]]:
    out = {}
    for t in TYPES:
        subs = client.subs[t]
        out[t] = {
            n: r.version
            for n, r in v.get(t, {}).items()
            if (WILD in subs and wildcard_allowed) or (n in subs and allowed(t, n))
        }
    return out


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    initial=views,
    script=st.lists(ops, max_size=40),
    wildcard_allowed=st.booleans(),
    refuse_d=st.booleans(),
    allow_nack=st.booleans(),
)
def test_random_interleavings_converge(initial, script, wildcard_allowed, refuse_d, allow_nack):
    allowed = (lambda t, n: n != "d") if refuse_d else (lambda t, n: True)
    v = build_view(initial)
    gen = 0

    def new_stream():
        nonlocal gen
        gen += 1
        return DeltaStream(f"st{gen}", v, allowed=allowed, wildcard_allowed=wildcard_allowed)

    c = Client(new_stream())
    for op in script:
        kind = op[0]
        if kind == "view":
            v = build_view(op[1])
            c.receive(c.stream.on_view(v))
        elif kind == "req":
            c.send(op[1], op[2], op[3])
        elif kind == "process":
            c.process(op[1] or not allow_nack, op[2], op[3])
        else:
            c.reconnect(new_stream())
    while c.inbox:  # the client ACKs everything
        c.process(True)

    s = c.stream
    assert s.pending_nonces() == {} and not s.has_deferred
    # every subscribed name was answered: sent, or reported in removed_resources
    assert all(not c.unresolved[t] for t in c.started), c.unresolved
    want = expected(c, v, wildcard_allowed, allowed)
    for t in TYPES:
        if t not in c.started:
            continue
        assert c.offered[t] == want[t], t
        assert s.known_versions(t) == want[t], t
        for n in set(want[t]) | set(c.cache[t]):
            if c.cache[t].get(n) != want[t].get(n):
                assert (t, n) in c.tainted, (t, n)
    if not allow_nack:
        assert {t: c.cache[t] for t in c.started} == {t: want[t] for t in c.started}
