"""`replay serve` is secure by default: TLS with a mesh certificate, operator client certificates only.

The frozen server (``replay.serve.serve_frozen``) over a small rendered mesh
(the projector's own fold and render of a random history), on a real gRPC
port: an operator's delta ADS stream gets a node's config; a plaintext
client fails the handshake; a sidecar's, a projector's or a SPIFFE-less
certificate is refused before any data; ``replay serve`` without
``--tls-*`` or ``--insecure`` exits 2 before reading the log.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from identity import spiffe
from projector.render import render_all
from projector.typeurls import LISTENER
from replay.serve import serve_frozen
from tests.integration.test_xds_trust import channel_to, first_response, refused, refused_without_data
from tests.support.trust import MeshCA
from tests.unit.replay.test_cli_and_report import mesh
from xds_gateway.tls import TlsFiles

pytestmark = pytest.mark.integration
D = "mesh.test"
BIN = Path(sys.executable).parent


class Frozen:
    def __init__(self, tmp: Path) -> None:
        self.ca = MeshCA(D, tmp / "ca")
        me = self.ca.issue(spiffe.SpiffeId.of(D, "replay", "r1"), "replay", server_names=["localhost"])
        self.files = TlsFiles(me.cert, me.key, me.ca)
        _h, _log, state = mesh(3)
        self.rendered = render_all(state)
        self.node = sorted(self.rendered.membership)[0]
        self.ready = tmp / "ready.json"
        self.stop = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.port = 0

    async def start(self) -> None:
        self.task = asyncio.create_task(serve_frozen(self.rendered, listen="127.0.0.1", port=0, grace=0,
                                                     info={"at": "test"}, tls_files=self.files,
                                                     ready_file=str(self.ready), stop=self.stop))
        while not self.ready.exists():
            assert not self.task.done(), self.task.exception()
            await asyncio.sleep(0.05)
        info = json.loads(self.ready.read_text())
        assert info["tls"] is True
        self.port = info["xds_port"]

    def channel(self, ident=None) -> grpc.aio.Channel:
        return channel_to(self.port, self.ca.bundle.read_bytes(), ident)


@pytest.fixture
async def frozen(tmp_path):
    f = Frozen(tmp_path)
    await f.start()
    yield f
    f.stop.set()
    await asyncio.wait_for(f.task, 10)


async def test_an_operator_gets_the_frozen_config(frozen):
    alice = frozen.ca.issue(spiffe.operator(D, "alice"), "alice")
    async with frozen.channel(alice) as ch:
        got = await first_response(ch, frozen.node, LISTENER)
    want = {name for (type_url, name) in frozen.rendered.resources if type_url == LISTENER}
    assert got.resources and {r.name for r in got.resources} <= want


async def test_a_plaintext_client_is_refused(frozen):
    async with frozen.channel(None) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await first_response(ch, frozen.node, LISTENER)
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("who", ["sidecar", "projector"])
async def test_a_workload_identity_is_refused_before_any_data(frozen, who):
    owner_service, owner_instance = frozen.rendered.owners[frozen.node]
    ident = {"sidecar": spiffe.sidecar(D, owner_service, owner_instance),  # even the node's own sidecar
             "projector": spiffe.projector(D)}[who]
    client = frozen.ca.issue(ident, who)
    before = refused("not_operator")
    async with frozen.channel(client) as ch:
        error = await refused_without_data(ch, frozen.node, LISTENER)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "operator identities only" in error.details()
    assert refused("not_operator") == before + 1


async def test_a_certificate_without_a_spiffe_id_is_unauthenticated(frozen):
    odd = frozen.ca.odd_cert("nobody", None)
    async with frozen.channel(odd) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await first_response(ch, frozen.node, LISTENER)
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_replay_serve_without_tls_files_or_insecure_exits_2_before_reading_the_log(tmp_path):
    env = {**os.environ, "MESHLOG_KAFKA_BOOTSTRAP": "127.0.0.1:1"}
    for var in ("MESHLOG_XDS_TLS_CERT", "MESHLOG_XDS_TLS_KEY", "MESHLOG_XDS_TLS_CA"):
        env.pop(var, None)
    r = subprocess.run([str(BIN / "replay"), "serve", "--at", "now"], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "--tls-cert, --tls-key, --tls-ca missing" in r.stderr and "--insecure" in r.stderr
