"""Mesh identities: SPIFFE ids (``spiffe``), the CA's certificate logic (``pki``).

Every process of the mesh holds an X.509 workload certificate whose one URI SAN
is its SPIFFE id; one root per trust domain signs them all. See the modules'
docstrings for their invariants.
"""
