"""The correction store (versions, provenance, conflicts, crash and disk-full safety), the cine editing
tools, and the store read as a training / evaluation dataset."""

from __future__ import annotations

import errno
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_cinema.annotations import edit
from napari_cinema.annotations import store as store_mod
from napari_cinema.annotations.store import (
    CorrectionStore,
    StoreConflict,
    StoreError,
    StoreWarning,
    default_store_root,
    is_store,
    study_key,
)
from napari_cinema.io.study import CineStudy, DicomRefs
from napari_cinema.sample_data.phantom import make_phantom

PH = dict(frames=6, slices=3, matrix=40, pixel_mm=4.0, supersample=1)


def phantom(seed: int = 1):
    study, _ = make_phantom("sax", seed=seed, **PH)
    return study


def corrected(study: CineStudy, frame: int) -> tuple[np.ndarray, np.ndarray]:
    """(model output, corrections): the model missed the RV on ``frame``, the annotator put it back."""
    final = study.labels.copy()
    original = final.copy()
    original[frame][original[frame] == 1] = 0
    return original, final


def save(store: CorrectionStore, study: CineStudy, original, final, edited, **kw):
    kw.setdefault("model_id", "m1")
    kw.setdefault("model_sha256", "ab" * 32)
    return store.save(study, original, final, edited_frames=edited, **kw)


def leftovers(folder: Path) -> list[str]:
    """Debris of unfinished saves: temporary folders/files and uncommitted versions."""
    head = json.loads((folder / "current.json").read_text())["version"]
    out = [p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != ".lock"]
    out += [p.name for p in (folder / "versions").iterdir() if p.name.startswith(".") or int(p.name) > head]
    return out


# --------------------------------------------------------------------------------------------------
# keys and locations
# --------------------------------------------------------------------------------------------------


def test_default_root_and_study_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from napari_cinema.model.registry import user_models_dir
    from napari_cinema.io.load import load_study
    from napari_cinema.sample_data.phantom import write_phantom

    monkeypatch.setenv("NAPARI_CINEMA_HOME", str(tmp_path / "home"))
    assert default_store_root() == tmp_path / "home" / "corrections"
    assert default_store_root().parent == user_models_dir().parent
    assert CorrectionStore().root == tmp_path / "home" / "corrections"

    # in-memory studies (phantoms): the pixels tell them apart; the same one twice gets the same key
    a, a2, b = phantom(1), phantom(1), phantom(2)
    assert study_key(a) == study_key(a2) != study_key(b)
    assert study_key(a).startswith("phantom-sax-") and len(study_key(a).rsplit("-", 1)[1]) == 8

    # a file: its resolved path and shape, however the path was spelled
    path = write_phantom(tmp_path / "data", view="sax", seed=4, **PH)
    monkeypatch.chdir(tmp_path)
    s1, s2 = load_study(path), load_study(Path("data") / path.name)
    assert study_key(s1) == study_key(s2)
    assert study_key(s1).startswith("phantom_sax-")

    # DICOM: the instance UIDs, wherever the folder is; the slug from the patient id
    refs = DicomRefs("1.2.3", ["1.2.3.4"] * 3, [[f"1.2.3.4.{t}.{z}" for z in range(3)] for t in range(6)])
    d1 = CineStudy(image=a.image, spacing=a.spacing, source="/x/dicom", dicom=refs)
    d2 = CineStudy(image=a.image * 2, spacing=a.spacing, source="/y/other", dicom=refs)
    d1.patient.patient_id = d2.patient.patient_id = "Patient 007/A"
    assert study_key(d1) == study_key(d2)
    assert study_key(d1).startswith("patient-007-a-")
    other = DicomRefs("1.2.3", ["1.2.3.4"] * 3, [[f"1.2.3.5.{t}.{z}" for z in range(3)] for t in range(6)])
    assert study_key(CineStudy(image=a.image, spacing=a.spacing, dicom=other)) != study_key(d1)


