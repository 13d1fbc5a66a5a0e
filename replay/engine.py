"""Rebuild the mesh at an instant, and walk the log from one instant to another.

Replay has no mesh logic of its own: it feeds logged events to
``projector.fold`` and renders with ``projector.render`` — the very functions
the live projector runs — so replay at "now" equals what is served.

Invariants:
- ``rebuild(at)`` folds exactly the records with broker timestamp <= at (a
  clean offset cut per partition, ``replay.source``), starting from the best
  snapshot whose folded records are all <= at (``replay.snapshots``), or from
  the empty state. The result does not depend on which snapshot was used
  (the fold is deterministic and snapshots are exact cuts).
- ``Walker`` (pure) folds events one at a time (``fold_with_decisions``) and
  renders incrementally, reporting for each step which resources and nodes
  changed: that is how ``diff`` and ``log`` attribute changes to the events
  that caused them. Rendering is either the whole mesh (``render_all`` with
  ``previous``) or one node (``render``), whichever the question needs. A
  long window is not rendered after every event: whole-mesh walks fold
  groups of events sized to keep rendering within a time budget (a change is
  then attributed to every event of its group; such steps say
  ``exact=False`` and the documents carry ``"exact": false``). The budget
  shrinks for windows longer than ``LONG_WINDOW_EVENTS`` (``render_budget``):
  a long window's reading and folding already take seconds, so its groups
  grow instead of its rendering time. A group large for the state
  (``worth_buffering``) is folded into a ``FoldBuffer`` and sealed for its
  render: the same fold and the same steps, at ``rebuild``'s cost per event
  instead of copy-on-write's. A node walk is
  exact over any window: ``replay.node_view`` keeps the node's view after
  every event, re-rendering only the parts whose inputs the event wrote; it
  folds a batch in one loop (``Walker.node_steps``) and makes a ``Step``
  only for the events that changed the view or were refused (unless every
  step is asked for).
- Verification (issue 13): given a ``verifier`` (``identity.verifier``, from
  the identities topic) every fold here refuses what the live projector
  refuses, with the same ``EventRefused`` decisions; without one (the CLI's
  ``--insecure-events``) events are folded unverified, as the projector's
  insecure mode does. Replay must run in the projector's mode to agree with it.
  A rebuild counts what its fold refused, by problem (``Rebuilt.refused``,
  the ``source`` block's ``events_refused``): a state that left events out
  says so, and why (an unsigned log replayed verifying folds to an empty
  mesh; without the count that looked like an empty log).
- Attestations (issue 13): a verifying ``rebuild`` of a long cut first takes
  the projector's signed attestations (``replay.attestations``): their
  signatures stand for the events' ECDSA checks, every other check still
  runs; an event no believed attestation lists is verified the full way.
- Reading: ``rebuild`` folds into a ``projector.fold.FoldBuffer`` (the same
  fold into mutable maps, sealed once), and a long cut (``PARALLEL_MIN_EVENTS``)
  can be fetched and decoded by a second process while this one folds
  (``replay.pipeline``) when the caller passes the broker's address and
  $MESHLOG_REPLAY_PARALLEL asks for it (off by default: it does not pay on
  the hosts measured, see ``PARALLEL``). Neither
  changes a result: the same events reach the same fold in the same order.
- Nothing here prints; the CLI decides the output.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AsyncIterator, Callable, Iterable, Iterator, Mapping, Protocol

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from events import topics
from events import types as t
from events.envelope import Logged
from projector.fold import FoldBuffer, fold_many, fold_with_decisions
from projector.render import RenderedMesh, render, render_all
from projector.render import node_versions as render_versions
from projector.state import STATE_FIELDS, MeshState, empty_state, same_state
from events.record_decoder import RecordDecoder
from replay.attested_runs import AttestedRuns
from replay.node_view import NodeViewTracker
from replay.snapshots import ChosenSnapshot, find_snapshot
from replay.young_gc import young_gc_only
from replay.source import Cut, Undecodable, existing_topics, first_event_ms, iter_cut, new_consumer, plan_cut

if TYPE_CHECKING:  # loads cryptography: only a verifying replay pays for it
    from identity.verifier import Verifier
    from replay.attestations import Vouched

log = logging.getLogger(__name__)

REFUSED = t.EventRefused.TYPE  # a decision that left its event out of the state (the others are rules' rejections)

ResourceKey = tuple[str, str]  # (type_url, name)
Versions = dict[str, dict[str, str]]  # type_url -> name -> version (a node's membership)

# ---------------------------------------------------------------- errors (each with its exit code)


class ReplayError(Exception):
    exit_code = 1


class BrokerDown(ReplayError):
    exit_code = 3


class OutOfRange(ReplayError):
    """The instant asked for is not covered by the log (before its first event, or in the future)."""

    exit_code = 4


class NotFound(ReplayError):
    """The node or service asked for does not exist at that instant."""

    exit_code = 5


# ---------------------------------------------------------------- progress


class Progress(Protocol):
    def start(self, description: str, total: int) -> None: ...

    def advance(self, n: int) -> None: ...

    def finish(self) -> None: ...


class NoProgress:
    def start(self, description: str, total: int) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def finish(self) -> None:
        pass


# ---------------------------------------------------------------- small pure helpers


def node_versions(state: MeshState, node_id: str) -> Versions:
    """What ``node_id`` is served in ``state``: type_url -> name -> version (as ``render_all``'s membership)."""
    return render_versions(state, node_id)


def node_bodies(state: MeshState, node_id: str) -> dict[str, dict[str, object]]:
    """The rendered messages a node is served (type_url -> name -> protobuf message)."""
    return render(state, node_id)


def flatten(versions: Versions) -> dict[ResourceKey, str]:
    return {(u, n): v for u, named in versions.items() for n, v in named.items()}


@contextmanager
def no_gc() -> Iterator[None]:
    """Folding builds millions of long-lived objects; the cyclic GC would rescan them again and again."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


# ---------------------------------------------------------------- the log


@asynccontextmanager
async def open_log(bootstrap: str, timeout_s: float = 15.0) -> AsyncIterator[AIOKafkaConsumer]:
    consumer = new_consumer(bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(consumer.start(), timeout_s)
    except (asyncio.TimeoutError, KafkaError, OSError) as exc:
        try:
            await consumer.stop()
        except Exception:  # noqa: BLE001 - a never-started client may fail to stop
            pass
        raise BrokerDown(f"Kafka at {bootstrap} did not answer within {timeout_s:g}s ({type(exc).__name__})") from None
    try:
        yield consumer
    finally:
        await consumer.stop()


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def check_instant(consumer: AIOKafkaConsumer, at_ms: int, now_ms: int, *, what: str = "TIME") -> int:
    """Refuse an instant the log cannot answer for; return the log's first event time."""
    have = await existing_topics(consumer)
    missing = [t.name for t in topics.EVENT_TOPICS if t.name not in have]
    if missing:
        raise OutOfRange(
            f"the event topics do not exist on this broker ({', '.join(missing)}): nothing has been logged yet"
        )
    if at_ms > now_ms:
        raise OutOfRange(f"{what} {iso(at_ms)} is in the future (now is {iso(now_ms)}): the log cannot know it yet")
    first = await first_event_ms(consumer)
    if first is None:
        raise OutOfRange("the event log is empty: there is no instant to replay")
    if at_ms < first:
        raise OutOfRange(f"{what} {iso(at_ms)} is before the first event in the log ({iso(first)})")
    return first


# ---------------------------------------------------------------- rebuild

# a cut this long is fetched and decoded by a second process (replay.pipeline) when the caller gives the
# broker's address: below it, starting that process (an interpreter and its imports) costs more than it saves
PARALLEL_MIN_EVENTS = 100_000
# $MESHLOG_REPLAY_PARALLEL: "0" (default) never reads in a second process; "auto" only while a core is idle (the
# 1-minute load average leaves one free); "1" always. One process is the default because it is faster: on a
# quiet 2-core host a cold replay of 1,000,000 events took 20.6 s in one process against 27.2 s with the reading
# process (34.8 CPU-s: taking its batches in costs the folding process about what decoding them would), and a
# node walk 27.9 s against 26.3 s for 10 CPU-s more (2026-11-30, bench/replay_verify.py's logs); on a busy host
# the second process gains nothing at all (bench/replay.py)
def parallel_mode(environ) -> str:
    return environ.get("MESHLOG_REPLAY_PARALLEL", "0")


PARALLEL = parallel_mode(os.environ)


def _use_child(bootstrap: str | None, events: int) -> bool:
    if bootstrap is None or events < PARALLEL_MIN_EVENTS or PARALLEL == "0":
        return False
    if PARALLEL == "1":
        return True
    cores = os.cpu_count() or 1
    return cores >= 2 and os.getloadavg()[0] <= cores - 1


def _read_in_child(bootstrap: str, cut: Cut, attested: AttestedRuns | None = None):
    from replay.pipeline import iter_cut_in_child  # multiprocessing: only a long read pays for the import

    return iter_cut_in_child(bootstrap, cut, attested=attested)



@dataclass(slots=True)
class Rebuilt:
    at_ms: int
    state: MeshState
    cut: Cut
    snapshot: ChosenSnapshot | None
    folded: int  # events folded on top of the snapshot (or the empty state)
    undecodable: list[Undecodable]
    first_ms: int | None
    stats: dict = field(default_factory=dict)
    _rendered: dict[bool, RenderedMesh] = field(default_factory=dict)  # bodies? -> the render
    # the decoder the rebuild read with (its memo of payloads): a walk from here goes on with it, so a payload the
    # log repeats is validated once for both (the answers do not depend on the memo)
    decoder: RecordDecoder | None = None
    # events the fold refused since the snapshot (or the start), by ``EventRefused.problem``
    refused: dict[str, int] = field(default_factory=dict)
    # the projector's attested runs the rebuild believed (``replay.attestations``): a walk from here reads with them
    attested: AttestedRuns | None = None

    def rendered(self, bodies: bool = True) -> RenderedMesh:
        """Every node's view at the cut; ``bodies=False``: names and versions only (nothing built), all a
        document of what each node was told needs."""
        got = self._rendered.get(bodies)
        if got is None:
            t0 = time.perf_counter()
            with no_gc():
                got = self._rendered[bodies] = render_all(self.state, bodies=bodies)
            self.stats["render_s"] = round(time.perf_counter() - t0, 4)
        return got

    def source(self) -> dict:
        """Where the state came from (the ``source`` block of the JSON outputs)."""
        return {
            "snapshot": self.snapshot.describe() if self.snapshot else None,
            "events_folded": self.folded,
            "events_total": (self.snapshot.snapshot.events if self.snapshot else 0) + self.folded,
            "undecodable": len(self.undecodable),
            "events_refused": sum(self.refused.values()),
            "refused_by_problem": dict(sorted(self.refused.items())),
            "cut": self.cut.stops_by_key(),
            "first_event": iso(self.first_ms),
        }


async def rebuild(
    consumer: AIOKafkaConsumer,
    at_ms: int,
    *,
    use_snapshot: bool = True,
    progress: Progress | None = None,
    decoder: RecordDecoder | None = None,
    verifier: Verifier | None = None,
    bootstrap: str | None = None,
) -> Rebuilt:
    """The mesh state as of ``at_ms`` (every event with broker timestamp <= at_ms folded).

    ``bootstrap`` (the consumer's broker): a cut of ``PARALLEL_MIN_EVENTS`` or more is then fetched
    and decoded by a second process while this one folds (``replay.pipeline``); the result is the same.
    """
    progress = progress or NoProgress()
    decoder = decoder or RecordDecoder()
    stats: dict = {}
    t0 = time.perf_counter()
    cut = await plan_cut(consumer, at_ms)
    chosen = None
    state = empty_state()
    if use_snapshot:
        chosen = await find_snapshot(consumer, at_ms, cut.stops_by_key(), verifier=verifier)
        if chosen is not None:
            try:
                with no_gc():
                    state = chosen.snapshot.state()
            except (ValueError, KeyError, TypeError) as exc:  # a state encoding this build cannot read
                log.warning("snapshot at offset %d unusable (%s): folding from the beginning", chosen.offset, exc)
                chosen, state = None, empty_state()
        if chosen is not None:
            for tp in cut.start:
                cut.start[tp] = max(cut.start[tp], chosen.snapshot.next_offset(tp.topic, tp.partition))
    attested = None
    if verifier is not None:
        vouched = await _vouch_attested(consumer, verifier, cut, chosen)
        stats["attestations"] = vouched.as_dict() if vouched is not None else None
        attested = vouched.attested() if vouched is not None else None
    t1 = time.perf_counter()
    stats["plan_s"] = round(t1 - t0, 4)
    folded = 0
    undecodable: list[Undecodable] = []
    progress.start("folding events", cut.total)
    fold_only = 0.0
    # only the end state is wanted: fold into mutable maps, sealed once (the same fold, FoldBuffer)
    buffer = FoldBuffer(state)
    if _use_child(bootstrap, cut.total):
        batches = _read_in_child(bootstrap, cut, attested)  # attested records decoded lazily there too
        stats["reader"] = "child process"
    else:
        batches = iter_cut(consumer, cut, decoder=decoder, attested=attested)
    refused: dict[str, int] = {}
    with no_gc():
        async for batch in batches:
            if batch.events:
                f0 = time.perf_counter()
                decisions = buffer.fold(batch.events, verifier)
                fold_only += time.perf_counter() - f0
                folded += len(batch.events)
                for decision in decisions:
                    if decision.TYPE == REFUSED:
                        refused[decision.problem] = refused.get(decision.problem, 0) + 1
            undecodable += batch.undecodable
            progress.advance(batch.records)
        state = buffer.state()
    progress.finish()
    stats["fold_s"] = round(time.perf_counter() - t1, 4)  # fetch + decode + fold
    stats["fold_only_s"] = round(fold_only, 4)
    log.info("rebuild: %d events folded in %.2f s (fold alone), %.2f s in all; %.2f CPU-s so far in this process",
             folded, fold_only, stats["fold_s"], time.process_time())
    if "reader" not in stats:
        stats["decode_memo_hit_rate"] = round(decoder.hit_rate, 4)
        if decoder.attested is not None and stats.get("attestations"):
            stats["attestations"].update(decoder.attested.as_dict())
    decoder.attested = None  # this read's: a walk from here matches the runs of its own read
    # in log order: batches of several partitions arrive in whatever order the fetches answered
    undecodable.sort(key=lambda u: (u.timestamp_ms or 0, u.topic, u.partition, u.offset))
    return Rebuilt(at_ms, state, cut, chosen, folded, undecodable, None, stats, decoder=decoder, refused=refused,
                   attested=attested)


async def _vouch_attested(consumer: AIOKafkaConsumer, verifier: Verifier, cut, chosen: ChosenSnapshot | None
                          ) -> Vouched | None:
    """The runs of signed records the projector attested since the start state (``replay.attestations``), for a
    cut long enough to gain from them; the verdicts are the same either way."""
    from replay.attestations import MIN_EVENTS, vouch_attested

    if cut.total < MIN_EVENTS:
        return None
    # an attestation is logged after the events it vouches for: none before the start state's newest event
    since = (chosen.snapshot.max_timestamp_ms or 0) if chosen is not None else 0
    return await vouch_attested(consumer, verifier, since, None)


# ---------------------------------------------------------------- walking a window


@dataclass(slots=True)
class Effect:
    """What one step (one event, or one group of events) changed in what is served."""

    changed: dict[ResourceKey, str]  # resource -> new version (new or changed bytes)
    removed: dict[ResourceKey, str]  # resource -> its last version (no longer served)
    changed_nodes: frozenset[str]
    removed_nodes: frozenset[str]
    # the changed nodes' views after the step (node -> type_url -> name -> version): what each was told,
    # for matching against what its proxy ACKed (proxysync)
    views: Mapping[str, Versions] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.changed or self.removed or self.changed_nodes or self.removed_nodes)


