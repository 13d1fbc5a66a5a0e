"""The live projector: event topics -> fold -> render -> view topics, with RocksDB state.

Why not faust (the issue asked for faust agents and faust Tables): faust-streaming
0.15.3 was tried first against our Kafka 4.1 broker and it *runs* (pre-created
topics, ``topic_disable_leader=True``, changelog declared by faust), but three
problems made it unfit here, the first one a hard blocker for the issue's
performance target (>= 10,000 events/s on one core, fold + render + publish):

1. Throughput. A no-op agent (``stream.take_events(5000, within=0.5)``, memory
   store, concurrency 1) over 100,000 pre-produced 300-byte records on the
   same broker and machine measured ``RATE 12318/s`` (11,679-13,358/s with
   ``broker_max_poll_records`` 1,000-10,000 and ``stream_buffer_maxsize`` up
   to 32,768), versus 308,865 records/s for a plain aiokafka ``getmany``
   loop. cProfile shows the cost is structural: per message faust runs ~3
   event-loop iterations and creates ~4 tasks (``mode.Service.wait_first``,
   ``Stream._c_aiter``, ``Conductor.on_message``): ~80 us/message before any
   work. Our fold alone costs ~7-12 us/event and render is per batch, so faust
   would cap the projector below the target with nothing left for the work.
2. ``read_committed`` is only used when ``processing_guarantee="exactly_once"``
   (``AIOKafkaConsumerThread._create_worker_consumer``: ``isolation_level =
   "read_committed" if self.consumer.in_transaction``), and exactly-once mode
   has open duplicate bugs (faust-streaming #323, #517). The registrar writes
   multi-document rules in transactions, so at-least-once faust would fold
   aborted records unless its private consumer factory is patched.
3. An exception in an agent is logged (``Agent*: ...: Crashed
   reason=KeyError('n')``), the supervisor restarts the agent, and the crashed
   ``take`` buffer is skipped in the running process (observed: offsets 0-2
   never re-delivered, the next batch started at offset 3), while the acked
   offset gap keeps commits stuck until a restart.

So, as the issue allows, this is the fallback: one aiokafka consumer (no
consumer group: positions live in RocksDB), concurrency 1, and rocksdict
directly, with every store update applied as one atomic ``WriteBatch``.

Processing (one loop, one batch at a time):

1. ``getmany`` (read_committed) through the merge gate (``projector.merged_fetch``)
   up to ``max_batch`` records in ``events.topics.merge_order``, the order
   replay folds in: a fetched record waits while a partition still behind it
   could deliver an earlier one, and the next fetch is from those partitions.
   Records at offsets already folded are skipped (idempotent re-delivery).
2. Decode each (``events.undecodable.try_decode``: total, through the
   memoizing ``events.record_decoder``: exactly the codec's answer, a
   repeated payload validated once); an invalid record is
   dead-lettered (``projector.deadletter``) and processing goes on. Fold the
   batch with ``fold_many`` (equal to folding one by one); should the fold
   raise, the batch is refolded one event at a time and the offending event
   is dead-lettered with stage ``fold``. ``RuleRejected`` decisions become
   envelopes (producer ``projector``) on ``REJECTIONS``.
3. If the state changed: ``render_all(state, previous=last_render)`` once for
   the batch (incremental: only what the fold touched is re-rendered; the
   first render of a process is from scratch), plan the records from its
   change sets against the published versions (``projector.publisher``),
   publish dead letters and rejections, then bodies -> memberships -> body
   tombstones, each phase acknowledged (idempotent producer, acks=all) before
   the next.
4. Commit to RocksDB in one WriteBatch: the published-version changes and
   ``emitted`` (per partition: the first offset whose side effects are not yet
   published). Every ``checkpoint_events`` events / ``checkpoint_interval``
   seconds (and at shutdown) the same WriteBatch also carries the whole state
   (``state_to_bytes``, zlib) with the offsets it covers; what a checkpoint
   serialized is kept for the next (``state.RowMemo``), which serializes again
   only the maps that changed and, of the registrations, the ones that did.
5. Every ``snapshot_events`` / ``snapshot_interval`` a snapshot record goes to
   ``SNAPSHOTS`` (``projector.snapshots``).

Authorship (issue 13): by default every folded event must be signed by an
identity the identities topic held at the event's log time, and its author
must be allowed to state it (``projector.fold`` with an
``identity.verifier.Verifier``; ``projector.identities`` reads the identities
topic far enough before each batch). A refused event is an ``EventRefused``
decision on ``REJECTIONS``, like a rule rejection. ``insecure_events`` (the
``--insecure-events`` flag, for local development and logs written before
signing) folds without verifying. The projector signs its own records on
``REJECTIONS`` with its Kafka client identity, when it has one; with one, it
also appends after each batch an attestation of the runs of records whose
signatures the fold found good (``projector.attestations``, on
``ATTESTATIONS``; not waited for: a lost one only costs replay the full
check). A batch's signatures are
checked in a worker process while the fold runs (``verify_workers``,
``identity.verifier.verify_ahead``); a worker that dies is replaced.

Restart and crash safety:

- On start the checkpointed state is loaded and the consumer seeks each
  partition to the checkpoint's offsets. Records between the checkpoint and
  ``emitted`` are refolded (deterministic fold: the same state results) with
  their side effects suppressed; once caught up to ``emitted`` the view is
  rendered once and diffed against the stored published versions, so nothing
  unchanged is republished (and a render-code change is published).
- A crash before a batch's WriteBatch loses nothing: the batch is refolded and
  republished (at-least-once: duplicate view records are harmless on the
  compacted topics; dead letters/rejections of that one batch may repeat, with
  the same deterministic dead-letter key / source offsets). A crash after it
  has nothing to redo. Partial writes cannot happen (atomic WriteBatch,
  synced WAL).
- A fresh data dir adopts what is already on the view topics (reads them once)
  instead of republishing everything.
- A data dir created against another Kafka cluster (cluster id stored) is
  refused with a message; ``--reset`` discards it.

Sharing the work (``ProjectorConfig.group``, ``projector run --group G``): every
worker folds everything as above, but renders only the per-node resources and
memberships of the nodes it owns and the shared bodies of its shards
(``render_all(..., scope=ownership)``; the version of every shared resource
some node holds is named by every worker from the resource's render inputs,
without building it, ``projector.versioning``: it goes into the memberships),
and plans, publishes and records only the view keys of the shards the
consumer group assigned it (``projector.sharding``; dead
letters, rejections and snapshots: the owner of shard 0). It joins the group
only once caught up (``_ready_to_render``), so a new worker takes no shard it
cannot serve yet. A revocation waits for the
batch being published and pauses publishing (nothing is rendered meanwhile, so
the next incremental render still covers the gap); an assignment renders at
once: the kept shards' changes, and every record of the gained shards
(``publisher.plan_takeover``). Without a group, one worker owns everything and
nothing of this runs.

A broker outage is logged by ``meshlog.outage`` (started, at a backoff, ended
with its duration), not as a line per failed retry of ours or of aiokafka's.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import shutil
import time
import zlib
from concurrent.futures import BrokenExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from rocksdict import Options, Rdict, WriteBatch, WriteOptions

from events import topics
from events.admin import BrokerUnavailable, connect_admin, ensure_topics
from events.codec import encode
from events.envelope import Logged, new_event
from events.errors import EventValidationError
from meshlog.outage import KafkaOutageLog
from events.kafka_security import connection_kwargs
from events.printable import printable
from events.record_decoder import RecordDecoder
from events.undecodable import REASON_MAX, UndecodableLog, decode_or_skip, try_decode
from projector import publisher as pub
from projector.deadletter import dead_letter_key, dead_letter_record, parse_dead_letter
from projector.fold import fold_many, fold_with_decisions
from projector.render import render_all
from projector.sharding import Ownership
from projector.snapshots import KEY as SNAPSHOT_KEY
from events.merge_gate import DEFAULT_HOLD_S
from projector.merged_fetch import MergedFetch
from projector.snapshots import MERGE_ORDER, encode_snapshot, parse_tp_key, tp_key
from projector.state import MeshState, RowMemo, empty_state, same_state, state_from_bytes, state_to_bytes

log = logging.getLogger("projector")

PRODUCER_IDENTITY = "projector"
SOURCE_TOPICS: tuple[str, ...] = (topics.REGISTRATIONS, topics.HEALTH, topics.RULES)
DB_NAME = "projector.rocksdb"
SNAPSHOT_RETRY_S = 30.0
class ProjectorError(RuntimeError):
    """A condition the projector cannot run under (message says what to do)."""


class _Stopping(Exception):
    """Raised inside a batch when a stop was requested while the broker kept failing."""


@dataclass(slots=True)
class ProjectorConfig:
    bootstrap: str
    data_dir: Path
    max_batch: int = 20_000
    poll_timeout_s: float = 0.2
    # How long a partition that is behind (visible records not delivered yet) may hold back the records that
    # sort after its last one before the fold goes past it anyway and says so (``projector.merged_fetch``)
    merge_hold_s: float = DEFAULT_HOLD_S
    # Every view change waits for this before it leaves the process, once per publish phase (bodies,
    # memberships, tombstones: each acknowledged before the next), so it adds straight to the time an
    # event takes to reach the proxies. It buys nothing here: a phase's records are all added to the
    # producer before it yields, so they share batches anyway (5 ms was the old value: ~10 ms per change).
    linger_ms: int = 0
    checkpoint_events: int = 20_000
    # A checkpoint serializes the whole state in the loop, and an event arriving meanwhile waits: every 5 s
    # (the old value) parked a few percent of events that long. From scratch: ~0.15 CPU-s at 10,000 instances;
    # after 5,000 health transitions with what the last checkpoint serialized kept (``RowMemo``): ~0.01 at
    # 10,000, ~0.11 at 100,000; zlib adds ~0.01 and ~0.12.
    # A crash refolds at most checkpoint_events events either way.
    checkpoint_interval_s: float = 60.0
    snapshot_events: int = 10_000
    snapshot_interval_s: float = 60.0
    send_timeout_s: float = 30.0
    ensure_topics: bool = True
    reset: bool = False
    sync_writes: bool = True
    # GC: the state and the last render are millions of long-lived objects that the cyclic
    # collector would rescan again and again; freeze them after each batch (measured ~25%
    # of batch time on a 10,000-node mesh) and run a full collection now and then, when idle.
    # A full collection scans all of them and holds the loop meanwhile: an event arriving then
    # waits for it (10,000 nodes: 0.45-5.1 s on the loaded shared 2-core host; bench/e2e_propagation.py
    # saw a health flip fetched 1.3 s late behind one). The 4 collections of that run found 0
    # unreachable objects, so it runs once an hour (was every minute); 0 turns it off.
    gc_freeze: bool = True
    full_gc_interval_s: float = 3600.0
    source_topics: tuple[str, ...] = SOURCE_TOPICS
    # fold without verifying who signed each event (local development, logs written before signing)
    insecure_events: bool = False
    # worker processes checking a batch's signatures ahead of its fold (identity.verifier.verify_ahead: one is
    # the second core; the fold's thread checks what they have not started); 0 checks them in the fold only
    verify_workers: int = 1
    # None: one worker publishes everything. A group name: this worker joins that consumer group on
    # meshlog.projector.shards once caught up and publishes only the view keys of its shards
    # (projector.sharding; dead letters, rejections and snapshots by the owner of shard 0)
    group: str | None = None
    worker_id: str = "projector"
    # how long the group waits for a silent worker before handing its shards on (the broker's minimum, 6 s,
    # by default): longer rides out stalls of a loaded host, at the price of a slower takeover after a crash
    session_timeout_s: float = 6.0


# ---------------------------------------------------------------- store


def empty_counters() -> dict[str, Any]:
    """The counters of an empty state. It is folded through the merge gate from here on, so its snapshots may
    say ``fold_order: merge``; a checkpoint written before the gate has no ``fold_order`` (its fold went in fetch
    order), and neither have its snapshots, which replay then does not start from."""
    return {"events": 0, "dead_lettered": 0, "max_timestamp_ms": None, "fold_order": MERGE_ORDER}


@dataclass(slots=True)
class Stored:
    state: MeshState
    state_offsets: dict[str, int]  # next offset per tp folded into ``state``
    counters: dict[str, Any]  # events / dead_lettered / max_timestamp_ms of the checkpointed cut
    emitted: dict[str, int]  # next offset per tp whose side effects are published
    snapshot_marks: dict[str, Any]  # last_snapshot_events / last_snapshot_at
    published: pub.PublishedViews
    cluster_id: str | None
    fresh: bool


class Store:
    """The projector's RocksDB (rocksdict, raw bytes). Every update is one atomic WriteBatch.

    Keys: ``m:cluster`` (Kafka cluster id), ``m:checkpoint`` (orjson: offsets +
    counters of the stored state), ``m:state`` (zlib of ``state_to_bytes``),
    ``m:emitted`` (orjson: offsets whose side effects are published, snapshot
    marks), ``r:<type_url>|<name>`` -> published version, ``n:<node>`` ->
    published membership (the very value sent to the membership topic).
    """

    K_CLUSTER = b"m:cluster"
    K_CHECKPOINT = b"m:checkpoint"
    K_STATE = b"m:state"
    K_EMITTED = b"m:emitted"
    P_RESOURCE = b"r:"
    P_NODE = b"n:"

    def __init__(self, path: Path, *, sync: bool = True) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = Rdict(str(path), Options(raw_mode=True))
        except Exception as exc:  # rocksdict raises plain Exception (e.g. LOCK held)
            if "lock" in str(exc).lower():
                raise ProjectorError(f"data dir {path.parent} is in use by another projector ({exc})") from None
            raise ProjectorError(f"cannot open RocksDB at {path}: {exc}") from None
        self._wo = WriteOptions()
        self._wo.sync = sync

    def close(self) -> None:
        self.db.close()

    def _prefixed(self, prefix: bytes) -> Iterable[tuple[bytes, bytes]]:
        for k, v in self.db.items(from_key=prefix):
            if not k.startswith(prefix):
                break
            yield k, v

    def load(self) -> Stored:
        db = self.db
        cp_raw = db.get(self.K_CHECKPOINT)
        state_raw = db.get(self.K_STATE)
        if cp_raw is not None and state_raw is not None:
            cp = orjson.loads(cp_raw)
            state = state_from_bytes(zlib.decompress(state_raw))
            state_offsets = {str(k): int(v) for k, v in cp["offsets"].items()}
            counters = cp["counters"]
        else:
            state, state_offsets = empty_state(), {}
            counters = empty_counters()
        em_raw = db.get(self.K_EMITTED)
        em = orjson.loads(em_raw) if em_raw is not None else {}
        published = pub.PublishedViews()
        for k, v in self._prefixed(self.P_RESOURCE):
            published.resources[pub.parse_resource_key(k[len(self.P_RESOURCE) :])] = v.decode()
        for k, v in self._prefixed(self.P_NODE):
            node = k[len(self.P_NODE) :].decode()
            published.membership[node] = pub.parse_membership_value(v)[1]
            owner = pub.parse_membership_owner(v)
            if owner is not None:
                published.owners[node] = owner
        cluster = db.get(self.K_CLUSTER)
        return Stored(
            state=state,
            state_offsets=state_offsets,
            counters=counters,
            emitted={str(k): int(v) for k, v in em.get("offsets", {}).items()},
            snapshot_marks=em.get("snapshot", {"events": 0, "at": None}),
            published=published,
            cluster_id=cluster.decode() if cluster is not None else None,
            fresh=cp_raw is None and em_raw is None and cluster is None,
        )

    def set_cluster(self, cluster_id: str) -> None:
        wb = WriteBatch(raw_mode=True)
        wb.put(self.K_CLUSTER, cluster_id.encode())
        self.db.write(wb, self._wo)

    def commit(
        self,
        *,
        plans: Sequence[pub.ViewPlan] = (),
        emitted: dict[str, int] | None = None,
        snapshot_marks: dict[str, Any] | None = None,
        checkpoint: tuple[bytes, dict[str, int], dict[str, Any]] | None = None,
    ) -> None:
        wb = WriteBatch(raw_mode=True)
        for plan in plans:
            for rk, _body, version in plan.bodies:
                wb.put(self.P_RESOURCE + pub.resource_key(*rk), version.encode())
            for node, value, resources in plan.membership:
                key = self.P_NODE + node.encode()
                if resources is None:
                    wb.delete(key)
                else:
                    wb.put(key, value or pub.membership_value(node, resources, plan.owners.get(node)))
            for rk in plan.removals:
                wb.delete(self.P_RESOURCE + pub.resource_key(*rk))
        if emitted is not None:
            wb.put(self.K_EMITTED, orjson.dumps({"offsets": emitted, "snapshot": snapshot_marks or {}}))
        if checkpoint is not None:
            state_bytes, offsets, counters = checkpoint
            wb.put(self.K_STATE, zlib.compress(state_bytes, 1))
            wb.put(self.K_CHECKPOINT, orjson.dumps({"offsets": offsets, "counters": counters}))
        self.db.write(wb, self._wo)


# ---------------------------------------------------------------- the service


@dataclass(slots=True)
class BatchResult:
    records: int = 0
    folded: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    rejected: int = 0
    rendered: bool = False
    plan: pub.ViewPlan = pub.EMPTY_PLAN
    timings_ms: dict[str, float] = field(default_factory=dict)
    # wall-clock marks of the batch's way through (bench/e2e_propagation.py reads them from the DEBUG line)
    newest_event_ms: int | None = None  # broker time of the batch's newest event
    fetched_at: float | None = None  # time.time() when the fetch that returned the batch completed
    published_at: float | None = None  # time.time() when its view records were all acknowledged


class ProjectorService:
    """``await ProjectorService(cfg).run()``; ``request_stop()`` ends it after the current batch."""

    def __init__(self, config: ProjectorConfig) -> None:
        self.cfg = config
        self._stop = asyncio.Event()
        self.caught_up = asyncio.Event()  # set whenever the consumer reached the end of every partition
        self.store: Store | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.tps: list[TopicPartition] = []
        self.state: MeshState = empty_state()
        self.next_folded: dict[str, int] = {}
        self.emitted: dict[str, int] = {}
        self.published = pub.PublishedViews()
        self.counters: dict[str, Any] = empty_counters()
        self.snapshot_marks: dict[str, Any] = {"events": 0, "at": None}
        self.totals = {"batches": 0, "published_records": 0, "rejections": 0, "dead_letters": 0, "snapshots": 0,
                       "undeliverable": 0, "attestations": 0, "attestations_lost": 0}
        self._checkpoint_events = 0  # events folded since the last checkpoint
        self._state_rows = RowMemo()  # a checkpoint serializes only the registrations changed since the last one
        self._checkpoint_mono = time.monotonic()
        self._reconcile_pending = True
        self._rendered: Any = None  # the last RenderedMesh (the next render starts from it)
        self._render_after: dict[str, int] = {}
        # fetch order -> merge order (``projector.merged_fetch``); set when the consumer is assigned
        self._merged: MergedFetch | None = None
        self._positions: dict[str, int] = {}  # per tp: read and released by the merge gate (not past a held one)
        self._problems: tuple[str, ...] = ()
        self._was_caught_up = False
        self._started_mono = time.monotonic()
        self._snapshot_retry_at = 0.0
        self._full_gc_mono = time.monotonic()
        self._unpublished = False
        self._fetched_at: float | None = None  # time.time() when the last non-empty fetch returned
        # a broker outage reads as: started, still failing (at a backoff), ended (meshlog.outage)
        self._outage = KafkaOutageLog(f"Kafka at {config.bootstrap}", log)
        # the codec's answer for every record, a repeated payload (health flaps, re-registrations) validated once:
        # decoding was the largest share of a batch, and every projector worker decodes every event
        self._decoder = RecordDecoder()
        self.verifier: Any = None  # identity.verifier.Verifier, None in insecure mode
        self._identities: Any = None  # projector.identities.IdentityFeed, once started
        if not config.insecure_events:
            from identity.verifier import Verifier, configured_roots  # loads cryptography: only when verifying

            self.verifier = Verifier(roots=configured_roots())  # identity events must be the mesh root's
        self._verify_pool: Any = None  # identity.verifier.verification_pool for verify_ahead, once started
        self._signer: Any = None  # the process's signer (events.signing), set at start
        # which view keys this worker publishes: all of them alone; with a group, its shards' keys
        self.ownership = Ownership(None) if config.group is None else Ownership(frozenset())
        self._gained: frozenset[int] = frozenset()  # shards assigned and not yet taken over (published)
        self._paused = False  # between a revocation and the next assignment: publish nothing
        self._group: Any = None  # events.shard_group.ShardGroup, once joined
        self._group_task: asyncio.Task | None = None
        self._batch_lock = asyncio.Lock()  # a rebalance waits for the batch being published
        self.shards_changed = asyncio.Event()  # set after every takeover is published (tests, bench)

    # ------------------------------------------------ lifecycle

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def run(self) -> None:
        with self._outage:
            try:
                await self.start()
                await self.loop()
            finally:
                await self.close()

    async def start(self) -> None:
        cfg = self.cfg
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        db_path = cfg.data_dir / DB_NAME
        if cfg.reset and db_path.exists():
            log.warning("--reset: discarding %s", db_path)
            shutil.rmtree(db_path)
        if cfg.ensure_topics:
            report = await ensure_topics(cfg.bootstrap)
            if report.created:
                log.info("created topics: %s", ", ".join(report.created))
        cluster_id = await self._cluster_id()
        stored = self.load_store(cluster_id)

        self.producer = AIOKafkaProducer(
            **connection_kwargs(cfg.bootstrap),
            enable_idempotence=True,  # implies acks=all (aiokafka defaults to acks=1 without it)
            acks="all",
            linger_ms=cfg.linger_ms,
            max_batch_size=1 << 20,
            max_request_size=16 << 20,
            request_timeout_ms=int(cfg.send_timeout_s * 1000),
            client_id="meshlog-projector",
        )
        await self._start_client(self.producer)
        if stored.fresh:
            await self._adopt_published_views()
        self.consumer = AIOKafkaConsumer(
            **connection_kwargs(cfg.bootstrap),
            group_id=None,  # positions live in RocksDB, committed with the state they produced
            enable_auto_commit=False,
            isolation_level="read_committed",  # multi-document rules are appended in transactions
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 << 20,
            fetch_max_bytes=64 << 20,
            # fetch_max_wait_ms (500) does not delay a new event: with fetch_min_bytes=1 the broker answers the
            # waiting fetch as soon as one record is there (bench/e2e_propagation.py: a health flip is fetched
            # p50 5 ms after its append); raising fetch_min_bytes would park every lone event for up to that
            fetch_min_bytes=1,
            client_id="meshlog-projector",
        )
        await self._start_client(self.consumer)
        from events.signing import process_signer

        self._signer = process_signer()
        if self.verifier is not None:
            from projector.identities import IdentityFeed

            self._identities = IdentityFeed(cfg.bootstrap, self.verifier, timeout_s=cfg.send_timeout_s)
            await self._identities.start(sorted(await self.producer.partitions_for(topics.IDENTITIES) or ()))
        else:
            log.warning("--insecure-events: events are folded without verifying who signed them (unverified facts)")
        for topic in cfg.source_topics:
            for partition in sorted(await self.producer.partitions_for(topic)):
                self.tps.append(TopicPartition(topic, partition))
        self.consumer.assign(self.tps)
        self._merged = MergedFetch(self.consumer, self.tps, hold_s=cfg.merge_hold_s, reader="projector", logger=log)
        self._positions = self._merged.positions
        for tp in self.tps:
            nxt = self.next_folded.get(tp_key(tp.topic, tp.partition), 0)
            self.consumer.seek(tp, nxt)
            self.next_folded.setdefault(tp_key(tp.topic, tp.partition), nxt)
        log.info(
            "projector started: bootstrap=%s data_dir=%s cluster=%s; state checkpoint at %s (%d events); "
            "side effects published through %s; %d resources and %d nodes published",
            cfg.bootstrap,
            cfg.data_dir,
            cluster_id,
            _fmt_offsets(self.next_folded),
            self.counters.get("events", 0),
            _fmt_offsets(self.emitted) if self.emitted else "nothing",
            len(self.published.resources),
            len(self.published.membership),
        )
        if self.counters.get("fold_order") != MERGE_ORDER:
            log.warning(
                "data dir %s holds a state folded before merge-ordered folding (in fetch order): replay does not "
                "start from the snapshots it appends; --reset refolds it from the log in merge order", cfg.data_dir,
            )
        await self._merged.update_positions()
        ends = await self.consumer.end_offsets(self.tps)  # read_committed: last stable offsets
        self.hold_rendering_until({tp_key(tp.topic, tp.partition): ends[tp] for tp in self.tps})
        if self._ready_to_render():
            await self._reconcile()
        else:
            log.info("catching up to %s before rendering", _fmt_offsets(self._render_after))

    def load_store(self, cluster_id: str) -> Stored:
        """Open the data dir's RocksDB and load state, offsets and published views (no Kafka I/O)."""
        cfg = self.cfg
        self.store = Store(cfg.data_dir / DB_NAME, sync=cfg.sync_writes)
        stored = self.store.load()
        if stored.cluster_id is not None and stored.cluster_id != cluster_id:
            self.store.close()
            self.store = None
            raise ProjectorError(
                f"data dir {cfg.data_dir} was built from Kafka cluster {stored.cluster_id}, but {cfg.bootstrap} is "
                f"cluster {cluster_id}: use a fresh --data-dir, or --reset to discard it"
            )
        if stored.cluster_id is None:
            self.store.set_cluster(cluster_id)
        self.state = stored.state
        self.next_folded = dict(stored.state_offsets)
        self.counters = dict(stored.counters)
        self.emitted = dict(stored.emitted)
        self.snapshot_marks = dict(stored.snapshot_marks) or {"events": 0, "at": None}
        self.published = stored.published
        return stored

    def hold_rendering_until(self, log_ends: dict[str, int]) -> None:
        """The log end (next offset per tp) seen at start: no rendering before the fold gets there."""
        self._render_after = dict(log_ends)

    async def close(self) -> None:
        if self._group_task is not None:
            self._group_task.cancel()
            await asyncio.gather(self._group_task, return_exceptions=True)
        if self._group is not None:
            await self._group.stop(10.0)  # leave: the other workers take the shards at once
            self._group = None
        try:
            if self.store is not None and self._checkpoint_events and not self._unpublished:
                self._write_checkpoint()
                log.info("final checkpoint written at %s", _fmt_offsets(self.next_folded))
        except Exception:  # noqa: BLE001 - a failed final checkpoint only means more refolding next time
            log.exception("final checkpoint failed (the next start refolds from the previous one)")
        if self._verify_pool is not None:
            self._verify_pool.shutdown(wait=False, cancel_futures=True)
            self._verify_pool = None
        if self._identities is not None:
            try:
                await self._identities.stop()
            except Exception:  # noqa: BLE001
                log.warning("closing the identities consumer failed", exc_info=True)
        for client in (self.consumer, self.producer):
            if client is not None:
                try:
                    await asyncio.wait_for(client.stop(), 10)
                except Exception:  # noqa: BLE001
                    log.warning("closing %s failed", type(client).__name__, exc_info=True)
        self.consumer = self.producer = None
        if self.store is not None:
            self.store.close()
            self.store = None
        log.info(
            "projector stopped at %s (%d events folded in all); this run: %d dead letters, %d rejections, "
            "%d view records published, %d snapshots, %d records refused by the broker for good",
            _fmt_offsets(self.next_folded),
            self.counters.get("events", 0),
            self.totals["dead_letters"],
            self.totals["rejections"],
            self.totals["published_records"],
            self.totals["snapshots"],
            self.totals["undeliverable"],
        )

    async def _start_client(self, client: Any) -> None:
        try:
            await asyncio.wait_for(client.start(), self.cfg.send_timeout_s)
        except (KafkaError, asyncio.TimeoutError, OSError) as exc:
            raise BrokerUnavailable(
                f"Kafka at {self.cfg.bootstrap} did not answer ({type(exc).__name__}: {exc})"
            ) from None

    async def _cluster_id(self) -> str:
        admin = await connect_admin(self.cfg.bootstrap)
        try:
            info = await admin.describe_cluster()
        finally:
            await admin.close()
        return str(info.get("cluster_id"))

    async def _scan(self, topic_names: Sequence[str], on_record) -> None:
        """Read topics from the beginning to their current end (read_committed), calling ``on_record``."""
        consumer = AIOKafkaConsumer(
            **connection_kwargs(self.cfg.bootstrap), group_id=None, enable_auto_commit=False,
            isolation_level="read_committed", max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20,
        )
        await self._start_client(consumer)
        try:
            tps = [TopicPartition(t, p) for t in topic_names for p in sorted(await self.producer.partitions_for(t))]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            pending = [tp for tp in tps if await consumer.position(tp) < ends[tp]]
            while pending:
                batch = await consumer.getmany(*pending, timeout_ms=1000)
                for tp, recs in batch.items():
                    for r in recs:
                        if r.offset < ends[tp]:
                            try:
                                on_record(r)
                            except Exception:  # noqa: BLE001 - a foreign record: ignore it (it will be overwritten)
                                log.warning("ignoring unreadable record %s/%d/%d", r.topic, r.partition, r.offset)
                pending = [tp for tp in pending if await consumer.position(tp) < ends[tp]]
        finally:
            await consumer.stop()

    async def _adopt_published_views(self) -> None:
        """A fresh data dir: learn what earlier projectors already published, so it is not published again.

        The view topics give the published versions and memberships (like a
        gateway reads them); the dead-letter and rejection topics give, per
        source partition, how far side effects were already recorded.
        """
        resources: dict[pub.ResourceKey, str] = {}
        membership: dict[str, pub.Membership] = {}
        owners: dict[str, pub.Owner] = {}
        emitted: dict[str, int] = {}

        def on_view(r: Any) -> None:
            if r.key is None:
                return
            if r.topic == topics.VIEW_RESOURCES:
                rk = pub.parse_resource_key(r.key)
                if r.value is None:
                    resources.pop(rk, None)
                else:
                    resources[rk] = pub.record_version(r.value, r.headers)
            else:
                node = r.key.decode()
                owners.pop(node, None)
                if r.value is None:
                    membership.pop(node, None)
                else:
                    membership[node] = pub.parse_membership_value(r.value)[1]
                    owner = pub.parse_membership_owner(r.value)
                    if owner is not None:
                        owners[node] = owner

        unreadable = UndecodableLog(log, reader="projector (adopting recorded rejections)")

        def on_effect(r: Any) -> None:
            if r.topic == topics.DEADLETTER:
                src = parse_dead_letter(r.value)
                k, off = tp_key(src.topic, src.partition), src.offset
            else:
                logged = decode_or_skip(r, unreadable)
                if logged is None:
                    return
                j = logged.payload
                k, off = tp_key(j.source_topic, j.source_partition), j.source_offset
            if off + 1 > emitted.get(k, 0):
                emitted[k] = off + 1

        await self._scan((topics.VIEW_RESOURCES, topics.VIEW_MEMBERSHIP), on_view)
        await self._scan((topics.DEADLETTER, topics.REJECTIONS), on_effect)
        self.published = pub.PublishedViews(resources, membership, owners)
        self.emitted = {k: v for k, v in emitted.items() if k.rpartition("/")[0] in self.cfg.source_topics}
        adopted = pub.ViewPlan(
            [(rk, b"", v) for rk, v in resources.items()], [(n, b"", m) for n, m in membership.items()], [], owners
        )
        self.store.commit(plans=[adopted], emitted=dict(self.emitted), snapshot_marks=self.snapshot_marks)
        log.info(
            "fresh data dir: adopted %d resources and %d memberships from the view topics; dead letters and "
            "rejections already recorded up to %s",
            len(resources),
            len(membership),
            _fmt_offsets(self.emitted) if self.emitted else "nothing",
        )

    # ------------------------------------------------ main loop

    async def loop(self) -> None:
        stop_wait = asyncio.ensure_future(self._stop.wait())
        try:
            while not self.stopping:
                records = await self._fetch(stop_wait)  # positions noted too
                if self.stopping and not records:
                    break
                if records:
                    await self.process(records, in_merge_order=True)
                elif self._merged.held:
                    pass  # records wait for a partition behind them: the next fetch is from it
                elif self._group is not None and self._reconcile_pending and self._ready_to_render():
                    await self._reconcile()  # shards gained while idle: take them over now
                elif self._snapshot_due():
                    await self._idle_snapshot()
                if self.cfg.group is not None and self._group is None and self._ready_to_render():
                    await self._join_group()
                if self._group_task is not None and self._group_task.done():
                    # publishing on without a membership would write shards that others own by now
                    raise ProjectorError(f"left the group unexpectedly: {self._group_task.exception()!r}")
                self._note_lag()
                self._manage_gc(idle=not records and not self._merged.held)
        except _Stopping:
            log.warning("stopped while the broker was failing; the unfinished batch is redone on the next start")
        finally:
            stop_wait.cancel()
            if self.cfg.gc_freeze:
                gc.unfreeze()

    def _manage_gc(self, idle: bool) -> None:
        if not self.cfg.gc_freeze:
            return
        since = time.monotonic() - self._full_gc_mono
        interval = self.cfg.full_gc_interval_s
        if interval > 0 and ((idle and since >= interval) or since >= 5 * interval):
            t0 = time.perf_counter()
            gc.unfreeze()
            found = gc.collect()
            self._full_gc_mono = time.monotonic()
            # INFO: it stalls the projector (see ProjectorConfig), and garbage found says how often it is worth it
            log.info("full GC: %d unreachable objects, %.0f ms", found, (time.perf_counter() - t0) * 1000)
        gc.freeze()

    async def _fetch(self, stop_wait: asyncio.Future) -> list:
        """The next records to fold, in merge order (``projector.merged_fetch``; positions noted too); [] when
        stopping or nothing is ready."""
        assert self._merged is not None
        records = await self._merged.fetch(int(self.cfg.poll_timeout_s * 1000), self.cfg.max_batch, stop_wait)
        self._fetched_at = self._merged.fetched_at
        return records

    def _note_lag(self) -> None:
        if self._merged.behind():
            self.caught_up.clear()
            self._was_caught_up = False
        elif not self._was_caught_up:
            self._was_caught_up = True
            self.caught_up.set()
            log.info(
                "caught up at %s: %d events folded, %d dead-lettered, %d resources / %d nodes published (%.1fs since start)",
                _fmt_offsets(self.next_folded),
                self.counters["events"],
                self.counters["dead_lettered"],
                len(self.published.resources),
                len(self.published.membership),
                time.monotonic() - self._started_mono,
            )

    # ------------------------------------------------ one batch

    async def process(self, records: list, *, in_merge_order: bool = False) -> BatchResult:
        """Fold, render, publish and commit one batch of consumer records (any topic/partition mix; the loop's
        come from the merge gate already ``in_merge_order``)."""
        res = BatchResult(records=len(records), fetched_at=self._fetched_at)
        t0 = time.perf_counter()
        fresh = []
        for r in records:
            if r.offset < self.next_folded.get(tp_key(r.topic, r.partition), 0):
                res.skipped += 1
            else:
                fresh.append(r)
        if not fresh:
            return res
        # merge the topics by broker time, ties as replay breaks them (``topics.merge_order``): the decisions
        # that read another instance's key (a run-time subscription's "unknown_service") come out the same
        if not in_merge_order:
            order = topics.merge_order
            fresh.sort(key=lambda r: order(r.timestamp, r.topic, r.partition, r.offset))

        decoded: list[tuple[Any, Logged]] = []
        dead: list[tuple[Any, BaseException, str]] = []
        for r in fresh:
            got = try_decode(r, self._decoder)  # total: an event, or why not (events.undecodable)
            if isinstance(got, EventValidationError):
                dead.append((r, got, "decode"))
            else:
                decoded.append((r, got))
        t1 = time.perf_counter()

        if self._identities is not None:
            # every identity fact logged up to the newest event of the batch is folded before verifying
            await self._cover_identities(max((lg.timestamp_ms for _r, lg in decoded), default=None))
            if self.cfg.verify_workers > 0:
                if self._verify_pool is None:
                    from identity.verifier import verification_pool

                    self._verify_pool = verification_pool(self.cfg.verify_workers)
                # the signatures are checked in the pool's process while this thread folds (same answers)
                try:
                    self.verifier.verify_ahead([lg for _r, lg in decoded], self._verify_pool)
                except BrokenExecutor as exc:  # a worker died: this batch is checked in the fold, the next in a new pool
                    log.warning("the signature-checking worker failed (%r); starting another", exc)
                    self._verify_pool.shutdown(wait=False, cancel_futures=True)
                    self._verify_pool = None
        if self.verifier is not None and self._signer is not None and self.verifier.record_vouches is None:
            self.verifier.record_vouches = []  # the signatures this batch's fold finds good, attested below
        before = self.state
        new_state, rejections, fold_dead = self._fold([lg for _r, lg in decoded], decoded)
        dead += fold_dead
        self.state = new_state
        if self.verifier is not None and self.verifier.record_vouches:
            await self._attest(fresh, decoded)
        t2 = time.perf_counter()

        # offsets and counters of the in-memory state
        max_ts = self.counters.get("max_timestamp_ms")
        for r in fresh:
            k = tp_key(r.topic, r.partition)
            if r.offset + 1 > self.next_folded.get(k, 0):
                self.next_folded[k] = r.offset + 1
            if r.timestamp is not None and (max_ts is None or r.timestamp > max_ts):
                max_ts = r.timestamp
        self.counters["max_timestamp_ms"] = max_ts
        self.counters["events"] += len(fresh) - len(dead)
        self.counters["dead_lettered"] += len(dead)
        self._checkpoint_events += len(fresh)
        res.folded = len(fresh) - len(dead)

        # side effects only for records beyond what was already emitted before a restart
        def new_effect(topic: str, partition: int, offset: int) -> bool:
            return offset >= self.emitted.get(tp_key(topic, partition), 0)

        beyond = [r for r in fresh if new_effect(r.topic, r.partition, r.offset)]
        dead_out = [d for d in dead if new_effect(d[0].topic, d[0].partition, d[0].offset)]
        rej_out = [j for j in rejections if new_effect(j.source_topic, j.source_partition, j.source_offset)]
        if not self._records_decisions():
            dead_out, rej_out = [], []  # another worker (the owner of shard 0) records them
        async with self._batch_lock:
            return await self._render_publish_commit(res, fresh, beyond, dead, dead_out, rejections, rej_out,
                                                     before, new_state, (t0, t1, t2))

    async def _render_publish_commit(self, res: BatchResult, fresh: list, beyond: list, dead: list, dead_out: list,
                                     rejections: list, rej_out: list, before: MeshState, new_state: MeshState,
                                     marks: tuple[float, float, float]) -> BatchResult:
        t0, t1, t2 = marks
        plan = pub.EMPTY_PLAN
        changed = not same_state(before, new_state)
        if (changed or self._reconcile_pending) and self._ready_to_render() and not self._paused:
            plan = self._render_plan()
            res.rendered = True
        elif changed or self._paused:
            # refolding already-published history, the catch-up after start, or between a revocation and an
            # assignment: render once caught up (or assigned)
            self._reconcile_pending = True
        if res.rendered and plan.empty:
            self._took_over(plan)  # gained shards with nothing in them
        t3 = time.perf_counter()

        if beyond or not plan.empty:
            snapshot = self._snapshot_due()
            # until the commit below, the in-memory state holds records whose side effects are not
            # recorded as published: it must not be checkpointed (close() checks this)
            self._unpublished = True
            # the newest event of the batch: gateways measure append-to-ACK from it (meshlog-source-ms)
            source_ms = max((r.timestamp for r in fresh if r.timestamp is not None), default=None)
            await self._publish_with_retry(dead_out, rej_out, plan, source_ms)
            t4 = time.perf_counter()
            res.newest_event_ms, res.published_at = source_ms, time.time()
            self.published.apply(plan)
            self._took_over(plan)
            for k, v in self.next_folded.items():
                if v > self.emitted.get(k, 0):
                    self.emitted[k] = v
            checkpoint = None
            if snapshot or self._checkpoint_due():
                state_bytes = state_to_bytes(self.state, self._state_rows)
                checkpoint = (state_bytes, dict(self.next_folded), dict(self.counters))
                if snapshot:
                    await self._send_snapshot(state_bytes)
            self.store.commit(plans=[plan], emitted=dict(self.emitted), snapshot_marks=self.snapshot_marks, checkpoint=checkpoint)
            self._unpublished = False
            if checkpoint is not None:
                self._checkpoint_done()
            t5 = time.perf_counter()
            res.timings_ms.update(publish=(t4 - t3) * 1000, commit=(t5 - t4) * 1000)
        elif self._checkpoint_due():
            self._write_checkpoint()

        res.dead_lettered, res.rejected, res.plan = len(dead), len(rejections), plan
        res.timings_ms.update(decode=(t1 - t0) * 1000, fold=(t2 - t1) * 1000, render=(t3 - t2) * 1000)
        self.totals["batches"] += 1
        self._log_batch(res, dead_out, rej_out)
        return res

    async def _attest(self, fresh: list, decoded: list[tuple[Any, Logged]]) -> None:
        """Append the runs of records whose signatures this batch's fold found good, signed
        (``projector.attestations``): replay takes them instead of checking each again. ``fresh``: the batch's
        records in the order taken in; ``decoded``: (record, event) of those decoded. Not waited for: a lost one
        costs replay the full check, nothing else."""
        from projector.attestations import KEY, MAX_RUNS, encode_attestation, runs_of

        good, self.verifier.record_vouches = set(self.verifier.record_vouches), []
        if not self._records_decisions():
            return  # another worker (the owner of shard 0) folds the same events and attests them
        digest_of = {id(r): lg.envelope.received_digest for r, lg in decoded}
        runs = runs_of((r.topic, r.partition, r.offset, r.value, digest_of.get(id(r)) in good) for r in fresh)
        signer = self._signer.current()
        for i in range(0, len(runs), MAX_RUNS):
            value = encode_attestation(runs[i: i + MAX_RUNS], signer)
            try:
                fut = await self.producer.send(topics.ATTESTATIONS, value=value, key=KEY)
            except (KafkaError, asyncio.TimeoutError) as exc:
                self.totals["attestations_lost"] += 1
                log.debug("attestation not appended: %r", exc)
                continue
            fut.add_done_callback(self._attested)

    def _attested(self, fut: asyncio.Future) -> None:
        if fut.cancelled() or fut.exception() is not None:
            self.totals["attestations_lost"] += 1
            log.debug("attestation not appended: %r", None if fut.cancelled() else fut.exception())
        else:
            self.totals["attestations"] += 1

    async def _cover_identities(self, ts_ms: int | None) -> None:
        """``IdentityFeed.cover``, retried through a broker outage (verifying with a partial registry would
        refuse honest events for good)."""
        delay = 0.5
        while True:
            try:
                await self._identities.cover(ts_ms)
                return
            except (KafkaError, asyncio.TimeoutError, OSError) as exc:
                if self.stopping:
                    raise _Stopping() from exc
                self._outage.failure(f"reading the identities failed ({type(exc).__name__}: {exc}); "
                                     f"retrying in {delay:.1f}s")
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                except asyncio.TimeoutError:
                    pass
                delay = min(delay * 2, 10.0)

    def _fold(
        self, logged: list[Logged], decoded: list[tuple[Any, Logged]]
    ) -> tuple[MeshState, list, list[tuple[Any, BaseException, str]]]:
        try:
            state, rejections = fold_many(self.state, logged, self.verifier)
            return state, list(rejections), []
        except Exception:  # noqa: BLE001 - a fold bug must not stop the mesh: isolate the event
            log.exception("fold_many raised; refolding the batch one event at a time")
        state, rejections, dead = self.state, [], []
        for record, lg in decoded:
            try:
                state, decisions = fold_with_decisions(state, lg, self.verifier)
                rejections.extend(decisions)
            except Exception as exc:  # noqa: BLE001
                log.error("fold failed for %s/%d/%d: %r", record.topic, record.partition, record.offset, exc)
                dead.append((record, exc, "fold"))
        return state, rejections, dead

    def _render_plan(self) -> pub.ViewPlan:
        """Render (incrementally from the last render, if any) and plan what to publish.

        The first render of a process is from scratch and diffed in full
        against the stored published versions (the reconcile); later ones
        re-render only what the fold touched and plan from the render's
        change sets.
        """
        previous = self._rendered
        # the render takes the previous one's maps over (``consume_previous``: no copy of the mesh per batch); if
        # it raises, the next render is from scratch, diffed in full against what was published
        self._rendered = None
        # a worker of a group renders its own nodes only (the scope changes with its shards: a gained node is
        # rendered whole, a lost one leaves the render); alone, it owns everything and renders it all. Endpoints
        # are rendered as the view topic names them, at the latest (``endpoint_versions=False``): an endpoint
        # change moves no membership, and a worker names only its own shards' endpoints
        rendered = render_all(self.state, previous=previous, scope=self.ownership, consume_previous=True,
                              endpoint_versions=False)
        incremental = previous is not None and hasattr(rendered, "changed_nodes")
        self._rendered = rendered
        self._reconcile_pending = False
        problems = tuple(getattr(rendered, "problems", ()) or ())
        if problems != self._problems:
            for p in sorted(set(problems) - set(self._problems)):
                log.info("render: %s", p)
            self._problems = problems
        return pub.plan_for_shards(rendered, self.published, self.ownership, self._gained, incremental)

    # ------------------------------------------------ sharing the work (projector run --group)

    def _records_decisions(self) -> bool:
        """Whether this worker appends dead letters, rejections and snapshots (alone, or owning shard 0)."""
        return self.ownership.everything or 0 in self.ownership.shards

    def _took_over(self, plan: pub.ViewPlan) -> None:
        if self._gained:
            log.info("took over shards %s: %s", sorted(self._gained), plan.summary())
            self._gained = frozenset()
            self.shards_changed.set()

    async def _join_group(self) -> None:
        from events.shard_group import ThreadedShardGroup

        partitions = len(await self.producer.partitions_for(topics.PROJECTOR_SHARDS) or ())
        if partitions < 1:
            raise ProjectorError(f"topic {topics.PROJECTOR_SHARDS} is missing: run `meshlog topics ensure`")
        self.ownership = Ownership(frozenset(), partitions)
        # its own thread: a render holds this loop for seconds on a loaded host, longer than the session timeout
        self._group = ThreadedShardGroup(
            self.cfg.bootstrap, topics.PROJECTOR_SHARDS, self.cfg.group, client_id=f"projector-{self.cfg.worker_id}",
            on_assigned=self._shards_assigned, on_revoked=self._shards_revoked, outage=self._outage,
            timeout_s=self.cfg.send_timeout_s, session_timeout_ms=int(self.cfg.session_timeout_s * 1000),
            heartbeat_interval_ms=int(self.cfg.session_timeout_s * 1000 / 3),
        )
        await self._group.start()
        self._group_task = asyncio.create_task(self._group.poll_forever(), name="projector group")
        log.info("worker %s caught up: joining group %s on %s (%d shards)", self.cfg.worker_id, self.cfg.group,
                 topics.PROJECTOR_SHARDS, partitions)

    async def _shards_revoked(self, shards: set[int]) -> None:
        # the batch being published finishes first (the new owner starts from its own render after us)
        async with self._batch_lock:
            self._paused = True

    async def _shards_assigned(self, shards: set[int]) -> None:
        async with self._batch_lock:
            new = frozenset(shards)
            old = self.ownership.shards or frozenset()
            self._gained = (self._gained | (new - old)) & new
            self.ownership = self.ownership.only(new)
            self._paused = False
            self._reconcile_pending = True  # render at once: publish the gap for kept shards, take over gained
            log.info("worker %s: shards %s of %d (gained %s, lost %s)", self.cfg.worker_id, sorted(new),
                     self.ownership.partitions, sorted(new - old), sorted(old - new))

    async def _reconcile(self) -> None:
        """Render the stored state and publish whatever differs from what was published (normally nothing)."""
        async with self._batch_lock:
            if self._paused:
                return
            plan = self._render_plan()
            if plan.empty:
                self._took_over(plan)
                log.info("views are up to date with the stored state: nothing to republish")
                return
            log.info("reconciling views with the stored state: %s", plan.summary())
            await self._publish_with_retry([], [], plan)
            self.published.apply(plan)
            self._took_over(plan)
            self.store.commit(plans=[plan])

    # ------------------------------------------------ side effects

    async def _publish_with_retry(self, dead: list, rejections: list, plan: pub.ViewPlan,
                                  source_ms: int | None = None) -> None:
        first = []
        for record, exc, stage in dead:
            key, value = dead_letter_record(record, exc, stage=stage)
            first.append((topics.DEADLETTER, key, value))
        envs = [new_event(j, producer=PRODUCER_IDENTITY) for j in rejections]
        if self._signer is not None:  # the projector's own decisions are signed like every other fact
            envs = [self._signer.sign(env) for env in envs]
        first += [(topics.REJECTIONS, env.key.encode(), encode(env)) for env in envs]
        # a retry resends only what was not acknowledged, and a record the broker refuses for good is set
        # aside (below) instead of being retried forever: it must not stop the projector
        view_headers = pub.source_headers(source_ms)
        sender = pub.OrderedSender(self.producer, [first, *pub.plan_records(plan)], self.cfg.send_timeout_s,
                                   phase_headers=[None, view_headers, view_headers, view_headers])
        delay = 0.5
        while True:
            try:
                await sender.run()
                break
            except (KafkaError, asyncio.TimeoutError, OSError) as exc:
                if self.stopping:
                    raise _Stopping() from exc
                self._outage.failure(f"publishing failed ({type(exc).__name__}: {exc}); retrying in {delay:.1f}s")
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                except asyncio.TimeoutError:
                    pass
                delay = min(delay * 2, 10.0)
        self.totals["published_records"] += sum(sender.acked[1:])
        self.totals["dead_letters"] += len(dead)
        self.totals["rejections"] += len(envs)
        self.totals["undeliverable"] += len(sender.undeliverable)
        refused = {(record[0], record[1]) for record, _exc in sender.undeliverable}
        for (topic, key, value, *_headers), exc in sender.undeliverable:
            log.error(
                "the broker refused a %d-byte record for %s (key %s) for good: %s; it is skipped and projecting "
                "goes on (%d such records since start)",
                len(value or b""), topic, printable(bytes(key or b"").decode(errors="replace"), 200),
                printable(f"{type(exc).__name__}: {exc}", 300), self.totals["undeliverable"],
            )
        for (record, exc, stage) in dead:
            if (topics.DEADLETTER, dead_letter_key(record.topic, record.partition, record.offset)) in refused:
                continue  # said above: its dead letter did not make it either
            log.warning(
                "dead-lettered %s/%d/%d (%s): %s", record.topic, record.partition, record.offset, stage, printable(exc, REASON_MAX)
            )
        for env in envs:
            j = env.payload
            log.info(
                "rejected %s (%s/%d/%d): %s",
                j.summary(), j.source_topic, j.source_partition, j.source_offset, j.reason,
            )

    def _snapshot_due(self) -> bool:
        if not self._records_decisions() or time.monotonic() < self._snapshot_retry_at:
            return False
        since = self.counters["events"] + self.counters["dead_lettered"] - self.snapshot_marks.get("events", 0)
        if since <= 0:
            return False
        if since >= self.cfg.snapshot_events:
            return True
        last = self.snapshot_marks.get("at")
        if last is None:
            # the first snapshot of a data dir waits for the interval from start
            return time.monotonic() - self._started_mono >= self.cfg.snapshot_interval_s
        return time.time() - last >= self.cfg.snapshot_interval_s

    async def _send_snapshot(self, state_bytes: bytes) -> None:
        value = encode_snapshot(
            state_bytes,
            next_offsets=self.next_folded,
            max_timestamp_ms=self.counters["max_timestamp_ms"],
            events=self.counters["events"],
            fold_order=self.counters.get("fold_order"),
            dead_lettered=self.counters["dead_lettered"],
            signer=self._signer.current() if self._signer is not None else None,  # replay verifies it
        )
        try:
            fut = await self.producer.send(topics.SNAPSHOTS, value=value, key=SNAPSHOT_KEY)
            meta = await asyncio.wait_for(fut, self.cfg.send_timeout_s)
        except (KafkaError, asyncio.TimeoutError) as exc:
            # not fatal: the next batch tries again (replay just starts from an older snapshot)
            log.error(
                "snapshot of %d bytes not appended (%s: %s); next attempt in %.0fs",
                len(value), type(exc).__name__, exc, SNAPSHOT_RETRY_S,
            )
            self._snapshot_retry_at = time.monotonic() + SNAPSHOT_RETRY_S
            return
        self.snapshot_marks = {"events": self.counters["events"] + self.counters["dead_lettered"], "at": time.time()}
        self.totals["snapshots"] += 1
        log.info(
            "snapshot appended at %s/%d/%d: %d events, next offsets %s, %d bytes (state %d bytes, zlib)",
            meta.topic, meta.partition, meta.offset, self.counters["events"], _fmt_offsets(self.next_folded),
            len(value), len(state_bytes),
        )

    async def _idle_snapshot(self) -> None:
        state_bytes = state_to_bytes(self.state, self._state_rows)
        await self._send_snapshot(state_bytes)
        self.store.commit(
            emitted=dict(self.emitted),
            snapshot_marks=self.snapshot_marks,
            checkpoint=(state_bytes, dict(self.next_folded), dict(self.counters)),
        )
        self._checkpoint_done()

    def _checkpoint_due(self) -> bool:
        if not self._checkpoint_events:
            return False
        return (
            self._checkpoint_events >= self.cfg.checkpoint_events
            or time.monotonic() - self._checkpoint_mono >= self.cfg.checkpoint_interval_s
        )

    def _write_checkpoint(self) -> None:
        self.store.commit(checkpoint=(state_to_bytes(self.state, self._state_rows), dict(self.next_folded), dict(self.counters)))
        self._checkpoint_done()

    def _checkpoint_done(self) -> None:
        self._checkpoint_events = 0
        self._checkpoint_mono = time.monotonic()

    def _caught_up_to(self, offsets: dict[str, int]) -> bool:
        return all(self.next_folded.get(k, 0) >= v for k, v in offsets.items())

    def _ready_to_render(self) -> bool:
        """Past everything already published, and past the log end seen at start.

        Rendering is held back while refolding history (it was published) and
        during the catch-up after a start: intermediate states of a backlog are
        older than what the view topics may already show (a fresh data dir
        adopts them), and publishing them would make proxies travel back in
        time. One render at the end of the catch-up publishes the difference.
        """
        if not self._caught_up_to(self.emitted):
            return False
        # transaction markers and aborted records occupy offsets no record is folded at: the
        # consumer's position (past them) counts as well as the next offset to fold
        return all(
            max(self.next_folded.get(k, 0), self._positions.get(k, 0)) >= v for k, v in self._render_after.items()
        )

    def _log_batch(self, res: BatchResult, dead_out: list, rej_out: list) -> None:
        if not log.isEnabledFor(logging.DEBUG):
            return
        t = res.timings_ms
        log.debug(
            "batch %d: %d records (%d skipped), %d folded, %d dead-lettered, %d rejected; %s; "
            "decode %.1fms fold %.1fms render %.1fms publish %.1fms commit %.1fms; next offsets %s",
            self.totals["batches"], res.records, res.skipped, res.folded, len(dead_out), len(rej_out),
            res.plan.summary() if res.rendered else "not rendered",
            t.get("decode", 0), t.get("fold", 0), t.get("render", 0), t.get("publish", 0), t.get("commit", 0),
            _fmt_offsets(self.next_folded),
        )
        if res.newest_event_ms is not None and res.fetched_at is not None and res.published_at is not None:
            # where an event's time went before the gateways: log -> this fetch -> views acknowledged
            log.debug("batch %d timeline: newest event logged at %d ms, fetched %.1f ms after it, views "
                      "published %.1f ms after the fetch", self.totals["batches"], res.newest_event_ms,
                      res.fetched_at * 1000 - res.newest_event_ms, (res.published_at - res.fetched_at) * 1000)


def _fmt_offsets(offsets: dict[str, int]) -> str:
    if not offsets:
        return "{}"
    return "{" + ", ".join(f"{k}@{v}" for k, v in sorted(offsets.items())) + "}"


__all__ = [
    "ProjectorConfig",
    "ProjectorError",
    "ProjectorService",
    "Store",
    "SOURCE_TOPICS",
    "parse_tp_key",
]
