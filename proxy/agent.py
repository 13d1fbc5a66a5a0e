"""The sidecar agent: one Envoy per app instance, supervised, registered, cached.

How it runs (one asyncio loop; Envoy is a child process):

Boot. The agent probes every gateway (``grpc.health.v1.Health/Check``, 1 s)
and asks the SERVING ones whether they hold this node's view (a one-shot
delta LDS wildcard request as this node, 2 s).
- A gateway serves this node's listeners: Envoy starts in **ADS mode**
  (delta ADS to all gateways, ``proxy.bootstrap``).
- Otherwise, if a cache exists: Envoy starts in **cache mode** from a static
  bootstrap built from the last configuration Envoy accepted
  (``proxy.config_cache``): traffic flows with no control plane, and also
  across an ordinary restart, until the re-registration is folded (the drain
  deregistered the instance).
- Otherwise ADS mode (first start: the view appears once the registration is
  folded; Envoy keeps retrying unreachable gateways itself).

mTLS. Unless ``--insecure``, Envoy dials the gateways over mTLS with the
workload certificate handed over by file-watched SDS (``proxy.sds``): the
agent writes the secrets under ``<workdir>/sds`` before the first Envoy
starts and rewrites them (atomic rename) whenever the certificate files are
renewed, so Envoy uses the new certificate without a restart. The agent's
own probes of the gateways present the same certificate. With ``--ca-url``
the agent renews the certificate itself at ``meshlog ca serve`` at 2/3 of
its life, retried with backoff (``proxy.renewal``), and hands the new pair to
Envoy the same way.

Registration. Once Envoy's admin answers, ``InstanceRegistered`` is appended
(retried with backoff 1 s .. 30 s until acknowledged).

Supervision. If Envoy exits on its own it is restarted (the mode chosen again
as at boot) after an exponential backoff, 0.5 s doubling to 30 s; the backoff
resets once an Envoy has stayed up 10 s. Every start, exit and switch is
logged and counted in the status.

Cache. In ADS mode the agent reads ``/config_dump?include_eds`` every second;
when the resources Envoy holds change (compared by content: Envoy reports no
version for delta EDS assignments) and the configuration is servable (a
listener, every RDS route present) it is written atomically to
``<cache-dir>/envoy-config.json``.

Back to ADS. In cache mode the agent probes the gateways every second. When
one is SERVING *and* holds this node's listeners (same probes as at boot: a
gateway with no view of the node would leave the proxy empty), it starts a
second Envoy in ADS mode as a **hot restart** of the first (same
``--base-id``, next ``--restart-epoch``). The new process initialises
completely (initial CDS/EDS/LDS/RDS from the gateway) before it takes the
listen sockets from the cache-mode Envoy, which then drains (2 s) and is told
to exit (4 s): no connection is refused during the switch. If the new Envoy
does not become LIVE within 45 s it is killed and the cache-mode Envoy keeps
serving (retried with backoff). Should the ADS Envoy still come up holding no
listener (the view vanished between probe and switch), the agent
hot-restarts back into cache mode and retries with backoff. With
``--no-hot-restart`` the switch is a cold restart: connections are refused
for the few hundred ms between the two processes.

Subscriptions. With ``--api-port`` the app can subscribe to (and
unsubscribe from) services at run time through ``proxy.subscriptions`` on
127.0.0.1; each is an event in the log, answered once Envoy holds it.

Drain (SIGTERM or SIGINT). Status ``draining``, ``/healthz`` 503;
``InstanceHealthChanged(draining)`` appended (so peers' Envoys stop choosing
this instance); Envoy keeps serving for ``--drain-seconds``;
``InstanceDeregistered`` appended; Envoy stopped; exit 0. Bounded:
drain_seconds + 2 x append_timeout + 10 s at most. A second signal skips the
rest of the wait.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from collections import deque
from datetime import datetime, timezone

import grpc

from events.files import write_file_atomic

from proxy import config_cache, local_http, probe, registration, renewal, sds, subscriptions
from proxy.bootstrap import envoy_bootstrap
from proxy.envoy_process import EnvoyProcess, dynamic_names, remove_shared_memory
from proxy.options import SidecarOptions

log = logging.getLogger("meshlog.sidecar")

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 10.0
SWITCH_LIVE_TIMEOUT_S = 45.0
MAX_EPOCH = 9  # base_id*10 + epoch names Envoy's shared memory: stay inside our own ten


def backoff_delay(consecutive_failures: int) -> float:
    """0.5, 1, 2, 4, ... 30 seconds."""
    if consecutive_failures <= 0:
        return 0.0
    return min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (consecutive_failures - 1))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class SidecarAgent:
    def __init__(self, opts: SidecarOptions) -> None:
        self.opts = opts
        self.cache_path = opts.cache_dir / config_cache.CACHE_FILE
        self.envoy: EnvoyProcess | None = None
        self.mode = "starting"  # starting | ads | cache | restarting | draining | stopped
        self.restarts = 0
        self.switches = 0
        self.registered = False
        self.cache_saved_at: str | None = None
        self.cache_loaded_from: str | None = None
        self.history: deque[str] = deque(maxlen=30)
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()
        self._lock = asyncio.Lock()  # held while Envoy is being (re)started or switched
        self._quick_failures = 0
        self._started_mono = 0.0
        self._saved_key: str | None = None
        self._unsaved_reason: str | None = None
        self._parents: set[asyncio.Task] = set()
        self._owned: list[EnvoyProcess] = []  # every Envoy this agent started that may still run
        self.envoy_state: str | None = None  # the current Envoy's own /server_info state (LIVE when serving)
        self._state_checked = 0.0
        self._status_server: asyncio.AbstractServer | None = None
        self.status_port: int | None = None
        self.sds_dir = opts.workdir / sds.SDS_DIR  # Envoy runs in opts.workdir: rendered configs name sds/...
        self.secrets: sds.SecretSync | None = None  # set at start with --tls-*
        self.renewer: renewal.CertificateRenewer | None = None  # set at start with --ca-url
        self._api_server: asyncio.AbstractServer | None = None
        self.api_port: int | None = None

    # ------------------------------------------------------------ reporting

    def _event(self, level: int, message: str, *args) -> None:
        text = message % args if args else message
        log.log(level, text)
        self.history.append(f"{_now()} {text}")
        self._write_status()

    def status(self) -> dict:
        envoy = self.envoy
        return {
            "node_id": self.opts.node_id,
            "service": self.opts.service,
            "instance_id": self.opts.instance_id,
            "pid": os.getpid(),
            "mode": self.mode,
            "envoy": None if envoy is None else {
                "pid": envoy.pid, "alive": envoy.alive(), "epoch": envoy.restart_epoch, "state": self.envoy_state,
                "admin_port": self.opts.admin_port, "base_id": self.opts.base_id,
                "log": str(envoy.log_path),
            },
            "ports": {"app": self.opts.app_port, "inbound": self.opts.inbound_port,
                      "outbound": self.opts.outbound_port, "admin": self.opts.admin_port,
                      "status": self.status_port, "api": self.api_port},
            "gateways": list(self.opts.gateways),
            "registered": self.registered,
            "restarts": self.restarts,
            "switches": self.switches,
            "cache": {"path": str(self.cache_path), "saved_at": self.cache_saved_at,
                      "serving_from": self.cache_loaded_from},
            "updated_at": _now(),
            "certificate": None if self.renewer is None else self.renewer.status(),
            "history": list(self.history),
        }

    def _write_status(self) -> None:
        path = self.opts.status_file
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_file_atomic(path, json.dumps(self.status(), indent=1).encode())
        except OSError as exc:
            log.warning("cannot write status file %s: %s", path, exc)

    async def _serve_status(self) -> None:
        async def handle(_method: str, path: str) -> tuple[int, str, bytes]:
            if path.startswith("/status"):
                return 200, "text/plain", json.dumps(self.status(), indent=1).encode()
            if path.startswith("/healthz"):
                ok = (self.mode in ("ads", "cache") and self.envoy is not None and self.envoy.alive()
                      and self.envoy_state == "LIVE")
                return (200, "text/plain", f"ok {self.mode}\n".encode()) if ok else (503, "text/plain",
                                                                                   f"{self.mode}\n".encode())
            return 404, "text/plain", b"GET /status or /healthz\n"

        self._status_server = await local_http.serve(handle, self.opts.status_port)
        self.status_port = self._status_server.sockets[0].getsockname()[1]

    async def _serve_api(self) -> None:
        """The local subscription API (``proxy.subscriptions``) on 127.0.0.1."""
        service = subscriptions.SubscriptionService(
            registration=self.opts.registration, bootstrap=self.opts.bootstrap, envoy=lambda: self.envoy,
            registered=lambda: self.registered, timeout_s=self.opts.subscribe_timeout,
            append_timeout_s=self.opts.append_timeout)
        self._api_server = await subscriptions.serve(service, self.opts.api_port)
        self.api_port = self._api_server.sockets[0].getsockname()[1]

    # ------------------------------------------------------------ Envoy

    def _ads_bootstrap(self) -> dict:
        upstream_tls = None
        if self.secrets is not None:
            upstream_tls = sds.upstream_tls_context(self.sds_dir, self.secrets.current.identity.domain)
        return envoy_bootstrap(node_id=self.opts.node_id, node_cluster=self.opts.node_cluster,
                               gateways=list(self.opts.gateways), admin_port=self.opts.admin_port,
                               locality_zone=self.opts.locality_zone, upstream_tls=upstream_tls)

    def _probe_credentials(self) -> grpc.ChannelCredentials | None:
        if self.secrets is None:
            return None
        m = self.secrets.current
        return grpc.ssl_channel_credentials(m.ca_pem, m.key_pem, m.cert_pem)

    def _launch(self, bootstrap: dict, mode: str, epoch: int) -> EnvoyProcess:
        """Spawn an Envoy (from the loop thread: PDEATHSIG is tied to the forking thread) and own it."""
        envoy = EnvoyProcess(
            bootstrap, admin_port=self.opts.admin_port, base_id=self.opts.base_id, workdir=str(self.opts.workdir),
            log_level=self.opts.envoy_log_level, hot_restart=self.opts.hot_restart, restart_epoch=epoch,
            concurrency=self.opts.concurrency, config_name=f"envoy-{mode}-epoch{epoch}.json",
        )
        envoy.launch()
        self._owned = [e for e in self._owned if e.alive()] + [envoy]
        return envoy

    async def _kill_leftovers(self) -> None:
        """Before a cold start: no Envoy of ours may hold the admin port, the domain sockets or the listeners."""
        for envoy in [e for e in self._owned if e.alive()]:
            log.warning("stopping leftover Envoy pid %d (epoch %d) before a cold start", envoy.pid, envoy.restart_epoch)
            await asyncio.to_thread(envoy.stop, 3)
        self._owned = []

    async def _serving_this_node(self) -> tuple[list[str], list[str]]:
        """(gateways answering SERVING, those of them that would give this node listeners now)."""
        creds = self._probe_credentials()
        serving = await probe.serving_gateways(self.opts.gateways, credentials=creds)
        counts = await asyncio.gather(*(probe.listeners_served(gw, self.opts.node_id, self.opts.node_cluster,
                                                               credentials=creds)
                                        for gw in serving))
        return serving, [gw for gw, n in zip(serving, counts) if n]

    async def _choose(self) -> tuple[str, dict, str]:
        """(mode, bootstrap, why): ADS if a gateway serves this node's view, else the cache if any, else ADS."""
        serving, with_view = await self._serving_this_node()
        if with_view:
            return "ads", self._ads_bootstrap(), f"gateway {', '.join(with_view)} serving this node's configuration"
        cached = self._cache_bootstrap(
            "no gateway answered" if not serving else
            f"gateway {', '.join(serving)} has no view of this node yet")
        if isinstance(cached, tuple):
            bootstrap, why = cached
            return "cache", bootstrap, why
        if serving:
            return "ads", self._ads_bootstrap(), f"gateway {', '.join(serving)} serving ({cached})"
        return "ads", self._ads_bootstrap(), f"no gateway answered and {cached}; Envoy will keep retrying the gateways"

    def _cache_bootstrap(self, context: str = "no gateway answered") -> tuple[dict, str] | str:
        doc, why = config_cache.load(self.cache_path)
        if doc is None:
            return why
        if doc.get("node_id") != self.opts.node_id:
            return f"the cache at {self.cache_path} belongs to node {doc.get('node_id')!r}"
        try:
            bootstrap, problems = config_cache.static_bootstrap(
                doc, node_id=self.opts.node_id, node_cluster=self.opts.node_cluster,
                admin_port=self.opts.admin_port, locality_zone=self.opts.locality_zone)
        except config_cache.CacheError as exc:
            return str(exc)
        for problem in problems:
            log.warning("cache: %s", problem)
        self.cache_loaded_from = doc.get("saved_at")
        counts = ", ".join(f"{len(doc[k])} {k}" for k in config_cache.KINDS)
        return bootstrap, f"{context}; serving the configuration cached at {doc.get('saved_at')} ({counts})"

    async def _admin_up(self, envoy: EnvoyProcess, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and envoy.alive():
            if await asyncio.to_thread(envoy.own_state, 1.0) is not None:
                return True
            await asyncio.sleep(0.1)
        return False

    async def _live(self, envoy: EnvoyProcess, timeout: float) -> bool:
        """True once *this* process (its epoch, not a hot-restart parent) answers admin as LIVE."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and envoy.alive() and not self._stop.is_set():
            if await asyncio.to_thread(envoy.own_state, 1.0) == "LIVE":
                return True
            await asyncio.sleep(0.1)
        return False

    async def _start_fresh(self, reason: str) -> None:
        """A cold start (no Envoy of ours is running): epoch 0, mode chosen as at boot."""
        mode, bootstrap, why = await self._choose()
        await self._kill_leftovers()
        envoy = self._launch(bootstrap, mode, 0)
        self.envoy, self.mode, self.envoy_state = envoy, mode, None
        if mode == "ads":
            self.cache_loaded_from = None
        self._started_mono = time.monotonic()
        self._event(logging.INFO, "%s: Envoy pid %d started in %s mode (%s)", reason, envoy.pid, mode.upper(), why)
        if not await self._admin_up(envoy, 30):
            if envoy.alive():
                self._event(logging.ERROR, "Envoy pid %d: admin did not answer in 30 s; killing it", envoy.pid)
                envoy.proc.kill()

    async def _supervise(self) -> None:
        while not self._stop.is_set():
            await asyncio.sleep(0.2)
            envoy = self.envoy
            if envoy is None or self._lock.locked() or self._stop.is_set():
                continue
            if envoy.alive():
                if self._quick_failures and time.monotonic() - self._started_mono >= STABLE_AFTER_S:
                    self._quick_failures = 0
                if time.monotonic() - self._state_checked >= 0.5:
                    self._state_checked = time.monotonic()
                    state = await asyncio.to_thread(envoy.own_state, 1.0)
                    if state != self.envoy_state and envoy is self.envoy and not self._lock.locked():
                        self.envoy_state = state
                        self._write_status()
                continue
            self.envoy_state = None
            async with self._lock:
                if self._stop.is_set():
                    return
                code = envoy.proc.returncode
                self._quick_failures += 1
                delay = backoff_delay(self._quick_failures)
                self.mode = "restarting"
                tail = envoy.log_tail(5).replace("\n", "\n    ")
                self._event(logging.ERROR, "Envoy pid %d exited with code %s; restarting in %.1f s. Last log lines:\n    %s",
                            envoy.pid, code, delay, tail)
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                    return
                except asyncio.TimeoutError:
                    pass
                self.restarts += 1
                await self._start_fresh(f"restart #{self.restarts}")

    async def _switch_back(self) -> None:
        """In cache mode: once a gateway serves *this node's* listeners, hand over to an ADS-mode Envoy."""
        failures = 0
        next_try = 0.0
        waiting_note = None
        while not self._stop.is_set():
            await asyncio.sleep(1.0)
            if self.mode != "cache" or self._lock.locked() or time.monotonic() < next_try:
                continue
            serving, ready = await self._serving_this_node()
            if not serving or self.mode != "cache":
                continue
            if not ready:
                note = (f"gateway {', '.join(serving)} is serving but has no listener for node {self.opts.node_id} "
                        f"yet (registration not appended or not folded); staying on the cache")
                if note != waiting_note:
                    self._event(logging.INFO, note)
                    waiting_note = note
                continue
            waiting_note = None
            async with self._lock:
                if self._stop.is_set() or self.mode != "cache":
                    continue
                why = f"gateway {', '.join(ready)} is serving this node's configuration"
                if not await self._handover("ads", self._ads_bootstrap(), why):
                    failures += 1
                    next_try = time.monotonic() + backoff_delay(failures + 2)
                    continue
                if await self._holds_listeners():
                    failures = 0
                    continue
                # the gateway lost the view between the probe and the switch: back to the cache, retry later
                cached = self._cache_bootstrap()
                if isinstance(cached, tuple):
                    self._event(logging.ERROR, "the ADS-mode Envoy came up with no listener; going back to the cache")
                    await self._handover("cache", cached[0], "ADS gave no listener")
                    failures += 1
                    next_try = time.monotonic() + backoff_delay(failures + 2)

    async def _holds_listeners(self) -> bool:
        try:
            dump = await asyncio.to_thread(self.envoy.config_dump)
        except (OSError, ValueError):
            return True  # cannot tell; do not flap
        return bool(dynamic_names(dump)["listeners"])

    async def _handover(self, mode: str, bootstrap: dict, why: str) -> bool:
        """Replace the running Envoy by one in ``mode``: hot restart if possible, else cold. True if done."""
        old = self.envoy
        assert old is not None
        if not (self.opts.hot_restart and old.alive() and old.restart_epoch < MAX_EPOCH):
            self._event(logging.INFO, "%s: cold restart into %s mode (connections refused until it listens)",
                        why, mode.upper())
            await asyncio.to_thread(old.stop, 5)
            self.switches += 1
            self._quick_failures = 0
            return await self._start_fresh_with(mode, bootstrap, why)
        epoch = old.restart_epoch + 1
        new = self._launch(bootstrap, mode, epoch)
        self._event(logging.INFO, "%s: hot restart into %s mode, Envoy pid %d epoch %d; pid %d keeps serving "
                    "until it has initialised", why, mode.upper(), new.pid, epoch, old.pid)
        if not await self._live(new, SWITCH_LIVE_TIMEOUT_S):
            if new.alive():
                new.proc.kill()
                await asyncio.to_thread(new.proc.wait, 5)
            self._event(logging.WARNING, "the %s-mode Envoy (epoch %d) did not become LIVE in %.0f s; staying in %s "
                        "mode (pid %d). Its log:\n    %s", mode.upper(), epoch, SWITCH_LIVE_TIMEOUT_S,
                        self.mode.upper(), old.pid, new.log_tail(5).replace("\n", "\n    "))
            return False
        self.envoy, self.mode, self.envoy_state = new, mode, "LIVE"
        self.cache_loaded_from = None if mode == "ads" else self.cache_loaded_from
        self._started_mono = time.monotonic()
        self._quick_failures = 0
        self.switches += 1
        self._event(logging.INFO, "Envoy pid %d (epoch %d) is LIVE in %s mode and took the listeners over; "
                    "pid %d drains and exits", new.pid, epoch, mode.upper(), old.pid)
        task = asyncio.create_task(self._reap(old))
        self._parents.add(task)
        task.add_done_callback(self._parents.discard)
        return True

    async def _start_fresh_with(self, mode: str, bootstrap: dict, why: str) -> bool:
        """Cold start in ``mode``; True once it is LIVE (if it never is, the supervisor sees to it)."""
        await self._kill_leftovers()
        envoy = self._launch(bootstrap, mode, 0)
        self.envoy, self.mode, self.envoy_state = envoy, mode, None
        self._started_mono = time.monotonic()
        self._event(logging.INFO, "Envoy pid %d started in %s mode (%s)", envoy.pid, mode.upper(), why)
        live = await self._live(envoy, SWITCH_LIVE_TIMEOUT_S)
        if live:
            self.envoy_state = "LIVE"
        return live

    async def _reap(self, old: EnvoyProcess) -> None:
        limit = old.drain_time_s + old.parent_shutdown_time_s + 10
        try:
            await asyncio.to_thread(old.proc.wait, limit)
            log.info("previous Envoy pid %d exited (code %s) after the hand-over", old.pid, old.proc.returncode)
        except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired: it overstayed
            log.warning("previous Envoy pid %d still running %d s after the hand-over; killing it", old.pid, limit)
            old.proc.kill()
            await asyncio.to_thread(old.proc.wait, 5)

    # ------------------------------------------------------------ cache

    async def _save_cache(self) -> None:
        while not self._stop.is_set():
            await asyncio.sleep(1.0)
            envoy = self.envoy
            if self.mode != "ads" or envoy is None or self._lock.locked() or not envoy.alive():
                continue
            try:
                dump = await asyncio.to_thread(envoy.config_dump)
            except (OSError, ValueError):
                continue
            if envoy is not self.envoy or self.mode != "ads":
                continue
            doc = config_cache.cache_document(dump, self.opts.node_id, dynamic_names(dump))
            key = config_cache.content_key(doc)
            if key == self._saved_key:
                continue
            if not config_cache.worth_saving(doc):
                reason = "no listener yet" if not doc["listeners"] else "; ".join(config_cache.missing_parts(doc))
                if reason != self._unsaved_reason:
                    log.info("not caching Envoy's configuration yet: %s", reason)
                    self._unsaved_reason = reason
                continue
            try:
                await asyncio.to_thread(config_cache.save, self.cache_path, doc)
            except OSError as exc:
                log.error("cannot write the config cache %s: %s", self.cache_path, exc)
                continue
            self._saved_key = key
            self._unsaved_reason = None
            self.cache_saved_at = doc["saved_at"]
            counts = ", ".join(f"{len(doc[k])} {k}" for k in config_cache.KINDS)
            self._event(logging.INFO, "cached the configuration Envoy accepted (%s) to %s", counts, self.cache_path)

    # ------------------------------------------------------------ registration and drain

    async def _register(self) -> None:
        failures = 0
        while not self._stop.is_set():
            why = await registration.append(self.opts.bootstrap, [self.opts.registration], self.opts.node_id,
                                            self.opts.append_timeout)
            if why is None:
                self.registered = True
                r = self.opts.registration
                self._event(logging.INFO, "registered %s/%s at %s (app port %d, sidecar inbound %d, outbound %d)",
                            r.service, r.instance_id, r.address, r.port, r.sidecar.inbound_port,
                            r.sidecar.outbound_port)
                return
            failures += 1
            delay = min(BACKOFF_MAX_S, float(2 ** (failures - 1)))
            self._event(logging.WARNING, "registration not appended (%s); retrying in %.0f s", why, delay)
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
            except asyncio.TimeoutError:
                pass

    async def _drain(self) -> None:
        started = time.monotonic()
        self.mode = "draining"
        self._event(logging.INFO, "draining: announcing 'draining', serving %.1f s more, then deregistering",
                    self.opts.drain_seconds)
        why = await registration.append(self.opts.bootstrap, [registration.draining(self.opts.registration,
                                                                                    self.opts.node_id)],
                                        self.opts.node_id, self.opts.append_timeout)
        if why:
            self._event(logging.WARNING, "could not announce 'draining' (%s); waiting anyway", why)
        remaining = self.opts.drain_seconds - (time.monotonic() - started) if why is None else self.opts.drain_seconds
        if remaining > 0 and not self._hurry.is_set():
            try:
                await asyncio.wait_for(self._hurry.wait(), remaining)
                log.info("second signal: cutting the drain wait short")
            except asyncio.TimeoutError:
                pass
        why = await registration.append(self.opts.bootstrap, [registration.deregistered(self.opts.registration)],
                                        self.opts.node_id, self.opts.append_timeout)
        if why:
            self._event(logging.WARNING, "could not append the deregistration (%s)", why)
        else:
            self._event(logging.INFO, "deregistered %s/%s", self.opts.service, self.opts.instance_id)

    async def _stop_envoys(self) -> None:
        """SIGTERM every Envoy of ours at once (a hand-over parent may still be draining), KILL after 5 s."""
        for task in list(self._parents):
            task.cancel()
        await asyncio.gather(*self._parents, return_exceptions=True)
        alive = [e for e in self._owned if e.alive()]
        for envoy in alive:
            envoy.proc.terminate()
        deadline = time.monotonic() + 5
        while any(e.alive() for e in alive) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for envoy in alive:
            if envoy.alive():
                log.warning("Envoy pid %d did not stop on SIGTERM within 5 s; killing it", envoy.pid)
                envoy.proc.kill()
            await asyncio.to_thread(envoy.proc.wait, 5)

    def _on_signal(self, signum: int) -> None:
        if self._stop.is_set():
            self._hurry.set()
            return
        log.info("received %s", signal.Signals(signum).name)
        self._stop.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        self.opts.workdir.mkdir(parents=True, exist_ok=True)
        if self.opts.tls is not None:
            self.secrets = sds.SecretSync(self.opts.tls, self.sds_dir, sds.load_tls(self.opts.tls))
            self.secrets.start()
            if self.opts.ca_url:
                self.renewer = renewal.CertificateRenewer(self.opts.ca_url, self.opts.tls, self.secrets,
                                                          on_change=self._write_status)
        else:
            log.warning("--insecure: plaintext xDS to the gateways (loopback development only)")
        if self.opts.status_port is not None:
            await self._serve_status()
        if self.opts.api_port is not None:
            await self._serve_api()
        r = self.opts.registration
        self._event(logging.INFO, "sidecar for %s/%s (node %s): outbound 127.0.0.1:%d, inbound %s:%d -> app "
                    "127.0.0.1:%d, admin 127.0.0.1:%d, gateways %s, cache %s", r.service, r.instance_id,
                    self.opts.node_id, r.sidecar.outbound_port, r.address, r.sidecar.inbound_port, r.port,
                    self.opts.admin_port, ", ".join(self.opts.gateways), self.cache_path)
        tasks: list[asyncio.Task] = []
        exit_code = 0
        try:
            async with self._lock:
                await self._start_fresh("boot")
            tasks = [asyncio.create_task(coro) for coro in
                     (self._supervise(), self._save_cache(), self._switch_back(), self._register())]
            if self.secrets is not None:
                tasks.append(asyncio.create_task(self.secrets.run()))
            if self.renewer is not None:
                tasks.append(asyncio.create_task(self.renewer.run()))
            await self._stop.wait()
            await self._drain()
        except Exception:  # noqa: BLE001 - reported, then Envoy is still stopped
            log.exception("sidecar agent failed")
            exit_code = 1
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._stop_envoys()
            if self.opts.hot_restart:
                remove_shared_memory(self.opts.base_id)
            self.mode, self.envoy_state = "stopped", None
            self._event(logging.INFO, "stopped (exit %d)", exit_code)
            for server in (self._status_server, self._api_server):
                if server is not None:
                    server.close()
        return exit_code
