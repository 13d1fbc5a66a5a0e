"""replay's argument handling, its documents, the config dump and the frozen view cache (no broker)."""

from __future__ import annotations

from datetime import datetime, timezone

import orjson
import pytest

from projector.fold import fold_many
from projector.render import render, render_all
from projector.snapshots import MERGE_ORDER, encode_snapshot
from projector.state import empty_state, state_to_bytes
from projector.typeurls import CLUSTER, ENDPOINT, LISTENER, ROUTE
from proxy.envoy_process import dynamic_names
from replay import acceptance, cli, report
from replay.engine import Walker, node_versions
from replay.serve import cache_from_rendered
from replay.snapshots import Candidate, choose, valid_for
from replay.timeparse import BadTime, parse_instant, to_ms
from tests.unit.projector.helpers import Log
from tests.unit.replay.history import RandomHistory

NOW = datetime(2024, 5, 1, 10, 0, tzinfo=timezone.utc)


# ---------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "argv, want",
    [
        (["--at", "now"], ["at", "--at", "now"]),
        (["--at", "-15m", "--json"], ["at", "--at=-15m", "--json"]),
        (["--bootstrap", "h:1", "--at", "now"], ["at", "--bootstrap", "h:1", "--at", "now"]),
        (["--bootstrap", "h:1", "diff", "--from", "-1h", "--to", "now"],
         ["diff", "--bootstrap", "h:1", "--from=-1h", "--to", "now"]),
        (["log", "--from", "-2d", "--to", "-1d"], ["log", "--from=-2d", "--to=-1d"]),
        (["serve", "--at", "2024-01-01T10:00"], ["serve", "--at", "2024-01-01T10:00"]),
        (["at", "--at", "now"], ["at", "--at", "now"]),
        (["--help"], ["--help"]),
    ],
)
def test_short_form_and_relative_times(argv, want):
    assert cli.normalize_argv(argv) == want
    if "--help" not in want:
        cli.build_parser().parse_args(want)  # parses


