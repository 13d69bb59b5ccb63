"""Checkpoints: safetensors round trip, strict mismatch messages, corrupt files, hashes, configs."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from napari_cinema.model import checkpoint as ck
from napari_cinema.model.checkpoint import CheckpointError
from helpers import tiny_seg_config

factory = pytest.importorskip("napari_cinema.model.factory")


def build(config: dict, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return factory.build_model(config).eval()


def run(model: torch.nn.Module, view: str = "lax_4c") -> torch.Tensor:
    torch.manual_seed(123)
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        out = model({view: x})
    return out[view] if isinstance(out, dict) else out


def test_round_trip_is_bit_identical(tmp_path: Path) -> None:
    cfg = tiny_seg_config()
    model = build(cfg, seed=1)
    path = ck.save_checkpoint(model, tmp_path / "run" / "best.safetensors", config=cfg,
                              metadata={"epoch": 7, "note": "hello"})
    assert path == tmp_path / "run" / "best.safetensors" and path.is_file()
    assert yaml.safe_load((path.parent / "config.yaml").read_text()) == cfg
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.safetensors", "config.yaml"]  # no temp files

    shapes, meta = ck.read_header(path)
    assert set(shapes) == set(model.state_dict())
    assert "enc_down_dict.lax_4c.pos_embed" in shapes  # the fixed positional embedding is kept
    assert meta["epoch"] == "7" and meta["note"] == "hello"
    assert json.loads(meta[ck.META_CONFIG]) == cfg

    other = build(cfg, seed=2)
    assert not torch.equal(model.state_dict()["pred_head_dict.lax_4c.weight"],
                           other.state_dict()["pred_head_dict.lax_4c.weight"])
    report = ck.load_weights(other, path)
    assert report.complete and report.n_tensors == len(shapes)
    assert report.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    for key, value in model.state_dict().items():
        assert torch.equal(value, other.state_dict()[key]), key
    assert torch.equal(run(model), run(other))  # bit-identical outputs


def test_saved_tensors_are_fp32_and_folder_paths_work(tmp_path: Path) -> None:
    cfg = tiny_seg_config()
    model = build(cfg).to(torch.bfloat16)
    path = ck.save_checkpoint(model, tmp_path / "out", config=cfg)
    assert path == tmp_path / "out" / "model.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}


def test_load_model_gives_task_facts_and_hash(tmp_path: Path) -> None:
    cfg = tiny_seg_config()
    model = build(cfg, seed=3)
    path = ck.save_checkpoint(model, tmp_path / "m.safetensors", config=cfg, metadata={})
    loaded = ck.load_model(path, model_id="my-seg")
    assert loaded.model_id == "my-seg" and loaded.task == "segmentation" and loaded.view == "lax_4c"
    assert loaded.label_map == {0: "background", 1: "RV", 2: "MYO", 3: "LV"}
    assert loaded.sha256 == ck.sha256_file(path) == ck.cached_sha256(path)
    assert not loaded.model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[key]), key
    prov = loaded.provenance()
    assert prov["sha256"] == loaded.sha256 and prov["model_id"] == "my-seg"
    json.dumps(prov)

    (path.parent / "config.yaml").unlink()  # falls back to the config embedded in the header
    assert ck.load_model(path).task == "segmentation"


def test_strict_mismatch_lists_first_mismatches(tmp_path: Path) -> None:
    path = ck.save_checkpoint(build(tiny_seg_config(out_chans=4)), tmp_path / "x.safetensors",
                              config=tiny_seg_config(out_chans=4))
    with pytest.raises(CheckpointError) as err:
        ck.load_weights(build(tiny_seg_config(out_chans=3)), path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: does not match the model: ")
    assert "shape mismatch" in msg
    assert "pred_head_dict.lax_4c.weight: file (4, 8, 1, 1) vs model (3, 8, 1, 1)" in msg
    assert "pred_head_dict.lax_4c.bias: file (4,) vs model (3,)" in msg
    assert "missing" not in msg and "unexpected" not in msg

    other_view = build(tiny_seg_config(view="lax_2c"))
    with pytest.raises(CheckpointError) as err:
        ck.load_weights(other_view, path)
    msg = str(err.value)
    model_keys, file_keys = set(other_view.state_dict()), set(ck.read_header(path)[0])
    n = len(model_keys - file_keys)  # the shared transformer keys match; the per-view ones do not
    assert n == len(file_keys - model_keys) > 8
    assert f"{n} missing keys (enc_down_dict.lax_2c.pos_embed, " in msg
    assert f"{n} unexpected keys (" in msg
    assert msg.count(f"... {n - 8} more") == 2  # only the first 8 of each are listed
    assert len(msg) < 2000

    # non-strict: what matches is loaded, the rest reported
    target = build(tiny_seg_config(out_chans=3), seed=5)
    report = ck.load_weights(target, path, strict=False)
    assert [k for k, _, _ in report.mismatched] == ["pred_head_dict.lax_4c.weight", "pred_head_dict.lax_4c.bias"]
    assert not report.missing and not report.unexpected and not report.complete


def test_prefixed_keys_get_a_hint(tmp_path: Path) -> None:
    cfg = tiny_seg_config()
    state = {f"module.{k}": v for k, v in build(cfg).state_dict().items()}
    path = ck.save_checkpoint(state, tmp_path / "ddp.safetensors", config=cfg)
    with pytest.raises(CheckpointError, match="every key in the file starts with 'module.'"):
        ck.load_weights(build(cfg), path)


def test_corrupt_truncated_and_foreign_files(tmp_path: Path) -> None:
    cfg = tiny_seg_config()
    good = ck.save_checkpoint(build(cfg), tmp_path / "good.safetensors", config=cfg)
    data = good.read_bytes()
    cases = {
        "truncated.safetensors": (data[: len(data) - 1000], "truncated or corrupt"),
        "header.safetensors": (data[:20], "not a valid safetensors file"),
        "junk.safetensors": (b"this is not a model at all" * 20, "not a valid safetensors file"),
        "empty.safetensors": (b"", "the file is empty"),
    }
    for name, (content, expected) in cases.items():
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(CheckpointError) as err:
            ck.load_weights(build(cfg), p)
        assert str(err.value).startswith(str(p)) and expected in str(err.value), name

    pickle = tmp_path / "model.pt"
    torch.save(build(cfg).state_dict(), pickle)
    with pytest.raises(CheckpointError, match="PyTorch pickle.*never loaded"):
        ck.load_weights(build(cfg), pickle)
    with pytest.raises(CheckpointError, match="no such file"):
        ck.read_header(tmp_path / "missing.safetensors")

    bad_sha = "0" * 64
    with pytest.raises(CheckpointError, match="sha256 .* differs from the expected"):
        ck.load_weights(build(cfg), good, expected_sha256=bad_sha)


def test_sha256_is_streamed_and_cached(tmp_path: Path) -> None:
    p = tmp_path / "blob.bin"
    p.write_bytes(os.urandom(3 * (1 << 20) + 17))
    assert ck.cached_sha256(p) is None
    digest = ck.sha256_file(p)
    assert digest == hashlib.sha256(p.read_bytes()).hexdigest() == ck.cached_sha256(p)
    p.write_bytes(b"changed")  # new size and mtime: the cache does not answer for the new content
    assert ck.cached_sha256(p) is None
    assert ck.sha256_file(p) == hashlib.sha256(b"changed").hexdigest()


def test_describe_published_configs(shared_spec: Path) -> None:
    expected = {
        "seg_sax": ("segmentation", ("sax",)),
        "seg_lax_4c": ("segmentation", ("lax_4c",)),
        "landmark_heatmap_lax_2c": ("landmark_heatmap", ("lax_2c",)),
        "landmark_coordinate_lax_4c": ("landmark_coordinate", ("lax_4c",)),
        "cls_cvd_acdc_sax": ("classification_cvd", ("sax",)),
        "cls_sex_mnms_sax": ("classification_sex", ("sax",)),
        "cls_vendor_mnms2_sax": ("classification_vendor", ("sax",)),
        "reg_ef_acdc_sax": ("regression_ef", ("sax",)),
        "reg_bmi_acdc_sax": ("regression_bmi", ("sax",)),
        "reg_age_mnms_sax": ("regression_age", ("sax",)),
        "mae_pretrained": ("pretrained", ("sax", "lax_2c", "lax_3c", "lax_4c")),
    }
    for name, (task, views) in expected.items():
        info = ck.describe_config(ck.read_config(shared_spec / "configs" / f"{name}.yaml"))
        assert (info["task"], info["views"]) == (task, views), name
    cvd = ck.describe_config(ck.read_config(shared_spec / "configs" / "cls_cvd_acdc_sax.yaml"))
    assert cvd["classes"] == ["DCM", "HCM", "MINF", "NOR", "RV"] and cvd["n_frames"] == 2
    bmi = ck.describe_config(ck.read_config(shared_spec / "configs" / "reg_bmi_acdc_sax.yaml"))
    assert bmi["regression_target"] == "bmi" and bmi["regression_mean"] == pytest.approx(25.561040294207242)
    heat = ck.describe_config(ck.read_config(shared_spec / "configs" / "landmark_heatmap_lax_4c.yaml"))
    assert heat["landmark_names"] == ("mv_1", "mv_2", "apex")


def test_read_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "config.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(CheckpointError, match="not valid YAML"):
        ck.read_config(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(CheckpointError, match="YAML mapping"):
        ck.read_config(bad)


def test_training_state_round_trip(tmp_path: Path) -> None:
    # the shape of an optimizer state_dict, without running an optimizer (its first step imports dynamo)
    optim = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.rand(2, 3)}},
             "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.95), "params": [0]}]}
    path = ck.save_training_state(tmp_path / "state.pt", {"optimizer": optim, "step": 1, "best": 0.5})
    state = ck.load_training_state(path)
    assert state["step"] == 1 and state["best"] == 0.5
    assert torch.equal(state["optimizer"]["state"][0]["exp_avg"], optim["state"][0]["exp_avg"])

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="not a training-state file"):
        ck.load_training_state(tmp_path / "evil.pt")  # weights_only refuses arbitrary objects


def test_builtin_published_configs_match_the_spec_state_dicts(shared_spec: Path) -> None:
    """Every published model's built-in config builds exactly the reference state_dict (keys, shapes)."""
    from napari_cinema.model import hub

    names = {
        ("segmentation", "acdc", "sax"): "seg_sax",
        ("segmentation", "mnms2", "lax_4c"): "seg_lax_4c",
        ("pretrained", None, None): "mae_pretrained",
    }
    for pm in hub.published_models():
        if pm.task.startswith("landmark_"):
            names.setdefault((pm.task, pm.dataset, pm.view), f"{pm.task}_{pm.view}")
        elif "_" in pm.task:
            kind, col = pm.task.split("_", 1)
            names.setdefault((pm.task, pm.dataset, pm.view),
                             f"{'cls' if kind == 'classification' else 'reg'}_{col}_{pm.dataset}_{pm.view}")
    checked = 0
    for pm in hub.published_models():
        if pm.seed not in (None, 0):
            continue
        name = names.get((pm.task, pm.dataset, pm.view))
        spec = shared_spec / "cinema_state_dicts" / f"{name}.json"
        if name is None or not spec.is_file():
            continue
        reference = json.loads(spec.read_text())
        cfg = ck.apply_overrides(pm.builtin_config(), pm.overrides)
        with torch.device("meta"):
            net = factory.build_model(cfg)
        shapes = {k: list(v.shape) for k, v in net.state_dict().items()}
        assert shapes == reference["state_dict"], pm.model_id
        checked += 1
    assert checked >= 17
