"""Who signed an event: its signature checked against the identity that held the serial at the event's log time.

``Verifier(registry, roots).verdict(envelope, logged_ms)`` answers with a
``Verdict``: the verified SPIFFE id of the author, or the problem and why.
The live projector and ``replay`` build it from the same identities topic
(``identity.registry``'s fold) and ask it the same questions, so they agree
on every answer.

Invariants:
- The answer depends only on the registry's facts logged at or before
  ``logged_ms`` and on the envelope: an issuance or a revocation logged later
  changes nothing (``Registry.status_at``), so replaying old events verifies
  them with the certificates that were valid then.
- Order of checks (the first failing one is the answer): unsigned; the serial
  unknown at that time (``unknown_signer``); ``not_yet_valid``, ``expired``,
  ``revoked``; the certificate in the issuance does not chain to a trusted
  root or disagrees with the issuance's own fields (``untrusted_certificate``);
  the signature does not verify (``bad_signature``).
- A certificate is checked once per serial (the chain, the key, the SPIFFE
  id) and the result cached; only the ECDSA signature is checked per event —
  or per batch: an event signed with its producer's batch (``proof``, see
  ``events.signing``) is checked by recomputing the batch's Merkle root from
  the event itself, and a (serial, root, signature) already verified is not
  verified again. A root is only ever trusted after its own ECDSA check.
  A serial's issuance never changes once folded (the registry keeps the
  first), so the cache never goes stale.
- Once a serial has signed a verified event, its held window is memoized:
  serial -> (held from, held until, the verdict naming its author), from
  the later of its issuance's log time and its not-before, until the earlier
  of its not-after and its revocation's log time. An attested event logged
  inside that window is answered with two comparisons; the window is the
  same test as ``Registry.status_at`` == "held". The memo belongs to one
  registry: it is emptied whenever ``self.registry`` is another object
  (``update`` folds a batch into a new one: an issuance or a revocation
  always empties it), so a revocation folded between two events of the same
  signer refuses the later one.
- ``verify_ahead(events, pool)`` only moves work, never changes an answer:
  it starts the ECDSA checks of a batch on ``pool`` (``verification_pool``:
  worker processes, so they run on another core while the fold runs on this
  one; threads overlap badly, each check needing the GIL back from the busy
  fold), and ``verdict`` then takes the result it needs instead of checking
  again. A chunk the pool has not started when the fold needs it is
  cancelled and checked by the fold's own thread (work sharing: both cores
  verify, neither waits while the other has work); one started but not done
  within ``AHEAD_WAIT_S`` is checked by the fold's thread too (its late
  answers are dropped). An answer computed ahead
  is the same pure function of (public key, signature, bytes); the checks of
  time (held at the event's log time, revoked) stay in ``verdict``, in fold
  order. Only results for keys the registry already held are computed ahead;
  anything else is checked in the fold as before.
- Attested signatures (what projector attestations give replay:
  ``projector.attestations``, ``replay.attested_runs``): an envelope whose
  ``received_digest`` is ``events.envelope.ATTESTED_RUN`` was decoded from a
  record lying in a run a projector attested and the read found byte for
  byte as attested; the run stands for the ECDSA check (and, for a batch
  member, the Merkle proof) of the signature in those bytes: a fact about
  the key and the bytes only. The checks that depend on the log time
  (issued before it, valid at it, not revoked) still run for every attested
  event. The certificate's own check (its chain to a root, its key, its
  SPIFFE id against the issuance's) is vouched for too: a projector attests
  a signature only after it verified it with a certificate that passed that
  check, so replay does not parse the certificates of signers whose events
  are all attested (an ECDSA check and a parse each, ~0.27 ms: 2,000
  signers ~0.5 s of a cold replay). The author is then the issuance's
  SPIFFE id, the root-signed fact the certificate check compares the
  certificate with; a certificate this verifier found untrusted (on an
  unattested event) stays untrusted. Any other envelope without its signed
  bytes is refused (``bad_signature``). With ``record_vouches`` set to a
  list, the received digest of every event whose signature this verifier
  found good is appended to it (what the projector attests).
- Identity facts are the root's: with roots, ``update`` folds an identity
  event only if it is signed by one of them (the envelope names the root's
  serial; one ECDSA check against the configured root, nothing learned from
  the log, so no chicken-and-egg); any other is refused (``unsigned``,
  ``not_a_root``, ``bad_signature``), kept in ``refused_identities`` (the
  last 100) and counted, and changes no answer.
- Without roots, the identities topic is trusted as it is (its writers are
  the CA servers, by the broker's ACLs); with roots, each certificate must be
  signed directly by one of them.
"""

