"""What the attested-verdict stories share: a sidecar identity whose instance's health flaps."""

from __future__ import annotations

from events import types as t
from tests.unit.projector.signed import sidecar

IDENT = sidecar("web", "web-1")


def health(n: int) -> t.InstanceHealthChanged:
    """web-1's n-th health report: healthy and unhealthy by turns (each payload differs from the last)."""
    return t.InstanceHealthChanged(service="web", instance_id="web-1", status=("healthy", "unhealthy")[n % 2],
                                   observer="web-1")
