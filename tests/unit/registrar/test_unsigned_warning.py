"""`registrar` never appends unsigned events silently.

Story: on a plaintext broker the process has no mesh identity, so its events
go out unsigned, as plaintext development needs. A projector in its default
mode refuses every one of them, so the CLI says so on stderr, unless the
environment asked for the insecure mode (``MESHLOG_INSECURE_EVENTS=1``, the
one switch every folding reader honours). The producer is an in-memory
stand-in: what is tested is the CLI's decision, not Kafka.
"""

from __future__ import annotations

import pytest

from events.producer import Appended
from registrar import cli

ARGS = ["--bootstrap", "127.0.0.1:9", "publish", "--service", "web", "--instance-id", "web-1",
        "--address", "10.0.0.1", "--port", "8080"]


class _Producer:
    """What ``registrar.cli._append`` uses of ``events.producer.EventProducer``."""

    def __init__(self, signs: bool) -> None:
        self.signs = signs
        self.appended: list = []

    def __call__(self, bootstrap, **kwargs):
        return self

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False

    async def append(self, env):
        self.appended.append(env)
        return Appended(env.event_id, env.type, env.key, env.topic, 0, len(self.appended) - 1, 1_700_000_000_000)


@pytest.mark.parametrize("signs, insecure, warned", [
    (False, None, True),   # no identity, default mode: appended, and said
    (False, "1", False),   # no identity, the insecure mode asked for: appended quietly
    (True, None, False),   # signed by the process's identity: nothing to say
])
def test_an_unsigned_append_is_said_unless_the_insecure_mode_was_asked_for(monkeypatch, capsys, signs, insecure, warned):
    if insecure is None:
        monkeypatch.delenv("MESHLOG_INSECURE_EVENTS", raising=False)
    else:
        monkeypatch.setenv("MESHLOG_INSECURE_EVENTS", insecure)
    producer = _Producer(signs)
    monkeypatch.setattr(cli, "EventProducer", producer)
    assert cli.main(ARGS) == cli.EXIT_OK
    out, err = capsys.readouterr()
    assert len(producer.appended) == 1 and "appended instance.registered web/web-1" in out  # appended either way
    assert (cli.UNSIGNED_WARNING in err) is warned
    if warned:
        assert "--insecure-events" in err
