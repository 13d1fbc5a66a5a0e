"""events.signing and the signature fields of the envelope: sign, encode, decode, verify."""

from __future__ import annotations

import dataclasses
import os

import orjson
import pytest

from events import kafka_security
from events.codec import decode, encode, signing_bytes
from events.envelope import ENVELOPE_FIELDS, new_event
from events.errors import EventValidationError
from events.signing import FileSigner, Signer, SignerError, process_signer, verify_signature
from events.types import InstanceDeregistered
from identity import pki, spiffe


@pytest.fixture(scope="module")
def ca():
    return pki.create_root("mesh.local")


@pytest.fixture(scope="module")
def identity(ca):
    key = pki.generate_key()
    cert = pki.issue(ca, spiffe.sidecar("mesh.local", "web", "w1"), key.public_key())
    return cert, key


def event():
    return new_event(InstanceDeregistered(service="web", instance_id="w1"), producer="me")


def test_a_signed_envelope_round_trips_and_verifies(identity):
    cert, key = identity
    env = Signer(key, pki.serial_hex(cert)).sign(event())
    wire = encode(env)
    doc = orjson.loads(wire)
    assert set(doc) == set(ENVELOPE_FIELDS) - {"proof"} and doc["signer"] == pki.serial_hex(cert)
    back = decode(wire, "meshlog.registrations")
    assert back == env and back.signed_bytes == env.signed_bytes == signing_bytes(doc)
    assert verify_signature(cert.public_key(), back.signature, back.signed_bytes)
    # the canonical bytes cover everything but the signature: the claimed name and the serial included
    for field, value in (("producer", "someone else"), ("signer", "abc")):
        other = decode(orjson.dumps({**doc, field: value}), "meshlog.registrations")
        assert not verify_signature(cert.public_key(), other.signature, other.signed_bytes)


def test_an_unsigned_envelope_has_no_signature_fields(identity):
    env = event()
    assert set(orjson.loads(encode(env))) == {"event_id", "type", "schema_version", "occurred_at", "producer", "payload"}
    assert decode(encode(env)).signed_bytes is None and not decode(encode(env)).signed


@pytest.mark.parametrize("change, field, message", [
    ({"signature": None}, "signature", "must be base64"),
    ({"signer": "ABC"}, "signer", "lowercase hex"),
    ({"signer": "a" * 41}, "signer", "lowercase hex"),
    ({"signature": "x" * 201}, "signature", "base64, 1-200"),
    ({"signature": "not base64!"}, "signature", "must be base64"),
])
def test_bad_signature_fields_are_named(identity, change, field, message):
    cert, key = identity
    doc = orjson.loads(encode(Signer(key, pki.serial_hex(cert)).sign(event())))
    with pytest.raises(EventValidationError) as err:
        decode(orjson.dumps({**doc, **change}))
    assert err.value.problems[0].field == field and message in err.value.problems[0].problem


@pytest.mark.parametrize("drop", ["signer", "signature"])
def test_signer_and_signature_go_together(identity, drop):
    cert, key = identity
    doc = orjson.loads(encode(Signer(key, pki.serial_hex(cert)).sign(event())))
    del doc[drop]
    other = "signature" if drop == "signer" else "signer"
    with pytest.raises(EventValidationError) as err:
        decode(orjson.dumps(doc))
    assert err.value.problems[0].field == drop and "signer and signature go together" in err.value.problems[0].problem
    assert other in doc


def test_file_signer_follows_a_renewal_and_refuses_a_mismatched_pair(tmp_path, ca, identity):
    cert, key = identity
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(pki.cert_to_pem(cert))
    key_file.write_bytes(pki.key_to_pem(key))
    signer = FileSigner(str(cert_file), str(key_file))
    assert signer.serial == pki.serial_hex(cert)
    new_key = pki.generate_key()
    new_cert = pki.issue(ca, spiffe.sidecar("mesh.local", "web", "w1"), new_key.public_key())
    key_file.write_bytes(pki.key_to_pem(new_key))  # a renewal writes the key first: the pair does not match yet
    os.utime(key_file, ns=(1, 1))
    assert signer.serial == pki.serial_hex(cert)  # keeps signing with the last matching pair
    cert_file.write_bytes(pki.cert_to_pem(new_cert))
    env = signer.sign(event())
    assert env.signer == pki.serial_hex(new_cert)
    assert verify_signature(new_cert.public_key(), env.signature, env.signed_bytes)
    with pytest.raises(SignerError, match="does not belong to the certificate"):
        key_file.write_bytes(pki.key_to_pem(key))
        FileSigner(str(cert_file), str(key_file))


