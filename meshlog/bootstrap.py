"""Where is the broker? One answer for every meshlog command.

Order: an explicit ``--bootstrap`` flag, then ``$MESHLOG_KAFKA_BOOTSTRAP``,
then the broker recorded by ``meshlog kafka up``. No guessing beyond that: a
command with no broker address fails with a message saying how to give one.
An address that is not a ``HOST:PORT[,HOST:PORT...]`` list is refused here,
whichever way it was given, before any client library sees it.
"""

from __future__ import annotations

import os

ENV_VAR = "MESHLOG_KAFKA_BOOTSTRAP"


class NoBrokerAddress(RuntimeError):
    pass


class BadBrokerAddress(NoBrokerAddress):
    pass


def _checked(address: str, where: str) -> str:
    from meshlog.argtypes import address_list_problem

    problem = address_list_problem(address)
    if problem:
        raise BadBrokerAddress(f"{where}: {problem}")
    return address


def resolve_bootstrap(explicit: str | None = None) -> str:
    if explicit:
        return _checked(explicit, "--bootstrap")
    from_env = os.environ.get(ENV_VAR)
    if from_env:
        return _checked(from_env, f"${ENV_VAR}")
    from meshlog import kafka_local

    state = kafka_local.load_state()
    if state is not None and kafka_local.pid_is_broker(state.pid, state.properties_path):
        return state.bootstrap
    raise NoBrokerAddress(
        f"no Kafka address: pass --bootstrap HOST:PORT, set {ENV_VAR}, or start a local broker with `meshlog kafka up`"
    )
