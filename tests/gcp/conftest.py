"""Fixtures for the gcp tests: a FakeGCE server per test, always stopped."""
from __future__ import annotations

import pytest

from tests.gcp.fake_gce import FakeGCE


@pytest.fixture
def fake_gce():
    fake = FakeGCE(operation_delay_s=0.03)
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()