# --------------------------------------------------------------------------------------------------
# saving and loading
# --------------------------------------------------------------------------------------------------


def test_save_load_versions_and_provenance(tmp_path: Path) -> None:
    study = phantom()
    store = CorrectionStore(tmp_path / "store")
    assert store.load(study) is None and store.versions(study) == [] and store.entries() == []
    original, final = corrected(study, study.ed_frame)

    entry = save(store, study, original, final, [study.ed_frame], user="alice")
    key = study_key(study)
    assert entry.key == key and entry.version == 1 and entry.folder == tmp_path / "store" / key
    assert is_store(tmp_path / "store") and (tmp_path / "store" / "store.json").is_file()
    got = store.load(study)
    assert got.version == 1 and got.key == key
    assert got.original.dtype == np.uint8 and np.array_equal(got.original, original)
    assert np.array_equal(got.final, final)
    assert got.edited_frames == [study.ed_frame] and got.changed_frames == [study.ed_frame]
    prov = got.provenance
    assert prov["model_id"] == "m1" and prov["model_sha256"] == "ab" * 32 and prov["user"] == "alice"
    assert prov["saved_at"].endswith("+00:00") and prov["app_version"]
    assert prov["source"] == "phantom:sax" and prov["view"] == "sax" and prov["shape"] == list(study.shape)
    assert prov["spacing"] == list(study.spacing)
    assert prov["label_map"] == {"0": "background", "1": "RV", "2": "MYO", "3": "LV"}
    assert prov["ed_frame"] == study.ed_frame and prov["es_frame"] == study.es_frame
    assert prov["autosave"] is False and prov["history"] == []

    # a second save (an autosave, another frame, default user) is version 2; version 1 stays readable
    final2 = final.copy()
    final2[study.es_frame, 1] = 0  # the annotator erased a slice
    entry2 = save(store, study, original, final2, [study.es_frame], autosave=True, base_version=1)
    assert entry2.version == 2 and entry2.autosave and entry2.saved_by
    got2 = store.load(key)
    assert got2.version == 2 and np.array_equal(got2.final, final2)
    assert got2.edited_frames == sorted({study.ed_frame, study.es_frame})  # cumulative
    assert got2.provenance["edited_this_save"] == [study.es_frame]
    assert got2.changed_frames == sorted({study.ed_frame, study.es_frame})
    (h,) = got2.provenance["history"]
    assert h["version"] == 1 and h["user"] == "alice" and h["edited_this_save"] == [study.ed_frame]
    assert h["autosave"] is False and h["saved_at"] == prov["saved_at"]
    assert store.versions(study) == [1, 2]
    old = store.load_version(key, 1)
    assert np.array_equal(old.final, final) and old.version == 1
    with pytest.raises(StoreError, match=r"no version 7 .*stored: \[1, 2\]"):
        store.load_version(key, 7)


def test_read_study_gives_back_image_geometry_and_key(tmp_path: Path) -> None:
    study = phantom()
    store = CorrectionStore(tmp_path / "store")
    original, final = corrected(study, 2)
    save(store, study, original, final, [2])
    back = store.read_study(study_key(study))
    assert back.image.dtype == np.float32 and np.array_equal(back.image, study.image)
    assert back.spacing == study.spacing and np.array_equal(back.affine, study.affine)
    assert back.view == "sax" and back.ed_frame == study.ed_frame and back.es_frame == study.es_frame
    assert np.allclose(back.frame_times_ms, study.frame_times_ms)
    assert back.patient.patient_id == study.patient.patient_id
    assert study_key(back) == study_key(study)  # a study reopened from the store saves to the same place
    assert back.labelled_frames == (2,) and np.array_equal(back.labels, final)
    assert store.read_study(study_key(study), labels=False).labels is None
    with pytest.raises(StoreError, match="not in the correction store"):
        store.read_study("nobody-00000000")
    with pytest.raises(StoreError, match="not a study key"):
        store.load("../escape")