@dataclass(slots=True)
class Step:
    events: list[Logged]
    decisions: list[tuple[Logged, t.Decision]]
    effect: Effect
    exact: bool  # False when several events were folded together (attribution is by group)
    # events folded in this step when a walk's ``keep`` thinned ``events`` to those a document needs
    # (its first, last and listed ones); -1: ``events`` are all of them
    count: int = -1

    @property
    def size(self) -> int:
        """How many events this step folded (``events`` may hold fewer, see ``count``)."""
        return len(self.events) if self.count < 0 else self.count


NO_EFFECT = Effect({}, {}, frozenset(), frozenset())


class Walker:
    """Fold events one by one from a base state and say what each changed (pure; no I/O).

    ``node=None``: the whole mesh (``render_all`` incrementally). ``node=N``:
    only what N is served, kept by a ``replay.node_view.NodeViewTracker``
    (exactly ``node_versions`` after each step, re-rendering only the parts of
    the view whose inputs an event wrote).
    """

    def __init__(self, state: MeshState, *, node: str | None = None, rendered: RenderedMesh | None = None,
                 verifier: Verifier | None = None) -> None:
        self.node = node
        self.verifier = verifier
        self._state = state
        # whole mesh: while a large group is folded, the state lives in this buffer (``fold_part(buffered=True)``)
        self._buffer: FoldBuffer | None = None
        if node is None:
            # versions and memberships are all a walk reports: nothing is built (``render_all(bodies=False)``)
            self.rendered = rendered if rendered is not None else render_all(state, bodies=False)
            self.start_versions: dict[ResourceKey, str] = dict(self.rendered.versions)
            self.start_membership = dict(self.rendered.membership)
        else:
            self.rendered = None
            self._tracker = NodeViewTracker(state, node)
            self.node_view: Versions = self._tracker.versions()
            self.start_versions = flatten(self.node_view)
            self.start_membership = {node: self.node_view} if any(self.node_view.values()) else {}

    @property
    def state(self) -> MeshState:
        """The state after the steps so far."""
        if self.node is not None:
            return self._tracker.state()
        return self._state if self._buffer is None else self._buffer.state()

    # what is served now
    def versions(self) -> dict[ResourceKey, str]:
        if self.node is None:
            return dict(self.rendered.versions)
        return flatten(self.node_view)

    def membership(self) -> dict[str, Versions]:
        if self.node is None:
            return dict(self.rendered.membership)
        return {self.node: self.node_view} if any(self.node_view.values()) else {}

    def step(self, events: list[Logged]) -> Step:
        if self.node is not None:
            return self._node_step(events)
        before = self.state
        return self.render_step(before, events, self.fold_part(events), len(events))

    def worth_buffering(self, events: int) -> bool:
        """Whether a whole-mesh step of ``events`` events is cheaper folded with ``fold_part(buffered=True)``."""
        if events < BUFFER_MIN_EVENTS:
            return False
        state = self.state
        return events * BUFFER_STATE_SHARE >= sum(len(getattr(state, f)) for f in STATE_FIELDS)

    def fold_part(self, events: list[Logged], *, buffered: bool = False) -> list[tuple[Logged, t.Decision]]:
        """Whole mesh: fold ``events`` (all or part of a step) without rendering; their decisions.

        ``buffered``: into a ``FoldBuffer`` (the same fold into mutable maps, several times cheaper per event),
        sealed into a state when one is asked for (``state``, ``render_step``): for a large group, whose one
        seal (a copy of every map) costs less than its events' copy-on-write buckets (``worth_buffering``).
        """
        if buffered:
            if self._buffer is None:
                self._buffer = FoldBuffer(self._state)
            return _with_events(events, self._buffer.fold(events, self.verifier))
        if self._buffer is not None:  # back to copy-on-write from the buffer's state
            self._state, self._buffer = self._buffer.state(), None
        before = self._state
        decisions: list[tuple[Logged, t.Decision]] = []
        if len(events) == 1:
            lg = events[0]
            state, rejected = fold_with_decisions(before, lg, self.verifier)
            decisions += ((lg, j) for j in rejected)
        else:  # a group: one copy per touched bucket, not one per event; each decision names its event
            state, rejected = fold_many(before, events, self.verifier)
            decisions = _with_events(events, rejected)
        self._state = state
        return decisions

    def render_step(self, before: MeshState, events: list[Logged], decisions: list[tuple[Logged, t.Decision]],
                    size: int) -> Step:
        """Whole mesh: the step of the ``size`` events folded since the state was ``before`` (``fold_part``);
        ``events`` may be fewer than ``size`` (those a walk's ``keep`` needs: see ``walk``)."""
        state, exact, count = self.state, size == 1, (-1 if len(events) == size else size)
        if same_state(before, state):
            return Step(events, decisions, NO_EFFECT, exact, count)
        prev = self.rendered
        cur = render_all(state, previous=prev)
        self.rendered = cur
        changed = {k: cur.versions[k] for k in cur.changed}
        removed = {k: prev.versions[k] for k in cur.removed if k in prev.versions}
        views = {n: cur.membership[n] for n in cur.changed_nodes if n in cur.membership}
        effect = Effect(changed, removed, cur.changed_nodes, cur.removed_nodes, views)
        return Step(events, decisions, effect, exact, count)

    def node_steps(self, events: list[Logged], *, every: bool = False) -> list[Step]:
        """A node walk over ``events``, one exact step per event, as ``step([lg])`` for each would give; only the
        steps of events the fold refused or that changed the node's view, unless ``every``."""
        node, out, done = self.node, [], 0
        for i, decided, before in self._tracker.fold_each(events, self.verifier):
            if every:
                out += (Step([lg], [], NO_EFFECT, True) for lg in events[done:i])
            done = i + 1
            after = self._tracker.versions()
            effect = NO_EFFECT if after is before else _node_effect(node, before, after)
            self.node_view = after
            if every or decided or not effect.empty:
                lg = events[i]
                out.append(Step([lg], [(lg, j) for j in decided], effect, True))
        if every:
            out += (Step([lg], [], NO_EFFECT, True) for lg in events[done:])
        return out

    def _node_step(self, events: list[Logged]) -> Step:
        """One node step of ``events`` (folded one by one; the effect is the whole step's)."""
        tracker = self._tracker
        decisions: list[tuple[Logged, t.Decision]] = []
        for lg in events:
            for j in tracker.fold((lg,), self.verifier):
                decisions.append((lg, j))
        before_view, after = self.node_view, tracker.versions()
        effect = NO_EFFECT
        if after is not before_view:  # else the tracker re-rendered nothing: nothing the node reads was written
            self.node_view = after
            effect = _node_effect(self.node, before_view, after)
        return Step(events, decisions, effect, len(events) == 1)


