"""Fine-tuning from corrections: the plan and its checks, the config it writes, the `finetune` command end to
end on a tiny model (baseline event, before/after card, registration), exact resume, a frozen encoder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers import tiny_seg_config

from napari_cinema.annotations.store import CorrectionStore
from napari_cinema.cli import main as cli_main
from napari_cinema.model.checkpoint import save_checkpoint, sha256_file
from napari_cinema.model.factory import build_model
from napari_cinema.model.registry import get_model_info, list_models, register_model
from napari_cinema.sample_data.phantom import make_phantom
from napari_cinema.training import commands, finetune
from napari_cinema.training.config import load_train_config, model_config
from napari_cinema.training.finetune import (
    FinetuneError,
    FinetuneRequest,
    holdout,
    plan_finetune,
    write_finetune_config,
)
from napari_cinema.training.loop import ENCODER_PREFIXES, EXIT_STOPPED, load_last_checkpoint, train

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "training" / "configs" / "tiny.yaml"
PH = dict(frames=4, slices=4, matrix=48, pixel_mm=4.0, supersample=1)
BASE = "test/tiny-base"
FAST = ["--epochs", "1", "--samples-per-epoch", "16", "--batch-size", "4", "--device", "cpu",
        "--set", "train.num_workers=0", "--set", "train.log_every=1"]


pytestmark = pytest.mark.usefixtures("isolated_run", "one_torch_thread")


def _register(tmp_path: Path, model_id: str, config: dict) -> Path:
    folder = tmp_path / "models_src" / model_id.replace("/", "_")
    torch.manual_seed(0)
    save_checkpoint(build_model(config), folder / "model.safetensors", config=config)
    register_model(folder, model_id)
    return Path(get_model_info(model_id).path)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A tiny SAX segmentation model (the tiny.yaml network, random weights) registered as BASE."""
    cfg = load_train_config(TINY)
    return _register(tmp_path, BASE, model_config(cfg))


