"""Probes against real loopback sockets: an http.server answering 200/503, a closed port, a silent peer."""

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from meshlog.kafka_local import free_port
from registrar.healthcheck.probe import probe


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        srv = self.server
        srv.seen.append((self.path, self.headers.get("User-Agent")))
        code = srv.code if self.path == "/healthz" else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.code = 200
    srv.seen = []
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


async def test_http_200_passes_and_names_the_checker(http_server):
    port = http_server.server_address[1]
    r = await probe("127.0.0.1", port, "http", http_path="/healthz", timeout=2, user_agent="meshlog-healthcheck/c1")
    assert r.ok and r.detail == "HTTP 200 on /healthz"
    assert http_server.seen == [("/healthz", "meshlog-healthcheck/c1")]


async def test_http_503_and_404_fail_with_the_status(http_server):
    port = http_server.server_address[1]
    http_server.code = 503
    r = await probe("127.0.0.1", port, "http", timeout=2)
    assert not r.ok and r.detail == "HTTP 503 on /healthz"
    r = await probe("127.0.0.1", port, "http", http_path="/other", timeout=2)
    assert not r.ok and r.detail == "HTTP 404 on /other"


async def test_closed_port_fails_as_refused_for_http_and_tcp():
    port = free_port()
    for protocol in ("http", "tcp", "grpc"):
        r = await probe("127.0.0.1", port, protocol, timeout=2)
        assert not r.ok and r.detail == f"connection refused by 127.0.0.1:{port}", r


async def test_tcp_passes_when_accepted(http_server):
    r = await probe("127.0.0.1", http_server.server_address[1], "tcp", timeout=2)
    assert r.ok and "accepted" in r.detail


async def test_a_silent_peer_fails_within_the_timeout():
    # accepts connections (the kernel does, from the backlog) but never answers
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        started = time.monotonic()
        r = await probe("127.0.0.1", port, "http", timeout=0.3)
        took = time.monotonic() - started
    assert not r.ok and r.detail == f"no answer from 127.0.0.1:{port} within 0.3s"
    assert 0.25 <= took < 1.0


async def test_garbage_answer_fails():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]

        def answer():
            conn, _ = listener.accept()
            conn.recv(1024)
            conn.sendall(b"SSH-2.0-OpenSSH\r\n")
            conn.close()

        t = threading.Thread(target=answer, daemon=True)
        t.start()
        r = await probe("127.0.0.1", port, "http", timeout=2)
        t.join(2)
    assert not r.ok and r.detail.startswith("not an HTTP answer on /healthz")


@pytest.fixture
def mesh_tls_server(http_server, tmp_path):
    """The same app behind a TLS listener that requires a client certificate of the mesh root (like a secure sidecar)."""
    import ssl

    from identity import spiffe
    from tests.support.trust import MeshCA

    ca = MeshCA("probe.test", tmp_path / "ca")
    server_id = ca.issue(spiffe.sidecar("probe.test", "reviews", "r1"), "server")
    checker_id = ca.issue(spiffe.checker("probe.test", "hc-1"), "checker")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca.bundle))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(str(server_id.cert), str(server_id.key))
    http_server.socket = ctx.wrap_socket(http_server.socket, server_side=True)
    return http_server, ca, checker_id


async def test_a_secure_sidecar_is_probed_over_tls_with_the_checkers_certificate(mesh_tls_server):
    import ssl

    from registrar.healthcheck.probe import mesh_client_context

    srv, ca, checker_id = mesh_tls_server
    port = srv.server_address[1]
    tls = mesh_client_context(str(checker_id.cert), str(checker_id.key), str(ca.bundle))
    r = await probe("127.0.0.1", port, "http", timeout=3, tls=tls)
    assert r.ok and r.detail == "HTTP 200 on /healthz", r
    # without a client certificate the handshake fails, and the probe says so
    anonymous = ssl.create_default_context(cafile=str(ca.bundle))
    anonymous.check_hostname = False
    r = await probe("127.0.0.1", port, "http", timeout=3, tls=anonymous)
    assert not r.ok, r
    # plaintext to a TLS listener is no answer at all
    r = await probe("127.0.0.1", port, "http", timeout=1)
    assert not r.ok, r