def test_conflict_when_the_store_moved_on(tmp_path: Path) -> None:
    study = phantom()
    store = CorrectionStore(tmp_path / "store")
    original, final = corrected(study, 1)
    save(store, study, original, final, [1], user="alice")
    folder = store.folder(study)
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    # a second annotator who never loaded the stored version
    with pytest.raises(StoreConflict, match=r"saved as version 1 by alice at .*you started from no stored version"):
        save(store, study, original, final, [1], user="bob")
    save(store, study, original, final, [1], user="carol", base_version=1)
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    # bob started from version 1, carol saved version 2 meanwhile
    with pytest.raises(StoreConflict, match=r"version 2 by carol .*you started from version 1"):
        save(store, study, original, final, [1], user="bob", base_version=1)
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before  # nothing written
    assert store.load(study).provenance["user"] == "carol" and store.versions(study) == [1, 2]


def test_bad_input_is_refused_with_the_reason(tmp_path: Path) -> None:
    study = phantom()
    key = study_key(study)
    store = CorrectionStore(tmp_path / "store")
    original, final = corrected(study, 1)
    with pytest.raises(StoreError, match=rf"{key}: final: labels have shape \(6, 3, 40\), the study is \(6, 3, 40, 40\)"):
        save(store, study, original, final[..., 0], [1])
    bad = final.astype(np.int32)
    bad[1, 0, 0, 0] = 7
    bad[2, 0, 0, 0] = -1
    with pytest.raises(StoreError, match=rf"{key}: final: label values \[-1\] are outside the label map"):
        save(store, study, original, bad, [1])
    bad[2, 0, 0, 0] = 0
    with pytest.raises(StoreError, match=rf"{key}: final: label values \[7\] are outside the label map"):
        save(store, study, original, bad, [1])
    with pytest.raises(StoreError, match="non-integer"):
        save(store, study, original, final + 0.5, [1])
    with pytest.raises(StoreError, match=r"edited frames \[6\] are outside the study's 6 frames"):
        save(store, study, original, final, [6])
    with pytest.raises(StoreError, match=rf"{key}: nothing to save"):
        save(store, study, original, original.copy(), [])
    assert not (tmp_path / "store").exists()  # refused before anything was created
    # a label map of its own: values outside it are refused, inside it stored and recorded
    lv_only = {0: "background", 3: "LV"}
    with pytest.raises(StoreError, match=r"label values \[1, 2\] are outside the label map"):
        save(store, study, original, final, [1], label_map=lv_only)
    only = np.where(final == 3, 3, 0).astype(np.uint8)
    save(store, study, only, only, [1], label_map=lv_only)
    assert store.load(study).provenance["label_map"] == {"0": "background", "3": "LV"}


def test_erasing_a_frame_is_a_correction(tmp_path: Path) -> None:
    study = phantom()
    store = CorrectionStore(tmp_path / "store")
    original = study.labels.copy()
    final = original.copy()
    final[3] = 0  # no heart on this frame, says the annotator
    save(store, study, original, final, [3])
    got = store.load(study)
    assert not got.final[3].any() and got.labelled_frames == [3]
    # reviewed and accepted without a change: still a labelled frame
    save(store, study, original, final, [0], base_version=1)
    assert store.load(study).edited_frames == [0, 3]


def test_old_versions_are_pruned_never_the_current(tmp_path: Path) -> None:
    study = phantom()
    store = CorrectionStore(tmp_path / "store", max_versions=2)
    original, final = corrected(study, 1)
    for v in range(1, 5):
        final = final.copy()
        final[v, 0, 0, 0] = 2
        save(store, study, original, final, [v], base_version=v - 1 if v > 1 else None)
    assert store.versions(study) == [3, 4]
    got = store.load(study)
    assert got.version == 4 and [h["version"] for h in got.provenance["history"]] == [1, 2, 3]
    assert got.edited_frames == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="max_versions"):
        CorrectionStore(tmp_path / "s", max_versions=0)