def _save_corrections(store: CorrectionStore, view: str, seed: int, edited: list[int] | None = None) -> str:
    study, _ = make_phantom(view, seed=seed, **PH)
    final = study.labels.copy()
    original = final.copy()
    original[original == 2] = 0  # the 'model' missed the myocardium: the annotator painted it back
    frames = [study.ed_frame, study.es_frame] if edited is None else edited
    study.labels = None
    return store.save(study, original, final, model_id=BASE, model_sha256=None, edited_frames=frames,
                      user="tester").key


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, list[str]]:
    """A correction store of 5 corrected SAX phantoms (ED and ES edited)."""
    root = tmp_path / "store"
    s = CorrectionStore(root)
    keys = [_save_corrections(s, "sax", seed) for seed in range(5)]
    return root, keys


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights_of(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


# --------------------------------------------------------------------------------------------------
# the plan
# --------------------------------------------------------------------------------------------------


def test_plan_from_store_sets_init_sources_holdout_and_outputs(base: Path, store, tmp_path: Path) -> None:
    root, keys = store
    before = snapshot(root)
    plan = plan_finetune(FinetuneRequest(base_model=BASE, store=root, epochs=3, lr=2e-4, train_layers="decoder",
                                         batch_size=4, samples_per_epoch=32, run_dir=tmp_path / "run"))
    cfg = plan.config
    assert cfg["init"] == {"mae": None, "weights": BASE, "freeze_encoder": True}
    assert cfg["train"]["val_at_start"] is True and cfg["train"]["epochs"] == 3
    assert cfg["train"]["batch_size"] == 4 and cfg["train"]["samples_per_epoch"] == 32
    assert cfg["optim"]["lr"] == pytest.approx(2e-4)
    # the base model's own geometry and network
    base_cfg = yaml.safe_load((base.parent / "config.yaml").read_text())
    assert cfg["model"] == base_cfg["model"] and cfg["data"]["sax"] == base_cfg["data"]["sax"]
    # 1 of 5 studies (val_fraction 0.2) held out, chosen by key; the two sides cover the store exactly once
    assert len(plan.val_cases) == 1 and sorted(plan.train_cases + plan.val_cases) == sorted(keys)
    (tr,), (va,) = cfg["data"]["train"], cfg["data"]["val"]
    assert tr == {"type": "store", "root": str(root.resolve()), "cases": plan.train_cases}
    assert va == {"type": "store", "root": str(root.resolve()), "cases": plan.val_cases}
    assert plan.val_cases == holdout(keys, 0.2)[1] == holdout(list(reversed(keys)), 0.2)[1]
    out = cfg["output"]
    assert out["register"] is True and out["model_id"] == plan.model_id
    assert plan.model_id.startswith("test-tiny-base-ft-") and len(plan.model_id) == len("test-tiny-base-ft-") + 15
    assert (out["dir"], out["name"]) == (str(tmp_path), "run")
    assert "encoder frozen" in out["description"] and plan.warnings == []
    # written atomically as a config `train` reads; nothing else written, the store untouched
    path = write_finetune_config(plan, tmp_path / "run")
    assert path == tmp_path / "run" / "finetune.yaml" and sorted(p.name for p in path.parent.iterdir()) == [
        "finetune.yaml"]
    loaded = load_train_config(path)
    assert loaded["init"]["weights"] == BASE and loaded["data"]["val"] == cfg["data"]["val"]
    assert BASE in path.read_text().split("\n", 3)[2]  # the header names the base model
    assert snapshot(root) == before


def test_one_study_validates_on_itself_and_says_so(base: Path, tmp_path: Path) -> None:
    root = tmp_path / "one"
    key = _save_corrections(CorrectionStore(root), "sax", 7)
    plan = plan_finetune(FinetuneRequest(base_model=BASE, store=root, run_dir=tmp_path / "run"))
    assert plan.train_cases == plan.val_cases == [key]
    assert any("only one corrected study" in w and key in w for w in plan.warnings)


def test_mixed_store_keeps_edited_studies_of_the_base_view(base: Path, tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    s = CorrectionStore(root)
    sax = [_save_corrections(s, "sax", seed) for seed in (1, 2, 3)]
    lax = _save_corrections(s, "lax_4c", 4)
    unedited = _save_corrections(s, "sax", 5, edited=[])  # changed labels, but no frame marked edited
    plan = plan_finetune(FinetuneRequest(base_model=BASE, store=root, run_dir=tmp_path / "run"))
    assert sorted(plan.train_cases + plan.val_cases) == sorted(sax)
    text = " ".join(plan.warnings)
    assert lax in text and "lax_4c" in text and unedited in text


def test_write_finetune_config_from_a_request_plans_first(base: Path, store, tmp_path: Path) -> None:
    root, _ = store
    path = write_finetune_config(FinetuneRequest(base_model=BASE, store=root, model_id="test/from-request"),
                                 tmp_path / "elsewhere")
    cfg = load_train_config(path)
    assert cfg["output"]["model_id"] == "test/from-request" and cfg["output"]["name"] == "elsewhere"


@pytest.mark.parametrize("case", [
    "empty_store", "missing_store", "no_edits", "other_view", "unknown_id", "not_downloaded", "not_segmentation",
    "disk_full", "epochs", "lr", "layers", "bad_model_id", "taken_model_id", "bad_dataset",
])
def test_bad_requests_fail_before_anything_is_written(case: str, base: Path, store, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = store
    kw: dict = {"base_model": BASE, "store": root}
    expect: list[str]
    if case == "empty_store":
        (tmp_path / "empty").mkdir()
        kw["store"], expect = tmp_path / "empty", ["no corrections", "empty", "holds no saved studies"]
    elif case == "missing_store":
        kw["store"], expect = tmp_path / "nowhere", ["no corrections", "nowhere", "does not exist"]
    elif case == "no_edits":
        root = tmp_path / "unedited"
        s = CorrectionStore(root)
        for seed in (1, 2):
            _save_corrections(s, "sax", seed, edited=[])
        kw["store"], expect = root, ["no corrections", "2 studies", "no edited frames"]
    elif case == "other_view":
        root = tmp_path / "lax"
        _save_corrections(CorrectionStore(root), "lax_4c", 1)
        kw["store"], expect = root, ["lax_4c", "sax", BASE]
    elif case == "unknown_id":
        kw["base_model"], expect = "test/tiny-bsae", ["unknown model", "test/tiny-bsae", f"did you mean {BASE}"]
    elif case == "not_downloaded":
        mid = "cinema/segmentation/acdc_sax/0"
        kw["base_model"], expect = mid, ["not downloaded", f"napari-cinema models download {mid}"]
    elif case == "not_segmentation":
        _register(tmp_path, "test/landmarks", tiny_seg_config("lax_4c", out_chans=3, data_name="landmark"))
        kw["base_model"], expect = "test/landmarks", ["test/landmarks", "landmark_heatmap model", "segmentation"]
    elif case == "disk_full":
        monkeypatch.setattr(finetune, "_free_bytes", lambda path: 5 * 2**20)
        kw["run_dir"], expect = tmp_path / "run", ["not enough free disk space", str(tmp_path / "run"), "5 MiB free",
                                                    BASE]
    elif case == "epochs":
        kw["epochs"], expect = 0, ["epochs", ">= 1", "0"]
    elif case == "lr":
        kw["lr"], expect = 0.0, ["lr must be a number > 0"]
    elif case == "layers":
        kw["train_layers"], expect = "encoder", ["unknown train_layers 'encoder'", "'all'", "'decoder'"]
    elif case == "bad_model_id":
        kw["model_id"], expect = "my model!", ["invalid model id", "my model!"]
    elif case == "taken_model_id":
        kw["model_id"], expect = BASE, ["test/tiny-base", "base model's"]
    else:
        (tmp_path / "pairs").mkdir()
        kw["datasets"], expect = [tmp_path / "pairs"], ["dataset", "pairs", "cannot train"]
    stores = [root, tmp_path / "store"]
    before = [snapshot(r) for r in stores]
    home_before = snapshot(tmp_path / "home")
    with pytest.raises(FinetuneError) as err:
        write_finetune_config(FinetuneRequest(**kw), tmp_path / "run")
    msg = str(err.value)
    for part in expect:
        assert part in msg, (part, msg)
    assert [snapshot(r) for r in stores] == before
    assert snapshot(tmp_path / "home") == home_before
    assert not (tmp_path / "run").exists()
    # the command line says the same on stderr with exit status 2
    if case in ("unknown_id", "epochs", "other_view"):
        argv = ["finetune", "--base", str(kw["base_model"]), "--store", str(kw["store"]),
                "--run-dir", str(tmp_path / "run"), "--epochs", str(kw.get("epochs", 1))]
        assert cli_main(argv) == 2
        assert not (tmp_path / "run").exists()


def test_datasets_only_needs_no_store(base: Path, tmp_path: Path, shared_data: Path) -> None:
    plan = plan_finetune(FinetuneRequest(base_model=BASE, store=tmp_path / "none", datasets=[shared_data / "mnms"],
                                         run_dir=tmp_path / "run"))
    assert plan.config["data"]["train"] == [{"type": "mnms", "root": str((shared_data / "mnms").resolve())}]
    assert plan.config["data"]["val"] == [] and any("without validation" in w for w in plan.warnings)
    # a SAX dataset for a LAX model names both views
    _register(tmp_path, "test/lax", tiny_seg_config("lax_4c"))
    with pytest.raises(FinetuneError, match=r"acdc.*sax.*test/lax.*lax_4c"):
        plan_finetune(FinetuneRequest(base_model="test/lax", datasets=[shared_data / "acdc"], run_dir=tmp_path / "r"))


# --------------------------------------------------------------------------------------------------
# the command end to end
# --------------------------------------------------------------------------------------------------


def test_config_only_writes_only_the_yaml(base: Path, store, tmp_path: Path, capsys) -> None:
    root, _ = store
    before = snapshot(root)
    run = tmp_path / "run"
    assert cli_main(["finetune", "--base", BASE, "--store", str(root), "--run-dir", str(run), "--model-id",
                     "test/only-config", "--config-only", *FAST]) == 0
    assert sorted(p.name for p in run.iterdir()) == ["finetune.yaml"]
    cfg = load_train_config(run / "finetune.yaml")
    assert cfg["train"]["num_workers"] == 0 and cfg["output"]["model_id"] == "test/only-config"
    out = capsys.readouterr()
    assert "test/only-config" in out.out and f"napari-cinema train {run / 'finetune.yaml'}" in out.err
    assert "test/only-config" not in {m.id for m in list_models()}
    assert snapshot(root) == before


def test_finetune_command_end_to_end_registers_a_model_with_before_after(base: Path, store, tmp_path: Path,
                                                                        capsys) -> None:
    root, _ = store
    before = snapshot(root)
    run = tmp_path / "run"
    rc = cli_main(["finetune", "--base", BASE, "--store", str(root), "--run-dir", str(run), "--progress", "json",
                   "--model-id", "test/tiny-ft", *FAST])
    assert rc == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert lines[0]["event"] == "plan" and lines[0]["model_id"] == "test/tiny-ft"
    assert lines[0]["base_model"] == BASE and lines[0]["base_sha256"] == sha256_file(base)
    assert lines[1:] == events(run)  # then exactly the metrics.jsonl lines
    kinds = [e["event"] for e in lines[1:]]
    assert kinds[:2] == ["start", "baseline"] and kinds[-1] == "done" and kinds.count("baseline") == 1
    baseline = lines[2]
    epoch = next(e for e in lines if e["event"] == "epoch")
    val_keys = {k for k in epoch if k.startswith("val_")}
    assert val_keys and val_keys <= set(baseline)  # per-structure keys as the epoch event has
    assert {"val_dice", "val_dice_LV", "val_dice_MYO", "val_dice_RV"} <= val_keys
    assert baseline["step"] == 0 and baseline["base_model"] == BASE and 0 <= baseline["val_dice"] <= 1
    done = lines[-1]
    assert done["model_id"] == "test/tiny-ft" and done["baseline"] == baseline["val_dice"]
    for name in ("finetune.yaml", "train.yaml", "config.yaml", "model.safetensors", "card.json", "card.md"):
        assert (run / name).is_file(), name
    card = json.loads((run / "card.json").read_text())
    assert card["base_model"]["id"] == BASE and card["base_model"]["sha256"] == sha256_file(base)
    assert card["baseline"]["model"] == BASE and card["baseline"]["metrics"]["val_dice"] == baseline["val_dice"]
    md = (run / "card.md").read_text()
    assert "Before / after" in md and f"base model ({BASE})" in md and "| val_dice |" in md
    # registered, listed, with the base model in its card
    listed = {m.id: m for m in list_models(task="segmentation", view="sax")}
    assert "test/tiny-ft" in listed and listed["test/tiny-ft"].available
    assert listed["test/tiny-ft"].card["base_model"]["id"] == BASE
    assert snapshot(root) == before


def test_resume_is_exact_and_the_baseline_changes_nothing(base: Path, store, tmp_path: Path, capsys) -> None:
    root, _ = store
    common = ["--base", BASE, "--store", str(root), "--progress", "none", *FAST]
    # uninterrupted
    assert commands.main(["finetune", *common, "--run-dir", str(tmp_path / "a"), "--model-id", "test/a"]) == 0
    # without the baseline: the same weights (the baseline consumes no random numbers)
    assert commands.main(["finetune", *common, "--run-dir", str(tmp_path / "c"), "--model-id", "test/c",
                          "--set", "train.val_at_start=false"]) == 0
    assert "baseline" not in [e["event"] for e in events(tmp_path / "c")]
    # stopped after its first step (STOP file), then continued with `train ... --resume`
    b = tmp_path / "b"
    b.mkdir()
    (b / "STOP").touch()
    assert commands.main(["finetune", *common, "--run-dir", str(b), "--model-id", "test/b"]) == EXIT_STOPPED
    assert f"napari-cinema train {b / 'finetune.yaml'} --resume --run-dir {b}" in capsys.readouterr().err
    assert load_last_checkpoint(b)[2]["step"] == 1
    # finetune refuses to start over a run; train resumes it
    assert commands.main(["finetune", *common, "--run-dir", str(b), "--model-id", "test/b2"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert commands.main(["train", str(b / "finetune.yaml"), "--run-dir", str(b), "--resume",
                          "--progress", "none"]) == 0
    kinds = [e["event"] for e in events(b)]
    assert kinds.count("baseline") == 1 and kinds.count("start") == 2 and kinds[-1] == "done"
    wa, wb, wc = (weights_of(load_last_checkpoint(tmp_path / r)[0]) for r in ("a", "b", "c"))
    assert all(torch.equal(wa[k], wb[k]) and torch.equal(wa[k], wc[k]) for k in wa)
    card_b = json.loads((b / "card.json").read_text())
    assert card_b["baseline"]["metrics"] == json.loads((tmp_path / "a" / "card.json").read_text())["baseline"][
        "metrics"]
    assert get_model_info("test/b").card["base_model"]["id"] == BASE


def test_decoder_only_keeps_the_encoder_frozen(base: Path, store, tmp_path: Path) -> None:
    root, _ = store
    path = write_finetune_config(FinetuneRequest(base_model=BASE, store=root, train_layers="decoder", epochs=1,
                                                 samples_per_epoch=16, batch_size=4, device="cpu",
                                                 model_id="test/frozen"), tmp_path / "run")
    result = train(path, run_dir=tmp_path / "run", overrides={"train.num_workers": 0})
    assert result.status == "done" and result.model_id == "test/frozen"
    w0, w1 = weights_of(base), weights_of(tmp_path / "run" / "model.safetensors")
    enc = [k for k in w0 if k.startswith(ENCODER_PREFIXES)]
    dec = [k for k in w0 if not k.startswith(ENCODER_PREFIXES)]
    assert enc and dec
    assert all(torch.equal(w0[k], w1[k]) for k in enc)
    assert any(not torch.equal(w0[k], w1[k]) for k in dec)
    card = json.loads((tmp_path / "run" / "card.json").read_text())
    assert card["frozen_encoder"] is True


def test_holdout_is_stable_and_bounded() -> None:
    keys = [f"study-{i}" for i in range(10)]
    tr, va = holdout(keys, 0.2)
    assert len(va) == 2 and set(tr).isdisjoint(va) and sorted(tr + va) == sorted(keys)
    # one more study moves at most one old study to the other side
    tr2, va2 = holdout(keys + ["study-10"], 0.2)
    assert len(set(va) - set(va2)) <= 1
    assert holdout(["a"], 0.2) == (["a"], []) and holdout(keys, 0.0) == (keys, [])
    assert len(holdout(keys[:2], 0.9)[1]) == 1  # at least one study trains


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_missing_gpu_is_found_before_writing(base: Path, store, tmp_path: Path) -> None:
    root, _ = store
    with pytest.raises(FinetuneError, match="no CUDA device"):
        write_finetune_config(FinetuneRequest(base_model=BASE, store=root, device="cuda"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_non_segmentation_published_model_is_refused_before_download(tmp_path: Path) -> None:
    with pytest.raises(FinetuneError, match="regression_ef model.*segmentation models only"):
        plan_finetune(FinetuneRequest(base_model="cinema/regression_ef/acdc_sax/0", store=tmp_path))
