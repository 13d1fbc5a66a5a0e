"""Mesh identities: who is talking, as SPIFFE ids in X.509 certificates.

- ``spiffe``    the id scheme (``spiffe://<domain>/<role>/...``), strict parse/format, Kafka principal
- ``pki``       pure certificate logic: root, workload certificates, verification, PEM files (0600 keys)
- ``tokens``    one-time join tokens, signed by the CA key
- ``records``   the identity events (``events.types.IdentityIssued`` ...) built from certificates
- ``registry``  the pure fold over ``meshlog.identities``: which serial was held at an instant
- ``authority`` the CA endpoint's decisions (sans I/O); ``serve`` runs them over HTTPS
- ``log``       reading the identities topic into a registry; ``client`` joins and renews

Every process of the mesh holds a workload certificate whose one URI SAN is
its SPIFFE id; one root per trust domain signs them all. See each module's
docstring for its invariants.
"""
