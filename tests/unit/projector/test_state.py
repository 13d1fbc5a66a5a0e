"""The state's persistent maps and its snapshot bytes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from projector.state import EMPTY_PMAP, PMap, RowMemo, empty_state, state_from_bytes, state_to_bytes
from projector.versioning import version_of
from tests.unit.projector.feature_mesh import feature_mesh, feature_mesh_log
from tests.unit.projector.helpers import fold_log


def test_pmap_updates_share_and_never_mutate():
    a = EMPTY_PMAP.set("x", 1)
    b = a.set("y", 2)
    c = b.discard("x")
    assert a.to_dict() == {"x": 1}
    assert b.to_dict() == {"x": 1, "y": 2}
    assert c.to_dict() == {"y": 2}
    assert len(a) == 1 and len(b) == 2 and len(c) == 1
    assert c.discard("nope") is c


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3000), st.integers()), max_size=3000))
def test_pmap_behaves_like_a_dict_through_growth(ops):
    ref: dict[int, int] = {}
    m = EMPTY_PMAP
    ev = EMPTY_PMAP.evolver()
    versions = []
    for put, k, v in ops:
        if put:
            ref[k] = v
            abandoned = m.evolver()  # a transient that is never sealed leaves m alone
            abandoned[k] = v
            m = m.set(k, v)
            ev[k] = v
        else:
            ref.pop(k, None)
            m = m.discard(k)
            ev.discard(k)
        if len(versions) < 5:
            versions.append((m, dict(ref)))
    assert m.to_dict() == ref and len(m) == len(ref)
    sealed = ev.persistent()
    assert sealed == m and sealed.to_dict() == ref
    for old, expected in versions:  # earlier versions are untouched by later updates
        assert old.to_dict() == expected
    assert PMap.from_items(ref.items()) == m


def test_evolver_keeps_working_after_persistent():
    ev = EMPTY_PMAP.evolver()
    ev["a"] = 1
    first = ev.persistent()
    ev["b"] = 2
    second = ev.persistent()
    assert first.to_dict() == {"a": 1}
    assert second.to_dict() == {"a": 1, "b": 2}


def test_empty_state_round_trips():
    assert state_from_bytes(state_to_bytes(empty_state())) == empty_state()


def test_state_round_trips_with_indexes_rebuilt():
    s = feature_mesh()
    b = state_to_bytes(s)
    back = state_from_bytes(b)
    assert back == s
    assert state_to_bytes(back) == b
    assert back.nodes == s.nodes and back.by_service == s.by_service and back.subset_users == s.subset_users


def test_state_bytes_are_deterministic_and_versionable():
    assert version_of(state_to_bytes(feature_mesh())) == version_of(state_to_bytes(feature_mesh()))


def test_a_row_memo_gives_the_same_bytes_and_serializes_again_only_what_changed():
    log = feature_mesh_log()  # subscriptions, access policies, rules: every optional part of a row
    s = fold_log(log.events)[0]
    memo = RowMemo()
    assert state_to_bytes(s, memo) == state_to_bytes(s)
    rows = dict(memo._rows)
    assert len(rows) == len(s.instances)
    sections = {name: fragment for name, (_map, fragment) in memo._sections.items()}
    # a health transition: a new health map, every other map as it was
    n = len(log.events)
    log.health("reviews", "reviews-1", "unhealthy")
    s2, decisions = fold_log(log.events[n:], s)
    assert decisions == []
    assert s2.instances is s.instances and s2.health is not s.health
    assert state_to_bytes(s2, memo) == state_to_bytes(s2)
    kept = {name: fragment for name, (_map, fragment) in memo._sections.items()}
    assert kept["health"] is not sections["health"]  # serialized again
    assert all(kept[name] is sections[name] for name in sections if name != "health")  # taken as they were
    # a re-registration: the instances section again, but only that registration's row
    n = len(log.events)
    log.register("reviews-legacy", "legacy-1", "10.0.3.9", 9080)
    s3, decisions = fold_log(log.events[n:], s2)
    assert decisions == []
    assert state_to_bytes(s3, memo) == state_to_bytes(s3)
    changed = {k for k in s3.instances if s3.instances[k] is not s2.instances.get(k)}
    assert len(changed) == 1 and all(memo._rows[id(s3.instances[k])][1] is rows[id(s2.instances[k])][1]
                           for k in s3.instances if k not in changed)
    assert state_to_bytes(empty_state(), memo) == state_to_bytes(empty_state())
    assert memo._rows == {}  # the instances of the last state only: nothing held for a state long gone


def test_state_from_bytes_refuses_foreign_documents():
    import pytest

    with pytest.raises(ValueError):
        state_from_bytes(b'{"format": 99}')


def test_version_is_16_hex_of_sha256():
    import hashlib

    assert version_of(b"abc") == hashlib.sha256(b"abc").hexdigest()[:16]
    assert len(version_of(b"")) == 16
