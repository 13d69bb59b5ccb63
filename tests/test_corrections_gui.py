"""Correcting masks and fine-tuning from the GUI, in a real napari viewer: the 'Corrections' and
'Fine-tuning' docks on small phantoms, with the random-weight test networks of test_widgets (the
tests check plumbing and numbers the docks must get right, never accuracy)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_widgets import (  # noqa: F401 - fixtures shared with the review-dock tests
    WAIT_MS,
    add_layers,
    models,
    open_docks,
    run_and_wait,
    same,
    weights,
)

from napari_cinema import api
from napari_cinema.annotations.store import CorrectionStore, default_store_root, study_key
from napari_cinema.sample_data.phantom import make_phantom

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("one_torch_thread")]

TRAIN_WAIT_MS = 240_000


def segment(viewer, qtbot):
    image = add_layers(viewer, sax_phantom_data())[0]
    analysis, function = open_docks(viewer, qtbot)
    analysis.set_model("test/tiny-sax-seg")
    assert run_and_wait(qtbot, analysis) == "ok", analysis.status_text()
    return image, analysis, function


_PHANTOM = {}


def sax_phantom_data():
    from napari_cinema.sample_data.napari_samples import phantom_layers

    if "sax" not in _PHANTOM:
        _PHANTOM["sax"] = phantom_layers("sax", slices=6, frames=8, supersample=1, matrix=64, pixel_mm=3.0,
                                         noise=0.0)
    return _PHANTOM["sax"]


def wait_saved(qtbot, dock, saves: list, n_before: int):
    qtbot.waitUntil(lambda: not dock.saving and len(saves) > n_before, timeout=WAIT_MS)


def test_correct_save_reload_and_browse(make_napari_viewer, qtbot, models):
    viewer = make_napari_viewer()
    image, analysis, _function = segment(viewer, qtbot)
    labels = analysis.labels_layer
    model_output = np.array(labels.data, copy=True)
    np.testing.assert_array_equal(labels.metadata["cinema_original"], model_output)

    dock = api.open_corrections_dock(viewer)
    dock.autosave_check.setChecked(False)
    saves: list = []
    dock.saved.connect(saves.append)
    assert same(dock.labels_layer, labels)
    assert not dock.dirty and dock.jump_to_changed() is None  # nothing differs from the model yet

    # paint with napari's brush on frame 2 (the paint event tells the dock which frame changed)
    viewer.dims.set_current_step(0, 2)
    viewer.dims.set_current_step(1, 3)
    labels.brush_size = 9
    labels.paint((2, 3, 32, 32), 2, refresh=True)
    assert dock.dirty and api.edited_frames_of(labels) == [2]
    viewer.dims.set_current_step(0, 6)
    assert dock.jump_to_changed() == 2 and dock.current_frame() == 2

    # copy frame 2 to the next frame, then undo it (napari's history), clear a slice, accept a frame
    assert dock.copy_current_to([3]) == [3]
    np.testing.assert_array_equal(labels.data[3], labels.data[2])
    dock.undo()
    np.testing.assert_array_equal(labels.data[3], model_output[3])
    assert dock.clear_current_slice() and not labels.data[2, 3].any()
    viewer.dims.set_current_step(0, 5)
    dock.accept_current_frame()
    assert api.edited_frames_of(labels) == [2, 3, 5]  # 3 was edited (then undone): still looked at

    # save: both versions and provenance are in the store
    n = len(saves)
    assert dock.save()
    wait_saved(qtbot, dock, saves, n)
    assert not dock.dirty
    store = CorrectionStore()
    assert store.root == default_store_root()
    study = image.metadata["cinema_study"]
    stored = store.load(study)
    assert stored.version == 1
    np.testing.assert_array_equal(stored.original, model_output)
    np.testing.assert_array_equal(stored.final, np.asarray(labels.data))
    assert stored.changed_frames == [2]
    assert stored.edited_frames == [2, 3, 5]
    prov = stored.provenance
    assert prov["model_id"] == "test/tiny-sax-seg" and prov["model_sha256"] == labels.metadata["provenance"]["sha256"]
    assert prov["user"] and prov["saved_at"]

    # a second save is a new version; the first stays readable
    labels.paint((4, 2, 20, 20), 1, refresh=True)
    n = len(saves)
    assert dock.save()
    wait_saved(qtbot, dock, saves, n)
    assert store.versions(study_key(study)) == [1, 2]
    assert 4 in store.load(study).edited_frames
    np.testing.assert_array_equal(store.load_version(study, 1).final[4], model_output[4])

    # someone else saved meanwhile: refused, edits kept, then 'Save anyway' keeps theirs as history
    theirs = np.array(labels.data, copy=True)
    theirs[7] = 0
    store.save(study, model_output, theirs, model_id="test/tiny-sax-seg", model_sha256=None, edited_frames=[7],
               user="someone-else", base_version=2)
    labels.paint((1, 2, 20, 20), 3, refresh=True)
    assert dock.save()
    qtbot.waitUntil(lambda: not dock.saving, timeout=WAIT_MS)
    assert "someone-else" in dock.status.text() and dock.dirty
    assert dock.save_button.text().startswith("Save anyway")
    n = len(saves)
    assert dock.save()
    wait_saved(qtbot, dock, saves, n)
    assert store.versions(study_key(study)) == [1, 2, 3, 4]
    assert store.load_version(study, 3).provenance["user"] == "someone-else"

    # re-opening the study offers its stored corrections
    final = np.array(labels.data, copy=True)
    viewer.layers.remove(labels)
    viewer.layers.remove(image)
    image2 = add_layers(viewer, sax_phantom_data())[0]
    qtbot.waitUntil(lambda: not dock.offer_box.isHidden(), timeout=WAIT_MS)
    assert "version 4" in dock.offer_label.text()
    dock.load_stored_button.click()
    qtbot.waitUntil(lambda: dock.labels_layer is not None and api.find_result_layer(viewer, image2) is not None,
                    timeout=WAIT_MS)
    reloaded = api.find_result_layer(viewer, image2)
    np.testing.assert_array_equal(np.asarray(reloaded.data), final)
    np.testing.assert_array_equal(reloaded.metadata["cinema_original"], model_output)

    # the store browser lists the study with its corrected and uncorrected frames
    dock.store_toggle.setChecked(True)
    assert dock.store_table.rowCount() == 1
    assert dock.store_table.item(0, 2).text() == f"{len(store.load(study).edited_frames)}/8"

    # ... and opens a stored study from the store's own copy of the image, with its corrections
    n_layers = len(viewer.layers)
    opened = dock.open_stored_study(study_key(study))
    qtbot.waitUntil(lambda: api.find_result_layer(viewer, opened) is not None, timeout=WAIT_MS)
    assert len(viewer.layers) == n_layers + 2
    np.testing.assert_allclose(np.asarray(opened.data), np.asarray(image2.data), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(api.find_result_layer(viewer, opened).data), final)


def test_autosave_and_unsaved_edits_survive_a_failed_save(make_napari_viewer, qtbot, models, monkeypatch):
    viewer = make_napari_viewer()
    image, analysis, _function = segment(viewer, qtbot)
    labels = analysis.labels_layer
    dock = api.open_corrections_dock(viewer)
    saves: list = []
    dock.saved.connect(saves.append)
    dock.autosave_interval_ms = 300
    dock.autosave_check.setChecked(False)
    dock.autosave_check.setChecked(True)  # restart the timer with the short interval

    # a full disk: the save fails with a clear message, the edits stay in the layer and stay unsaved
    import errno

    import napari_cinema.annotations.store as store_module

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(store_module.nib, "save", full)
        labels.paint((1, 2, 30, 30), 2, refresh=True)
        qtbot.waitUntil(lambda: "disk full" in dock.status.text(), timeout=WAIT_MS)
        assert dock.dirty and CorrectionStore().entries() == []

    # the next autosave writes it
    n = len(saves)
    qtbot.waitUntil(lambda: len(saves) > n and not dock.saving, timeout=WAIT_MS)
    entry = saves[-1]
    assert entry.autosave and entry.edited_frames == [1] and not dock.dirty
    assert "Autosaved" in dock.status.text()

    # deleting the layer with unsaved edits saves them instead of losing them
    dock.autosave_check.setChecked(False)
    labels.paint((5, 2, 30, 30), 1, refresh=True)
    edited = np.array(labels.data, copy=True)
    n = len(saves)
    viewer.layers.remove(labels)
    qtbot.waitUntil(lambda: len(saves) > n and not dock.saving, timeout=WAIT_MS)
    stored = CorrectionStore().load(image.metadata["cinema_study"])
    assert 5 in stored.edited_frames
    np.testing.assert_array_equal(stored.final, edited)


def _phantom_store(root, n: int = 2):
    """A correction store holding phantom studies: truth labels as corrections of an empty output."""
    store = CorrectionStore(root)
    for seed in range(n):
        study, _truth = make_phantom("sax", frames=4, slices=6, matrix=64, pixel_mm=3.0, supersample=1,
                                     seed=seed, noise=0.0, lvef=55.0 - 15.0 * seed)
        final = study.labels.astype(np.uint8)
        store.save(study.header(), np.zeros_like(final), final, model_id="test/tiny-sax-seg", model_sha256=None,
                   edited_frames=list(range(study.n_frames)), user="test")
    return store


def test_finetune_from_the_dock_stop_resume_and_use_the_new_model(make_napari_viewer, qtbot, models, tmp_path):
    viewer = make_napari_viewer()
    add_layers(viewer, sax_phantom_data())
    analysis, _function = open_docks(viewer, qtbot)
    dock = api.open_finetune_dock(viewer)
    outcomes = []
    dock.run_finished.connect(outcomes.append)

    # bad input first: an empty store is refused before anything starts
    dock.set_store(tmp_path / "empty")
    assert dock.set_base_model("test/tiny-sax-seg")
    assert not dock.start() and "correction" in dock.status.text().lower() and not dock.running

    store = _phantom_store(tmp_path / "store")
    before = {p: p.stat().st_mtime_ns for p in store.root.rglob("*") if p.is_file()}
    assert dock.set_base_model("test/tiny-lax4c-seg")  # a base of another view ...
    dock.set_store(store.root)
    assert "2 studies" in dock.store_summary.text()
    assert dock.base_combo.currentData() == "test/tiny-sax-seg"  # ... gives way to the store's view's default
    dock.epochs_spin.setValue(4)
    dock.batch_spin.setValue(2)
    dock.samples_spin.setValue(24)
    dock.val_spin.setValue(50)
    dock.name_edit.setText("test/finetuned-sax")
    assert dock.start(), dock.status.text()
    assert not dock.start()  # one run at a time

    # progress arrives from the trainer subprocess; stop it midway
    qtbot.waitUntil(lambda: any(e.get("event") == "step" for e in dock.events), timeout=TRAIN_WAIT_MS)
    assert dock.progress_bar.maximum() > 0 and "step" in dock.eta_label.text()
    dock.stop()
    qtbot.waitUntil(lambda: outcomes == ["stopped"], timeout=TRAIN_WAIT_MS)
    assert dock.start_button.text() == "Resume" and dock.resumable is not None
    stopped_at = max(e["step"] for e in dock.events if e.get("event") == "step")
    total = next(e["total_steps"] for e in dock.events if e.get("event") == "step")
    assert stopped_at < total

    # napari closed meanwhile: a new dock finds the interrupted run and offers to resume it
    again = type(dock)(viewer)
    assert again.resumable == dock.resumable and again.start_button.text() == "Resume"
    assert "interrupted run was found" in again.status.text()
    again.deleteLater()

    # start again: resumes the same run to completion, registers the model, fills the table
    assert dock.start()
    qtbot.waitUntil(lambda: outcomes[-1:] == ["done"], timeout=TRAIN_WAIT_MS)
    assert dock.new_model_id == "test/finetuned-sax"
    table = dock.table_values()
    assert table["Dice mean"][0] != "–" and table["Dice mean"][1] != "–"
    metrics = [json.loads(line) for line in (dock.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(m["event"] == "baseline" for m in metrics) and metrics[-1]["event"] == "done"
    assert {p: p.stat().st_mtime_ns for p in store.root.rglob("*") if p.is_file()} == before  # store untouched

    # the analysis dock lists the new model and runs it
    qtbot.waitUntil(lambda: analysis.model_combo.findData("test/finetuned-sax") >= 0, timeout=WAIT_MS)
    analysis.set_model("test/finetuned-sax")
    assert analysis.model_id() == "test/finetuned-sax"
    assert run_and_wait(qtbot, analysis) == "ok", analysis.status_text()
    assert analysis.labels_layer.metadata["provenance"]["model_id"] == "test/finetuned-sax"
