"""Hub resolution (through huggingface_hub, offline, with locally built caches), the registry, the CLI."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import threading
from pathlib import Path

import pytest
import torch
import yaml

from napari_cinema.model import checkpoint as ck
from napari_cinema.model import commands, hub, registry
from napari_cinema.model.checkpoint import CheckpointError
from napari_cinema.model.hub import HubUnavailable
from napari_cinema.model.registry import ModelRegistry, RegistryError, UnknownModel
from helpers import tiny_seg_config

factory = pytest.importorskip("napari_cinema.model.factory")

COMMIT = "0123456789abcdef0123456789abcdef01234567"
SEG_ID = "cinema/segmentation/mnms2_lax_4c/0"
SEG_FOLDER = "finetuned/segmentation/mnms2_lax_4c"


def tiny_weights(path: Path, config: dict, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    return ck.save_checkpoint(factory.build_model(config), path, config=config)


def make_hf_cache(cache: Path, files: dict[str, bytes], commit: str = COMMIT) -> Path:
    """Lay files out as huggingface_hub does: blobs named by sha256, refs/main, snapshot symlinks."""
    repo = cache / "models--mathpluscode--CineMA"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    for rel, data in files.items():
        sha = hashlib.sha256(data).hexdigest()
        (repo / "blobs" / sha).write_bytes(data)
        link = repo / "snapshots" / commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(repo / "blobs" / sha, link.parent))
    return repo


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Isolated user folder and HF cache, offline, read by the module functions at call time."""
    paths = {"home": tmp_path / "home", "cache": tmp_path / "hf" / "hub", "bundled": tmp_path / "bundled"}
    monkeypatch.setenv("NAPARI_CINEMA_HOME", str(paths["home"]))
    monkeypatch.setenv("HF_HUB_CACHE", str(paths["cache"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(registry, "bundled_models_dir", lambda: paths["bundled"])
    return paths


@pytest.fixture
def seg_in_cache(env: dict[str, Path], tmp_path: Path) -> Path:
    cfg = tiny_seg_config(data_name="mnms2")
    weights = tiny_weights(tmp_path / "src" / "w.safetensors", cfg, seed=4)
    return make_hf_cache(env["cache"], {
        f"{SEG_FOLDER}/mnms2_lax_4c_0.safetensors": weights.read_bytes(),
        f"{SEG_FOLDER}/config.yaml": yaml.safe_dump(cfg).encode(),
    })


# ---- hub ----------------------------------------------------------------------------------------


def test_published_ids_and_hub_paths() -> None:
    ids = hub.published_ids()
    assert len(ids) == len(set(ids)) == 1 + 3 * sum(len(v) for v in hub.PUBLISHED_TASKS.values()) == 64
    pm = hub.parse_model_id("cinema/segmentation/acdc_sax/0")
    assert pm.weights_file == "finetuned/segmentation/acdc_sax/acdc_sax_0.safetensors"
    assert pm.config_file == "finetuned/segmentation/acdc_sax/config.yaml"
    pm = hub.parse_model_id("cinema/landmark_heatmap/lax_4c/2")
    assert pm.weights_file == "finetuned/landmark_heatmap/lax_4c/lax_4c_2.safetensors" and pm.dataset == "landmark"
    pm = hub.parse_model_id("cinema/pretrained")
    assert (pm.weights_file, pm.config_file) == ("pretrained/cinema.safetensors", "pretrained/config.yaml")
    pm = hub.parse_model_id("cinema/classification_sex/mnms_sax/1")
    assert pm.overrides == {"model.views": "sax", "data.class_column": "sex"}
    with pytest.raises(hub.UnknownPublishedModel, match="did you mean cinema/segmentation/acdc_sax/0"):
        hub.parse_model_id("cinema/segmentaton/acdc_sax/0")


def test_resolve_offline_through_huggingface_hub(env: dict[str, Path], seg_in_cache: Path) -> None:
    calls = []
    files = hub.resolve(SEG_ID, progress=lambda done, total: calls.append((done, total)))
    snapshot = seg_in_cache / "snapshots" / COMMIT / SEG_FOLDER
    assert files.weights == snapshot / "mnms2_lax_4c_0.safetensors"
    assert files.config == snapshot / "config.yaml"
    assert files.weights.is_symlink() and files.weights.resolve().parent == seg_in_cache / "blobs"
    assert files.sha256 == ck.sha256_file(files.weights) and not files.downloaded
    assert calls[-1][0] == calls[-1][1] == files.weights.stat().st_size

    # huggingface_hub itself answers: its own cache lookup agrees
    from huggingface_hub import try_to_load_from_cache

    assert try_to_load_from_cache(hub.REPO_ID, f"{SEG_FOLDER}/mnms2_lax_4c_0.safetensors",
                                  cache_dir=str(env["cache"])) == str(files.weights)


def test_not_cached_offline_is_a_clear_error(env: dict[str, Path], seg_in_cache: Path) -> None:
    with pytest.raises(HubUnavailable) as err:
        hub.resolve("cinema/segmentation/mnms2_lax_4c/1")
    msg = str(err.value)
    assert msg.startswith("model cinema/segmentation/mnms2_lax_4c/1 is not in the local cache (")
    assert str(env["cache"] / "models--mathpluscode--CineMA") in msg and "HF_HUB_OFFLINE" in msg
    assert "`napari-cinema models download cinema/segmentation/mnms2_lax_4c/1`" in msg
    assert "`napari-cinema models import FILE" in msg


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_hub_falls_back_to_the_cache(env: dict[str, Path], seg_in_cache: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    files = hub.resolve(SEG_ID, endpoint=endpoint)  # HEAD fails -> huggingface_hub returns the cached file
    assert files.weights.name == "mnms2_lax_4c_0.safetensors" and not files.downloaded
    with pytest.raises(HubUnavailable, match=r"cannot be reached \(cannot connect to 127\.0\.0\.1"):
        hub.resolve("cinema/segmentation/mnms2_lax_4c/2", endpoint=endpoint)


class _FakeHub(http.server.BaseHTTPRequestHandler):
    """Just enough of the hub's resolve endpoint for hf_hub_download: HEAD metadata and GET bodies."""

    files: dict[str, bytes] = {}

    def log_message(self, *args):  # quiet
        pass

    def _meta(self) -> bytes | None:
        prefix = f"/{hub.REPO_ID}/resolve/main/"
        path = self.path.split("?")[0]
        data = self.files.get(path[len(prefix):]) if path.startswith(prefix) else None
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        return data

    def do_HEAD(self):
        self._meta()

    def do_GET(self):
        data = self._meta()
        if data is not None:
            self.wfile.write(data)


def test_download_reports_progress_and_fills_the_cache(env: dict[str, Path], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    cfg = tiny_seg_config(data_name="mnms2")
    weights = tiny_weights(tmp_path / "src" / "w.safetensors", cfg).read_bytes()
    _FakeHub.files = {f"{SEG_FOLDER}/mnms2_lax_4c_0.safetensors": weights,
                      f"{SEG_FOLDER}/config.yaml": yaml.safe_dump(cfg).encode()}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        calls: list[tuple[int, int | None]] = []
        files = hub.resolve(SEG_ID, endpoint=endpoint, progress=lambda d, t: calls.append((d, t)))
        assert files.downloaded and files.weights.read_bytes() == weights
        blob = env["cache"] / "models--mathpluscode--CineMA" / "blobs" / hashlib.sha256(weights).hexdigest()
        assert files.weights.resolve() == blob and files.sha256 == blob.name
        assert calls[0] == (0, len(weights)) and calls[-1] == (len(weights), len(weights))  # via tqdm_class
        assert [d for d, _ in calls] == sorted(d for d, _ in calls)
        again = hub.resolve(SEG_ID, endpoint=endpoint)
        assert not again.downloaded and again.weights == files.weights
        with pytest.raises(hub.HubError, match="cannot get"):
            hub.resolve("cinema/segmentation/mnms2_lax_4c/1", endpoint=endpoint)  # the hub has no such file
    finally:
        server.shutdown()
        server.server_close()


# ---- registry -----------------------------------------------------------------------------------


def test_list_models_sources_and_filters(env: dict[str, Path], seg_in_cache: Path, tmp_path: Path) -> None:
    bundled = env["bundled"] / "default-lax-seg"
    tiny_weights(bundled / "model.safetensors", tiny_seg_config(data_name="mnms2"), seed=1)
    (bundled / "card.md").write_text("# default-lax-seg\n\nA small LAX segmentation model.\n")
    infos = {i.id: i for i in registry.list_models()}
    assert len([i for i in infos.values() if i.source == "published"]) == 64
    b = infos["default-lax-seg"]
    assert (b.source, b.task, b.views, b.available) == ("bundled", "segmentation", ("lax_4c",), True)
    assert b.description == "A small LAX segmentation model." and b.location == "package"
    assert b.label_map == {0: "background", 1: "RV", 2: "MYO", 3: "LV"}
    seg = infos[SEG_ID]
    assert seg.available and seg.location == "hf-cache" and seg.sha256 == ck.sha256_file(seg.path)
    assert not infos["cinema/segmentation/mnms2_lax_4c/1"].available
    heat = infos["cinema/landmark_heatmap/lax_2c/0"]
    assert heat.task == "landmark_heatmap" and heat.landmark_names == ("mv_1", "mv_2", "apex")
    assert infos["cinema/classification_cvd/acdc_sax/0"].classes == ["DCM", "HCM", "MINF", "NOR", "RV"]
    ef = infos["cinema/regression_ef/mnms_sax/0"]
    assert ef.regression_target == "ef" and ef.regression_mean == pytest.approx(39.75061820807878)

    assert {i.task for i in registry.list_models(task="landmark_heatmap")} == {"landmark_heatmap"}
    lax = registry.list_models(view="lax")
    assert lax and all(any(v.startswith("lax") for v in i.views) for i in lax)
    assert [i.id for i in registry.list_models(available=True)] == ["default-lax-seg", SEG_ID]
    assert registry.find_default("segmentation", "lax_4c") == "default-lax-seg"
    assert registry.find_default("segmentation", "sax") is None
    json.dumps([i.to_dict() for i in infos.values()])


def test_load_published_model_from_the_cache(env: dict[str, Path], seg_in_cache: Path) -> None:
    loaded = registry.load_model(SEG_ID)
    assert (loaded.model_id, loaded.source, loaded.task, loaded.view) == (SEG_ID, "published", "segmentation",
                                                                          "lax_4c")
    assert loaded.sha256 == loaded.weights_path.resolve().name  # verified against the hub's LFS hash
    assert loaded.label_map == {0: "background", 1: "RV", 2: "MYO", 3: "LV"}
    assert registry.get_model_info(SEG_ID).sha256 == loaded.sha256

    blob = loaded.weights_path.resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF  # a corrupted download: same size, different content
    blob.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="differs from the expected"):
        registry.load_model(SEG_ID)


def test_unknown_id_lists_close_matches(env: dict[str, Path]) -> None:
    with pytest.raises(UnknownModel, match=r"did you mean cinema/segmentation/acdc_sax/0, .*/1, .*/2\?"):
        registry.get_model_info("cinema/segmentation/acdc_sax")
    with pytest.raises(UnknownModel, match="cinema/regression_ef/acdc_sax/0"):
        registry.load_model("cinema/regresion_ef/acdc_sax/0")


def test_import_validates_copies_and_refuses_overwrite(env: dict[str, Path], tmp_path: Path) -> None:
    cfg = tiny_seg_config(data_name="mnms2")
    src = tiny_weights(tmp_path / "runs" / "a" / "best.safetensors", cfg, seed=7)
    info = registry.import_model(src, "my-lax-seg")
    folder = env["home"] / "models" / "my-lax-seg"
    assert info.source == "imported" and info.path == folder / "model.safetensors" and info.available
    assert sorted(p.name for p in folder.iterdir()) == ["card.json", "card.md", "config.yaml", "model.safetensors"]
    card = json.loads((folder / "card.json").read_text())
    assert card["sha256"] == ck.sha256_file(src) == info.sha256 and card["source"] == "imported"
    assert not [p for p in (env["home"] / "models").iterdir() if p.name.startswith(".")]  # no staging left

    loaded = registry.load_model("my-lax-seg")
    assert loaded.sha256 == info.sha256 and loaded.source == "imported"
    torch.manual_seed(7)
    reference = factory.build_model(cfg)
    for key, value in reference.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[key])

    with pytest.raises(RegistryError, match="already exists .*overwrite"):
        registry.import_model(src, "my-lax-seg")
    other = tiny_weights(tmp_path / "runs" / "b" / "best.safetensors", cfg, seed=8)
    again = registry.import_model(other, "my-lax-seg", overwrite=True)
    assert again.sha256 == ck.sha256_file(other) != info.sha256

    # a file that does not match its config is refused before anything is copied
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump(tiny_seg_config(out_chans=3, data_name="mnms2")))
    with pytest.raises(CheckpointError, match="pred_head_dict.lax_4c.weight: file \\(4, 8, 1, 1\\) vs model"):
        registry.import_model(src, "bad-one", config=wrong)
    assert not (env["home"] / "models" / "bad-one").exists()
    with pytest.raises(RegistryError, match="reserved"):
        registry.import_model(src, "cinema/my-model")
    with pytest.raises(RegistryError, match="invalid model id"):
        registry.import_model(src, "../escape")


def test_imported_copy_stands_in_for_a_published_model(env: dict[str, Path], tmp_path: Path) -> None:
    cfg = tiny_seg_config(data_name="mnms2")
    src = tiny_weights(tmp_path / "dl" / "mnms2_lax_4c_0.safetensors", cfg, seed=2)
    registry.import_model(src, SEG_ID)  # config found beside the file
    info = registry.get_model_info(SEG_ID)
    assert info.source == "published" and info.available and info.location == "user-dir"
    loaded = registry.load_model(SEG_ID)  # HF cache empty and offline: the imported copy is used
    assert loaded.sha256 == ck.sha256_file(src) and loaded.source == "published"
    listed = [i for i in registry.list_models() if i.id == SEG_ID]
    assert len(listed) == 1 and listed[0].available


def test_register_run_folder(env: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "run-1"
    cfg = tiny_seg_config(data_name="mnms2")
    tiny_weights(run / "final.safetensors", cfg)
    (run / "card.md").write_text("# run-1\n\nFine-tuned on my clinic's 4-chamber cines.\n")
    reg = ModelRegistry(user_dir=env["home"] / "models", bundled_dir=env["bundled"], cache_dir=env["cache"])
    info = reg.register_model(run, "clinic/lax-seg", card={"training_data": "clinic 2024"})
    assert info.id == "clinic/lax-seg" and info.source == "user" and info.training_data == "clinic 2024"
    assert info.description == "Fine-tuned on my clinic's 4-chamber cines."
    assert (env["home"] / "models" / "clinic" / "lax-seg" / "model.safetensors").is_file()
    assert reg.get_model_info("clinic/lax-seg").card["training_data"] == "clinic 2024"
    assert [i.id for i in reg.list_models(source="user")] == ["clinic/lax-seg"]
    with pytest.raises(RegistryError, match="already exists"):
        reg.register_model(run, "clinic/lax-seg")
    (run / "config.yaml").unlink()
    (run / "final.safetensors").write_bytes(b"")  # neither a config nor readable weights
    with pytest.raises((RegistryError, CheckpointError)):
        reg.register_model(run, "clinic/other")


# ---- command line -------------------------------------------------------------------------------


def test_models_commands(env: dict[str, Path], seg_in_cache: Path, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    assert commands.main(["models", "list", "--task", "segmentation", "--view", "lax_4c"]) == 0
    out = capsys.readouterr().out
    assert SEG_ID in out and "yes (hf-cache)" in out and "acdc_sax" not in out

    assert commands.main(["models", "list", "--json", "--available"]) == 0
    assert [d["id"] for d in json.loads(capsys.readouterr().out)] == [SEG_ID]

    assert commands.main(["models", "show", SEG_ID, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["label_map"] == {"0": "background", "1": "RV", "2": "MYO", "3": "LV"}

    assert commands.main(["models", "show", "cinema/segmentation/mnms2_lax_4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("napari-cinema models show: unknown model")

    assert commands.main(["models", "download", "cinema/segmentation/mnms2_lax_4c/1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not in the local cache" in err
    assert commands.main(["models", "download", SEG_ID]) == 0
    assert "already cached" in capsys.readouterr().out

    src = tiny_weights(tmp_path / "x" / "w.safetensors", tiny_seg_config(data_name="mnms2"))
    assert commands.main(["models", "import", str(src), "--id", "cli-model"]) == 0
    assert "imported" in capsys.readouterr().out
    assert commands.main(["models", "import", str(src), "--id", "cli-model"]) == 2
    assert "already exists" in capsys.readouterr().err
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"junk" * 10)
    assert commands.main(["models", "import", str(junk)]) == 2
    assert f"{junk}: not a valid safetensors file" in capsys.readouterr().err