from __future__ import annotations

from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from events.envelope import ATTESTED_RUN, Envelope, Logged
from events.signing import BATCH_PREFIX, leaf_hash, root_from_proof, verify_signature
from identity.registry import EMPTY, Registry, epoch_ms, fold_many
from identity.spiffe import SpiffeId, SpiffeIdError, parse

#: how long the fold waits for a chunk the pool has started (64 checks take ~5 ms on a free core) before checking
#: its signatures itself: a worker starved of CPU must not stall the fold
AHEAD_WAIT_S = 0.01

#: the problems a verdict can name (also ``EventRefused.problem`` values)
PROBLEMS = ("unsigned", "unknown_signer", "not_yet_valid", "expired", "revoked", "untrusted_certificate", "bad_signature")


@dataclass(frozen=True, slots=True)
class Verdict:
    author: SpiffeId | None  # the verified author, None when not verified
    serial: str | None  # the serial the envelope named, if any
    problem: str | None = None  # one of PROBLEMS, None when verified
    detail: str = ""

    @property
    def verified(self) -> bool:
        return self.problem is None


@dataclass(frozen=True, slots=True)
class _Key:
    public_key: ec.EllipticCurvePublicKey | None
    author: SpiffeId | None
    problem: str = ""  # why the certificate is not trusted (public_key is None then)
    # when it is held, in broker ms: logged at or after ``logged_ms``, within [not_before_ms, not_after_ms)
    logged_ms: int = 0
    not_before_ms: int = 0
    not_after_ms: int = -1


