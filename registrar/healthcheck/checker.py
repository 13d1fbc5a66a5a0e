"""The central health checker process: share, read, probe, append on change.

Invariants:
- Work is shared through one consumer group on the record-less shard topic
  (``events.topics.HEALTHCHECK_SHARDS``): this checker probes exactly the
  registered instances whose ``shards.shard_of`` is a partition the group
  assigned to it. Session timeout 6 s, heartbeat 2 s: a checker that stops
  cleanly leaves the group at once; one killed outright loses its shards to
  the others after the session timeout.
- It knows the mesh only by folding the FULL registrations and health topics
  (read_committed, no group, from the beginning, then tailing) with the
  projector's own ``projector.fold.fold_many``, in the projector's order
  (``projector.merged_fetch``: the merge order, across partitions and
  batches), so its fold decides what the projector's does (a node id
  claimed by two registrations on different partitions goes to the same
  one); there is no second copy of mesh logic here. Probing starts only
  after catching up with the log as it was at start, so the logged status
  is known before any decision.
- Status changes are decided by ``hysteresis`` and appended only when they
  change the logged status, as ``InstanceHealthChanged`` with observer
  ``healthcheck/<checker id>``, through ``events.producer.EventProducer``.
  An appended transition stays pending until the reader has folded past its
  offset, so a slow read-back never causes a duplicate.
- One append is in flight at a time; the transitions decided meanwhile go
  together in the next (up to ``APPEND_BATCH_MAX``), signed as one batch
  (``EventProducer.append_batch``: one ECDSA signature over their Merkle
  root). A lone transition is appended at once and signed alone, so a quiet
  mesh waits for nothing; a burst (a zone failing) costs this checker one
  signature, and the projector one verification, per batch instead of one
  per instance. A batch's transitions are logged in the order they were
  decided; if the batch is not acknowledged, each is retried on its next probe.
- It folds what the projector folds: by default with the projector's
  verifier (``identity.verifier``, fed from the identities topic by
  ``projector.identities.IdentityFeed`` up to each batch's newest event), so
  a forged, unsigned or unauthorized registration is refused here as there
  and never probed; ``insecure_events`` folds unverified, as the projector's
  ``--insecure-events`` (the two must run in the same mode to agree).
- Instances logged "draining" are not probed; deregistered ones are dropped.
- An append is never cancelled half-way by a rebalance: appends run as their
  own tasks and are awaited (bounded) at shutdown.
- SIGTERM/SIGINT: stop probing, leave the group, close, return.
- A broker outage is logged by ``meshlog.outage`` (started, at a backoff,
  ended with its duration), not as a line per failed retry of ours or of
  aiokafka's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import ssl
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from events import topics
from events.admin import BrokerUnavailable, connect_admin, ensure_topics
from events.envelope import new_event
from events.files import stamp as files_stamp, write_file_atomic
from events.printable import printable
from events import kafka_security
from events.kafka_security import connection_kwargs
from events.producer import EventProducer
from events.shard_group import ShardGroup
from events.types import InstanceHealthChanged, InstanceRegistered
from meshlog.outage import KafkaOutageLog
from events.undecodable import UndecodableLog, decode_or_skip
from projector.fold import fold_many
from events.merge_gate import DEFAULT_HOLD_S
from projector.merged_fetch import MergedFetch
from projector.snapshots import tp_key
from projector.state import MeshState, changed_keys, empty_state
from registrar.healthcheck.hysteresis import DRAINING, Hysteresis, Transition
from registrar.healthcheck.probe import mesh_client_context, probe
from registrar.healthcheck.shards import initial_delay, next_delay, shard_of

log = logging.getLogger("registrar.healthcheck")

SOURCE_TOPICS = (topics.REGISTRATIONS, topics.HEALTH)
_REASON_MAX = 256
# transitions signed and appended together at most (a zone's worth of instances failing at once)
APPEND_BATCH_MAX = 1000


def default_checker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class Settings:
    bootstrap: str
    checker_id: str
    group: str = "meshlog-healthcheck"
    interval: float = 2.0
    timeout: float = 1.0
    jitter: float = 0.2
    fall: int = 3
    rise: int = 2
    http_path: str = "/healthz"
    status_file: Path | None = None
    broker_timeout: float = 10.0
    max_concurrent_probes: int = 512
    producer: str | None = None
    insecure_events: bool = False  # fold unverified, as a projector run with --insecure-events

    @property
    def observer(self) -> str:
        return f"healthcheck/{self.checker_id}"


def problems(s: Settings) -> list[tuple[str, str]]:
    """(flag, message) for every invalid setting (pure)."""
    out = []
    if not s.checker_id or len(s.checker_id) > 200 or any(c.isspace() for c in s.checker_id):
        out.append(("--checker-id", "must be 1-200 characters without whitespace"))
    if not s.group or len(s.group) > 249:
        out.append(("--group", "must be 1-249 characters"))
    if not s.interval > 0:
        out.append(("--interval", f"must be > 0 seconds, got {s.interval:g}"))
    if not s.timeout > 0:
        out.append(("--timeout", f"must be > 0 seconds, got {s.timeout:g}"))
    if not 0 <= s.jitter < 1:
        out.append(("--jitter", f"must be a fraction of the interval in [0, 1), got {s.jitter:g}"))
    if s.fall < 1:
        out.append(("--fall", f"must be at least 1, got {s.fall}"))
    if s.rise < 1:
        out.append(("--rise", f"must be at least 1, got {s.rise}"))
    if not s.http_path.startswith("/") or any(c.isspace() for c in s.http_path):
        out.append(("--http-path", f"must start with '/' and contain no whitespace, got {s.http_path!r}"))
    return out


def probe_target(reg: InstanceRegistered) -> tuple[str, int]:
    """Where an instance is probed: its sidecar's inbound port if it has a sidecar, else its own port."""
    return reg.address, (reg.sidecar.inbound_port if reg.sidecar is not None else reg.port)