def test_the_help_documents_exit_codes_everywhere(capsys):
    for argv in (["--help"], ["at", "--help"], ["diff", "--help"], ["log", "--help"], ["serve", "--help"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert "exit codes:" in out and "4  TIME outside the log" in out


def test_usage_errors_exit_2(capsys):
    assert cli.main(["--bootstrap", "127.0.0.1:1", "--at", "yesterday-ish"]) == 2
    assert "not a time" in capsys.readouterr().err
    assert cli.main(["--bootstrap", "127.0.0.1:1", "--at", "now", "--xds"]) == 2
    assert cli.main([]) == 2


def test_an_unreachable_broker_exits_3(capsys):
    assert cli.main(["--bootstrap", "127.0.0.1:1", "--timeout", "1", "--at", "now"]) == 3
    assert "did not answer" in capsys.readouterr().err


def test_time_forms():
    assert parse_instant("2024-05-01T08:00", NOW) == datetime(2024, 5, 1, 8, tzinfo=timezone.utc)
    assert parse_instant("2024-05-01T10:00+02:00", NOW) == datetime(2024, 5, 1, 8, tzinfo=timezone.utc)
    assert parse_instant("-15m", NOW) == datetime(2024, 5, 1, 9, 45, tzinfo=timezone.utc)
    assert parse_instant("now", NOW) == NOW
    assert to_ms(parse_instant("@1714557600000", NOW)) == 1714557600000
    with pytest.raises(BadTime):
        parse_instant("last tuesday", NOW)


# ---------------------------------------------------------------- snapshots


def cand(offset, max_ts, offsets, ts=None):
    return Candidate(offset, ts or (max_ts or 0) + 5,
                     {"max_timestamp_ms": max_ts, "next_offsets": offsets, "fold_order": MERGE_ORDER})


def test_choose_the_valid_snapshot_that_folded_most():
    a = cand(0, 100, {"t/0": 10})
    b = cand(1, 200, {"t/0": 20})
    c = cand(2, 300, {"t/0": 30})  # folded past T
    fresh = cand(3, 150, {"t/0": 15})  # a fresh projector's, written later
    assert [x.offset for x in choose([a, b, c, fresh], 250)] == [1, 3, 0]
    assert choose([c], 250) == []
    assert not valid_for(cand(4, None, {}), 1000)
    assert not valid_for(b, 250, {"t/0": 19})  # would start past the cut: refused


# ---------------------------------------------------------------- documents


def mesh(seed=1, count=200):
    h = RandomHistory("rep", seed)
    log = Log()
    for p in h.payloads(count):
        log.append(p)
    state, _ = fold_many(empty_state(), log.events)
    return h, log, state


def test_mesh_document_is_stable_and_complete():
    h, _log, state = mesh()
    rendered = render_all(state)
    doc = report.mesh_document(state, rendered, at_ms=1, source={}, service=None)
    again = report.mesh_document(state, render_all(state), at_ms=1, source={}, service=None)
    assert orjson.dumps(doc, option=orjson.OPT_SORT_KEYS) == orjson.dumps(again, option=orjson.OPT_SORT_KEYS)
    assert {n["node"]: n["resources"] for n in doc["nodes"]} == rendered.membership
    assert sum(len(s["instances"]) for s in doc["services"]) == len(state.instances)
    svc = h.services[0]
    only = report.mesh_document(state, rendered, at_ms=1, source={}, service=svc)
    assert [s["name"] for s in only["services"]] == [svc]
    assert all(n["service"] == svc or svc in state.node_instance(n["node"]).reg.depends_on for n in only["nodes"])


def test_config_dump_reads_like_envoys():
    h, _log, state = mesh(2)
    node = next(n for n in h.nodes() if state.node_instance(n) is not None)
    versions = node_versions(state, node)
    dump = report.config_dump(node, versions, render(state, node), at_ms=5)
    names = dynamic_names(dump)
    kinds = {"clusters": CLUSTER, "endpoints": ENDPOINT, "listeners": LISTENER, "routes": ROUTE}
    assert {k: names[k] for k in kinds} == {k: versions[u] for k, u in kinds.items()}
    assert dump["replay"]["node"] == node


def test_diff_document_attributes_changes_to_events():
    log = Log()
    log.register("b", "b1", "10.0.0.2")
    log.register("a", "a1", "10.0.0.1", node_id="n", sidecar=(15001, 15002), depends_on=("b",))
    base, _ = fold_many(empty_state(), log.events)
    flap = log.health("b", "b1", "unhealthy")
    added = log.register("b", "b2", "10.0.0.3")
    noop = log.health("zzz", "z", "healthy")
    walker = Walker(base, node="n")
    steps = [walker.step([e]) for e in (flap, added, noop)]
    doc = report.diff_document(from_ms=0, to_ms=9, node="n", start_versions=walker.start_versions,
                               end_versions=walker.versions(), start_membership=walker.start_membership,
                               end_membership=walker.membership(), steps=steps)
    assert doc["events"] == 3 and not doc["added"] and not doc["removed"]
    [changed] = doc["changed"]
    assert (changed["type_url"], changed["name"]) == (ENDPOINT, "b")
    assert [c["offset"] for c in changed["caused_by"]] == [flap.offset, added.offset]
    assert doc["nodes"]["changed"] == ["n"]

    logdoc = report.log_document(from_ms=0, to_ms=9, service=None, node="n", steps=steps, node_keys={"a/a1"})
    assert [e["key"] for e in logdoc["entries"]] == ["b/b1", "b/b2"]  # the no-op is not about n
    assert logdoc["entries"][0]["effect"]["changed"][0][:2] == [ENDPOINT, "b"]
    svcdoc = report.log_document(from_ms=0, to_ms=9, service="zzz", node=None, steps=steps)
    assert [e["key"] for e in svcdoc["entries"]] == ["zzz/z"]


def test_the_log_and_the_node_document_show_subscriptions_and_their_refusals():
    import io

    from rich.console import Console

    from replay import text

    log = Log()
    log.register("b", "b1", "10.0.0.2")
    log.register("a", "a1", "10.0.0.1", node_id="n", sidecar=(15001, 15002))
    base, _ = fold_many(empty_state(), log.events)
    sub = log.subscribe("a", "a1", "b", at=5_000)
    bad = log.subscribe("a", "a1", "nowhere")
    unsub = log.unsubscribe("a", "a1", "b")
    walker = Walker(base, node="n")
    steps = [walker.step([e]) for e in (sub, bad, unsub)]
    for scope in ({"service": "b", "node": None}, {"service": "a", "node": None}, {"service": None, "node": "n"}):
        doc = report.log_document(from_ms=0, to_ms=9_999, steps=steps, node_keys={"a/a1"}, **scope)
        types = [e["type"] for e in doc["entries"] if e["payload"].get("dependency") == "b"]
        assert types == ["dependency.subscribed", "dependency.unsubscribed"], scope
    doc = report.log_document(from_ms=0, to_ms=9_999, service="nowhere", node=None, steps=steps)
    [refused] = doc["entries"]
    assert "unknown service 'nowhere'" in refused["rejection"]["reason"]
    state, _ = fold_many(base, [sub])
    inst = report.instance_doc(state, "a/a1", state.instances["a/a1"])
    assert inst["subscriptions"] == [{"dependency": "b", "origin": "explicit", "since": report.iso(5_000),
                                      "since_ms": 5_000}]
    [(lg, j)] = steps[1].decisions
    rdoc = report.rejection_doc(lg, j)
    assert (rdoc["kind_of_rule"], rdoc["subscriber"], rdoc["name"], rdoc["action"]) == (
        "subscription", "a/a1", "nowhere", "subscribe")
    out = io.StringIO()
    text.print_log(Console(file=out, width=200), {**doc, "entries": [{"kind": "rejection", **rdoc}]})
    assert "subscribe of a/a1 to nowhere" in out.getvalue()


# ---------------------------------------------------------------- the frozen gateway's cache


def test_cache_from_rendered_serves_exactly_the_rendered_views():
    h, _log, state = mesh(3)
    rendered = render_all(state)
    cache = cache_from_rendered(rendered)
    assert cache.ready.is_set()
    for node, membership in rendered.membership.items():
        view = cache.node_view(node)
        assert {u: {n: r.version for n, r in named.items()} for u, named in view.items()} == membership
        for u, named in view.items():
            for name, res in named.items():
                assert res.body == rendered.resources[(u, name)]


def test_snapshot_bytes_round_trip_into_the_same_render():
    _h, _log, state = mesh(4)
    data = encode_snapshot(state_to_bytes(state), next_offsets={"x/0": 1}, max_timestamp_ms=5, events=1,
                           fold_order=MERGE_ORDER)
    from projector.snapshots import decode_snapshot

    assert render_all(decode_snapshot(data).state()).versions == render_all(state).versions


def _sync(payload, ms: int, offset: int):
    from events.envelope import Logged, new_event

    at = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return Logged(new_event(payload, producer="gw", occurred_at=at), "meshlog.sync", 0, offset, ms)


def test_diff_says_when_the_proxy_accepted_each_change_and_how_far_each_causing_event_reached():
    import io

    from events import types as t
    from replay import text

    log = Log()
    log.register("b", "b1", "10.0.0.2")
    log.register("a", "a1", "10.0.0.1", node_id="n", sidecar=(15001, 15002), depends_on=("b",))
    base, _ = fold_many(empty_state(), log.events)
    added = log.register("b", "b2", "10.0.0.3", at=10_000)
    walker = Walker(base, node="n")
    steps = [walker.step([added])]
    told = steps[0].effect.views["n"]
    sync = [_sync(t.ProxyStreamOpened(node="n", gateway="gw1", stream_id="1", kind="delta", peer="ipv4:1.2.3.4:5"),
                  5_000, 0)]
    sync += [_sync(t.ProxyAcked(node="n", gateway="gw1", stream_id="1", type_url=u, nonce=str(i), held=dict(names)),
                   10_084, i + 1) for i, (u, names) in enumerate(told.items())]

    def diff(node, records):
        w = walker if node else Walker(base)
        s = steps if node else [w.step([added])]
        return report.diff_document(from_ms=0, to_ms=10_000, node=node, start_versions=w.start_versions,
                                    end_versions=w.versions(), start_membership=w.start_membership,
                                    end_membership=w.membership(), steps=s, **acceptance.diff_sync_docs(s, records, node))

    [changed] = diff("n", sync)["changed"]
    assert (changed["name"], changed["accepted"]["state"]) == ("b", "ACCEPTED")
    assert (changed["accepted"]["acked_ms"], changed["accepted"]["after_ms"], changed["accepted"]["via"]) == \
        (10_084, 84, None)
    out = io.StringIO()
    text.print_diff(text.console(file=out), diff("n", sync))
    assert "+84 ms" in out.getvalue() and "accepted by the proxy" in out.getvalue()
    # the ACK of an older view does not count: told, not accepted
    [stale] = diff("n", sync[:1])["changed"]
    assert stale["accepted"]["state"] == "NOT_YET"

    mesh = diff(None, sync)
    [cause] = next(e for e in mesh["changed"] if e["name"] == "b" and e["type_url"] == ENDPOINT)["caused_by"]
    assert (cause["convergence"]["reached"], cause["convergence"]["proxies"]) == (1, 1)
    assert cause["convergence"]["slowest"] == "n" and cause["convergence"]["last_ack_ms"] == 84
    out = io.StringIO()
    text.print_diff(text.console(file=out), mesh)
    assert "reached 1 of 1 proxies" in out.getvalue() and "slowest n 84 ms" in out.getvalue()
