"""Apply ``events.kafka_acls`` to a broker with Kafka's Java Admin API (aiokafka has no ACL calls).

``java KafkaAcls.java`` runs the single source file ``meshlog/java/KafkaAcls.java``
against the cached Kafka jars (the launcher's, no build step). It only adds
missing bindings, so applying is idempotent; it deletes nothing and reports
bindings the table does not hold as ``extra``.

Invariants:
- The Java client gets the same security settings as every Python client
  (a ``KafkaSecurity``, translated by :func:`java_client_properties`); TLS
  material is passed by file, the SASL password only through a 0600 file in
  a private temp dir that is removed afterwards.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from events.kafka_acls import ACL_TABLE, acl_bindings
from events.kafka_security import SASL_SSL, KafkaSecurity
from meshlog import kafka_local

JAVA_SOURCE = Path(__file__).with_name("java") / "KafkaAcls.java"


class AclApplyFailed(RuntimeError):
    """The ACLs could not be applied; the message carries the Java tool's reason."""


@dataclass(frozen=True)
class AclReport:
    created: int
    present: int
    extra: int  # bindings on the broker that the table does not hold (left in place)


def java_client_properties(bootstrap: str, security: KafkaSecurity, workdir: Path) -> dict[str, str]:
    """Java client properties equivalent to ``security`` (PEM key material written into ``workdir``)."""
    props = {"bootstrap.servers": bootstrap, "security.protocol": security.protocol,
             "request.timeout.ms": "30000", "default.api.timeout.ms": "60000"}
    if security.ca_file:
        props.update({"ssl.truststore.type": "PEM", "ssl.truststore.location": security.ca_file})
    if security.cert_file and security.key_file:
        keystore = workdir / "client.pem"  # Kafka's PEM keystore: the key and its chain in one file
        keystore.touch(mode=0o600)
        keystore.write_bytes(Path(security.key_file).read_bytes() + b"\n" + Path(security.cert_file).read_bytes())
        props.update({"ssl.keystore.type": "PEM", "ssl.keystore.location": str(keystore)})
    if security.protocol == SASL_SSL:
        def quoted(value: str) -> str:
            return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        props["sasl.mechanism"] = security.sasl_mechanism or ""
        props["sasl.jaas.config"] = ("org.apache.kafka.common.security.scram.ScramLoginModule required "
                                     f"username={quoted(security.sasl_username or '')} "
                                     f"password={quoted(security.sasl_password or '')};")
    return props


def apply_acls(bootstrap: str, security: KafkaSecurity, *, table=ACL_TABLE, timeout_s: float = 120.0) -> AclReport:
    """Create the table's bindings that are missing on the broker at ``bootstrap``."""
    java, _ = kafka_local.check_java()
    libs = kafka_local.ensure_kafka_jars()
    lines = "".join(b.line() + "\n" for b in acl_bindings(table))
    with tempfile.TemporaryDirectory(prefix="meshlog-acls-") as tmp:
        work = Path(tmp)
        props = java_client_properties(bootstrap, security, work)
        (work / "client.properties").touch(mode=0o600)
        (work / "client.properties").write_text(kafka_local.render_properties(props, "meshlog ACL client"))
        (work / "log4j2.xml").write_text(kafka_local.render_log4j2_config(work / "client.log", "WARN"))
        cmd = [java, "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", f"-Dlog4j2.configurationFile={work / 'log4j2.xml'}",
               "-cp", str(libs / "*"), str(JAVA_SOURCE), str(work / "client.properties")]
        try:
            res = subprocess.run(cmd, input=lines, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AclApplyFailed(f"applying ACLs at {bootstrap} did not finish within {timeout_s:g}s") from None
    if res.returncode != 0:
        reason = (res.stderr.strip() or res.stdout.strip())[-1500:]
        raise AclApplyFailed(f"applying ACLs at {bootstrap} failed: {reason}")
    m = re.search(r"created=(\d+) present=(\d+) extra=(\d+)", res.stdout)
    if not m:
        raise AclApplyFailed(f"unexpected output of KafkaAcls.java: {res.stdout.strip()[-500:]!r}")
    return AclReport(int(m.group(1)), int(m.group(2)), int(m.group(3)))
