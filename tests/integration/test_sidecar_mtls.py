"""Story: sidecar-to-sidecar mTLS with RBAC from the dependency graph, with real Envoys.

A real broker, the projector, a TLS `xds-gateway run`, and three `meshlog-sidecar run` Envoys with
workload certificates of one trust domain: a server `srv` (s1), a client `cli` (c1) that declares
`srv`, and `oth` (o1) that does not.

- c1's app calls srv through its sidecar: over mTLS (s1's Envoy counts TLS handshakes on its inbound
  listener), 200.
- A caller holding o1's valid mesh certificate, connecting to s1's inbound listener directly, gets
  403 from s1's RBAC, counted in s1's Envoy stats (`http.inbound.rbac.denied`); c1's certificate
  passes; a plaintext client and a certificate of another CA fail the handshake.
- o1's app subscribes to srv at run time (a `dependency.subscribed` event): the same certificate
  is admitted from then on, from its next request on a connection it already had open (the policy
  is in s1's inbound route, RDS; s1's listener is not replaced). An operator's `access_policy`
  would do the same for the whole mesh.
- s1's certificate is renewed in place during traffic from c1: s1's Envoy presents the new serial on
  its inbound listener (file SDS, no restart) and no request fails.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import ssl
import time
import urllib.request
import uuid

import pytest
from cryptography import x509

from events.admin import ensure_topics
from identity import pki, spiffe
from tests.integration.test_sidecar_e2e import Traffic, send, start_sidecar
from tests.integration.test_xds_tls_stack import files, presented_serials
from tests.support.apps import App
from tests.support.stack import start_gateway, start_projector, wait_until
from tests.support.trust import MeshCA

pytestmark = [pytest.mark.integration, pytest.mark.envoy]

D = "mtls.it"


def _stat(sidecar, name: str) -> int:
    for line in sidecar.admin("/stats?filter=" + name).splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    return 0


def _get_direct(port: int, ident, ca_file) -> int:
    """GET / on a sidecar's inbound listener over TLS presenting ``ident``; the HTTP status."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.check_hostname = False
    if ident is not None:
        ctx.load_cert_chain(str(ident.cert), str(ident.key))
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=ctx)
    try:
        conn.request("GET", "/", headers={"Host": "srv"})
        return conn.getresponse().status
    finally:
        conn.close()


class _OneConnection:
    """One kept-alive TLS connection to a sidecar's inbound listener, presenting ``ident``.

    ``get`` fails (never reconnects) if the connection was closed: Envoy closes the connections of a
    listener it replaced once they drain, and answers them ``Connection: close`` meanwhile.
    """

    def __init__(self, port: int, ident, ca_file, host: str):
        ctx = ssl.create_default_context(cafile=str(ca_file))
        ctx.check_hostname = False
        ctx.load_cert_chain(str(ident.cert), str(ident.key))
        self.host = host
        self.conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=ctx)
        self.conn.connect()
        self.sock = self.conn.sock

    def get(self) -> int:
        assert self.conn.sock is self.sock, "the kept-alive connection was closed"
        self.conn.request("GET", "/", headers={"Host": self.host})
        answer = self.conn.getresponse()
        answer.read()
        assert self.conn.sock is self.sock, f"Envoy closed the kept-alive connection after a {answer.status}"
        return answer.status

    def close(self) -> None:
        self.conn.close()


