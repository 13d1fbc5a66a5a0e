"""Identity facts are the root's: with the mesh root configured, only identity events it signed are folded.

Stories (``identity.verifier.Verifier.update``, fed as ``projector.identities``
and replay feed it; the root is configured, never learned from the log):
- issuances and a revocation signed by the root: accepted; a registration
  signed with the issued key verifies;
- an issuance signed by a sidecar key (even one the root issued), an
  unsigned issuance, and a root-signed issuance altered after signing are
  refused with their reasons, and a registration signed with the key such an
  issuance names is refused as ``unknown_signer``;
- without roots (plaintext development) the topic is trusted as it is;
- ``configured_roots`` is the root that issued this process's own Kafka
  identity, among the bundle's certificates.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from events import kafka_security, types as t
from events.codec import decode, encode
from events.envelope import Logged, new_event
from events.signing import Signer
from identity import pki, records
from identity.verifier import Verifier, configured_roots
from projector.fold import fold_many
from projector.state import empty_state
from tests.unit.projector.signed import MS0, T0, SignedLog, Trust, sidecar


@pytest.fixture(scope="module")
def trust() -> Trust:
    return Trust()


def issuance(trust: Trust, who, signer: Signer | None) -> tuple[Logged, Signer]:
    key = pki.generate_key()
    cert = pki.issue(trust.ca, who, key.public_key(), now=T0 - timedelta(minutes=1))
    env = new_event(records.issued(cert, trust.ca.certificate, how="offline", requested_by="test"))
    if signer is not None:
        env = signer.sign(env)
    return Logged(decode(encode(env), "meshlog.identities"), "meshlog.identities", 0, 100, MS0 - 1), \
        Signer(key, pki.serial_hex(cert))


def test_root_signed_identity_events_are_folded(trust):
    log = SignedLog(trust)
    log.by(sidecar("reviews", "r1")).register("reviews", "r1", "10.0.0.2", 9080)
    verifier = Verifier(roots=[trust.ca.certificate])
    verifier.update(trust.identity_events)
    assert verifier.identities_refused == 0
    state, decisions = fold_many(empty_state(), log.events, verifier)
    assert decisions == () and "reviews/r1" in state.instances


def test_identity_events_not_signed_by_the_root_are_refused_and_their_keys_sign_nothing(trust):
    holder = trust.issue(sidecar("web", "w1"))  # a real, root-issued sidecar identity
    by_sidecar, evil = issuance(trust, sidecar("reviews", "evil"), holder)
    unsigned, ghost = issuance(trust, sidecar("reviews", "ghost"), None)
    honest, _ = issuance(trust, sidecar("reviews", "twin"), records.authority_signer(trust.ca))
    wire = encode(honest.envelope)
    assert b'"requested_by":"test"' in wire
    altered = dataclasses.replace(honest, envelope=decode(
        wire.replace(b'"requested_by":"test"', b'"requested_by":"someone else"'), "meshlog.identities"))
    verifier = Verifier(roots=[trust.ca.certificate])
    verifier.update([*trust.identity_events, by_sidecar, unsigned, altered])
    root = pki.serial_hex(trust.ca.certificate)
    assert [why for _lg, why in verifier.refused_identities] == [
        f"not_a_root: signed by serial {holder.serial}, not by a configured mesh root",
        "unsigned: identity events are signed by the mesh root",
        f"bad_signature: the signature does not verify with the root's key (serial {root})",
    ]
    assert verifier.identities_refused == 3
    log = SignedLog(trust)
    log.by(evil).register("reviews", "evil", "10.6.6.6", 9080)
    log.by(ghost).register("reviews", "ghost", "10.6.6.7", 9080)
    state, decisions = fold_many(empty_state(), log.events, verifier)
    assert [(d.event_key, d.problem) for d in decisions if isinstance(d, t.EventRefused)] == [
        ("reviews/evil", "unknown_signer"), ("reviews/ghost", "unknown_signer")]
    assert not state.instances
    # without roots (plaintext development), the topic is trusted as it is
    open_verifier = Verifier()
    open_verifier.update([by_sidecar, unsigned])
    assert open_verifier.identities_refused == 0 and fold_many(empty_state(), log.events, open_verifier)[1] == ()


def test_the_configured_root_is_the_one_that_issued_this_process_identity(trust, tmp_path):
    other = pki.create_root("other.mesh")
    key = pki.generate_key()
    cert = pki.issue(trust.ca, sidecar("web", "w1"), key.public_key(), now=T0 - timedelta(minutes=1))
    files = pki.save_identity(tmp_path, cert, key, trust.ca.certificate)
    files.bundle.write_bytes(pki.cert_to_pem(other.certificate) + pki.cert_to_pem(trust.ca.certificate))
    try:
        kafka_security.configure(kafka_security.KafkaSecurity(protocol="SSL", ca_file=str(files.bundle),
                                                              cert_file=str(files.cert), key_file=str(files.key)))
        assert configured_roots() == (trust.ca.certificate,)
        kafka_security.configure(kafka_security.KafkaSecurity(protocol="SSL", ca_file=str(tmp_path / "none.pem"),
                                                              cert_file=str(files.cert), key_file=str(files.key)))
        with pytest.raises(ValueError, match="none.pem: cannot read the mesh root bundle"):
            configured_roots()
        kafka_security.configure(None)
        assert configured_roots() == ()  # plaintext: no mesh identity, no root
    finally:
        kafka_security.configure(None)


def test_a_revocation_only_the_root_signed_reaches_the_registry_a_gateway_folds(trust):
    # the gateway's revocation tail (xds_gateway.guard.tail_revocations) reads the identities log through
    # IdentityLog(admit=Verifier(roots).identity_refusal): a forged revocation must not close anyone's streams
    from identity.log import admitted
    from identity.registry import EMPTY, fold_many as fold_identities

    victim = trust.issue(sidecar("web", "w1"))
    other = trust.issue(sidecar("reviews", "r1"))

    def revocation(serial: str, signer: Signer | None) -> Logged:
        env = new_event(records.revoked("spiffe://mesh.local/sidecar/x/y", serial, reason="test", revoked_by="t"))
        if signer is not None:
            env = signer.sign(env)
        return Logged(decode(encode(env), "meshlog.identities"), "meshlog.identities", 0, 200, MS0)

    forged_unsigned = revocation(victim.serial, None)
    forged_by_sidecar = revocation(victim.serial, other)
    honest = revocation(other.serial, records.authority_signer(trust.ca))
    refused: list[tuple[int, str]] = []
    kept = admitted([forged_unsigned, forged_by_sidecar, honest],
                    Verifier(roots=[trust.ca.certificate]).identity_refusal,
                    lambda logged, why: refused.append(why.split(":")[0]))
    assert kept == [honest]
    assert refused == ["unsigned", "not_a_root"]
    registry = fold_identities(EMPTY, kept)
    assert set(registry.revocations) == {other.serial} and victim.serial not in registry.revocations


def test_replay_identities_shows_only_what_the_root_signed(trust):
    # `replay identities --at T` folds the topic through replay.identities.registry_of: with the mesh root
    # configured a forged issuance is neither listed as held nor able to revoke anything; the count is shown
    from replay.identities import held_document, registry_of

    forged, _ = issuance(trust, sidecar("reviews", "forged"), None)
    honest, _ = issuance(trust, sidecar("reviews", "honest"), records.authority_signer(trust.ca))
    registry, refused = registry_of([forged, honest], [trust.ca.certificate])
    doc = held_document(registry, MS0 + 1, refused=refused)
    held = {c["spiffe_id"] for c in doc["held"]}
    assert refused == 1 and doc["refused"] == 1
    assert any(h.endswith("/reviews/honest") for h in held) and not any(h.endswith("/reviews/forged") for h in held)
    # plaintext development, no root: the topic is trusted as it is
    open_registry, none_refused = registry_of([forged, honest], [])
    assert none_refused == 0 and len(open_registry.certificates) == 2