def _with_events(events: list[Logged], decisions: Iterable[t.Decision]) -> list[tuple[Logged, t.Decision]]:
    """Each decision of a group's fold with the event of the group it names (its source)."""
    if not decisions:
        return []
    by_source = {(lg.topic, lg.partition, lg.offset): lg for lg in events}
    return [(by_source[(j.source_topic, j.source_partition, j.source_offset)], j) for j in decisions]


def _node_effect(node: str, before: Versions, after: Versions) -> Effect:
    old, new = flatten(before), flatten(after)
    changed = {k: v for k, v in new.items() if old.get(k) != v}
    removed = {k: v for k, v in old.items() if k not in new}
    had, has = bool(old), bool(new)
    return Effect(
        changed,
        removed,
        frozenset((node,)) if (changed or removed) and has else frozenset(),
        frozenset((node,)) if had and not has else frozenset(),
        {node: after} if (changed or removed) and has else {},
    )


@dataclass(slots=True)
class Dropped:
    """What a walk's ``keep`` left out: the documents still count those events and their exactness."""

    events: int = 0
    exact: bool = True


def thin(step: Step, keep: Callable[[Step], Step | None], dropped: Dropped) -> Step | None:
    """What ``walk`` keeps of ``step`` (``keep``'s answer), counting what it left out in ``dropped``."""
    kept = keep(step)
    if kept is not step:
        dropped.events += step.size - (kept.size if kept is not None else 0)
        dropped.exact = dropped.exact and step.exact
    return kept


