"""Where is the broker? One answer for every meshlog command.

Order: an explicit ``--bootstrap`` flag, then ``$MESHLOG_KAFKA_BOOTSTRAP``,
then the broker recorded by ``meshlog kafka up``. No guessing beyond that: a
command with no broker address fails with a message saying how to give one.
"""

from __future__ import annotations

import os

ENV_VAR = "MESHLOG_KAFKA_BOOTSTRAP"


class NoBrokerAddress(RuntimeError):
    pass


def resolve_bootstrap(explicit: str | None = None) -> str:
    if explicit:
        return explicit
    from_env = os.environ.get(ENV_VAR)
    if from_env:
        return from_env
    from meshlog import kafka_local

    state = kafka_local.load_state()
    if state is not None and kafka_local.pid_is_broker(state.pid, state.properties_path):
        return state.bootstrap
    raise NoBrokerAddress(
        f"no Kafka address: pass --bootstrap HOST:PORT, set {ENV_VAR}, or start a local broker with `meshlog kafka up`"
    )