class Verifier:
    """Verdicts on signed envelopes from the identities the log holds; feed it with ``update``."""

    def __init__(self, registry: Registry = EMPTY, roots: Sequence[x509.Certificate] = ()) -> None:
        self.registry = registry
        self.roots = tuple(roots)
        self._keys: dict[str, _Key] = {}
        self._roots: dict[tuple[str, str, bytes], bool] = {}  # (serial, signature, batch root) -> it verified
        self._climbs: dict = {}  # root_from_proof's memo: a batch's members share their upper Merkle steps
        # (serial, signature, signed bytes or BATCH_PREFIX + root) -> (the chunk's future, index): checked ahead
        self._ahead: dict[tuple[str, str, bytes], tuple[Future, int]] = {}
        self._chunks: list[tuple[Future, list]] = []  # submitted, in order: the last not started are stolen first
        self._stolen: dict[tuple[str, str, bytes], bool] = {}  # answers of chunks this thread took back
        self._abandoned: set[Future] = set()  # started chunks not done within AHEAD_WAIT_S: checked here instead
        self._key_points: dict[str, bytes] = {}  # serial -> its public key as an X9.62 point (what the pool loads)
        self.checked = 0  # ECDSA signatures checked (for reporting)
        self.checked_ahead = 0  # of which on verify_ahead's pool
        self._verified: dict[str, Verdict] = {}  # serial -> the verdict naming its author
        # serial -> (held from ms, held until ms, the verdict naming its author): valid for ``_held_for`` only
        self._held: dict[str, tuple[int, int, Verdict]] = {}
        self._held_for: Registry = registry
        self.vouched_hits = 0  # attested events answered (``ATTESTED_RUN``)
        self.record_vouches: list[bytes] | None = None  # when a list: received digests of events found well signed
        self._root_keys = {format(root.serial_number, "x"): root.public_key() for root in self.roots}
        self.identities_refused = 0
        self.refused_identities: list[tuple[Logged, str]] = []  # the last 100 (event, why)

    def update(self, events: Iterable[Logged]) -> None:
        """Fold identity events (others are ignored) into the registry; with roots, only those a root signed."""
        if self.roots:
            accepted = []
            for logged in events:
                problem = self.identity_refusal(logged)
                if problem is None:
                    accepted.append(logged)
                else:
                    self.identities_refused += 1
                    self.refused_identities = [*self.refused_identities[-99:], (logged, problem)]
            events = accepted
        self.registry = fold_many(self.registry, events)

    def identity_refusal(self, logged: Logged) -> str | None:
        """Why a root did not state identity event ``logged`` (None: it did), given roots."""
        env = logged.envelope
        if env.signer is None or env.signature is None or env.signed_bytes is None:
            return "unsigned: identity events are signed by the mesh root"
        root = self._root_keys.get(env.signer)
        if root is None:
            return f"not_a_root: signed by serial {env.signer}, not by a configured mesh root"
        if not self._signature_ok(root, env.signer, env.signature, env.signed_bytes, env.proof):
            return f"bad_signature: the signature does not verify with the root's key (serial {env.signer})"
        return None

    def _key(self, serial: str) -> _Key:
        key = self._keys.get(serial)
        if key is None:
            key = self._keys[serial] = self._check_certificate(serial)
        return key

    def _check_certificate(self, serial: str) -> _Key:
        key = self._check_chain(serial)
        cert = self.registry.certificates[serial]
        return _Key(key.public_key, key.author, key.problem, cert.logged_ms, epoch_ms(cert.not_before),
                    epoch_ms(cert.not_after))

    def _check_chain(self, serial: str) -> _Key:
        cert = self.registry.certificates[serial]
        try:
            parsed = x509.load_pem_x509_certificate(cert.certificate.encode())
            author = parse(cert.spiffe_id)
        except (ValueError, SpiffeIdError) as exc:
            return _Key(None, None, f"the issued certificate is unreadable ({str(exc)[:120]})")
        if format(parsed.serial_number, "x") != serial:
            return _Key(None, None, "the issued certificate's serial differs from the issuance's")
        public_key = parsed.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(public_key.curve, ec.SECP256R1):
            return _Key(None, None, "the certificate's key is not ECDSA P-256")
        try:
            uris = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
                x509.UniformResourceIdentifier)
        except x509.ExtensionNotFound:
            uris = []
        if uris != [cert.spiffe_id]:
            return _Key(None, None, "the certificate's SPIFFE id differs from the issuance's")
        if self.roots and not any(_issued_by(parsed, root) for root in self.roots):
            return _Key(None, None, "the certificate is not signed by a trusted root")
        return _Key(public_key, author)

    def verdict(self, env: Envelope, logged_ms: int) -> Verdict:
        """Who signed ``env`` (logged at broker time ``logged_ms``), or why that is not known."""
        serial, signature, received = env.signer, env.signature, env.received_digest
        if serial is None or signature is None:
            return Verdict(None, None, "unsigned", "the event is not signed")
        if received is ATTESTED_RUN:
            # replay with attestations: the common case of a held key, two comparisons
            if self._held_for is not self.registry:  # another registry (``update``): its windows may differ
                self._held.clear()
                self._held_for = self.registry
            held = self._held.get(serial)
            if held is not None and held[0] <= logged_ms < held[1]:
                self.vouched_hits += 1
                return held[2]
            return self._attested_verdict(serial, logged_ms)
        data = env.signed_bytes
        if data is None:
            return Verdict(None, serial, "bad_signature", "the event was decoded without its signed bytes and not "
                           "in an attested run: its signature is not checked")
        return self.check(serial, signature, data, logged_ms, what="event", proof=env.proof, received=received)

    def _attested_verdict(self, serial: str, logged_ms: int) -> Verdict:
        """The verdict on an attested event of ``serial`` (see the module docstring): every check that depends on
        the log time (issued, valid, not revoked: ``Registry.status_at``) runs; the signature's and the
        certificate's own checks are what the attestation vouches for. The author is the issuance's SPIFFE id (the
        root-signed fact the certificate check compares the certificate with). A certificate this verifier found
        untrusted (checking an unattested event of the same serial) stays untrusted."""
        status = self.registry.status_at(serial, logged_ms)
        if status != "held":
            return self._not_held(serial, status, "event")
        key = self._keys.get(serial)
        if key is not None and key.public_key is None:
            return Verdict(None, serial, "untrusted_certificate", f"serial {serial}: {key.problem}")
        cert = self.registry.certificates[serial]
        verified = self._verified.get(serial)
        if verified is None:
            try:
                author = parse(cert.spiffe_id)
            except SpiffeIdError as exc:
                return Verdict(None, serial, "untrusted_certificate",
                               f"serial {serial}: the issued SPIFFE id is unreadable ({str(exc)[:120]})")
            verified = self._verified[serial] = Verdict(author, serial)
        self._remember_held(serial, cert.logged_ms, epoch_ms(cert.not_before), epoch_ms(cert.not_after), verified)
        self.vouched_hits += 1
        return verified

    def _remember_held(self, serial: str, logged_ms: int, not_before_ms: int, not_after_ms: int,
                       verified: Verdict) -> None:
        """Memoize the window ``verdict`` answers attested events of ``serial`` in (see the module docstring)."""
        if self._held_for is not self.registry:
            self._held.clear()
            self._held_for = self.registry
        revoked = self.registry.revocations.get(serial)
        until = not_after_ms if revoked is None else min(not_after_ms, revoked.logged_ms)
        self._held[serial] = (max(logged_ms, not_before_ms), until, verified)

    def _not_held(self, serial: str, status: str, what: str) -> Verdict:
        """Why ``serial`` was not held when the ``what`` was logged (``status``: ``Registry.status_at``'s)."""
        if status == "not_issued":
            return Verdict(None, serial, "unknown_signer",
                           f"no certificate with serial {serial} was issued before the {what} was logged")
        cert = self.registry.certificates[serial]
        if status == "revoked":
            r = self.registry.revocations[serial]
            return Verdict(None, serial, "revoked", f"{cert.spiffe_id} (serial {serial}) was revoked before the "
                           f"{what} was logged ({r.reason[:200]})")
        when = cert.not_after if status == "expired" else cert.not_before
        what = "expired at" if status == "expired" else "not valid before"
        return Verdict(None, serial, status, f"{cert.spiffe_id} (serial {serial}) {what} {when.isoformat()}")

    def check(self, serial: str, signature: str, data: bytes | None, logged_ms: int, *, what: str = "record",
              proof: tuple[str, ...] | None = None, received: bytes | None = None, attested: bool = False
              ) -> Verdict:
        """Whether ``signature`` over ``data`` is by the holder of ``serial`` at ``logged_ms`` (the same checks
        for anything signed: events, snapshots). ``attested``: the signature's check is vouched for (the record
        whose ``received`` digest a trusted verifier attested); every other check runs. ``received``: recorded in
        ``record_vouches`` when the signature is found good."""
        key = self._keys.get(serial)
        if (key is not None and key.public_key is not None
                and key.logged_ms <= logged_ms and key.not_before_ms <= logged_ms < key.not_after_ms):
            revoked = self.registry.revocations.get(serial)
            if revoked is None or revoked.logged_ms > logged_ms:  # held: the common case, without status_at
                if not self._signature_good(key.public_key, serial, signature, data, proof, received, attested):
                    return Verdict(None, serial, "bad_signature",
                                   f"the signature does not verify with the key of {key.author.uri} (serial {serial})")
                verified = self._verified.get(serial)  # one (immutable) answer per serial, not one per event
                if verified is None:
                    verified = self._verified[serial] = Verdict(key.author, serial)
                self._remember_held(serial, key.logged_ms, key.not_before_ms, key.not_after_ms, verified)
                return verified
        status = self.registry.status_at(serial, logged_ms)
        if status != "held":
            return self._not_held(serial, status, what)
        key = self._key(serial)
        if key.public_key is None:
            # attested events of this serial answered before from the issuance alone are not answered from the
            # memo any more: from now on they get the answer below too, whatever order they come in
            self._held.pop(serial, None)
            self._verified.pop(serial, None)
            return Verdict(None, serial, "untrusted_certificate", f"serial {serial}: {key.problem}")
        if not self._signature_good(key.public_key, serial, signature, data, proof, received, attested):
            return Verdict(None, serial, "bad_signature",
                           f"the signature does not verify with the key of {key.author.uri} (serial {serial})")
        return Verdict(key.author, serial)

    def _signature_good(self, public_key, serial: str, signature: str, data: bytes | None, proof,
                        received: bytes | None, attested: bool) -> bool:
        if attested:
            self.vouched_hits += 1
            return True
        if data is None:
            return False
        ok = self._signature_ok(public_key, serial, signature, data, proof)
        if ok and received is not None and self.record_vouches is not None:
            self.record_vouches.append(received)
        return ok

    def verify_ahead(self, events: Iterable[Logged], pool: Executor, *, chunk: int = 64) -> list[Future]:
        """Start the signature checks ``verdict`` will need for ``events`` on ``pool``'s threads (see the module
        docstring: the answers are the same, only computed on another core while the caller folds); returns the
        pool's futures (nobody needs to wait for them: ``verdict`` does, for the answers it needs)."""
        todo: list[tuple[tuple[str, str, bytes], ec.EllipticCurvePublicKey, str, bytes]] = []
        batches: set[tuple[str, str]] = set()  # (serial, batch signature): one check per batch
        certificates = self.registry.certificates
        for logged in events:
            env = logged.envelope
            serial, signature, data = env.signer, env.signature, env.signed_bytes
            if serial is None or signature is None or data is None:
                continue
            key = self._keys.get(serial)
            if key is None:
                if serial not in certificates:
                    continue
                key = self._key(serial)  # the certificate check: once per serial, cached
            if key.public_key is None:
                continue
            if env.proof is not None:
                if (serial, signature) in batches:
                    continue
                batches.add((serial, signature))
                root = root_from_proof(leaf_hash(data), env.proof, self._climbs)
                if root is None or (serial, signature, root) in self._roots:
                    continue
                data = BATCH_PREFIX + root
            todo.append(((serial, signature, data), key.public_key, signature, data))
        if len(self._ahead) > 200_000:  # results never asked for (a batch folded elsewhere): checked again if needed
            self._ahead.clear()
            self._stolen.clear()
        self._chunks = [c for c in self._chunks if not c[0].done()]
        self._abandoned = {f for f in self._abandoned if not f.done()}
        futures = []
        for i in range(0, len(todo), chunk):
            part = todo[i: i + chunk]
            future = pool.submit(_verify_all, [(self._point(cache_key[0], k), sig, data)
                                               for cache_key, k, sig, data in part])
            futures.append(future)
            self._chunks.append((future, part))
            for j, (cache_key, *_rest) in enumerate(part):
                self._ahead[cache_key] = (future, j)
        return futures

    def _point(self, serial: str, public_key: ec.EllipticCurvePublicKey) -> bytes:
        point = self._key_points.get(serial)
        if point is None:
            point = self._key_points[serial] = public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        return point

    def _verify(self, public_key, serial: str, signature: str, data: bytes) -> bool:
        self.checked += 1
        cache_key = (serial, signature, data)
        ahead = self._ahead.pop(cache_key, None)
        if ahead is not None:
            future, index = ahead
            while not future.done() and self._steal():
                pass  # rather than wait for the pool, check the chunks it has not started (from the last)
            if not future.cancelled() and future not in self._abandoned:
                try:
                    answers = future.result(timeout=AHEAD_WAIT_S)
                except TimeoutError:  # a worker starved of CPU (a loaded host): its chunk is checked here instead
                    self._abandoned.add(future)
                    answers = None
                except Exception:  # noqa: BLE001 - the pool broke (a worker died): the answer is checked here
                    answers = None
                if answers is not None:
                    self.checked_ahead += 1
                    return answers[index]
            stolen = self._stolen.pop(cache_key, None)
            if stolen is not None:
                return stolen
        return verify_signature(public_key, signature, data)

    def _steal(self) -> bool:
        """Take back the last chunk the pool has not started and check it here; False when there is none."""
        while self._chunks:
            future, part = self._chunks.pop()
            if future.cancel():
                for cache_key, public_key, signature, data in part:
                    self._stolen[cache_key] = verify_signature(public_key, signature, data)
                return True
        return False

    def _signature_ok(self, public_key, serial: str, signature: str, data: bytes, proof) -> bool:
        if proof is None:
            return self._verify(public_key, serial, signature, data)
        root = root_from_proof(leaf_hash(data), proof, self._climbs)
        if root is None:
            return False
        cache_key = (serial, signature, root)
        known = self._roots.get(cache_key)
        if known is None:
            known = self._roots[cache_key] = self._verify(public_key, serial, signature, BATCH_PREFIX + root)
            if len(self._roots) > 100_000:  # bounded: an old batch is simply verified again
                self._roots.clear()
                self._roots[cache_key] = known
        return known