def if_changes_something(step: Step) -> Step | None:
    """``walk``'s ``keep`` for ``replay diff``: the steps that changed what is served (those carry every
    view change, which convergence needs) or whose events the fold refused; None for the rest."""
    return step if step.decisions or not step.effect.empty else None


async def walk(
    consumer: AIOKafkaConsumer,
    base: Rebuilt,
    to_ms: int,
    *,
    node: str | None = None,
    progress: Progress | None = None,
    on_undecodable: Callable[[Undecodable], None] | None = None,
    render_budget_s: float | None = None,
    verifier: Verifier | None = None,
    keep: Callable[[Step], Step | None] | None = None,
    dropped: Dropped | None = None,
    bootstrap: str | None = None,
) -> tuple[Walker, list[Step], Cut]:
    """Fold the events in ``(base.at_ms, to_ms]`` step by step from ``base``.

    ``bootstrap``: as for ``rebuild`` (a long window is read by a second process).
    ``render_budget_s``: seconds a whole-mesh walk may spend folding and rendering its steps (``_Pacer``);
    by default ``render_budget(events in the window)``.
    ``keep``: each step is replaced by what it returns (the step, a thinner step, or None to drop it);
    the events left out are counted in ``dropped`` and let go as the walk goes, so a long window costs
    memory for what the question keeps, not for every event of the window.
    """
    progress = progress or NoProgress()
    start_after = base.cut.stops_by_key()
    cut = await plan_cut(consumer, to_ms, start_after=start_after)
    walker = Walker(base.state, node=node, rendered=base.rendered(bodies=False) if node is None else None,
                    verifier=verifier)
    if render_budget_s is None:
        render_budget_s = render_budget(cut.total)
    pacer = _Pacer(cut.total, render_budget_s) if node is None else None
    steps: list[Step] = []
    dropped = dropped if dropped is not None else Dropped()

    def add(new: Iterable[Step]) -> None:
        if keep is None:
            steps.extend(new)
            return
        for st in new:
            kept = thin(st, keep, dropped)
            if kept is not None:
                steps.append(kept)

    progress.start("walking the window", cut.total)
    with young_gc_only() as collect:
        group = _Group(walker, pacer, getattr(keep, "group_events", None), add) if pacer is not None else None
        in_child = _use_child(bootstrap, cut.total)
        batches = (_read_in_child(bootstrap, cut, base.attested) if in_child
                   else iter_cut(consumer, cut, decoder=base.decoder, attested=base.attested))
        async for batch in batches:
            if group is not None:
                group.feed(batch.events)
            elif keep is if_changes_something:  # what `add` does, without a Step for most events
                changing = walker.node_steps(batch.events)
                steps += changing
                dropped.events += len(batch.events) - len(changing)  # exact steps (one event) that changed nothing
            else:  # a node walk: one step per event, nothing to pace or to hold
                add(walker.node_steps(batch.events, every=True))
            for bad in batch.undecodable:
                if on_undecodable:
                    on_undecodable(bad)
            progress.advance(batch.records)
            collect()
        if group is not None:
            group.close()
    progress.finish()
    return walker, steps, cut


