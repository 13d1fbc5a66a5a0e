"""Verifying ahead in a worker process moves the ECDSA checks, never an answer.

Given a log mixing honest events (one signature each, and a batch signed
once), a tampered event, a forged member of the batch, an unsigned event and
one signed by a revoked certificate, the fold with ``verify_ahead`` on a
worker pool gives the same state and the same refusals as the fold checking
every signature inline, and the checks it could start ahead ran in the pool;
chunks the pool has not started when the fold needs them are taken back and
checked by the fold's thread, again with the same answers.
"""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

import pytest

from events import types as t
from events.codec import decode, encode
from events.envelope import Logged, new_event
from identity.verifier import verification_pool
from projector.fold import fold_many
from projector.state import empty_state
from tests.unit.projector.signed import MS0, SignedLog, Trust, as_attested, checker, sidecar


@pytest.fixture(scope="module")
def trust() -> Trust:
    return Trust()


def mixed_log(trust: Trust) -> list[Logged]:
    log = SignedLog(trust)
    log.by(sidecar("web", "w1")).register("web", "w1", "10.0.0.1", 8080, node_id="web-1", sidecar=(15006, 15001),
                                          depends_on=("reviews",))
    log.by(sidecar("reviews", "r1")).register("reviews", "r1", "10.0.0.2", 9080, node_id="reviews-1",
                                              sidecar=(15006, 15001))
    log.by(None).register("reviews", "r9", "10.6.6.6", 9080)  # unsigned
    leaky = sidecar("reviews", "leaky")
    key = trust.issue(leaky)
    log.by(key).register("reviews", "leaky", "10.0.0.8", 9080, at=MS0 + 1000)
    trust.revoke(leaky, key, MS0 + 2000)
    log.health("reviews", "leaky", "unhealthy", at=MS0 + 2000)  # signed after the revocation
    # as the projector reads them: decoded from their records (a signed envelope then carries its received digest)
    events = [dataclasses.replace(lg, envelope=decode(encode(lg.envelope), lg.topic)) for lg in log.events]
    tampered = decode(encode(events[1].envelope).replace(b'"10.0.0.2"', b'"10.6.6.6"'), "meshlog.registrations")
    events.append(dataclasses.replace(events[1], envelope=tampered, offset=9, timestamp_ms=MS0 + 3000))
    signer = trust.signers.get(checker().uri) or trust.issue(checker())
    batch = signer.sign_batch([new_event(t.InstanceHealthChanged(service="reviews", instance_id="r1", status=s,
                                                                 observer="c"), producer="checker")
                               for s in ("unhealthy", "healthy", "draining", "unhealthy")])
    batch = [decode(encode(env), "meshlog.health") for env in batch]
    forged = decode(encode(batch[3]).replace(b'"unhealthy"', b'"healthy"'), "meshlog.health")
    events += [Logged(env, "meshlog.health", 0, 10 + i, MS0 + 4000 + i) for i, env in enumerate([*batch, forged])]
    return events


def test_verifying_ahead_gives_the_inline_answers(trust):
    events = mixed_log(trust)
    inline = trust.verifier()
    expected = fold_many(empty_state(), events, inline)
    ahead = trust.verifier()
    pool = verification_pool(2)
    try:
        wait(ahead.verify_ahead(events, pool, chunk=2))  # all done before the fold: it takes every answer
        got = fold_many(empty_state(), events, ahead)
    finally:
        pool.shutdown()
    assert got == expected
    problems = sorted(d.problem for d in expected[1] if isinstance(d, t.EventRefused))
    assert problems == ["bad_signature", "bad_signature", "revoked", "unsigned"]
    assert ahead.checked == inline.checked
    # six checks: three registrations, the tampered one, the batch's root once, the root the forged member leads
    # to; all but the last ran ahead (that root is only known once the fold recomputes it from the forgery)
    assert ahead.checked == 6 and ahead.checked_ahead == 5


def test_chunks_the_pool_has_not_started_are_checked_by_the_fold(trust):
    events = mixed_log(trust)
    expected = fold_many(empty_state(), events, trust.verifier())
    verifier = trust.verifier()
    busy = threading.Event()
    pool = ThreadPoolExecutor(max_workers=1)  # its one worker blocked: nothing submitted after starts
    try:
        pool.submit(busy.wait, 30)
        futures = verifier.verify_ahead(events, pool, chunk=2)
        got = fold_many(empty_state(), events, verifier)
        assert all(f.cancelled() for f in futures)  # every chunk taken back, none waited for
    finally:
        busy.set()
        pool.shutdown()
    assert got == expected
    assert verifier.checked == 6 and verifier.checked_ahead == 0


def test_checks_started_ahead_but_never_asked_for_change_nothing(trust):
    events = mixed_log(trust)
    verifier = trust.verifier()
    pool = verification_pool(1)
    try:
        verifier.verify_ahead(events[:3], pool)
        verifier.verify_ahead(events, pool)  # the same events again: still one answer each
        state, decisions = fold_many(empty_state(), events, verifier)
    finally:
        pool.shutdown()
    assert (state, decisions) == fold_many(empty_state(), events, trust.verifier())


def test_attested_signatures_skip_only_the_ecdsa_check(trust):
    """Given the events whose signatures a trusted verifier found good decoded as attested (as replay decodes the
    records of a matched attested run), a replaying verifier gives the same answers with no ECDSA check for them;
    a tampered event is still refused, and a revoked signer too."""
    events = mixed_log(trust)
    projector = trust.verifier()
    projector.record_vouches = vouches = []
    expected = fold_many(empty_state(), events, projector)
    # the good signatures: three registrations and the four honest batch members (the tampered, the forged
    # member and the revoked signer's transition are not among them)
    assert len(vouches) == 7
    replaying = trust.verifier()
    good = set(vouches)
    attested = [dataclasses.replace(lg, envelope=as_attested(lg.envelope)) if lg.envelope.received_digest in good
                else lg for lg in events]
    assert fold_many(empty_state(), attested, replaying) == expected
    assert replaying.vouched_hits == 7
    # only the tampered event's and the forged member's signatures are checked (both fail), no good one
    assert replaying.checked == 2


class SettledPool:
    """A pool that runs nothing: each future it returns is left as ``settle`` leaves it."""

    def __init__(self, settle) -> None:
        self.settle = settle

    def submit(self, fn, *args) -> Future:
        future = Future()
        self.settle(future)
        return future


def _fold_with(trust, pool) -> None:
    events = mixed_log(trust)
    expected = fold_many(empty_state(), events, trust.verifier())
    verifier = trust.verifier()
    verifier.verify_ahead(events, pool, chunk=2)
    assert fold_many(empty_state(), events, verifier) == expected
    assert verifier.checked == 6 and verifier.checked_ahead == 0


def test_a_pool_that_broke_changes_no_answer(trust):
    """A worker that died (its futures fail, as a broken process pool's do) costs only the checks: the fold
    checks them itself."""
    _fold_with(trust, SettledPool(lambda f: f.set_exception(BrokenProcessPool("a worker died"))))


@pytest.mark.timeout(60)
def test_a_chunk_started_but_never_finished_does_not_stall_the_fold(trust):
    """A worker that took the chunks and gets no CPU (a loaded host): the fold checks them itself."""
    _fold_with(trust, SettledPool(Future.set_running_or_notify_cancel))  # taken, never answered