_POOL_KEYS: dict[bytes, ec.EllipticCurvePublicKey] = {}  # in a pool's process: the keys loaded so far


def _verify_all(items: list[tuple[bytes, str, bytes]]) -> list[bool]:
    """The pool's job (in a worker process): each (X9.62 public key point, signature, data) verified."""
    answers = []
    for point, signature, data in items:
        public_key = _POOL_KEYS.get(point)
        if public_key is None:
            if len(_POOL_KEYS) > 100_000:
                _POOL_KEYS.clear()
            public_key = _POOL_KEYS[point] = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        answers.append(verify_signature(public_key, signature, data))
    return answers


def configured_roots() -> tuple[x509.Certificate, ...]:
    """The mesh root(s) this process trusts: the certificates of its Kafka CA bundle that issued its own Kafka
    client certificate (a process with a mesh identity trusts the root that issued it). Empty without a client
    certificate (plaintext development: the identities topic is trusted as it is). A bundle or certificate that
    cannot be read raises ``ValueError`` naming the file: never silently trust less."""
    from events import kafka_security  # its settings are read at call time

    sec = kafka_security.current()
    if not sec.ca_file or not sec.cert_file:
        return ()
    try:
        with open(sec.ca_file, "rb") as f:
            bundle = x509.load_pem_x509_certificates(f.read())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{sec.ca_file}: cannot read the mesh root bundle ({str(exc)[:160]})") from None
    try:
        with open(sec.cert_file, "rb") as f:
            own = x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{sec.cert_file}: cannot read this process's certificate ({str(exc)[:160]})") from None
    return tuple(root for root in bundle if _issued_by(own, root))


def verification_pool(workers: int = 1) -> Executor:
    """The worker processes ``Verifier.verify_ahead`` checks signatures on (one: the second core of a two-core
    host). Processes, not threads: a thread's ECDSA check does release the GIL, but getting it back from a busy
    fold stalls both (measured: the checks did not overlap the fold). Spawned, not forked: the caller runs an
    event loop and Kafka clients' threads."""
    import multiprocessing

    return ProcessPoolExecutor(max_workers=max(1, workers), mp_context=multiprocessing.get_context("spawn"))


def _issued_by(cert: x509.Certificate, root: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(root)
        return True
    except (ValueError, TypeError, Exception):  # noqa: BLE001 - InvalidSignature and friends: not this root
        return False
