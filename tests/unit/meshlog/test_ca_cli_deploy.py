"""`meshlog ca` as a deployment's one-shot jobs run it (compose): an init that may run at every start, and
a broker identity Kafka can read (its PEM keystore: key and certificate in one file)."""

from __future__ import annotations

import stat

from cryptography import x509

from identity import pki
from meshlog.cli import main
from meshlog.kafka_tls import KEYSTORE_FILE


def test_init_if_missing_keeps_the_root_of_the_same_domain_and_refuses_another(tmp_path, capsys):
    ca = tmp_path / "ca"
    assert main(["ca", "init", "--dir", str(ca), "--domain", "mesh.test"]) == 0
    root = (ca / "ca.pem").read_bytes()
    assert main(["ca", "init", "--dir", str(ca), "--domain", "mesh.test"]) == 2  # never replaced silently
    assert main(["ca", "init", "--dir", str(ca), "--domain", "mesh.test", "--if-missing"]) == 0
    assert (ca / "ca.pem").read_bytes() == root
    assert main(["ca", "init", "--dir", str(ca), "--domain", "other.test", "--if-missing"]) == 2
    assert "holds the CA of 'mesh.test'" in capsys.readouterr().err
    assert (ca / "ca.pem").read_bytes() == root


def test_a_broker_identity_also_gets_kafkas_pem_keystore(tmp_path):
    ca = tmp_path / "ca"
    main(["ca", "init", "--dir", str(ca), "--domain", "mesh.test"])
    out = tmp_path / "broker"
    assert main(["ca", "issue", "--dir", str(ca), "--role", "broker", "--name", "1", "--out", str(out),
                 "--server-name", "kafka", "--no-log"]) == 0
    keystore = (out / KEYSTORE_FILE).read_bytes()
    assert stat.S_IMODE((out / KEYSTORE_FILE).stat().st_mode) == 0o600
    key = pki.key_from_pem(keystore)
    cert = x509.load_pem_x509_certificate(keystore[keystore.index(b"-----BEGIN CERTIFICATE"):])
    assert cert == pki.cert_from_pem((out / "cert.pem").read_bytes())
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()
    side = tmp_path / "sidecar"
    main(["ca", "issue", "--dir", str(ca), "--role", "sidecar", "--name", "web/w1", "--out", str(side), "--no-log"])
    assert not (side / KEYSTORE_FILE).exists()  # only a broker needs one
