"""identity.serve.CaService's join/renew protocol over an in-memory log (the real-broker story is
tests/integration/test_ca.py): claims interleaved across replicas, and no decision without the log."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import orjson
import pytest
from cryptography.hazmat.primitives import serialization

from events.envelope import Logged
from identity import pki, tokens
from identity.authority import Refused
from identity.log import LogUnavailable
from identity.registry import EMPTY, fold_many
from identity.serve import CaService

NOW = datetime.now(timezone.utc)
CA = pki.create_root("mesh.local", now=NOW - timedelta(days=1))


class MemoryLog:
    """One partition: appends get the next offset; reads fold up to an offset."""

    def __init__(self) -> None:
        self.records: list[Logged] = []
        self.position = 0
        self.down = False

    async def append(self, env):
        await asyncio.sleep(0)  # let other requests run between check and claim
        if self.down:
            from events.admin import AppendFailed
            raise AppendFailed("broker gone")
        offset = len(self.records)
        self.records.append(Logged(env, env.topic, 0, offset, int(datetime.now(timezone.utc).timestamp() * 1000)))

        class Appended:
            pass
        a = Appended()
        a.offset = offset
        return a


class ReplicaView:
    """One replica's IdentityLog over the shared MemoryLog."""

    def __init__(self, log: MemoryLog) -> None:
        self.log = log
        self.position = 0

    async def sync(self):
        if self.log.down:
            raise LogUnavailable("down")
        return await self.catch_up(len(self.log.records))

    async def catch_up(self, offset: int):
        await asyncio.sleep(0)
        self.position = offset
        return fold_many(EMPTY, self.log.records[:offset])


def replica(log: MemoryLog, name: str) -> CaService:
    return CaService(ca=CA, identities=ReplicaView(log), producer=log, replica=name)


def join_body(token: str, instance: str) -> bytes:
    csr = pki.make_csr(pki.generate_key()).public_bytes(serialization.Encoding.PEM).decode()
    return orjson.dumps({"token": token, "csr": csr, "service": "reviews", "instance": instance})


async def test_interleaved_replicas_grant_a_token_once():
    log = MemoryLog()
    a, b = replica(log, "ca-0"), replica(log, "ca-1")
    token = tokens.mint(CA, "reviews", now=datetime.now(timezone.utc))
    results = await asyncio.gather(a.join(join_body(token, "r1")), b.join(join_body(token, "r2")),
                                   a.join(join_body(token, "r3")), return_exceptions=True)
    granted = [r for r in results if not isinstance(r, BaseException)]
    assert len(granted) == 1 and all(isinstance(r, Refused) and r.reason == "used"
                                     for r in results if r not in granted)
    types = [lg.envelope.type for lg in log.records]
    # every replica claimed (they all checked before any claim was logged), one certificate was issued
    assert types.count("join_token.redeemed") == 3 and types.count("identity.issued") == 1


async def test_renewal_after_revocation_is_refused_and_a_down_log_decides_nothing():
    log = MemoryLog()
    ca0 = replica(log, "ca-0")
    issued = await ca0.join(join_body(tokens.mint(CA, "reviews", now=datetime.now(timezone.utc)), "r1"))
    csr = pki.make_csr(pki.generate_key()).public_bytes(serialization.Encoding.PEM).decode()
    renewed = await ca0.renew(orjson.dumps({"csr": csr}), issued.cert)
    assert pki.spiffe_id_of(renewed.cert) == pki.spiffe_id_of(issued.cert)
    from events.envelope import new_event
    from identity import records
    await log.append(new_event(records.revoked(pki.spiffe_id_of(issued.cert).uri, pki.serial_hex(issued.cert),
                                               reason="r", revoked_by="ops")))
    with pytest.raises(Refused) as err:
        await ca0.renew(orjson.dumps({"csr": csr}), issued.cert)
    assert err.value.reason == "revoked"
    log.down = True
    with pytest.raises(LogUnavailable):
        await ca0.join(join_body(tokens.mint(CA, "reviews", now=datetime.now(timezone.utc)), "r2"))
    assert ca0.issued == 2
