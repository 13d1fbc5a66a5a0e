"""The README's sizing table is what its unit costs give (bench/sizing.py), and the derivation holds."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_sizing", ROOT / "bench" / "sizing.py")
sizing = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = sizing  # dataclasses look their module up there
_spec.loader.exec_module(sizing)

COSTS = {"instances_per_service": 5, "minutes_between_events": 10, "peak_factor": 10, "cpu_headroom": 0.5,
         "nodes_changed_per_event": 15, "memberships_changed_per_event": 5, "broker_records_per_s": 30_000, "decode_events_per_s": 25_000,
         "render_ms_per_event": 1.0, "render_shared_ms_per_event": 0.4, "publish_ms_per_record": 0.1,
         "render_ms_per_node": 0.2, "render_shared_ms_per_node": 0.05, "projector_kb_per_node": 10,
         "view_bytes_per_node": 2_000, "streams_per_gateway": 10_000, "responses_per_gateway_cpu_s": 1_500,
         "gateway_kb_per_stream": 40, "gateway_index_kb_per_node": 4, "gateway_ms_per_stream_open": 4,
         "probe_interval_s": 5, "probes_per_checker_cpu_s": 3_000, "checker_shards": 12, "propagation_ms": 400,
         "failover_stall_s": 5}


def test_the_readme_sizing_table_is_derived_from_its_unit_costs():
    text = (ROOT / "README.md").read_text()
    assert sizing.between(text, sizing.SIZING_BEGIN, sizing.SIZING_END).strip() == \
        sizing.table(sizing.unit_costs(text)).strip(), "run python bench/sizing.py --write"


def test_every_input_the_formulas_read_is_a_named_unit_cost_in_the_readme():
    assert set(sizing.unit_costs((ROOT / "README.md").read_text())) >= set(COSTS)


def test_the_derivation_at_a_million_proxies():
    s = sizing.size(1_000_000, COSTS)
    assert s.services == 200_000
    assert s.events_peak == pytest.approx(1_000_000 / 600 * 10)
    # 16,667 events/s x (1 event + 5 memberships + 1 body) x 3 copies over 30,000 x 0.5 records/s per broker
    assert s.brokers == 24
    # every worker decodes every event and renders its shared part: 16,667 x (1/25,000 + 0.4 ms) = 7.3 cores
    # each, over its half core whatever the count: no number of workers suffices
    assert s.workers is None and s.worker_core_need == pytest.approx(16_667 * (1 / 25_000 + 0.0004), rel=1e-3)
    # every node's records undecoded (4 kB each) + its share of the streams (40 kB each), 334 processes
    assert s.gateway_view_gb == pytest.approx((1_000_000 * 4 + 1_000_000 / 334 * 40) / 1e6)
    # 250,000 responses/s over 750 per gateway core: more than the streams ask for (100 processes)
    assert (s.gateways, s.gateway_by) == (334, "responses")
    assert s.checkers == 12 and s.checkers_capped


def test_a_small_mesh_keeps_the_fault_tolerant_minimums():
    s = sizing.size(1_000, COSTS)
    assert (s.brokers, s.partitions, s.workers, s.gateways, s.gateway_by) == (3, 3, 2, 2, "the minimum")
    assert not s.checkers_capped


def test_a_unit_cost_without_a_number_is_named():
    text = f"{sizing.COSTS_BEGIN}\n| `fold_events_per_s` | fold | unknown | bench |\n{sizing.COSTS_END}"
    with pytest.raises(ValueError, match="fold_events_per_s"):
        sizing.unit_costs(text)


def test_projector_workers_divide_the_per_node_render_and_the_publishing():
    # 10,000 proxies: 166.7 events/s peak; each worker's own part 166.7 x (1/25,000 + 0.4 ms) = 0.073 of a
    # core; the rest of the render and the publishing (0.6 ms + 16 records x 0.1 ms per event = 0.37 core)
    # is divided: W >= 0.37 / (0.5 - 0.073), at least 2
    s = sizing.size(10_000, COSTS)
    assert s.workers == 2
    # a new worker renders every shared resource and half the nodes: 0.05 + 0.15 / 2 ms per node
    assert s.worker_cold_render_s == pytest.approx(10_000 * (0.05 + 0.15 / 2) / 1000)


def test_the_divided_part_spreads_over_the_workers():
    # a decoder and a shared render cheap enough: 1,666.7 events/s at 100,000 proxies, each worker's own
    # part 1,666.7 x (1/100,000 + 0.1 ms) = 0.183 core, the divided part 1,666.7 x (0.9 + 0.1 x (5 memberships +
    # 1 body)) ms = 2.5 cores: 8 workers at their half core (were every worker to render every node: none)
    s = sizing.size(100_000, {**COSTS, "decode_events_per_s": 100_000, "render_shared_ms_per_event": 0.1})
    assert s.workers == 8 and s.worker_core_need == pytest.approx(1_666.7 * (1 / 100_000 + 0.0001), rel=1e-3)
