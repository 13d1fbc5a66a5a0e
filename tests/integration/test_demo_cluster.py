"""Story: the demo runs on a three-node Kafka cluster and a node dies under load without anyone noticing.

``meshlog demo --headless --brokers 3 --scene broker-kill`` is run as a user would: it starts its own
three-node KRaft cluster (TLS only, ACLs, the demo's CA), the projector, two gateways, two checkers and
four real Envoy sidecars with traffic, then plays only the broker-kill scene: the node leading
``meshlog.registrations`` is killed with SIGKILL while registrations are appended at a steady rate.

The demo's own checks are the assertions that matter (a failed request, an acknowledged append missing
from the log or logged twice, a component that exited, a node not back in sync: each fails its check and
the exit code); this test makes sure they ran on a cluster and passed, and that nothing is left behind.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.integration.test_demo import BIN, _env, _left_behind

pytestmark = [pytest.mark.integration, pytest.mark.envoy, pytest.mark.timeout(480)]

CHECKS = ["no request fails while a Kafka node is killed and restarts",
          "every acknowledged append is in the log, once",
          "the projector, the gateways and the sidecars carried on (none restarted)",
          "the killed node is back in the in-sync replicas of meshlog.registrations"]


def test_the_demo_on_three_brokers_kills_the_registrations_leader_and_no_request_fails(tmp_path):
    workdir = tmp_path / "demo"
    result = subprocess.run([str(BIN / "meshlog"), "demo", "--headless", "--brokers", "3", "--scene", "broker-kill",
                             "--pace", "2", "--workdir", str(workdir)],
                            capture_output=True, text=True, timeout=450, env=_env())
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "starting a fresh local Kafka cluster of 3 nodes" in output
    assert "TLS only, client certificates required, ACLs enforced" in output
    assert "== scene broker-kill:" in output, output[-4000:]
    for check in CHECKS:
        assert re.search(rf"PASS {re.escape(check)}:", output), f"{check!r} did not pass\n{output[-4000:]}"
    assert f"meshlog demo: {len(CHECKS)}/{len(CHECKS)} checks passed" in output
    # what it measured: a kill, a stall, every acknowledged append in the log, none lost
    assert re.search(r"killed node \d with SIGKILL .*; stall \d+\.\d\d s", output), output[-4000:]
    assert re.search(r"\d+ acknowledged, \d+ in the log, 0 lost, 0 twice", output), output[-4000:]
    assert re.search(r"traffic over the whole run: [1-9]\d* requests, 0 failed", output), output[-3000:]
    assert _left_behind(workdir) == []
    scene = output[output.index("== scene broker-kill:"):]
    print("\n" + scene[:3000])  # the figures the scene measured (pytest -s shows them)