def test_file_signer_keeps_its_pair_while_a_file_is_missing_and_names_it_at_start(tmp_path, identity):
    cert, key = identity
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(pki.cert_to_pem(cert))
    with pytest.raises(SignerError, match=f"cannot read {key_file}"):
        FileSigner(str(cert_file), str(key_file))
    key_file.write_bytes(pki.key_to_pem(key))
    signer = FileSigner(str(cert_file), str(key_file))
    key_file.unlink()  # mid-replacement
    assert signer.sign(event()).signer == pki.serial_hex(cert)


def test_the_process_signer_is_the_kafka_client_identity(tmp_path, identity):
    cert, key = identity
    (tmp_path / "c.pem").write_bytes(pki.cert_to_pem(cert))
    (tmp_path / "k.pem").write_bytes(pki.key_to_pem(key))
    try:
        kafka_security.configure(kafka_security.KafkaSecurity())
        assert process_signer() is None  # plaintext development: nothing to sign with
        kafka_security.configure(kafka_security.KafkaSecurity(
            protocol="SSL", cert_file=str(tmp_path / "c.pem"), key_file=str(tmp_path / "k.pem")))
        assert process_signer().serial == pki.serial_hex(cert)
    finally:
        kafka_security.configure(None)


def test_signing_an_envelope_does_not_change_its_facts(identity):
    cert, key = identity
    env = event()
    signed = Signer(key, pki.serial_hex(cert)).sign(env)
    assert dataclasses.replace(signed, signer=None, signature=None) == env


def test_a_batch_is_signed_once_and_each_event_proves_its_place(identity):
    from events.signing import BATCH_PREFIX, leaf_hash, root_from_proof

    cert, key = identity
    envs = [new_event(InstanceDeregistered(service="web", instance_id=f"w{i}"), producer="me") for i in range(5)]
    batch = Signer(key, pki.serial_hex(cert)).sign_batch(envs)
    assert len({env.signature for env in batch}) == 1 and all(env.proof for env in batch)
    roots = set()
    for env in batch:
        back = decode(encode(env), "meshlog.registrations")
        assert back == env and back.proof == env.proof
        roots.add(root_from_proof(leaf_hash(back.signed_bytes), back.proof))
    (root,) = roots
    assert verify_signature(cert.public_key(), batch[0].signature, BATCH_PREFIX + root)
    # another event's proof, or an altered event, leads elsewhere
    assert root_from_proof(leaf_hash(batch[1].signed_bytes), batch[0].proof) != root
    doc = orjson.loads(encode(batch[2]))
    doc["payload"]["instance_id"] = "w0"
    altered = decode(orjson.dumps(doc))
    assert root_from_proof(leaf_hash(altered.signed_bytes), altered.proof) != root
    assert Signer(key, pki.serial_hex(cert)).sign_batch(envs[:1])[0].proof is None  # one alone: a plain signature


@pytest.mark.parametrize("proof", [[], ["X" + "A" * 44], ["L" + "A" * 43], "L" + "A" * 44, ["L" + "A" * 44] * 33, ["L" + "é" * 44]])
def test_a_malformed_proof_is_named(identity, proof):
    cert, key = identity
    envs = [event(), event()]
    doc = orjson.loads(encode(Signer(key, pki.serial_hex(cert)).sign_batch(envs)[0]))
    with pytest.raises(EventValidationError) as err:
        decode(orjson.dumps({**doc, "proof": proof}))
    assert err.value.problems[0].field == "proof"


def test_a_proof_needs_a_signature():
    doc = orjson.loads(encode(event()))
    with pytest.raises(EventValidationError) as err:
        decode(orjson.dumps({**doc, "proof": ["L" + "A" * 43 + "="]}))
    assert err.value.problems[0].field == "proof" and "only a signed envelope" in err.value.problems[0].problem
