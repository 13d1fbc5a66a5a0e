"""The demo's closing traffic line attributes each failed request to the scene it failed in.

Story: the canary scene ends with all traffic back on v1, and the next scene makes
reviews-v1-b fail at once. A request sent in canary's last milliseconds and answered
with that failure is failing-instance's, not canary's (seen in CI: "1 during canary").
A request that failed within canary stays canary's.
"""

from types import SimpleNamespace

from meshlog.demo import traffic_summary
from meshlog.demo.traffic import Sample, Traffic

CANARY, FAILING = 100.0, 200.0


def _demo(samples):
    traffic = Traffic(port=1, host="web")  # never started: only its records are read
    traffic.records.extend(samples)
    return SimpleNamespace(traffic=traffic, marks={"scene:canary": CANARY, "scene:failing-instance": FAILING})


def test_a_request_sent_in_one_scene_and_failed_by_the_next_belongs_to_the_next():
    line = traffic_summary(_demo([
        Sample(150.0, True, "v1", "reviews-v1-a", 150.01),
        Sample(199.99, False, "", "HTTP 503", 200.02),   # sent in canary, failed once reviews-v1-b fails
        Sample(201.0, False, "", "HTTP 503", 201.01),
    ]))
    assert line == "traffic over the whole run: 3 requests, 2 failed (2 during failing-instance)"


def test_a_request_that_failed_within_a_scene_stays_that_scenes():
    line = traffic_summary(_demo([Sample(150.0, False, "", "RemoteDisconnected", 150.2)]))
    assert line == "traffic over the whole run: 1 requests, 1 failed (1 during canary)"