def _plaintext_refused(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: srv\r\nConnection: close\r\n\r\n")
        try:
            answer = sock.recv(100)
        except (ConnectionResetError, socket.timeout):
            return True
    return not answer.startswith(b"HTTP/")


def test_mtls_between_sidecars_rbac_from_the_graph_and_hitless_renewal(kafka_bootstrap, tmp_path):
    asyncio.run(ensure_topics(kafka_bootstrap))
    ca = MeshCA(D, tmp_path / "ca")
    other_ca = MeshCA(D, tmp_path / "other-ca")
    sfx = uuid.uuid4().hex[:6]
    srv, cli, oth = f"srv{sfx}", f"cli{sfx}", f"oth{sfx}"
    gw_ident = ca.issue(spiffe.gateway(D, "g1"), "gateway", server_names=["127.0.0.1", "localhost"])
    s1_ident = ca.issue(spiffe.sidecar(D, srv, "s1"), "s1")
    c1_ident = ca.issue(spiffe.sidecar(D, cli, "c1"), "c1")
    o1_ident = ca.issue(spiffe.sidecar(D, oth, "o1"), "o1")
    forged = other_ca.issue(spiffe.sidecar(D, cli, "c1"), "forged")
    apps = {n: App(n, "v1", svc).start() for n, svc in (("s1", srv), ("c1", cli), ("o1", oth))}
    started = []
    try:
        started.append(start_projector(kafka_bootstrap, tmp_path))
        gateway = start_gateway(kafka_bootstrap, tmp_path, "gateway-mtls", identity=files(gw_ident))
        started.append(gateway)
        address = f"127.0.0.1:{gateway.info['xds_port']}"
        s1 = start_sidecar("s1", tmp_path, kafka_bootstrap, [address], service=srv, instance="s1",
                           app_port=apps["s1"].port, identity=files(s1_ident))
        started.append(s1)
        c1 = start_sidecar("c1", tmp_path, kafka_bootstrap, [address], service=cli, instance="c1",
                           app_port=apps["c1"].port, depends_on=(srv,), identity=files(c1_ident))
        started.append(c1)
        o1 = start_sidecar("o1", tmp_path, kafka_bootstrap, [address], service=oth, instance="o1",
                           app_port=apps["o1"].port, identity=files(o1_ident), extra=("--api-port", "0"))
        started.append(o1)
        inbound = s1.status()["ports"]["inbound"]

        def reachable():
            try:
                return send(c1.outbound_port, srv, 2)["s1"] == 2
            except OSError:
                return False

        wait_until(reachable, 90, "c1's Envoy to reach s1 over mTLS", interval=0.3,
                   on_fail=lambda: c1.log_tail() + s1.log_tail() + gateway.log_tail())
        # the call went over TLS: s1's inbound listener did handshakes, and admitted c1
        assert _stat(s1, "listener.0.0.0.0_%d.ssl.handshake" % inbound) + _stat(
            s1, "listener.127.0.0.1_%d.ssl.handshake" % inbound) >= 1

        def handshakes(version: str) -> int:
            return sum(_stat(s1, f"listener.{ip}_{inbound}.ssl.versions.{version}") for ip in ("0.0.0.0", "127.0.0.1"))

        # TLS 1.3 only: in TLS 1.2 c1's certificate (who calls whom) would cross the wire in clear text
        assert handshakes("TLSv1.3") >= 1 and handshakes("TLSv1.2") == 0
        assert _get_direct(inbound, c1_ident, ca.bundle) == 200

        # an undeclared caller with a valid mesh certificate: 403, counted by s1's Envoy
        wait_until(lambda: _stat(o1, "server.live") == 1, 60, "o1's Envoy to be live", on_fail=o1.log_tail)
        denied_before = _stat(s1, "http.inbound.rbac.denied")
        assert _get_direct(inbound, o1_ident, ca.bundle) == 403
        assert _stat(s1, "http.inbound.rbac.denied") == denied_before + 1
        # no certificate, a plaintext client, another CA: no handshake at all
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            _get_direct(inbound, None, ca.bundle)
        assert _plaintext_refused(inbound)
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            _get_direct(inbound, forged, ca.bundle)

        # o1's app subscribes to srv at run time: a declaration like any other, the door opens -- on a
        # connection already open too: the policy is in s1's inbound route (RDS), which Envoy applies to the
        # next request; a new listener would reach new connections only and drain this one
        held = _OneConnection(inbound, o1_ident, ca.bundle, srv)
        try:
            assert held.get() == 403
            listeners_changed = _stat(s1, "listener_manager.listener_modified")
            req = urllib.request.Request(f"http://127.0.0.1:{o1.status()['ports']['api']}/v1/subscriptions/{srv}",
                                         method="PUT")
            with urllib.request.urlopen(req, timeout=20) as answer:
                assert answer.status == 200
            deadline = time.monotonic() + 30
            while (status := held.get()) != 200:
                assert status == 403 and time.monotonic() < deadline, (status, s1.log_tail())
                time.sleep(0.2)
            assert held.get() == 200
        finally:
            held.close()
        assert _stat(s1, "listener_manager.listener_modified") == listeners_changed  # the same listener
        # what s1's Envoy holds: the policy on its inbound route's virtual host, naming o1's service now
        dump = json.loads(s1.admin("/config_dump?resource=dynamic_route_configs"))
        [routes] = [c["route_config"] for c in dump["configs"] if c["route_config"]["name"].endswith("~inbound")]
        [vhost] = routes["virtual_hosts"]
        per_route = vhost["typed_per_filter_config"]["envoy.filters.http.rbac"]
        assert per_route["@type"].endswith("rbac.v3.RBACPerRoute")
        admitted = [p["authenticated"]["principal_name"]["prefix"]
                    for p in per_route["rbac"]["rules"]["policies"]["callers"]["principals"]]
        assert f"spiffe://{D}/sidecar/{oth}/" in admitted and f"spiffe://{D}/sidecar/{cli}/" in admitted
        assert _get_direct(inbound, o1_ident, ca.bundle) == 200
        # and o1's own Envoy now dials s1 over mTLS too
        assert send(o1.outbound_port, srv, 2)["s1"] == 2

        # s1's certificate renewed in place while c1 calls it: new serial on s1's inbound, no request lost
        renewed = ca.issue(spiffe.sidecar(D, srv, "s1"), "s1-renewed")
        envoy_pid = s1.status()["envoy"]["pid"]
        with Traffic(c1.outbound_port, srv) as traffic:
            time.sleep(1.0)
            pki.write_file_atomic(s1_ident.key, renewed.key_pem, 0o600)
            pki.write_file_atomic(s1_ident.cert, renewed.cert_pem)
            wait_until(lambda: int(renewed.serial, 16) in presented_serials(s1), 30,
                       "s1's Envoy to load the renewed certificate over SDS", on_fail=s1.log_tail)
            time.sleep(1.5)
        assert s1.status()["envoy"]["pid"] == envoy_pid  # no restart
        assert int(s1_ident.serial, 16) not in presented_serials(s1)
        assert len(traffic.records) > 20
        assert traffic.failures() == [], traffic.failures()[:5]
        # new connections to s1 see the renewed certificate
        ctx = ssl.create_default_context(cafile=str(ca.bundle))
        ctx.check_hostname = False
        ctx.load_cert_chain(str(c1_ident.cert), str(c1_ident.key))
        with socket.create_connection(("127.0.0.1", inbound), timeout=5) as raw:
            with ctx.wrap_socket(raw) as tls:
                served = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
        assert served.serial_number == int(renewed.serial, 16)
    finally:
        for process in reversed(started):
            process.stop()
        for app in apps.values():
            app.stop()
