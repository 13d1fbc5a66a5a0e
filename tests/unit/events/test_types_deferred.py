"""The event types build their validators on first use, and a first use from many threads at once is safe.

Each story runs in a fresh interpreter: in this one, other tests have long
since built every validator.
"""

import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_importing_the_vocabulary_builds_no_validator_and_a_first_validation_builds_only_its_type():
    out = _run("""
        from events import types as t
        from events.codec import validate_payload
        payload_types = [c for c in vars(t).values() if isinstance(c, type) and issubclass(c, t.Payload)
                         and c is not t.Payload and hasattr(c, "TYPE")]
        assert len(payload_types) > 20, payload_types
        built = [c.__name__ for c in payload_types if c.__pydantic_complete__]
        print("after import:", built)
        reg = validate_payload(t.InstanceRegistered,
                               {"service": "reviews", "instance_id": "reviews-1", "address": "10.0.0.5", "port": 9080})
        assert reg.weight == 1
        built = [c.__name__ for c in payload_types if c.__pydantic_complete__]
        print("after one validation:", built)
    """)
    assert out.splitlines() == ["after import: []", "after one validation: ['InstanceRegistered']"]


def test_a_first_validation_in_eight_threads_at_once_accepts_the_good_and_names_the_bad_field_in_each():
    # the hazard of deferred builds: a thread that validates while another is building could use the
    # parent's validator (no fields, extra="forbid") and refuse every field of a good event
    out = _run("""
        import threading
        from events import types as t
        from events.codec import validate_payload
        from events.errors import EventValidationError

        good = {"service": "reviews", "instance_id": "reviews-1", "address": "10.0.0.5", "port": 9080}
        start = threading.Barrier(8)
        results = []

        def validate(i):
            start.wait()
            if i % 2:
                results.append(validate_payload(t.InstanceRegistered, dict(good, weight=i)).weight)
            else:
                try:
                    validate_payload(t.InstanceRegistered, dict(good, port=0))
                    results.append("accepted")
                except EventValidationError as exc:
                    results.append(sorted(p.field for p in exc.problems))

        threads = [threading.Thread(target=validate, args=(i,)) for i in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        print(sorted(map(str, results)))
    """)
    assert out == str(sorted(map(str, [1, 3, 5, 7] + [["port"]] * 4)))
