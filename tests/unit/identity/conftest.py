"""Fixtures of the identity stories."""

from __future__ import annotations

import pytest

from tests.unit.projector.signed import Trust


@pytest.fixture()
def trust() -> Trust:
    """A fresh mesh CA and the identities it issues (``tests.unit.projector.signed.Trust``)."""
    return Trust()
