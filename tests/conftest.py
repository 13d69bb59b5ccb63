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


@pytest.fixture
def isolated_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Training runs write to tmp (the working directory), registered models to tmp; no hub access."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NAPARI_CINEMA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("NAPARI_CINEMA_DATA", raising=False)
    return tmp_path


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny networks run fastest on one thread, and two spinning torch threads beside the GUI thread
    or another test process on a shared 2-core runner make them several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
