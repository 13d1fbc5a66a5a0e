"""What an impostor gets from a gateway (one delta xDS stream asking for someone else's node), and
from a sidecar's inbound listener (one HTTPS request with some mesh certificate: ``call_inbound``).

``ask_for_node`` is the attacker's side of the ``impostor`` scene: it dials
a gateway (mTLS with the given certificate files, or plaintext), asks for a
node's listeners as Envoy would, and records what came back: every response
and resource name it received, and the gRPC status that ended the stream.

Invariants:
- Bounded: the whole attempt ends within ``timeout`` seconds, whatever the
  gateway does; it never raises (a failure is the answer).
- Nothing received is interpreted; names are kept only to show that none
  arrived (``detail`` bounds and escapes anything shown).
"""

from __future__ import annotations

import asyncio
import http.client
import ssl
from dataclasses import dataclass, field

import grpc

from identity.pki import IdentityFiles

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"


@dataclass
class Attempt:
    status: grpc.StatusCode | None = None  # how the stream ended (None: still open at the timeout)
    message: str = ""
    responses: int = 0
    names: list[str] = field(default_factory=list)  # resource names received

    def refused_with(self, code: grpc.StatusCode) -> bool:
        return self.status == code and self.responses == 0

    def detail(self) -> str:
        status = self.status.name if self.status else "no status within the timeout"
        message = repr(self.message[:160])
        return f"{status} {message}; {self.responses} responses, {len(self.names)} resources received"


def credentials_of(files: IdentityFiles) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(files.bundle.read_bytes(), files.key.read_bytes(), files.cert.read_bytes())


async def _ask(address: str, node_id: str, files: IdentityFiles | None, timeout: float) -> Attempt:
    from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

    attempt = Attempt()
    channel = grpc.aio.secure_channel(address, credentials_of(files)) if files else grpc.aio.insecure_channel(address)
    async with channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources(timeout=timeout)
        request = discovery_pb2.DeltaDiscoveryRequest(type_url=LISTENER_TYPE)
        request.node.id = node_id
        try:
            await call.write(request)
            while True:
                reply = await call.read()
                if reply is grpc.aio.EOF:
                    break
                attempt.responses += 1
                attempt.names += [r.name for r in reply.resources]
        except grpc.RpcError as exc:
            attempt.status, attempt.message = exc.code(), exc.details() or ""
        except asyncio.InvalidStateError:  # the stream ended before the write: its status says why
            attempt.status, attempt.message = await call.code(), await call.details() or ""
    return attempt


def ask_for_node(address: str, node_id: str, files: IdentityFiles | None, timeout: float = 10.0) -> Attempt:
    """Ask the gateway at ``address`` for ``node_id``'s listeners holding ``files``' certificate (None: plaintext)."""
    try:
        return asyncio.run(asyncio.wait_for(_ask(address, node_id, files, timeout), timeout + 2))
    except asyncio.TimeoutError:
        return Attempt(message="the attempt did not end")
    except Exception as exc:  # noqa: BLE001 - the scene reports what happened, whatever it was
        return Attempt(message=f"{type(exc).__name__}: {exc}")


def call_inbound(port: int, files: IdentityFiles | None, host: str, timeout: float = 5.0) -> str:
    """GET / on a sidecar's inbound listener at 127.0.0.1:``port`` over TLS presenting ``files`` (None: no
    certificate). The answer as text: ``HTTP 403``, or why there was none (bounded); never raises."""
    try:
        ctx = ssl.create_default_context(cafile=str(files.bundle) if files else None)
        ctx.check_hostname = False  # sidecar certificates name a SPIFFE id, not a host
        if files is None:
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ctx.load_cert_chain(str(files.cert), str(files.key))
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=ctx)
        try:
            conn.request("GET", "/", headers={"Host": host})
            return f"HTTP {conn.getresponse().status}"
        finally:
            conn.close()
    except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
        return f"no answer: {type(exc).__name__} {str(exc)[:120]!r}"