def test_entries_list_studies_with_uncorrected_frames(tmp_path: Path) -> None:
    store = CorrectionStore(tmp_path / "store")
    a, b = phantom(1), phantom(2)
    save(store, a, *corrected(a, 0), [0, 2], model_id="mA")
    save(store, b, *corrected(b, 5), [5], model_id="mB", autosave=True, user="bob")
    entries = store.entries()
    assert [e.key for e in entries] == sorted([study_key(a), study_key(b)])
    ea = next(e for e in entries if e.key == study_key(a))
    assert ea.edited_frames == [0, 2] and ea.changed_frames == [0] and ea.uncorrected_frames == [1, 3, 4, 5]
    assert ea.n_frames == 6 and ea.view == "sax" and ea.model_id == "mA" and ea.version == 1
    assert ea.source == "phantom:sax" and ea.saved_at and not ea.autosave
    eb = next(e for e in entries if e.key == study_key(b))
    assert eb.autosave and eb.saved_by == "bob" and eb.uncorrected_frames == [0, 1, 2, 3, 4]
    # a damaged study is skipped with a warning, the others still listed
    (eb.folder / "versions" / "000001" / "provenance.json").write_text("{ not json")
    with pytest.warns(StoreWarning, match=rf"skipped study {eb.key}: .*provenance\.json: unreadable"):
        assert [e.key for e in store.entries()] == [ea.key]
    with pytest.raises(StoreError, match=r"provenance\.json: unreadable"):
        store.load(eb.key)


# --------------------------------------------------------------------------------------------------
# crash and disk-full safety
# --------------------------------------------------------------------------------------------------

# Shared by the test and the process it kills: the same study and the content of every version.
KILL_DEFS = r'''
import numpy as np
from napari_cinema.io.study import CineStudy

def kill_study():
    rng = np.random.default_rng(0)
    image = rng.random((8, 6, 128, 128), dtype=np.float32)
    return CineStudy(image=image, spacing=(40.0, 8.0, 1.5, 1.5), view="sax", source="kill-test")

def kill_version(v):
    """(original, final, edited frames) saved as version v: each version's final is different."""
    original = np.zeros((8, 6, 128, 128), np.uint8)
    original[:, :, 40:90, 40:90] = 3
    original[:, :, 30:40, 40:90] = 2
    final = original.copy()
    t = v % 8
    final[t, 0, : v % 100 + 1, 0] = 1
    final[t, 1, 40:90, 40:90] = 2
    return original, final, [t]
'''

KILL_MAIN = r'''
import sys
from napari_cinema.annotations.store import CorrectionStore

store = CorrectionStore(sys.argv[1], max_versions=4)
study = kill_study()
cur = store.load(study)
v = cur.version if cur else None
print("ready", v, flush=True)
while True:
    nv = (v or 0) + 1
    original, final, edited = kill_version(nv)
    store.save(study, original, final, model_id="m", model_sha256=None, edited_frames=edited, base_version=v)
    v = nv
    print("saved", v, flush=True)
'''


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        proc.kill()
        raise AssertionError(f"the saving process said nothing in {timeout} s: {proc.stderr.read()}")
    return proc.stdout.readline()


