"""The ACL table as bindings, and the broker-side mapping from certificate to role principal."""

from __future__ import annotations

import re

from events import topics
from events.kafka_acls import (
    ACL_TABLE, CA_SERVER, CHECKER, GATEWAY, OPERATOR, PREFIXED, PROJECTOR, READ, REGISTRAR_TRANSACTIONAL_PREFIX, REPLAY,
    ROLES, SIDECAR, TOPIC, WRITE, acl_bindings,
)
from identity import spiffe
from meshlog import kafka_local as kl


def test_every_role_has_a_row_and_every_grant_names_a_known_topic_or_prefix():
    assert set(ACL_TABLE) == set(ROLES)
    for role, grants in ACL_TABLE.items():
        assert role in spiffe.ROLES, f"{role} is not a role the mesh CA issues"
        for g in grants:
            if g.resource_type == "TOPIC":
                assert g.name in topics.BY_NAME and g.pattern == "LITERAL"


def test_bindings_are_unique_allow_entries_per_role_principal():
    bindings = acl_bindings()
    assert len(bindings) == len(set(bindings))
    assert {b.principal for b in bindings} == {f"User:{r}" for r in ROLES}
    assert all(len(b.line().split("\t")) == 5 for b in bindings)
    side = [b for b in bindings if b.principal == "User:sidecar"]
    assert ("TRANSACTIONAL_ID", PREFIXED, REGISTRAR_TRANSACTIONAL_PREFIX, WRITE) in {
        (b.resource_type, b.pattern, b.name, b.operation) for b in side}


def test_readers_never_write():
    assert not [g for g in ACL_TABLE[REPLAY] if WRITE in g.operations]
    # a gateway appends what its proxies ACKed (meshlog.sync), which nothing folds into a config, and the
    # subscriptions they learn on demand (registrations topic), which the fold judges
    assert {g.name for g in ACL_TABLE[GATEWAY] if WRITE in g.operations} == {topics.SYNC, topics.REGISTRATIONS}
    assert not [g for g in ACL_TABLE[SIDECAR] if g.name.startswith(topics.PREFIX + "views")]


def _map_principal(dn: str) -> str:
    """Kafka's SslPrincipalMapper for our rules: first matching RULE wins, DEFAULT keeps the DN."""
    for rule in kl.PRINCIPAL_MAPPING_RULES.split(",DEFAULT")[0].split(",RULE:"):
        body = rule.removeprefix("RULE:")
        pattern, replacement = re.fullmatch(r"((?:\\/|[^/])*)/((?:\\/|[^/])*)/", body).groups()
        m = re.match(pattern.replace("\\/", "/"), dn)
        if m:
            return m.expand(replacement.replace("$", "\\"))
    return dn


def test_certificate_cn_maps_to_its_role():
    for ident, role in ((spiffe.sidecar("mesh.local", "reviews", "r1"), "sidecar"),
                        (spiffe.projector("mesh.local"), "projector"),
                        (spiffe.gateway("mesh.local", "g-1"), "gateway"),
                        (spiffe.SpiffeId.of("mesh.local", "broker", "1"), "broker"),
                        (spiffe.SpiffeId.of("mesh.local", "ca-server", "c1"), "ca-server")):
        assert _map_principal(f"CN={ident.common_name}") == role
    long_cn = spiffe.sidecar("mesh.local", "s" * 60, "i" * 60).common_name  # hashed past 64 characters
    assert _map_principal(f"CN={long_cn}") == "sidecar"
    # anything else keeps its full DN, which no ACL names
    assert _map_principal("CN=Some Person,O=Elsewhere") == "CN=Some Person,O=Elsewhere"


def test_secure_broker_properties(tmp_path):
    secure = kl.secure_properties(keystore=tmp_path / "k.pem", truststore=tmp_path / "ca.pem", super_users=("broker",))
    props = kl.server_properties(port=1, controller_port=2, log_dir=tmp_path, secure=secure)
    assert props["listeners"] == "SSL://127.0.0.1:1,CONTROLLER://127.0.0.1:2"
    assert props["listener.security.protocol.map"] == "SSL:SSL,CONTROLLER:SSL"
    assert props["inter.broker.listener.name"] == "SSL"
    assert props["ssl.client.auth"] == "required"
    assert props["ssl.keystore.type"] == props["ssl.truststore.type"] == "PEM"
    assert props["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["super.users"] == "User:broker"
    # java.util.Properties reads '\\/' back as '\/', the rule's escaped slash
    assert "ssl.principal.mapping.rules=RULE:^CN=([a-z][a-z0-9-]*)(\\\\/" in kl.render_properties(props)


def allowed(role: str, operation: str) -> set[str]:
    return {g.name for g in ACL_TABLE[role] if g.resource_type == TOPIC and operation in g.operations}


def test_the_table_says_what_the_issue_asks():
    # spelled out, so a change to the table that breaks the trust model fails here and not only in review
    assert allowed(SIDECAR, WRITE) == {topics.REGISTRATIONS, topics.HEALTH}
    # its subscription API answers a refusal from the projector's decision (proxy.subscriptions); nothing else
    assert allowed(SIDECAR, READ) == {topics.REJECTIONS}
    # gateways append what proxies ACK, and the learned subscriptions of on-demand discovery
    assert allowed(GATEWAY, WRITE) == {topics.SYNC, topics.REGISTRATIONS} and allowed(REPLAY, WRITE) == set()
    # replay log's convergence and `meshlog status` read the ACKs and the views they are compared with
    assert {topics.SYNC, topics.VIEW_MEMBERSHIP} <= allowed(REPLAY, READ)
    assert allowed(OPERATOR, WRITE) == {topics.RULES, topics.REGISTRATIONS, topics.HEALTH, topics.IDENTITIES}
    assert allowed(CHECKER, WRITE) == {topics.HEALTH}
    # checkers verify the registrations they probe against the identities log, as the projector does
    assert allowed(CHECKER, READ) == {topics.REGISTRATIONS, topics.HEALTH, topics.IDENTITIES, topics.HEALTHCHECK_SHARDS}
    assert allowed(PROJECTOR, WRITE) == {topics.VIEW_RESOURCES, topics.VIEW_MEMBERSHIP, topics.SNAPSHOTS,
                                         topics.REJECTIONS, topics.DEADLETTER, topics.ATTESTATIONS}
    # attestations vouch for signatures replay then skips: only the projector writes them
    assert {r for r in ACL_TABLE if topics.ATTESTATIONS in allowed(r, WRITE)} == {PROJECTOR}
    assert {topics.VIEW_RESOURCES, topics.VIEW_MEMBERSHIP} <= allowed(GATEWAY, READ)
    writers_of_views = {r for r in ACL_TABLE if topics.VIEW_RESOURCES in allowed(r, WRITE)}
    assert writers_of_views == {PROJECTOR}
    assert {r for r in ACL_TABLE if topics.IDENTITIES in allowed(r, WRITE)} == {CA_SERVER, OPERATOR}
