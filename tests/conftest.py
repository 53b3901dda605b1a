"""Shared test settings and helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
settings.load_profile("ci")

SHARED_DATA = Path(
    os.environ.get("TORCHQV_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def needs_shared_data(sub: str) -> pytest.MarkDecorator:
    path = SHARED_DATA / sub
    return pytest.mark.skipif(not path.exists(), reason=f"shared test data not found at {path}")
