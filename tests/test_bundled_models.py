"""The models shipped in the package: intact, documented, small enough, and they do their job.

These run the real bundled weights (no test networks) on the phantom, whose truth is exact, and, where
the team's data is present, on held-out ACDC patients. Thresholds sit well below the figures in the
cards (README "Default models") so they catch a broken model, a wrong label map or a preprocessing
change, not noise.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_cinema.model import registry
from napari_cinema.model.checkpoint import sha256_file

BUNDLED = sorted(p for p in registry.bundled_models_dir().iterdir() if (p / "model.safetensors").exists())
# the default models that ship, by task and view
SHIPPED_DEFAULTS = [("segmentation", "sax"), ("segmentation", "lax_4c"), ("landmark_heatmap", "lax_4c"),
                    ("classification_cvd", "sax"), ("regression_ef", "sax"), ("pretrained", "sax")]


def _dice(a: np.ndarray, b: np.ndarray, k: int) -> float:
    a, b = a == k, b == k
    return 2.0 * float((a & b).sum()) / max(1.0, float(a.sum() + b.sum()))


def test_weights_ship_with_cards_and_fit_the_size_budget():
    assert BUNDLED, "no bundled model"
    total = 0
    for folder in BUNDLED:
        card = json.loads((folder / "card.json").read_text())
        assert card["id"] == folder.name
        assert card["weights_sha256"] == sha256_file(folder / "model.safetensors"), folder.name
        assert card.get("licence") and card.get("licence_note"), folder.name
        assert card["data"]["train_sources"], folder.name
        assert (folder / "card.md").read_text().startswith(f"# {folder.name}")
        if any("acdc" in s.lower() for s in card["data"]["train_sources"]):
            assert "NC" in card["licence"], f"{folder.name}: ACDC-trained weights are non-commercial"
        total += (folder / "model.safetensors").stat().st_size
    assert total < 40 * 2**20, f"bundled weights {total / 2**20:.1f} MB exceed 40 MB"


def test_every_default_task_has_a_bundled_model_that_loads():
    for task, view in SHIPPED_DEFAULTS:
        found = [i for i in registry.list_models(view=view, source="bundled") if i.task == task]
        assert found, f"no bundled {task} model for {view}"
        loaded = registry.load_model(found[0].id)  # strict load of the shipped weights
        assert loaded.task == task


def _bundled(task: str, view: str) -> str:
    """The bundled model the app picks by default for a task and view."""
    found = sorted((i for i in registry.list_models(view=view, source="bundled") if i.task == task),
                   key=registry.preference)
    if not found:
        pytest.fail(f"no bundled {task} model for {view}")
    return found[0].id


@pytest.mark.parametrize("view", ["sax", "lax_4c"])
def test_bundled_segmentation_on_the_phantom(view, one_torch_thread):
    from napari_cinema.engine import run_segmentation
    from napari_cinema.sample_data import phantom

    study, truth = phantom.make_phantom(view, frames=6, seed=7)
    result = run_segmentation(study, registry.load_model(_bundled("segmentation", view)), device="cpu")
    for k, name in ((1, "RV"), (2, "MYO"), (3, "LV")):
        d = np.mean([_dice(result.labels[t], study.labels[t], k) for t in range(study.n_frames)])
        assert d > 0.75, f"{view} {name} Dice {d:.3f}"
    if view == "sax":
        lv = result.voxel_counts(3).astype(float)  # EF is a ratio: voxel counts suffice
        ef = 100.0 * (lv.max() - lv.min()) / lv.max()
        assert abs(ef - truth["LVEF_pct"]) < 6.0, (ef, truth["LVEF_pct"])


def test_any_orientation_model_segments_turned_and_mirrored_slices(one_torch_thread):
    from dataclasses import replace

    from napari_cinema.engine import run_segmentation
    from napari_cinema.sample_data import phantom

    any_orientation = "default-sax-seg-any-orientation"
    assert registry.find_default("segmentation", "sax") == _bundled("segmentation", "sax") == "default-sax-seg"
    assert registry.get_model_info(any_orientation).card["opt_in"]  # picked by hand, never preselected
    study, _truth = phantom.make_phantom("sax", frames=6, seed=7)
    assert study.image.shape[-1] == study.image.shape[-2]  # square slices: a quarter turn keeps the shape
    model = registry.load_model(any_orientation)
    turns = {"stored": lambda a: a, "mirrored": lambda a: a[..., ::-1],
             "quarter turn": lambda a: np.rot90(a, 1, (-2, -1)),
             "half turn, mirrored": lambda a: np.rot90(a, 2, (-2, -1))[..., ::-1, :]}
    for name, turn in turns.items():
        turned = replace(study, image=np.ascontiguousarray(turn(study.image)),
                         labels=np.ascontiguousarray(turn(study.labels)))
        result = run_segmentation(turned, model, device="cpu")
        for k, structure in ((1, "RV"), (2, "MYO"), (3, "LV")):
            d = np.mean([_dice(result.labels[t], turned.labels[t], k) for t in range(turned.n_frames)])
            assert d > 0.75, f"{name}: {structure} Dice {d:.3f}"


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_bundled_segmentation_on_cuda_matches_the_cpu():
    """The CUDA path (bf16 autocast, frames batched per pass) gives the CPU's labels and EF."""
    from napari_cinema.engine import run_segmentation
    from napari_cinema.sample_data import phantom

    study, truth = phantom.make_phantom("sax", frames=6, seed=7)
    model = registry.load_model(_bundled("segmentation", "sax"))
    cpu = run_segmentation(study, model, device="cpu")
    gpu = run_segmentation(study, model, device="cuda")
    assert gpu.labels.shape == cpu.labels.shape
    assert (gpu.labels == cpu.labels).mean() > 0.995
    ef = [100.0 * (1 - r.voxel_counts(3).min() / r.voxel_counts(3).max()) for r in (cpu, gpu)]
    assert abs(ef[0] - ef[1]) < 1.0, ef


