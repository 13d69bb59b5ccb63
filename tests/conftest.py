"""Shared fixtures. Tests that need ../shared/data skip with a reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NAPARI_CINEMA_SHARED_DATA", REPO.parent / "shared" / "data"))
SHARED_SPEC = SHARED_DATA.parent / "spec"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real expert-labelled data beside the checkout (../shared/data)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not present at {SHARED_DATA} (only in the team's checkout and CI)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_spec() -> Path:
    """CineMA compatibility spec beside the checkout (../shared/spec)."""
    if not SHARED_SPEC.is_dir():
        pytest.skip(f"CineMA spec not present at {SHARED_SPEC}")
    return SHARED_SPEC


@pytest.fixture(autouse=True)
def _isolated_user_models(tmp_path_factory, monkeypatch):
    """Tests never read or write the user's own model folder (fine-tuned and imported models)."""
    monkeypatch.setenv("NAPARI_CINEMA_HOME", str(tmp_path_factory.mktemp("napari_cinema_home")))
