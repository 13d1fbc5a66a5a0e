"""Replay's read-path decoder against the write-side codec, per event, for unsigned and signed records.

Usage: python bench/replay_decode.py [--rounds N] [--events N]

Prints microseconds per event (the minimum over the rounds, memo warm), for the payloads a log repeats and
for rule edits apart (a log never repeats one: the decoder validates each and does not memoize it), for
``events.codec.decode_record`` (pydantic, the one schema) and
``events.record_decoder.RecordDecoder`` (msgspec header + the memo of validated
payloads), for records that are unsigned, signed one by one, and signed in
batches of 50 (one signature, a Merkle proof per event). The equivalence of
the two decoders is proven by tests/unit/replay/test_decode*.py; this only
measures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from events.codec import decode_record, encode  # noqa: E402
from events.envelope import new_event  # noqa: E402
from events.record_decoder import _NEVER_REPEATED, RecordDecoder  # noqa: E402
from tests.unit.projector.helpers import OCCURRED  # noqa: E402
from tests.unit.projector.signed import Trust, sidecar  # noqa: E402
from tests.unit.replay.history import RandomHistory  # noqa: E402
from tests.unit.events.test_record_decoder import Rec  # noqa: E402


def per_event_us(decode, records) -> float:
    started = time.perf_counter()
    for record in records:
        decode(record)
    return (time.perf_counter() - started) / len(records) * 1e6


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--events", type=int, default=2000)
    args = ap.parse_args(argv)
    signer = Trust().issue(sidecar("web", "1"))
    envelopes = [new_event(p, producer="bench", occurred_at=OCCURRED)
                 for p in RandomHistory("bench", 50).payloads(args.events)]
    kinds = {
        "unsigned": [Rec(encode(e), e.topic) for e in envelopes],
        "signed one by one": [Rec(encode(signer.sign(e)), e.topic) for e in envelopes],
        "signed in batches of 50": [Rec(encode(x), x.topic) for i in range(0, len(envelopes), 50)
                                    for x in signer.sign_batch(envelopes[i:i + 50])],
    }
    print(f"µs per event, minimum of {args.rounds} rounds over {args.events} records (replay's memo warm): the "
          f"payloads a log repeats (health, registrations: memo hits), and rule edits, which carry their revision, "
          f"are never repeated by a log and so are validated every time (not memoized)")
    for kind, records in kinds.items():
        fast = RecordDecoder()
        for record in records:  # warm: the memo, and pydantic's lazily built validators
            fast(record)
            decode_record(record)
        for part, subset in (("repeated", [r for r, e in zip(records, envelopes) if e.type not in _NEVER_REPEATED]),
                             ("rule edits", [r for r, e in zip(records, envelopes) if e.type in _NEVER_REPEATED])):
            if not subset:
                continue
            codec_us = min(per_event_us(decode_record, subset) for _ in range(args.rounds))
            fast_us = min(per_event_us(fast, subset) for _ in range(args.rounds))
            print(f"  {kind:<24} {part:<11} ({len(subset):>5}) codec {codec_us:6.1f}   replay decoder {fast_us:6.1f}"
                  f"   ({codec_us / fast_us:.1f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