def test_lax_run_without_a_landmark_model_reads_the_landmarks_off_the_segmentation(one_torch_thread):
    """A 4-chamber run with no landmark model still gives landmarks (and MAPSE): read off the segmentation."""
    from napari_cinema import api
    from napari_cinema.analysis.landmarks import mapse
    from napari_cinema.sample_data import phantom

    study, truth = phantom.make_phantom("lax_4c", frames=8, seed=7)
    res = api.run_models(study, _bundled("segmentation", "lax_4c"), device="cpu", shift_passes=1)
    assert res.models["landmarks"]["task"] == "landmarks_from_segmentation"
    lm = res.landmarks
    m = mapse(study, {n: lm.voxels[:, k] for k, n in enumerate(lm.names)}, truth["ED_frame"], truth["ES_frame"])
    assert abs(m["MAPSE_mm"] - truth["MAPSE_view_mm"]) < 1.5, (m["MAPSE_mm"], truth["MAPSE_view_mm"])
    rows, names = api.prepare_results(res).layer_parts.points
    found = int(np.isfinite(lm.voxels).all(axis=(1, 2)).sum())
    assert rows.shape == (3 * found, 4) and np.isfinite(rows).all() and len(names) == len(rows)
    sax, _ = phantom.make_phantom("sax", frames=4, seed=7)
    assert api.run_models(sax, _bundled("segmentation", "sax"), device="cpu", shift_passes=1).landmarks is None


def test_bundled_landmarks_on_the_phantom(one_torch_thread):
    from napari_cinema.engine import run_landmarks
    from napari_cinema.sample_data import phantom

    study, truth = phantom.make_phantom("lax_4c", frames=6, seed=11)
    result = run_landmarks(study, registry.load_model(_bundled("landmark_heatmap", "lax_4c")), device="cpu")
    mm = np.asarray(study.spacing[1:])
    for k, name in enumerate(result.names):
        true_zyx = truth["landmarks"][name]
        pred = result.voxels[:, k]
        err = np.linalg.norm((pred - np.asarray(true_zyx)) * mm, axis=-1)
        assert np.median(err) < 6.0, f"{name}: median error {np.median(err):.1f} mm"


def test_bundled_ef_regressor_orders_phantoms_by_ejection_fraction(one_torch_thread):
    """Weak (MAE 13 points on real patients, predictions pulled to the mean), but not a constant: a
    phantom ejecting 65 % must come out well above one ejecting 25 %."""
    from napari_cinema.engine import run_regression
    from napari_cinema.sample_data import phantom

    model = registry.load_model(_bundled("regression_ef", "sax"))
    low, high = (run_regression(phantom.make_phantom("sax", frames=12, seed=101, lvef=ef)[0], model,
                                device="cpu").value for ef in (25.0, 65.0))
    assert high - low > 8.0, (low, high)


def test_default_sax_model_on_held_out_acdc_patients(shared_data, one_torch_thread):
    from napari_cinema.training.evaluate import evaluate

    # one held-out patient per group would take a minute; two already catch a broken model
    result = evaluate(shared_data / "acdc" / "patient003", model=_bundled("segmentation", "sax"), device="cpu")
    assert result["dice"]["mean"] > 0.8, result["dice"]
    result = evaluate(shared_data / "acdc" / "patient053", model=_bundled("segmentation", "sax"), device="cpu")
    assert result["dice"]["mean"] > 0.8, result["dice"]


def test_the_dock_shows_caveats_and_never_preselects_an_opt_in_model(make_napari_viewer, qtbot):
    """The landmark model fails on real cines: the dock lists it, does not choose it, and says why."""
    from napari_cinema import api
    from napari_cinema.layers import image_layer_data
    from napari_cinema.sample_data import phantom

    study, _ = phantom.make_phantom("lax_4c", frames=4)
    viewer = make_napari_viewer()
    data, kwargs, _ = image_layer_data(study)
    viewer.add_image(data, **kwargs)
    dock = api.open_analysis_dock(viewer)
    qtbot.waitUntil(lambda: dock.models_ready, timeout=60_000)
    assert dock.view() == "lax_4c" and dock.model_id() == "default-lax-4c-seg"
    assert "ONE real" in dock.model_info.text()  # the LAX model's caveat
    combo = dock._combo_for("landmarks")
    assert "default-lax-4c-landmarks" in [combo.itemData(i) for i in range(combo.count())]
    assert dock.model_id("landmarks") is None
    dock.set_model("default-lax-4c-landmarks", "landmarks")
    assert "phantoms only" in dock.model_info.text()
