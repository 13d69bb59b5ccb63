"""Training pipeline: datasets and label maps, tasks, losses, the loop (exact resume, graceful stop,
disk-full safety, DDP on gloo), run folder, card, registration. Tiny models, a few steps each."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from napari_cinema.training import commands
from napari_cinema.training.config import ConfigError, load_train_config
from napari_cinema.training.datasets import (
    ACDC_CLASSES,
    DatasetError,
    acdc_split,
    load_source,
    read_sunnybrook_patient,
    split_file,
)
from napari_cinema.training.loop import (
    EXIT_STOPPED,
    DiskFullError,
    load_last_checkpoint,
    param_groups,
    train,
)
from napari_cinema.training.tasks import EpochBatchSampler

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "training" / "configs" / "tiny.yaml"
PH = dict(frames=4, slices=4, matrix=48, pixel_mm=4.0, supersample=1)
TINY_UNETR = {"size": "tiny", "enc_conv_chans": [8, 8], "enc_conv_n_blocks": 1, "dec_chans": [8, 8, 8, 16, 16],
              "dec_n_blocks": 1}
TINY_VIT = {"size": "tiny", "enc_conv_chans": [8, 8], "enc_conv_n_blocks": 1}


pytestmark = pytest.mark.usefixtures("isolated_run", "one_torch_thread")


def tiny(**over) -> dict:
    cfg = load_train_config(TINY)
    cfg.pop("_source", None)
    for key, value in over.items():
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return cfg


def events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights_of(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


# --------------------------------------------------------------------------------------------------
# split, datasets, label maps
# --------------------------------------------------------------------------------------------------


def test_acdc_split_is_fixed_stratified_and_documented() -> None:
    data = json.loads(split_file().read_text())
    assert data["rule"] and data["n_val"] == 15 and data["n_train"] == 55
    assert set(data["train"]).isdisjoint(data["val"])
    for group, members in data["groups"].items():
        assert group in ACDC_CLASSES
        assert len([p for p in members if p in data["val"]]) == 3
    assert acdc_split("val") == data["val"] and len(acdc_split("all")) == 70


def test_real_datasets_load_with_explicit_label_maps(shared_data: Path) -> None:
    val = load_source({"type": "acdc", "root": str(shared_data / "acdc"), "split": "val"})
    assert sorted(r.case_id for r in val) == acdc_split("val")
    r = val[0]
    assert r.source_label_map == {0: "background", 1: "RV", 2: "MYO", 3: "LV"}
    assert r.targets["pathology"] in ACDC_CLASSES and 0 < r.targets["ef"] < 100
    train_ids = {r.case_id for r in load_source({"type": "acdc", "root": str(shared_data / "acdc"),
                                                 "patients": ["patient001", "patient003"]})}
    assert train_ids == {"patient001", "patient003"}

    # M&Ms stores 1 = LV, 3 = RV: remapped so that the bright cavity labelled LV in the file is 3 here
    import nibabel as nib

    mnms = load_source({"type": "mnms", "root": str(shared_data / "mnms")})
    assert len(mnms) == 3 and mnms[0].source_label_map[1] == "LV"
    rec = mnms[0]
    raw = np.asarray(nib.load(str(shared_data / "mnms" / f"{rec.case_id}_sa_ED_gt.nii.gz")).dataobj)
    raw_tzyx = np.transpose(raw, (2, 1, 0))[None]
    assert np.array_equal(rec.labels[0] == 3, raw_tzyx[0] == 1) and np.array_equal(rec.labels[0] == 1, raw_tzyx[0] == 3)

    mnms2 = {r.view: r for r in load_source({"type": "mnms2", "root": str(shared_data / "mnms2")})}
    assert set(mnms2) == {"sax", "lax_4c"}
    lax = mnms2["lax_4c"]
    assert lax.n_frames == 25 and lax.labelled_frames == (8, 23) and (lax.ed_frame, lax.es_frame) == (23, 8)


def test_packed_training_data_keeps_every_label_and_the_intensities(shared_data: Path, tmp_path: Path) -> None:
    """scripts/pack_training_data.py: the heart-cropped archive a remote GPU trains from loads like the original."""
    import importlib.util
    import shutil
    import tarfile

    spec = importlib.util.spec_from_file_location("pack_training_data",
                                                  Path(__file__).parents[1] / "scripts" / "pack_training_data.py")
    packer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(packer)
    src = tmp_path / "src"
    shutil.copytree(shared_data / "acdc" / "patient001", src / "acdc" / "patient001")
    (src / "mnms").mkdir()
    for f in (shared_data / "mnms").glob("G1K1V3_*"):
        shutil.copy(f, src / "mnms")
    archive = tmp_path / "packed.tar.xz"
    assert packer.main([str(src), "--out", str(archive)]) == 0
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    packed_root = tmp_path / "unpacked" / "data"
    for kind in ("acdc", "mnms"):
        orig = load_source({"type": kind, "root": str(src / kind)})[0]
        packed = load_source({"type": kind, "root": str(packed_root / kind)})[0]
        assert packed.spacing == orig.spacing and packed.labelled_frames == orig.labelled_frames
        assert packed.image.shape[-2] < orig.image.shape[-2]  # cropped in-plane ...
        for c in (1, 2, 3):  # ... yet every labelled voxel is kept
            assert (packed.labels == c).sum() == (orig.labels == c).sum() > 0
        # the same pixels: locate the crop by the labels and compare intensities (ACDC: 12-bit, <= 1.2e-4)
        (y0, x0) = [int(np.argwhere(orig.labels > 0)[:, k].min() - np.argwhere(packed.labels > 0)[:, k].min())
                    for k in (2, 3)]
        ny, nx = packed.image.shape[-2:]
        err = np.abs(packed.image - orig.image[..., y0:y0 + ny, x0:x0 + nx]).max()
        assert err <= (1.3e-4 if kind == "acdc" else 0)


def test_sunnybrook_contours_rasterise_to_lv_and_myo_with_rv_unlabelled(shared_data: Path) -> None:
    rec = read_sunnybrook_patient(shared_data / "sunnybrook" / "SCD0000101")
    assert rec.labelled_frames == (7, 18) and (rec.ed_frame, rec.es_frame) == (18, 7)
    assert rec.frame_classes[18] == (0, 2, 3) and rec.frame_classes[7] == (0, 3)  # no RV; MYO only at ED
    assert rec.valid[18].sum() == 9 and not rec.valid[0].any()
    z = int(np.where(rec.valid[18])[0][4])
    img, lab = rec.image[18, z], rec.labels[18, z]
    assert img[lab == 3].mean() > 2 * img[lab == 2].mean()  # bright blood inside the i-contour, MYO darker
    assert set(np.unique(rec.labels)) <= {0, 2, 3}
    assert 10 < rec.ef_pct() < 50  # heart failure with infarct


def test_bad_datasets_raise_clear_errors(tmp_path: Path) -> None:
    import nibabel as nib

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no usable cases"):
        load_source({"type": "acdc", "root": str(empty)})
    with pytest.raises(DatasetError, match="unknown data source type 'kaggle'"):
        load_source({"type": "kaggle", "root": str(empty)})
    with pytest.raises(DatasetError, match="does not exist"):
        load_source({"type": "mnms", "root": str(tmp_path / "nowhere")})
    # a correction store whose corrected labels were damaged on disk: a value outside the label map
    from napari_cinema.annotations.store import CorrectionStore
    from napari_cinema.sample_data.phantom import make_phantom

    study, _ = make_phantom("sax", **PH)
    entry = CorrectionStore(tmp_path / "store").save(study, study.labels, study.labels, model_id="m",
                                                     model_sha256=None, edited_frames=[0])
    final = entry.folder / "versions" / "000001" / "final.nii.gz"
    lab = np.asanyarray(nib.load(str(final)).dataobj).copy()
    lab[4:8, 4:8] = 7
    nib.save(nib.Nifti1Image(lab, np.eye(4)), str(final))
    with pytest.raises(DatasetError, match=r"final\.nii\.gz: label values \[7\] are outside the label map"):
        load_source({"type": "store", "root": str(tmp_path / "store")})
    cfg = tiny(**{"data.train": [{"type": "store", "root": str(tmp_path / "store")}], "data.val": []})
    with pytest.raises(DatasetError, match=r"data\.train\[0\].*label values \[7\]"):
        train(cfg)
    assert not (tmp_path / "runs" / "tiny" / "checkpoints").exists()


def test_bad_configs_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown task 'segmentatoin'"):
        load_train_config(tiny(task="segmentatoin"))
    with pytest.raises(ConfigError, match="unknown model.name 'unet'"):
        load_train_config(tiny(**{"model.name": "unet"}))
    with pytest.raises(ConfigError, match="unknown size 'gigantic'"):
        load_train_config(tiny(**{"model.convunetr.size": "gigantic"}))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) train\.epoch\b"):
        load_train_config(tiny(**{"train.epoch": 3}))
    with pytest.raises(ConfigError, match="trains a convvit model"):
        load_train_config(tiny(task="regression"))
    with pytest.raises(ConfigError, match="no such config file"):
        load_train_config(tmp_path / "missing.yaml")
    assert commands.main(["train", str(tmp_path / "missing.yaml")]) == 2


# --------------------------------------------------------------------------------------------------
# units: sampler, loss, layer-wise decay
# --------------------------------------------------------------------------------------------------


def test_batch_sampler_is_deterministic_sharded_and_resumable() -> None:
    groups = ["sax"] * 10 + ["lax_4c"] * 7
    s = EpochBatchSampler(groups, 3, seed=5)
    b0 = s.epoch_batches(0)
    assert b0 == EpochBatchSampler(groups, 3, seed=5).epoch_batches(0) and b0 != s.epoch_batches(1)
    assert all(len({groups[i] for i, _ in b}) == 1 for b in b0)  # one view per batch
    assert sorted(i for b in b0 for i, _ in b) == list(range(17))
    r0 = EpochBatchSampler(groups, 3, seed=5, rank=0, world_size=2).epoch_batches(0)
    r1 = EpochBatchSampler(groups, 3, seed=5, rank=1, world_size=2).epoch_batches(0)
    assert len(r0) == len(r1) and {i for b in r0 + r1 for i, _ in b} == set(range(17))
    s.set_epoch(0, start_batch=2)
    assert list(s) == b0[2:]


def test_resampled_epochs_of_several_views_keep_one_length() -> None:
    """Resampling to samples_per_epoch splits items between views differently each epoch; the number of
    batches must not change (the loop ran out of batches mid-epoch in an MAE run over three views)."""
    groups = ["sax"] * 40 + ["lax_2c"] * 31 + ["lax_4c"] * 29
    for world_size in (1, 2):
        samplers = [EpochBatchSampler(groups, 8, seed=0, samples_per_epoch=70, rank=r, world_size=world_size)
                    for r in range(world_size)]
        n = len(samplers[0])
        raw = {len(samplers[0]._group_batches(samplers[0]._rng(e))) for e in range(40)}
        assert len(raw) > 1  # the uncorrected counts do vary between epochs
        for epoch in range(40):
            for s in samplers:
                s.set_epoch(epoch)
                batches = list(s)
                assert len(batches) == len(s) == n, (world_size, epoch)
                assert all(len({groups[i] for i, _ in b}) == 1 for b in batches)


def test_flips_and_quarter_turns_move_image_and_labels_together() -> None:
    from napari_cinema.training.transforms import apply_augment, make_augment

    rng = np.random.default_rng(0)
    image = rng.random((1, 12, 12)).astype(np.float32)
    label = (image > 0.5).astype(np.int64) + (image > 0.8)  # labels are a function of the image
    off = {k: 0.0 for k in ("affine_prob", "gamma_prob", "noise_prob", "dropout_prob")}
    assert make_augment(2, {"image": "image"}, off) is None  # off by default: existing recipes unchanged
    flips = make_augment(2, {"image": "image", "label": "label"}, dict(off, flip_prob=1.0))
    out = apply_augment(flips, {"image": image, "label": label}, seed=3)
    np.testing.assert_array_equal(out["image"].numpy(), image[:, ::-1, ::-1])
    np.testing.assert_array_equal(out["label"].numpy(), label[:, ::-1, ::-1])
    turns = make_augment(3, {"image": "image", "label": "label"}, dict(off, rot90_prob=1.0))
    seen = set()
    for seed in range(12):
        out = apply_augment(turns, {"image": image[..., None], "label": label[..., None]}, seed=seed)
        k = next(k for k in range(4) if np.array_equal(out["image"].numpy()[..., 0], np.rot90(image, k, (1, 2))))
        np.testing.assert_array_equal(out["label"].numpy()[..., 0], np.rot90(label, k, (1, 2)))
        seen.add(k)
    assert seen == {1, 2, 3}  # every quarter turn, about the slice's own axes (z untouched)
    with pytest.raises(ConfigError, match="rot90_prob needs a square in-plane patch"):
        load_train_config(tiny(**{"train.augment": {"rot90_prob": 0.5}, "data.sax.patch_size": [32, 24]}))


def test_partial_dice_ce_ignores_unlabelled_classes() -> None:
    from monai.losses import DiceCELoss

    from napari_cinema.training.losses import PartialDiceCELoss

    torch.manual_seed(0)
    logits = torch.randn(2, 4, 16, 16)
    target = torch.randint(0, 4, (2, 1, 16, 16))
    ours = PartialDiceCELoss()(logits, target)
    ref = DiceCELoss(to_onehot_y=True, softmax=True, smooth_nr=1e-5, smooth_dr=1e-5)(logits, target)
    assert torch.allclose(ours, ref, atol=1e-4)
    # a confident RV prediction on pixels labelled background costs nothing when RV is unlabelled
    t = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    t[..., 2:5, 2:5] = 3
    lg = torch.full((1, 4, 8, 8), -10.0)
    lg[:, 1] = 10.0
    lg[:, 3][t[:, 0] == 3] = 20.0
    labelled = torch.tensor([[True, False, True, True]])
    loss = PartialDiceCELoss()
    assert loss(lg, t, labelled) < 0.6 < loss(lg, t)


def test_layer_wise_lr_decay_groups() -> None:
    from napari_cinema.model.factory import build_model

    cfg = tiny()
    cfg["model"]["convunetr"] = dict(TINY_UNETR, size={"enc_depth": 2, "enc_embed_dim": 16, "enc_n_heads": 2})
    model = build_model(cfg)
    groups = param_groups(model, 1e-3, 0.05, 0.75)
    scale = {g["layer_id"]: g["lr_scale"] for g in groups}
    assert scale[0] == pytest.approx(0.75 ** 3) and scale[1] == pytest.approx(0.75 ** 2)
    assert scale[3] == 1.0
    no_wd = [g for g in groups if g["weight_decay"] == 0.0]
    assert no_wd and all(p.ndim <= 1 or p.shape[0] == 1 for g in no_wd for p in g["params"])
    flat = param_groups(model, 1e-3, 0.05, None)
    assert {g["lr_scale"] for g in flat} == {1.0}


# --------------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------------


def test_tiny_run_writes_run_folder_progress_card_and_registers(tmp_path: Path, capsys) -> None:
    from napari_cinema.model.registry import get_model_info, load_model

    cfg_path = tmp_path / "tiny.yaml"
    cfg = tiny(**{"output.register": True, "output.model_id": "test/tiny-seg", "train.epochs": 2})
    cfg_path.write_text(yaml.safe_dump(cfg))
    rc = commands.main(["train", str(cfg_path), "--progress", "json", "--device", "cpu"])
    assert rc == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    run = tmp_path / "runs" / "tiny"
    assert lines == events(run)  # the same JSON lines on stdout and in metrics.jsonl
    kinds = [e["event"] for e in lines]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("epoch") == 2
    ep = [e for e in lines if e["event"] == "epoch"][-1]
    for key in ("epoch", "step", "total_steps", "train_loss", "val_dice", "lr", "eta_s"):
        assert key in ep
    assert ep["step"] == ep["total_steps"] == lines[0]["total_steps"]
    for name in ("train.yaml", "config.yaml", "model.safetensors", "card.md", "card.json",
                 "checkpoints/best.safetensors", "checkpoints/last.json"):
        assert (run / name).is_file(), name
    card = json.loads((run / "card.json").read_text())
    assert card["metrics"]["monitor"] == "val_dice" and card["metrics"]["validation"]["val_dice"] is not None
    assert card["licence"].startswith("MIT") and card["data"]["train"]["cases"] == 3
    info = get_model_info("test/tiny-seg")
    assert info.available and info.task == "segmentation" and info.label_map[3] == "LV"
    loaded = load_model("test/tiny-seg")
    assert loaded.sha256 == card["weights_sha256"]
    # a registered model segments through the engine
    from napari_cinema.engine import run_segmentation
    from napari_cinema.sample_data.phantom import make_phantom

    study, _ = make_phantom("sax", **PH)
    assert run_segmentation(study, loaded, device="cpu").labels.shape == study.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_tiny_run_on_cuda_uses_bf16_and_learns(tmp_path: Path) -> None:
    cfg = tiny(**{"train.epochs": 4, "output.dir": str(tmp_path / "runs")})
    res = train(cfg, device="cuda", progress="none")
    assert res.status == "done"
    ev = events(Path(res.run_dir))
    assert ev[0]["device"].startswith("cuda")
    epochs = [e for e in ev if e["event"] == "epoch"]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]


def test_resume_after_sigterm_is_bit_identical(tmp_path: Path) -> None:
    cfg = tiny(**{"train.epochs": 2, "train.checkpoint_every": 2})
    full = train(cfg, run_dir=tmp_path / "a")
    assert full.status == "done" and full.step == 12

    def sigterm_at_5(trainer, step):
        if step == 5:
            os.kill(os.getpid(), signal.SIGTERM)  # handled: finish the step, checkpoint, return 'stopped'

    part = train(cfg, run_dir=tmp_path / "b", on_step=sigterm_at_5)
    assert part.status == "stopped" and part.step == 5 and part.reason == "SIGTERM"
    assert events(tmp_path / "b")[-1]["event"] == "stopped"
    assert load_last_checkpoint(tmp_path / "b")[2]["step"] == 5
    # the CLI resumes it
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    assert commands.main(["train", str(cfg_path), "--resume", "--run-dir", str(tmp_path / "b"),
                          "--progress", "none"]) == 0
    wa = weights_of(load_last_checkpoint(tmp_path / "a")[0])
    wb = weights_of(load_last_checkpoint(tmp_path / "b")[0])
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ma, mb = weights_of(tmp_path / "a" / "model.safetensors"), weights_of(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    ea = [e for e in events(tmp_path / "a") if e["event"] == "epoch"]
    eb = [e for e in events(tmp_path / "b") if e["event"] == "epoch"]
    assert [(e["train_loss"], e["val_dice"]) for e in ea] == [(e["train_loss"], e["val_dice"]) for e in eb]


def test_weight_average_is_the_mean_of_epoch_ends_and_resumes_exactly(tmp_path: Path) -> None:
    """train.average_from_epoch: the kept model is the mean of the epoch-end weights from that epoch on,
    and a run stopped after averaging began resumes to the same average."""
    cfg = tiny(**{"train.epochs": 3, "train.average_from_epoch": 2, "train.patience": 0})
    ends: dict[int, dict[str, torch.Tensor]] = {}

    def keep_epoch_ends(trainer, step):
        if step % trainer.steps_per_epoch == 0:
            ends[step // trainer.steps_per_epoch] = {k: v.detach().cpu().clone()
                                                for k, v in trainer.model.state_dict().items()}

    full = train(cfg, run_dir=tmp_path / "a", on_step=keep_epoch_ends)
    assert full.status == "done" and sorted(ends) == [1, 2, 3]
    from napari_cinema.model.checkpoint import load_training_state

    averaged = load_training_state(load_last_checkpoint(tmp_path / "a")[1])["averaged"]
    assert int(averaged["n_averaged"]) == 2
    for k, v in ends[3].items():
        if v.is_floating_point():
            torch.testing.assert_close(averaged[f"module.{k}"], (ends[2][k] + v) / 2)
    epochs = [e for e in events(tmp_path / "a") if e["event"] == "epoch"]
    assert [e.get("averaged_epochs") for e in epochs] == [None, 1, 2]
    card = json.loads((tmp_path / "a" / "card.json").read_text())
    best_epoch = card["metrics"]["best_epoch"]  # the shipped (best) weights average the epochs 2..best_epoch
    assert card["weight_average"] == (None if best_epoch == 1 else {"from_epoch": 2, "epochs": best_epoch - 1})
    if best_epoch == 3:  # the final model is the validated average of epochs 2 and 3
        final = weights_of(tmp_path / "a" / "model.safetensors")
        assert all(torch.equal(final[k], averaged[f"module.{k}"]) for k in final)

    def stop_in_epoch_3(trainer, step):
        if step == 2 * trainer.steps_per_epoch + 2:
            trainer.request_stop("test")

    assert train(cfg, run_dir=tmp_path / "b", on_step=stop_in_epoch_3).status == "stopped"
    assert train(cfg, run_dir=tmp_path / "b", resume=True).status == "done"
    resumed = load_training_state(load_last_checkpoint(tmp_path / "b")[1])["averaged"]
    assert all(torch.equal(averaged[k], resumed[k]) for k in averaged)
    ma, mb = weights_of(tmp_path / "a" / "model.safetensors"), weights_of(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


def test_weight_average_epoch_must_be_in_the_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.average_from_epoch must be an epoch number from 1 to"):
        load_train_config(tiny(**{"train.epochs": 2, "train.average_from_epoch": 5}))


def test_stop_file_exits_3_with_usable_checkpoint(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "STOP").touch()
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny()))
    assert commands.main(["train", str(cfg_path), "--run-dir", str(run), "--progress", "none"]) == EXIT_STOPPED
    assert "stopped" in capsys.readouterr().err
    weights, state, info = load_last_checkpoint(run)
    assert info["step"] == 1
    from napari_cinema.model.checkpoint import load_model, load_training_state

    assert load_model(weights).task == "segmentation"  # config beside the checkpoint
    assert load_training_state(state)["step"] == 1

    # the researcher ends the stopped run instead of resuming it: model, card, registration, no steps
    assert commands.main(["train", str(cfg_path), "--run-dir", str(run), "--finish"]) == 2
    assert "--finish ends an interrupted run" in capsys.readouterr().err
    (run / "STOP").unlink()
    assert commands.main(["train", str(cfg_path), "--run-dir", str(run), "--resume", "--finish",
                          "--progress", "none"]) == 0
    assert "ended by --finish after 1 of" in capsys.readouterr().out
    card = json.loads((run / "card.json").read_text())
    assert card["status"] == "finished_by_user" and card["steps"] == 1
    assert [e["event"] for e in events(run)][-1] == "done" and (run / "model.safetensors").is_file()


def test_gradient_accumulation_and_bf16_autocast(tmp_path: Path) -> None:
    cfg = tiny(**{"train.epochs": 1, "train.batch_size": 4, "train.accum_steps": 2, "train.precision": "bf16",
                  "train.max_steps": 2, "data.val": []})
    result = train(cfg, run_dir=tmp_path / "acc")
    start = events(tmp_path / "acc")[0]
    assert start["steps_per_epoch"] == 6 and start["total_steps"] == 2  # 48 slices / (4 x 2)
    assert result.status == "done" and result.step == 2
    assert result.best["value"] is None and (tmp_path / "acc" / "model.safetensors").is_file()  # no validation


def test_early_stopping_on_the_validation_metric(tmp_path: Path) -> None:
    cfg = tiny(**{"train.epochs": 6, "train.samples_per_epoch": 8, "train.patience": 2, "optim.lr": 1e-12,
                  "optim.min_lr": 0.0, "train.augment": {"enabled": False}})
    result = train(cfg, run_dir=tmp_path / "es")
    assert result.status == "early_stopped" and result.epoch == 3 and result.best["step"] == 1
    kinds = [e["event"] for e in events(tmp_path / "es")]
    assert "early_stop" in kinds and kinds[-1] == "done"
    again = train(cfg, run_dir=tmp_path / "es", resume=True)  # nothing left to do
    assert again.status == "early_stopped" and again.step == result.step
    with pytest.raises(ConfigError, match="optim.lr must be > 0"):
        load_train_config(tiny(**{"optim.lr": 0}))


def test_full_disk_while_checkpointing_keeps_the_last_good_one(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors.torch as st

    real = st.save_file
    calls = {"last": 0}

    def failing(tensors, filename, metadata=None):
        if ".last-" in str(filename):
            calls["last"] += 1
            if calls["last"] == 2:  # half a file, then the disk is full
                Path(filename).write_bytes(b"\0" * 100)
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(st, "save_file", failing)
    cfg = tiny(**{"train.epochs": 2})
    with pytest.raises(DiskFullError, match="disk is full") as err:
        train(cfg, run_dir=tmp_path / "r")
    assert "step 6" in str(err.value) and "--resume" in str(err.value)
    weights, state, info = load_last_checkpoint(tmp_path / "r")
    assert info["step"] == 6
    from napari_cinema.model.checkpoint import load_model, load_training_state

    load_model(weights)  # strict load of the previous checkpoint
    assert load_training_state(state)["step"] == 6
    leftovers = [p.name for p in (tmp_path / "r" / "checkpoints").iterdir() if ".tmp-" in p.name or "0000012" in p.name]
    assert leftovers == []
    assert events(tmp_path / "r")[-1]["event"] == "error"
    # after freeing space, --resume finishes the run
    monkeypatch.setattr(st, "save_file", real)
    assert train(cfg, run_dir=tmp_path / "r", resume=True).status == "done"


def test_other_tasks_train_a_few_steps(tmp_path: Path) -> None:
    base = {"seed": 0, "train": {"epochs": 1, "batch_size": 4, "num_workers": 0, "log_every": 50, "max_steps": 2},
            "output": {"dir": str(tmp_path / "runs"), "register": False}}

    def run(name: str, **cfg):
        c = json.loads(json.dumps(base))
        c.update({k: v for k, v in cfg.items() if k != "train"})
        c["train"].update(cfg.get("train", {}))
        c["output"]["name"] = name
        result = train(c)
        assert result.status == "done", name
        return result

    lm = run("lm", task="landmark_heatmap",
             data={"lax": {"patch_size": [64, 64], "spacing": [4.0, 4.0]},
                   "train": [dict(type="phantom", view="lax_4c", n=2, **PH)],
                   "val": [dict(type="phantom", view="lax_4c", n=1, seed=50, **PH)]},
             model={"name": "convunetr", "views": "lax_4c", "out_chans": 3, "convunetr": TINY_UNETR})
    assert lm.monitor == "val_landmark_mm" and lm.best["value"] > 0
    mcfg = yaml.safe_load((lm.run_dir / "config.yaml").read_text())
    assert mcfg["data"]["name"] == "landmark" and mcfg["data"]["landmark_names"] == ["mv_1", "mv_2", "apex"]

    ef_data = {"sax": {"patch_size": [32, 32, 8], "spacing": [4.0, 4.0, 10.0]}, "regression_column": "ef",
               "train": [dict(type="phantom", view="sax", n=4, **PH)],
               "val": [dict(type="phantom", view="sax", n=2, seed=50, **PH)]}
    ef_model = {"name": "convvit", "views": "sax", "n_frames": 2, "convvit": TINY_VIT}
    ef = run("ef", task="regression", data=ef_data, model=ef_model)
    stats = yaml.safe_load((ef.run_dir / "config.yaml").read_text())["data"]["ef"]
    assert stats["std"] > 0 and 20 < stats["mean"] < 80 and ef.monitor == "val_mae"

    # generic classification from a CSV of per-study targets
    import csv

    from napari_cinema.sample_data.phantom import write_phantom

    rows = []
    for i, lvef in enumerate([30, 65, 35, 70]):
        d = write_phantom(tmp_path / f"csvdata/p{i}", view="sax", lvef=lvef, seed=i, **PH)
        rows.append({"path": str(d), "target": "reduced" if lvef < 50 else "normal"})
    with (tmp_path / "targets.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, ["path", "target"])
        w.writeheader()
        w.writerows(rows)
    studies = load_source({"type": "studies", "paths": [str(tmp_path / "csvdata/*/phantom_sax.nii.gz")]})
    assert len(studies) == 4 and all(r.view == "sax" and r.n_frames == 4 for r in studies)
    src = {"type": "csv", "root": str(tmp_path / "targets.csv"), "kind": "classification"}
    cls = run("cls", task="classification",
              data={"sax": {"patch_size": [32, 32, 8], "spacing": [4.0, 4.0, 10.0]}, "class_column": "target",
                    "train": [src], "val": [src]},
              model={"name": "convvit", "views": "sax", "n_frames": 2, "convvit": TINY_VIT})
    assert yaml.safe_load((cls.run_dir / "config.yaml").read_text())["data"]["target"] == ["normal", "reduced"]
    # a regressor started from the classifier's encoder: the encoder is copied, the head starts fresh
    from napari_cinema.model.factory import build_model
    from napari_cinema.training.config import ConfigError
    from napari_cinema.training.loop import ENCODER_PREFIXES, load_encoder_weights

    cls_weights = weights_of(cls.run_dir / "model.safetensors")
    reg = build_model(yaml.safe_load((ef.run_dir / "config.yaml").read_text()))
    head_before = {k: v.clone() for k, v in reg.state_dict().items() if not k.startswith(ENCODER_PREFIXES)}
    n = load_encoder_weights(reg, cls.run_dir / "model.safetensors")
    after = reg.state_dict()
    assert n == sum(k.startswith(ENCODER_PREFIXES) for k in after) > 0
    assert all(torch.equal(after[k], cls_weights[k]) for k in after if k.startswith(ENCODER_PREFIXES))
    assert all(torch.equal(after[k], v) for k, v in head_before.items())
    with pytest.raises(ConfigError, match="does not hold this model's encoder"):
        load_encoder_weights(build_model(tiny()), cls.run_dir / "model.safetensors")  # a 2-D ConvUNetR
    ef_cls = run("ef_from_cls", task="regression", data=ef_data, model=ef_model,
                 init={"weights": str(cls.run_dir / "model.safetensors"), "encoder_only": True})
    assert events(ef_cls.run_dir)[0]["pretrained"] is True
    with pytest.raises(ConfigError, match="needs init.weights"):
        run("no_weights", task="regression", data=ef_data, model=ef_model, init={"encoder_only": True})
    # the EF model scores through the engine on a labelled study folder (EF from the labels)
    from napari_cinema.training.evaluate import evaluate

    res = evaluate(tmp_path / "csvdata" / "p0", model=str(ef.run_dir), device="cpu")
    assert res["task"] == "regression_ef" and res["n_cases"] == 1 and res["LVEF_mae_pct"] is not None
    assert "val_auroc" in cls.best["metrics"]

    # MAE on every frame of two views, then a segmentation model initialised from it (layer-wise decay)
    mae = run("mae", task="mae",
              data={"sax": {"patch_size": [32, 32], "spacing": [4.0, 4.0]},
                    "lax": {"patch_size": [32, 32], "spacing": [4.0, 4.0]},
                    "train": [dict(type="phantom", view="sax", n=1, **PH),
                              dict(type="phantom", view="lax_4c", n=2, **PH)],
                    "val": [dict(type="phantom", view="sax", n=1, seed=50, **PH)]},
              model={"name": "mae", "views": ["sax", "lax_4c"], "size": "tiny", "enc_conv_chans": [8, 8],
                     "enc_conv_n_blocks": 1}, train={"max_steps": 3})
    assert mae.monitor == "val_loss" and mae.best["value"] > 0
    seg = run("seg_from_mae", **{k: v for k, v in tiny().items() if k in ("task", "data", "model")},
              init={"mae": str(mae.run_dir / "model.safetensors")})
    start = events(seg.run_dir)[0]
    assert start["pretrained"] is True


@pytest.mark.slow
def test_torchrun_two_cpu_processes_write_one_run_folder(tmp_path: Path) -> None:
    cfg = tiny(**{"train.epochs": 1, "output.dir": str(tmp_path / "runs")})
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
         "-m", "napari_cinema.training.commands", "train", str(cfg_path), "--progress", "json", "--device", "cpu"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    assert [p.name for p in runs] == ["tiny"]
    ev = events(runs[0])
    assert ev[0]["world_size"] == 2 and ev[-1]["event"] == "done"
    assert ev[0]["total_steps"] == 3  # 48 slices / batch 8 = 6 batches shared by 2 ranks
    assert sum(1 for e in ev if e["event"] == "start") == 1  # rank 0 alone logs
    assert (runs[0] / "model.safetensors").is_file()


def test_weights_started_from_keep_the_terms_of_their_origin(tmp_path: Path) -> None:
    """A phantom-only landmark model whose encoder came from an ACDC-trained MAE is not MIT."""
    from napari_cinema.training.loop import _stricter_licence, _weights_facts, inherit_terms, licence_for

    run = tmp_path / "mae_run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"weights")
    (run / "card.json").write_text(json.dumps({"id": "default-mae-mini", "licence": "CC BY-NC-SA 4.0",
                                               "licence_note": "Derived from the ACDC dataset."}))
    facts = _weights_facts(run / "model.safetensors", None)
    assert facts["id"] == "default-mae-mini" and facts["licence"] == "CC BY-NC-SA 4.0" and facts["sha256"]
    own, _, _ = licence_for({"phantom"})
    assert own.startswith("MIT")
    assert _stricter_licence(own, facts["licence"]) == "CC BY-NC-SA 4.0"
    assert _stricter_licence("CC BY-NC-SA 4.0", licence_for({"mnms2"})[0]) == "CC BY-NC-SA 4.0"
    assert _stricter_licence(own, licence_for({"mnms2"})[0]).startswith("research use only")
    # a fine-tune of a model trained on the same data inherits its terms without repeating them
    terms = licence_for({"acdc", "mnms"})
    base = {"id": "default-sax-seg", "licence": terms[0], "licence_note": terms[1], "citations": terms[2]}
    licence, note, cites = inherit_terms(terms, base, "Fine-tuned from")
    assert licence == "CC BY-NC-SA 4.0" and note.count(terms[1]) == 1 and cites == terms[2]
    assert note.startswith("Fine-tuned from default-sax-seg (CC BY-NC-SA 4.0): ")
    # and a further stage of that fine-tune says where it came from once, not once per stage
    again = inherit_terms(terms, {**base, "licence_note": note}, "Fine-tuned from")[1]
    assert again == note and again.count("Fine-tuned from") == 1
    # phantom-only training from the ACDC MAE: the MAE's terms, then its own
    licence, note, _ = inherit_terms(licence_for({"phantom"}), facts, "Encoder pre-trained as")
    assert licence == "CC BY-NC-SA 4.0" and note.endswith("Synthetic training data only.")