@dataclass
class _Counters:
    probes: int = 0
    appended: int = 0
    appended_batches: int = 0  # appends of several transitions signed together
    append_failures: int = 0
    undecodable: int = 0


class Checker:
    def __init__(self, settings: Settings, *, rng: random.Random | None = None) -> None:
        self.s = settings
        self.rng = rng or random.Random()
        self.state: MeshState = empty_state()
        self.tracker = Hysteresis(settings.fall, settings.rise)
        self.partitions = topics.HEALTHCHECK_SHARD_COUNT
        self.shards: set[int] = set()
        self._announced_shards: set[int] | None = None
        self.caught_up = False
        self.running = False
        self.counters = _Counters()
        self.skipped = UndecodableLog(log, reader=f"healthcheck/{settings.checker_id}")
        self._tasks: dict[str, asyncio.Task] = {}
        self._appends: set[asyncio.Task] = set()
        self._outbox: list[tuple[Transition, InstanceRegistered]] = []  # decided, not yet handed to the producer
        self._sender: asyncio.Task | None = None
        self._awaiting: dict[str, tuple[TopicPartition, int]] = {}
        self._next_offset: dict[TopicPartition, int] = {}
        self._sem = asyncio.Semaphore(settings.max_concurrent_probes)
        self._dirty = asyncio.Event()
        self._producer: EventProducer | None = None
        self._reader: AIOKafkaConsumer | None = None
        self._merged: MergedFetch | None = None  # the reader's records in merge order
        self._group: ShardGroup | None = None
        self._outage = KafkaOutageLog(f"Kafka at {settings.bootstrap}", log)
        self._mesh_tls: tuple[tuple, ssl.SSLContext | None] | None = None
        self.verifier = None  # identity.verifier.Verifier: the projector's, None in insecure mode
        self._identities = None  # projector.identities.IdentityFeed, once started
        if not settings.insecure_events:
            from identity.verifier import Verifier, configured_roots  # loads cryptography: only when verifying

            self.verifier = Verifier(roots=configured_roots())  # identity events must be the mesh root's

    def mesh_tls(self) -> ssl.SSLContext | None:
        """TLS for probing sidecars with a mesh identity: this checker's Kafka certificate (re-read when renewed)."""
        sec = kafka_security.current()
        if not (sec.cert_file and sec.key_file and sec.ca_file):
            return None
        files = (sec.cert_file, sec.key_file, sec.ca_file)
        stamp = files_stamp(*files)
        if self._mesh_tls is None or self._mesh_tls[0] != stamp:
            try:
                ctx = mesh_client_context(*files)
            except (OSError, ssl.SSLError) as exc:
                log.error("cannot load %s for probing mesh sidecars: %s", sec.cert_file, exc)
                ctx = None
            self._mesh_tls = (stamp, ctx)
        return self._mesh_tls[1]

    # ------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set. Raises BrokerUnavailable if the broker does not answer at start."""
        with self._outage:
            await self._run(stop)

    async def _run(self, stop: asyncio.Event) -> None:
        s = self.s
        await ensure_topics(
            s.bootstrap,
            [topics.BY_NAME[t] for t in (*SOURCE_TOPICS, topics.HEALTHCHECK_SHARDS, topics.IDENTITIES)],
            timeout_s=s.broker_timeout,
        )
        counts = await self._partition_counts()
        if self.verifier is not None:
            from projector.identities import IdentityFeed

            self._identities = IdentityFeed(s.bootstrap, self.verifier, timeout_s=s.broker_timeout)
            await self._identities.start(list(range(counts[topics.IDENTITIES])))
        self.partitions = counts[topics.HEALTHCHECK_SHARDS]
        source = [TopicPartition(t, p) for t in SOURCE_TOPICS for p in range(counts[t])]
        background: list[asyncio.Task] = []
        self._producer = EventProducer(s.bootstrap, timeout_s=s.broker_timeout)
        await self._producer.__aenter__()
        try:
            self._reader = AIOKafkaConsumer(
                **connection_kwargs(s.bootstrap), group_id=None, enable_auto_commit=False,
                isolation_level="read_committed", auto_offset_reset="earliest",
                client_id=f"healthcheck-reader-{s.checker_id}",
            )
            await self._start(self._reader)
            self._reader.assign(source)
            await self._reader.seek_to_beginning(*source)
            self._merged = MergedFetch(self._reader, source, hold_s=DEFAULT_HOLD_S,
                                       reader=f"healthcheck/{s.checker_id}", logger=log)
            await self._catch_up(source, stop)
            if stop.is_set():
                return
            self._group = ShardGroup(
                s.bootstrap, topics.HEALTHCHECK_SHARDS, s.group, client_id=f"healthcheck-{s.checker_id}",
                on_assigned=self.shards_assigned, on_revoked=lambda _shards: self.shards_revoked(),
                outage=self._outage, timeout_s=s.broker_timeout,
            )
            await self._group.start()
            self.running = True
            log.info("checker %s joining group %s on %s (%d shards)", s.checker_id, s.group,
                     topics.HEALTHCHECK_SHARDS, self.partitions)
            background = [
                asyncio.create_task(self._tail(), name="tail"),
                asyncio.create_task(self._group.poll_forever(), name="group"),
            ]
            if s.status_file is not None:
                self._write_status()
                background.append(asyncio.create_task(self._write_status_loop(), name="status"))
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([stopper, *background], return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            for task in done:
                if task is not stopper and task.exception() is not None:
                    raise task.exception()
        finally:
            await self._shutdown(background)

    async def _start(self, consumer: AIOKafkaConsumer) -> None:
        try:
            await asyncio.wait_for(consumer.start(), self.s.broker_timeout)
        except (asyncio.TimeoutError, KafkaError, OSError) as exc:
            raise BrokerUnavailable(
                f"Kafka at {self.s.bootstrap} did not answer within {self.s.broker_timeout:g}s ({type(exc).__name__})"
            ) from None

    async def _partition_counts(self) -> dict[str, int]:
        admin = await connect_admin(self.s.bootstrap, self.s.broker_timeout)
        try:
            names = [*SOURCE_TOPICS, topics.HEALTHCHECK_SHARDS, topics.IDENTITIES]
            described = await admin.describe_topics(names)
            return {t["topic"]: len(t["partitions"]) for t in described}
        finally:
            await admin.close()

    async def _shutdown(self, background: list[asyncio.Task]) -> None:
        # one budget for the whole shutdown, not one per step: a SIGTERM'd checker exits within about
        # --broker-timeout even when leaving the group, closing the reader and the producer all stall
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.s.broker_timeout

        def left() -> float:
            return max(0.1, deadline - loop.time())

        self.running = False
        log.info("checker %s stopping: %d probes, then leaving group %s", self.s.checker_id, len(self._tasks),
                 self.s.group)
        tasks = list(self._tasks.values()) + background
        for task in tasks:
            task.cancel()
        if tasks:
            # bounded like every other step: a task that does not end when cancelled is named, not waited for
            _done, stuck = await asyncio.wait(tasks, timeout=left())
            if stuck:
                log.warning("checker %s: %d tasks still running after cancel: %s", self.s.checker_id, len(stuck),
                            ", ".join(sorted(t.get_name() for t in stuck))[:500])
        self._tasks.clear()
        if self._appends:  # let decided transitions reach the log (bounded)
            await asyncio.wait(list(self._appends), timeout=left())
        if self._group is not None:
            await self._group.stop(left())
        if self._reader is not None:
            try:
                await asyncio.wait_for(self._reader.stop(), left())
            except Exception:  # noqa: BLE001
                pass
        if self._identities is not None:
            try:
                await asyncio.wait_for(self._identities.stop(), left())
            except Exception:  # noqa: BLE001
                pass
        if self._producer is not None:
            try:
                await asyncio.wait_for(self._producer.__aexit__(None, None, None), left())
            except Exception:  # noqa: BLE001 - shutting down: the producer's outcome changes nothing now
                pass
        self.shards = set()
        self._write_status()

    # ------------------------------------------------------------ the log

    async def _catch_up(self, source: list[TopicPartition], stop: asyncio.Event) -> None:
        assert self._reader is not None
        ends = await self._reader.end_offsets(source)
        merged = self._merged
        while not stop.is_set():
            await merged.update_positions()  # released records only: a held one is not caught up with
            if all(merged.positions[tp_key(tp.topic, tp.partition)] >= ends[tp] for tp in source):
                break
            await self._read_batch(timeout_ms=500)
        self.caught_up = True
        unhealthy = sum(1 for k in self.state.instances if self.state.effective_health(k) != "healthy")
        log.info("caught up with %s: %d instances registered, %d not healthy", ", ".join(SOURCE_TOPICS),
                 len(self.state.instances), unhealthy)

    async def _tail(self) -> None:
        while True:
            try:
                await self._read_batch(timeout_ms=1000)
            except KafkaError as exc:  # the broker went away: the consumer reconnects; keep the last state
                self._outage.failure(f"reading {', '.join(SOURCE_TOPICS)}: {exc}; retrying")
                await asyncio.sleep(1.0)

    async def _read_batch(self, timeout_ms: int) -> None:
        assert self._merged is not None
        records = await self._merged.fetch(timeout_ms, max_records=5000)
        events = []
        for record in records:
            logged = decode_or_skip(record, self.skipped)
            if logged is not None:
                events.append(logged)
            self._next_offset[TopicPartition(record.topic, record.partition)] = record.offset + 1
        self.counters.undecodable = self.skipped.count
        if not records:
            return
        if self._identities is not None:
            # every identity fact logged up to the newest event is folded before verifying (as the projector)
            await self._identities.cover(max((lg.timestamp_ms for lg in events), default=None))
        old = self.state
        self.fold(events)
        keys = changed_keys(old.instances, self.state.instances) | changed_keys(old.health, self.state.health)
        if self.caught_up:
            for key in keys:
                self._update(key)
        for key, (tp, offset) in list(self._awaiting.items()):
            if self._next_offset.get(tp, 0) > offset:
                del self._awaiting[key]
                self.tracker.settled(key)
                self._mark_dirty()

    def fold(self, events: list) -> tuple:
        """Fold read events into what this checker knows, verified like the projector's fold; the refusals."""
        self.state, decisions = fold_many(self.state, events, self.verifier)
        return decisions

    # ------------------------------------------------------------ shards

    def shards_revoked(self) -> None:
        # stop probing at once (the new owner starts only after every member rejoined);
        # counters are kept in case the same shards come back
        self.shards = set()
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()
        self._mark_dirty()

    def shards_assigned(self, shards: set[int]) -> None:
        self.shards = set(shards)
        if self._announced_shards != self.shards:
            before = sorted(self._announced_shards) if self._announced_shards is not None else "none"
            log.info("checker %s: shards assigned %s (was %s) of %d", self.s.checker_id, sorted(self.shards),
                     before, self.partitions)
            self._announced_shards = set(self.shards)
        for key in self.tracker.keys():
            if key not in self.state.instances or shard_of(key, self.partitions) not in self.shards:
                self.tracker.forget(key)
                self._awaiting.pop(key, None)
        for key in self.state.instances:
            self._update(key)
        self._mark_dirty()

    def _wanted(self, key: str) -> bool:
        return (
            self.running
            and key in self.state.instances
            and shard_of(key, self.partitions) in self.shards
            and self.state.effective_health(key) != DRAINING
        )

    def _update(self, key: str) -> None:
        """Bring tracking and probing of ``key`` in line with the folded state and our shards."""
        if self._wanted(key):
            self.tracker.track(key, self.state.effective_health(key))
            if key not in self._tasks:
                self._tasks[key] = asyncio.create_task(self._probe_loop(key), name=f"probe {key}")
        else:
            task = self._tasks.pop(key, None)
            if task is not None:
                task.cancel()
            if key in self.tracker:
                self.tracker.forget(key)
                self._awaiting.pop(key, None)
        self._mark_dirty()

    # ------------------------------------------------------------ probing

    async def _probe_loop(self, key: str) -> None:
        s = self.s
        await asyncio.sleep(initial_delay(s.interval, self.rng))
        while True:
            inst = self.state.instances.get(key)
            if inst is None:
                return
            host, port = probe_target(inst.reg)
            secure = inst.reg.sidecar is not None and inst.reg.sidecar.trust_domain is not None
            async with self._sem:
                result = await probe(host, port, inst.reg.protocol, http_path=s.http_path, timeout=s.timeout,
                                     user_agent=f"meshlog-healthcheck/{s.checker_id}",
                                     tls=self.mesh_tls() if secure else None)
            self.counters.probes += 1
            log.debug("probe %s at %s:%d: %s", key, host, port, result.detail)
            transition = self.tracker.record(key, result.ok, result.detail)
            if transition is not None:
                self._queue_append(transition, inst.reg)
            self._mark_dirty()
            await asyncio.sleep(next_delay(s.interval, s.jitter, self.rng))

    def _queue_append(self, transition: Transition, reg: InstanceRegistered) -> None:
        """Append ``transition`` now, or with the next batch if an append is in flight (the module docstring)."""
        self._outbox.append((transition, reg))
        if self._sender is None or self._sender.done():
            self._sender = task = asyncio.create_task(self._send_outbox(), name="healthcheck-append")
            self._appends.add(task)
            task.add_done_callback(self._appends.discard)

    async def _send_outbox(self) -> None:
        # one sender at a time, so the transitions decided while its append waits for the broker go together
        while self._outbox:
            batch, self._outbox = self._outbox[:APPEND_BATCH_MAX], self._outbox[APPEND_BATCH_MAX:]
            await self._append_batch(batch)

    async def _append_batch(self, batch: list[tuple[Transition, InstanceRegistered]]) -> None:
        assert self._producer is not None
        envs = [new_event(InstanceHealthChanged(service=reg.service, instance_id=reg.instance_id,
                                                status=transition.status,
                                                reason=printable(transition.reason, _REASON_MAX),
                                                observer=self.s.observer), producer=self.s.producer)
                for transition, reg in batch]
        try:
            if len(envs) == 1:
                appended = [await self._producer.append(envs[0])]
            else:  # signed together: one signature over the batch's Merkle root (events.signing.sign_batch)
                appended = await self._producer.append_batch(envs)
        except Exception as exc:  # noqa: BLE001 - whatever failed, each transition must be free to be decided again
            if not isinstance(exc, BrokerUnavailable):
                log.exception("appending %d transition(s) failed unexpectedly", len(batch))
            self.counters.append_failures += len(batch)
            for transition, _reg in batch:
                self.tracker.append_failed(transition.key)
                log.error("%s: NOT appended, will retry on the next probe: %s", transition.describe(), exc)
            return
        self.counters.appended += len(batch)
        if len(batch) > 1:
            self.counters.appended_batches += 1
        for (transition, _reg), done in zip(batch, appended):
            log.info("%s [appended %s offset %d%s]", transition.describe(), done.topic, done.offset,
                     f", one of {len(batch)} signed together" if len(batch) > 1 else "")
            tp = TopicPartition(done.topic, done.partition)
            if self._next_offset.get(tp, 0) > done.offset:
                self.tracker.settled(transition.key)  # already read back
            else:
                self._awaiting[transition.key] = (tp, done.offset)
        self._mark_dirty()

    # ------------------------------------------------------------ status file

    def _mark_dirty(self) -> None:
        self._dirty.set()

    def status(self) -> dict:
        instances = {}
        for key in sorted(self.tracker.keys()):
            tracked = self.tracker.get(key)
            inst = self.state.instances.get(key)
            if tracked is None or inst is None:
                continue
            host, port = probe_target(inst.reg)
            instances[key] = {
                "service": inst.reg.service,
                "instance_id": inst.reg.instance_id,
                "protocol": inst.reg.protocol,
                "target": f"{host}:{port}",
                "shard": shard_of(key, self.partitions),
                **tracked.as_dict(),
            }
        return {
            "checker_id": self.s.checker_id,
            "group": self.s.group,
            "pid": os.getpid(),
            "running": self.running,
            "caught_up": self.caught_up,
            "partitions": self.partitions,
            "shards": sorted(self.shards),
            "instances": instances,
            "probes": self.counters.probes,
            "appended": self.counters.appended,
            "appended_batches": self.counters.appended_batches,
            "append_failures": self.counters.append_failures,
            "undecodable": self.counters.undecodable,
            "updated_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        }

    def _write_status(self) -> None:
        path = self.s.status_file
        if path is None:
            return
        write_file_atomic(path, orjson.dumps(self.status(), option=orjson.OPT_INDENT_2))

    async def _write_status_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            self._write_status()
            await asyncio.sleep(0.1)  # coalesce bursts of probe results into one write
