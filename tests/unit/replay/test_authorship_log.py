"""replay log with verification: the author column is the verified identity, refusals are listed with reasons.

Text from the log (a claimed producer name with control characters) reaches
the terminal escaped and bounded.
"""

from __future__ import annotations

import dataclasses
import io

from rich.console import Console

from projector.state import empty_state
from replay import identities, report, text
from replay.engine import Walker
from tests.unit.projector.signed import MS0, SignedLog, Trust, sidecar


def test_the_log_names_the_verified_author_and_why_an_event_was_refused():
    trust = Trust()
    log = SignedLog(trust)
    log.by(sidecar("reviews", "r1")).register("reviews", "r1", "10.0.0.2", 9080, node_id="reviews-1")
    forged = log.by(sidecar("reviews", "evil")).register("reviews", "evil", "10.6.6.6", 9080, node_id="reviews-1")
    log.by(None)
    unsigned = log.register("reviews", "r9", "10.6.6.6", 9080)
    unsigned = dataclasses.replace(unsigned, envelope=dataclasses.replace(unsigned.envelope,
                                                                          producer="ops\x1b[31m\u202e"))
    events = [log.events[0], forged, unsigned]
    verifier = trust.verifier()
    walker = Walker(empty_state(), verifier=verifier)
    steps = [walker.step([e]) for e in events]
    doc = report.log_document(from_ms=MS0 - 1, to_ms=MS0 + 100, service=None, node=None, steps=steps,
                              author_of=lambda lg: identities.author_doc(verifier, lg))
    entries = [e for e in doc["entries"] if e["kind"] == "event"]
    assert [e["author"]["spiffe_id"] for e in entries] == [
        "spiffe://mesh.local/sidecar/reviews/r1", "spiffe://mesh.local/sidecar/reviews/evil", None]
    assert entries[1]["rejection"]["reason"].startswith("node id 'reviews-1' is held by the live registration")
    assert entries[2]["author"] == {"verified": False, "spiffe_id": None, "serial": None, "problem": "unsigned"}
    assert entries[2]["rejection"]["reason"] == "the event is not signed"

    [(lg, refusal)] = steps[1].decisions
    rdoc = report.rejection_doc(lg, refusal)
    assert (rdoc["kind_of_rule"], rdoc["name"], rdoc["problem"], rdoc["author"]) == (
        "authorship", "reviews/evil", "node_id_taken", "spiffe://mesh.local/sidecar/reviews/evil")
    assert report.payload_services(refusal) == {"reviews"}

    out = io.StringIO()
    text.print_log(Console(file=out, width=250), {**doc, "entries": doc["entries"] + [{"kind": "rejection", **rdoc}]})
    shown = out.getvalue()
    assert "spiffe://mesh.local/sidecar/reviews/evil" in shown
    assert "unverified (unsigned): claims ops\\x1b[31m\\u202e" in shown and "\x1b[31m" not in shown
    assert "instance.registered of reviews/evil (node_id_taken)" in shown