# a group that keeps every event (``_Group`` without a ``group_events`` predicate) holds at most this many: on
# a long window the pacer asks for groups of 100k-300k events (a 1M-event `replay log` peaked at 621 MB)
MAX_GROUP_EVENTS = 50_000


# a whole-mesh group of at least BUFFER_MIN_EVENTS events, and at least 1/BUFFER_STATE_SHARE of the state's
# entries, is folded into a FoldBuffer (``Walker.fold_part(buffered=True)``): sealing it for the render copies every
# map once (and the render then compares them whole), which costs about what a quarter of the entries' events cost
# more through copy-on-write buckets (measured on a 2,000-node mesh: 1,000 events 3.8 ms copy-on-write against
# 6.8 ms buffered and sealed, 8,000 events 63 ms against 41 ms); a 1,000,000-event `replay log` folds its long
# groups this way at the cost of `replay at`'s fold (about half of copy-on-write's)
BUFFER_MIN_EVENTS = 256
BUFFER_STATE_SHARE = 4


# a whole-mesh walk's budget for folding and rendering its steps (``_Pacer``): the full budget for a window of up
# to LONG_WINDOW_EVENTS events (a short window stays exact where the mesh is small enough), then shrinking with the
# window's length down to RENDER_BUDGET_MIN_S: at 1,000,000 events the read alone takes about 10-20 s on 2 cores,
# and a 20 s budget kept a `replay log --service` over them at several times its 15 s target (issue 14)
RENDER_BUDGET_S = 20.0
RENDER_BUDGET_MIN_S = 3.0
LONG_WINDOW_EVENTS = 100_000


