"""Story: the broker goes away for a while and comes back; each process says so in a few lines.

A broker of this test's own (``LocalKafka``: the session's shared broker is
not ours to stop), a real projector, xDS gateway and health checker as
subprocesses. While the broker is down each logged ~37 lines/s before (its
own retry loops and aiokafka's error per failed connect, metadata refresh and
fetch); now each logs the outage when it starts, reminds at a backoff, and
logs once more, with the duration, when the broker answers again.
Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from events.admin import ensure_topics
from meshlog.kafka_local import LocalKafka
from tests.support.stack import BIN, spawn, start_gateway, start_projector, wait_until

pytestmark = pytest.mark.integration

OUTAGE_S = 6.0  # longer than the first reminder (5 s), so the backoff shows


def _lines_since(path, offset: int) -> list[str]:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read().decode(errors="replace").splitlines()


def test_a_broker_outage_is_logged_when_it_starts_at_a_backoff_and_when_it_ends(tmp_path):
    broker = LocalKafka(tmp_path / "kafka", keep_data=True)
    restarted: LocalKafka | None = None
    procs = []
    try:
        bootstrap = broker.start()
        asyncio.run(ensure_topics(bootstrap))
        projector = start_projector(bootstrap, tmp_path)
        procs.append(projector)
        status_file = tmp_path / "checker.status.json"
        checker = spawn("checker", [str(BIN / "registrar"), "--bootstrap", bootstrap, "healthcheck",
                                    "--checker-id", "outage-1", "--status-file", str(status_file)], tmp_path)
        procs.append(checker)
        procs.append(start_gateway(bootstrap, tmp_path, "gateway"))
        wait_until(lambda: "views are up to date" in projector.log_path.read_text()
                   or "reconciling views" in projector.log_path.read_text(), 60, "the projector to render",
                   on_fail=projector.log_tail)
        wait_until(lambda: status_file.exists() and json.loads(status_file.read_text())["running"], 60,
                   "the checker to run", on_fail=checker.log_tail)


        def no_outage_ongoing() -> bool:  # a checker joining its group may see a "coordinator not available" first
            logs = [p.log_path.read_text(errors="replace") for p in procs]
            return all(text.count(" failing: ") == text.count("the outage ended after") for text in logs)

        wait_until(no_outage_ongoing, 20, "start-up errors to end", on_fail=lambda: "\n".join(p.log_tail(5) for p in procs))
        marks = {p.name: p.log_path.stat().st_size for p in procs}
        broker.stop()
        time.sleep(OUTAGE_S)
        during = {p.name: _lines_since(p.log_path, marks[p.name]) for p in procs}
        for name, lines in during.items():
            # the start and one reminder (was ~37 lines/s: ~220 in this window)
            assert 1 <= len(lines) <= 4, f"{name} logged {len(lines)} lines in {OUTAGE_S}s:\n" + "\n".join(lines[:20])
            assert " failing: " in lines[0], lines
            assert any("still failing after" in line for line in lines), lines

        restarted = LocalKafka(tmp_path / "kafka", port=broker.port, controller_port=broker.controller_port,
                               keep_data=True)
        restarted.start()

        def ended() -> bool:
            return all("the outage ended after" in "\n".join(_lines_since(p.log_path, marks[p.name])) for p in procs)

        wait_until(ended, 30, 'an "outage ended" line from each process',
                   on_fail=lambda: "\n".join(p.log_tail(10) for p in procs))
        for p in procs:
            lines = _lines_since(p.log_path, marks[p.name])
            assert len(lines) <= 10, f"{p.name}:\n" + "\n".join(lines[:30])
            assert p.alive(), p.log_tail()
    finally:
        for p in procs:
            p.stop()
        for b in (restarted, broker):
            if b is not None:
                b.stop()
