"""Golden renderings of the feature mesh, in protobuf text format.

The files under ``golden/`` were generated, read by eye against the Envoy
field docs, and frozen. A change in rendering shows up here as a diff to
review; after reviewing, regenerate with ``MESHLOG_UPDATE_GOLDEN=1``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from google.protobuf import text_format

from projector.render import CLUSTER, ENDPOINT, LISTENER, ROUTE, proxyless_closure, render
from tests.unit.projector.feature_mesh import feature_mesh

GOLDEN = Path(__file__).parent / "golden"

CASES = [
    ("web-1", CLUSTER, "reviews"),
    ("web-1", CLUSTER, "ratings|v2"),
    ("web-1", CLUSTER, "web-1~local"),
    ("web-1", ENDPOINT, "reviews"),
    ("web-1", ENDPOINT, "reviews|v2"),
    ("web-1", ENDPOINT, "ratings"),
    ("web-1", ROUTE, "web-1~outbound"),
    ("web-1", LISTENER, "web-1~outbound"),
    ("web-1", LISTENER, "web-1~inbound"),
    ("web-1", LISTENER, "web-1~tcp~db"),
    ("ratings-1", LISTENER, "ratings-1~inbound"),
    ("db-1", LISTENER, "db-1~inbound"),
    (None, LISTENER, "ratings"),
    (None, ROUTE, "ratings"),
]


def _file(type_url: str, name: str) -> Path:
    kind = type_url.rsplit(".", 1)[-1]
    safe = name.replace("|", "+").replace("~", "@")
    return GOLDEN / f"{kind}--{safe}.txtpb"


@pytest.mark.parametrize(("node", "type_url", "name"), CASES, ids=[f"{c[1].rsplit('.', 1)[-1]}:{c[2]}" for c in CASES])
def test_golden(node, type_url, name):
    state = feature_mesh()
    if node is None:
        msg = proxyless_closure(state, name)[type_url][name]
    else:
        msg = render(state, node)[type_url][name]
    text = text_format.MessageToString(msg)
    path = _file(type_url, name)
    if os.environ.get("MESHLOG_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no golden file {path.name}: run with MESHLOG_UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text()
    # the golden text parses back to the very same message
    assert text_format.Parse(path.read_text(), type(msg)()) == msg