@pytest.mark.skipif(not hasattr(select, "select") or os.name != "posix", reason="SIGKILL and select need POSIX")
def test_killed_save_leaves_the_previous_version(tmp_path: Path) -> None:
    defs: dict = {}
    exec(KILL_DEFS, defs)
    script = tmp_path / "saver.py"
    script.write_text(KILL_DEFS + KILL_MAIN)
    root = tmp_path / "store"
    key = study_key(defs["kill_study"]())
    store = CorrectionStore(root, max_versions=4)
    rng = np.random.default_rng(12345)
    last = None
    for _round in range(4):
        proc = subprocess.Popen([sys.executable, str(script), str(root)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        line = _read_line(proc, 120)
        assert line.startswith("ready"), line + proc.stderr.read()
        # let it commit a version or more, then kill it at a random point of a save
        assert _read_line(proc, 120).startswith("saved")
        time.sleep(float(rng.uniform(0.0, 0.4)))
        proc.kill()
        proc.wait()
        said = [ln.split() for ln in proc.stdout.read().splitlines() if ln.startswith("saved")]
        proc.stdout.close()
        proc.stderr.close()
        reported = int(said[-1][1]) if said else None
        got = store.load(key)
        assert got is not None
        # the last reported version, or the one it committed before it could say so
        assert reported is None or got.version in (reported, reported + 1)
        assert last is None or got.version >= last
        original, final, edited = defs["kill_version"](got.version)
        assert np.array_equal(got.original, original) and np.array_equal(got.final, final)
        assert set(edited) <= set(got.edited_frames)
        last = got.version
    # the next save cleans up what the killed ones left, and keeps max_versions
    original, final, edited = defs["kill_version"](last + 1)
    entry = store.save(defs["kill_study"](), original, final, model_id="m", model_sha256=None,
                       edited_frames=edited, base_version=last)
    assert entry.version == last + 1
    assert leftovers(root / key) == []
    assert store.versions(key) == list(range(last - 2, last + 2))


def test_disk_full_keeps_the_previous_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study = phantom()
    key = study_key(study)
    store = CorrectionStore(tmp_path / "store")
    original, final = corrected(study, 1)
    real = nib.save

    def full_on(name: str):
        def failing(img, filename, *args, **kwargs):
            if name in Path(filename).name:
                Path(filename).write_bytes(b"\0" * 100)  # half a file, then the disk is full
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(img, filename, *args, **kwargs)
        return failing

    # the very first save: nothing is stored, nothing is left
    monkeypatch.setattr(nib, "save", full_on("image"))
    with pytest.raises(StoreError, match=rf"disk full while saving corrections for {key} .*nothing was stored"):
        save(store, study, original, final, [1])
    assert store.load(study) is None and store.entries() == []
    monkeypatch.setattr(nib, "save", real)
    save(store, study, original, final, [1])

    final2 = final.copy()
    final2[2] = 0
    monkeypatch.setattr(nib, "save", full_on("final"))
    with pytest.raises(StoreError, match=rf"disk full while saving corrections for {key} in .*"
                                         r"the previous version \(1\) is intact"):
        save(store, study, original, final2, [2], base_version=1)
    folder = store.folder(study)
    assert json.loads((folder / "current.json").read_text())["version"] == 1
    got = store.load(study)
    assert got.version == 1 and np.array_equal(got.final, final)
    assert leftovers(folder) == []

    # the HEAD pointer is the last write: when it fails, the version folder it would commit goes too
    monkeypatch.setattr(nib, "save", real)
    real_text = store_mod.atomic_write_text

    def head_fails(path, text):
        if Path(path).name == "current.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_text(path, text)

    monkeypatch.setattr(store_mod, "atomic_write_text", head_fails)
    with pytest.raises(StoreError, match=r"disk full .*previous version \(1\) is intact"):
        save(store, study, original, final2, [2], base_version=1)
    assert store.load(study).version == 1 and leftovers(folder) == [] and store.versions(study) == [1]

    # after freeing space the save goes through as version 2
    monkeypatch.setattr(store_mod, "atomic_write_text", real_text)
    assert save(store, study, original, final2, [2], base_version=1).version == 2
    assert np.array_equal(store.load(study).final, final2) and leftovers(folder) == []


def test_stale_debris_is_ignored_then_cleaned(tmp_path: Path) -> None:
    study = phantom()
    store = CorrectionStore(tmp_path / "store")
    original, final = corrected(study, 1)
    save(store, study, original, final, [1])
    folder = store.folder(study)
    # what a kill can leave: a half-written version, a renamed but uncommitted one, atomic temporaries
    (folder / "versions" / ".tmp-abc").mkdir()
    (folder / "versions" / ".tmp-abc" / "original.nii.gz").write_bytes(b"\0" * 10)
    (folder / "versions" / "000002").mkdir()
    (folder / "versions" / "000002" / "final.nii.gz").write_bytes(b"\0" * 10)
    (folder / ".current.json.x1y2.json").write_text("{}")
    assert store.load(study).version == 1 and store.versions(study) == [1]
    assert [e.version for e in store.entries()] == [1]
    save(store, study, original, final, [2], base_version=1)
    assert store.load(study).version == 2 and leftovers(folder) == []
    assert store.load(study).edited_frames == [1, 2]


# --------------------------------------------------------------------------------------------------
# editing tools
# --------------------------------------------------------------------------------------------------


def test_copy_frame_and_clear_slice() -> None:
    labels = np.zeros((4, 3, 8, 8), np.uint8)
    labels[0, :, 2:5, 2:5] = 3
    labels[0, 1, 0, 0] = 1
    labels[2] = labels[0]
    assert edit.copy_frame(labels, 0, [0, 1, 2, 3]) == [1, 3]  # frame 2 already equal, 0 is the source
    assert all(np.array_equal(labels[t], labels[0]) for t in range(4))
    labels[1] = 0
    assert edit.copy_frame(labels, 0, 1, slices=[2]) == [1]
    assert np.array_equal(labels[1, 2], labels[0, 2]) and not labels[1, :2].any()
    assert edit.copy_frame(labels, 0, [1], slices=[2]) == []
    with pytest.raises(IndexError, match="destination frame 4"):
        edit.copy_frame(labels, 0, [4])
    with pytest.raises(ValueError, match=r"\(t, z, y, x\)"):
        edit.copy_frame(labels[0], 0, [1])

    assert edit.clear_slice(labels, 0, 1, label=1) is True
    assert labels[0, 1, 0, 0] == 0 and (labels[0, 1] == 3).sum() == 9
    assert edit.clear_slice(labels, 0, 1, label=1) is False
    assert edit.clear_slice(labels, 0, 1, label=0) is False
    assert edit.clear_slice(labels, 0, 1) is True and not labels[0, 1].any()
    assert edit.clear_slice(labels, 0, 1) is False
    with pytest.raises(IndexError, match="slice 3"):
        edit.clear_slice(labels, 0, 3)


def test_differing_frames_navigation_and_edited_frames() -> None:
    original = np.zeros((6, 2, 4, 4), np.uint8)
    final = original.copy()
    final[1, 0, 0, 0] = 2
    final[4, 1, 3, 3] = 3
    assert edit.differing_frames(final, original) == [1, 4]
    assert edit.next_differing_frame(final, original, 1) == 4
    assert edit.next_differing_frame(final, original, 4) == 1  # wraps around
    assert edit.next_differing_frame(final, original, 2, step=-1) == 1
    assert edit.next_differing_frame(final, original, 1, step=-1) == 4
    assert edit.next_differing_frame(final, original, 0) == 1
    only = original.copy()
    only[3, 0, 0, 0] = 1
    assert edit.next_differing_frame(only, original, 3) is None  # never the current frame
    assert edit.next_differing_frame(original, original, 0) is None
    before = final.copy()
    after = final.copy()
    edit.copy_frame(after, 1, [0, 1, 2])
    assert edit.edited_frames(before, after) == [0, 2]
    with pytest.raises(ValueError, match="differ in shape"):
        edit.differing_frames(final, original[:3])


# --------------------------------------------------------------------------------------------------
# the store as a dataset
# --------------------------------------------------------------------------------------------------


def _two_study_store(root: Path) -> tuple[CineStudy, CineStudy]:
    store = CorrectionStore(root)
    a, b = phantom(1), phantom(2)
    oa, fa = corrected(a, a.ed_frame)
    save(store, a, oa, fa, [a.ed_frame, a.es_frame], model_id="m1")
    ob, fb = corrected(b, b.ed_frame)
    save(store, b, ob, fb, [b.ed_frame, b.es_frame], model_id="m1")
    return a, b


def test_store_source_reads_current_versions_with_cases_and_exclude(tmp_path: Path) -> None:
    from napari_cinema.training.datasets import DatasetError, load_source

    a, b = _two_study_store(tmp_path / "store")
    ka, kb = study_key(a), study_key(b)
    recs = load_source({"type": "store", "root": str(tmp_path / "store")})
    assert [r.case_id for r in recs] == sorted([ka, kb])
    (ra,) = load_source({"type": "store", "root": str(tmp_path / "store"), "exclude": [kb]})
    assert ra.case_id == ka and ra.source == "store" and ra.view == "sax"
    assert ra.labelled_frames == tuple(sorted({a.ed_frame, a.es_frame}))
    assert np.array_equal(ra.labels, a.labels) and np.array_equal(ra.image, a.image)
    assert ra.spacing == a.spacing[1:] and (ra.ed_frame, ra.es_frame) == (a.ed_frame, a.es_frame)
    assert ra.targets["ef"] == pytest.approx(100 * (1 - (a.labels[a.es_frame] == 3).sum()
                                                    / (a.labels[a.ed_frame] == 3).sum()))
    assert "original_labels" not in ra.targets and ra.targets["provenance"]["model_id"] == "m1"
    (rb,) = load_source({"type": "store", "root": str(tmp_path / "store"), "cases": [kb], "with_original": True})
    assert rb.case_id == kb and np.array_equal(rb.targets["original_labels"], corrected(b, b.ed_frame)[0])
    with pytest.raises(DatasetError, match=r"no study nobody-1 \(the store holds "):
        load_source({"type": "store", "root": str(tmp_path / "store"), "cases": ["nobody-1"]})
    with pytest.raises(DatasetError, match="no usable cases"):
        load_source({"type": "store", "root": str(tmp_path / "store"), "exclude": [ka, kb]})
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="not a correction store"):
        load_source({"type": "store", "root": str(tmp_path / "empty")})


def test_evaluate_scores_the_stored_model_output(tmp_path: Path, capsys) -> None:
    from napari_cinema.training import commands

    a, b = _two_study_store(tmp_path / "store")
    out = tmp_path / "x.json"
    rc = commands.main(["evaluate", str(tmp_path / "store"), "--out", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    assert res["layout"] == "store" and res["n_cases"] == 2 and res["model"]["id"] == "m1"
    assert res["model"]["sha256"] == "ab" * 32
    # the model missed the RV at ED only: LV perfect, RV not, scored on the edited frames
    assert res["dice"]["LV"] == 1.0 and res["dice"]["MYO"] == 1.0 and res["dice"]["RV"] < 1.0
    assert res["LVEF_mae_pct"] == 0.0 and res["RVEDV_mae_ml"] > 0
    by_key = {study_key(s): s for s in (a, b)}
    for row in res["per_case"]:
        s = by_key[row["case"]]
        assert [f["frame"] for f in row["frames"]] == sorted({s.ed_frame, s.es_frame})


def test_corrections_command_lists_the_store(tmp_path, capsys):
    from napari_cinema.cli import main

    study, _truth = make_phantom("sax", frames=4, slices=4, matrix=48, supersample=1, noise=0.0)
    final = study.labels.astype(np.uint8)
    store = CorrectionStore(tmp_path / "store")
    entry = store.save(study, np.zeros_like(final), final, model_id="m", model_sha256=None, edited_frames=[0, 2],
                       user="ann")
    assert main(["corrections", "list", "--store", str(store.root), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["key"], r["edited_frames"], r["uncorrected_frames"], r["saved_by"]) for r in rows] == [
        (entry.key, [0, 2], [1, 3], "ann")]
    assert main(["corrections", "show", entry.key, "--store", str(store.root)]) == 0
    assert json.loads(capsys.readouterr().out)["model_id"] == "m"
    assert main(["corrections", "show", "nope", "--store", str(store.root)]) == 2
    assert "no study 'nope'" in capsys.readouterr().err
