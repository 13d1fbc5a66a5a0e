"""Replication of meshlog's topics follows the cluster's size (events.topics.replication_for)."""

from __future__ import annotations

import pytest

from events import topics


@pytest.mark.parametrize("brokers, expected", [(1, (1, 1)), (2, (2, 1)), (3, (3, 2)), (5, (3, 2))])
def test_replication_for(brokers, expected):
    assert topics.replication_for(brokers) == expected


def test_replication_needs_a_broker():
    with pytest.raises(ValueError, match="at least one broker"):
        topics.replication_for(0)


@pytest.mark.parametrize("spec", topics.ALL_TOPICS, ids=lambda s: s.name)
def test_every_topic_on_three_brokers_keeps_its_settings_and_is_replicated(spec):
    replicated = spec.replicated(3)
    assert replicated.replication_factor == 3
    assert replicated.config["min.insync.replicas"] == "2"
    assert replicated.config["unclean.leader.election.enable"] == "false"
    assert {k: v for k, v in replicated.config.items() if k in spec.config} == dict(spec.config)
    assert (replicated.name, replicated.partitions) == (spec.name, spec.partitions)


def test_a_single_broker_gets_one_copy_and_one_in_sync_replica():
    spec = topics.BY_NAME[topics.REGISTRATIONS].replicated(1)
    assert spec.replication_factor == 1 and spec.config["min.insync.replicas"] == "1"


async def test_a_topic_a_lagging_broker_does_not_know_yet_is_described_again(monkeypatch):
    """A cluster broker answers UNKNOWN_TOPIC_OR_PARTITION (3) for a topic created a moment ago: asked again."""
    from types import SimpleNamespace

    from events import admin

    monkeypatch.setattr(admin, "_DESCRIBE_RETRY_S", 0)
    answers = [
        [SimpleNamespace(resources=[(0, "", 2, "a", [("cleanup.policy", "delete")]), (3, "unknown", 2, "b", [])])],
        [SimpleNamespace(resources=[(0, "", 2, "b", [("cleanup.policy", "compact")])])],
    ]
    asked = []

    class Admin:
        async def describe_configs(self, resources):
            asked.append([r.name for r in resources])
            return answers.pop(0)

    configs = await admin._describe_topic_configs(Admin(), ["a", "b"])
    assert configs == {"a": {"cleanup.policy": "delete"}, "b": {"cleanup.policy": "compact"}}
    assert asked == [["a", "b"], ["b"]]


async def test_a_topic_without_partitions_in_a_lagging_brokers_metadata_is_described_again(monkeypatch):
    from events import admin

    monkeypatch.setattr(admin, "_DESCRIBE_RETRY_S", 0)
    answers = [[{"topic": "a", "error_code": 0, "partitions": [{"replicas": [1]}]},
                {"topic": "b", "error_code": 3, "partitions": []}],
               [{"topic": "b", "error_code": 0, "partitions": [{"replicas": [1, 2, 3]}]}]]

    class Admin:
        async def describe_topics(self, names):
            return answers.pop(0)

    described = await admin._describe_topics(Admin(), ["a", "b"])
    assert [(t["topic"], len(t["partitions"][0]["replicas"])) for t in described] == [("a", 1), ("b", 3)]