def render_budget(events: int) -> float:
    """Seconds a whole-mesh walk over ``events`` events may spend folding and rendering its steps."""
    if events <= LONG_WINDOW_EVENTS:
        return RENDER_BUDGET_S
    return max(RENDER_BUDGET_MIN_S, RENDER_BUDGET_S * LONG_WINDOW_EVENTS / events)


class _Pacer:
    """Whole-mesh walks: one render per event while affordable, larger groups when the window is long.

    Each step's time is measured; the group size is set so that the rest of
    the window fits in what is left of ``budget_s`` of rendering, at the
    current cost per step. Short windows (and small meshes) stay exact.
    """

    def __init__(self, total: int, budget_s: float) -> None:
        self.remaining = total
        self.budget_s = budget_s
        self.spent = 0.0
        self.per_step: float | None = None

    def record(self, events: int, seconds: float) -> None:
        self.remaining -= events
        self.spent += seconds
        self.per_step = seconds if self.per_step is None else 0.7 * self.per_step + 0.3 * seconds

    def size(self) -> int:
        if self.per_step is None or self.remaining <= 0:
            return 1
        affordable = max(1.0, (self.budget_s - self.spent) / max(self.per_step, 1e-6))
        return max(1, int(-(-self.remaining // affordable)))


class _Group:
    """A whole-mesh walk's current group, folded as its events arrive and rendered once it is full.

    The pacer sets each group's size. Events are folded in the chunks they arrive in (``fold_part``; buffered
    when the group is large for the state, ``Walker.worth_buffering``), so a
    group of 100k events is never held whole: it keeps its first and last events and, when ``keep`` says
    which it needs (its ``group_events`` predicate, e.g. ``report.for_service_log``), only those; without
    one, every event (a diff names a group's events about each changed resource). Then the group is held
    whole, so its size is bounded (``MAX_GROUP_EVENTS``).
    """

    def __init__(self, walker: Walker, pacer: _Pacer, wanted: Callable[[Logged], bool] | None,
                 add: Callable[[Iterable[Step]], None]) -> None:
        self.walker, self.pacer, self.wanted, self.add = walker, pacer, wanted, add
        self.cap = None if wanted is not None else MAX_GROUP_EVENTS
        self.size = 1
        self._reset()

    def _reset(self) -> None:
        self.before: MeshState | None = None
        self.buffered = False
        self.events: list[Logged] = []
        self.decisions: list[tuple[Logged, t.Decision]] = []
        self.count = 0
        self.last: Logged | None = None
        self.seconds = 0.0

    def feed(self, events: list[Logged]) -> None:
        j = 0
        while j < len(events):
            if self.count == 0:
                self.before = self.walker.state
                self.buffered = self.walker.worth_buffering(self.size)
                self.events.append(events[j])  # the first event is always kept
                first = True
            else:
                first = False
            take = min(self.size - self.count, len(events) - j)
            chunk = events[j : j + take]
            t0 = time.perf_counter()
            self.decisions += self.walker.fold_part(chunk, buffered=self.buffered)
            self.seconds += time.perf_counter() - t0
            rest = chunk[1:] if first else chunk
            if self.wanted is None:
                self.events += rest
            else:
                self.events += [lg for lg in rest if self.wanted(lg)]
            self.last = chunk[-1]
            self.count += take
            j += take
            if self.count >= self.size:
                self._flush()

    def _flush(self) -> None:
        events = self.events
        if events[-1] is not self.last:
            events.append(self.last)  # and the last
        t0 = time.perf_counter()
        step = self.walker.render_step(self.before, events, self.decisions, self.count)
        self.pacer.record(self.count, self.seconds + time.perf_counter() - t0)
        self._reset()
        self.add((step,))
        self.size = self.pacer.size()
        if self.cap is not None:
            self.size = min(self.size, self.cap)

    def close(self) -> None:
        if self.count:
            self._flush()
