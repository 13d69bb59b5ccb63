"""Inference engine: geometry round trips, batching, cancel, landmarks, pair models, bad input, CLI.

The networks here are fixed torch modules whose output is derived from their input image (intensity
bands -> classes, blob centroid -> heat-maps), so the expected answer on the study's own grid is
known exactly and every step of the geometry (resampling, centring, crop/pad, sliding windows, the
inverse mapping) is checked end to end.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from napari_cinema.engine import (
    Cancelled,
    DeviceUnavailable,
    EngineError,
    ModelSpec,
    autocast_dtype,
    choose_batch_frames,
    describe_device,
    pick_device,
    run_classification,
    run_landmarks,
    run_regression,
    run_segmentation,
    set_cpu_bf16,
    soft_argmax,
)
from napari_cinema.engine.postprocess import blood_pool_labels, keep_largest_pieces
from napari_cinema.engine.preprocess import AxisMap, Region, region_to_study, study_to_region
from napari_cinema.engine.sliding import phase_shifts, shift_averaged, window_starts
from napari_cinema.io.study import CineStudy

# --------------------------------------------------------------------------------------------------
# fixtures: synthetic studies and input-derived "networks"
# --------------------------------------------------------------------------------------------------

LEVELS = (0.0, 1 / 3, 2 / 3, 1.0)  # background, RV, MYO, LV: nested, so only adjacent levels touch
THRESHOLDS = (1 / 6, 1 / 2, 5 / 6)


def seg_spec(view="sax", patch=None, spacing=None, **kw) -> ModelSpec:
    group = "sax" if view == "sax" else "lax"
    data = {"patch_size": patch or ([192, 192, 16] if group == "sax" else [256, 256])}
    if spacing is not None:
        data["spacing"] = spacing
    data.update(kw)
    cfg = {"task": "segmentation", "data": {group: data}, "model": {"name": "convunetr", "views": view, "out_chans": 4}}
    return ModelSpec.from_config(cfg, model_id="test/band", sha256="0" * 64)


class BandNet(nn.Module):
    """Classes from intensity bands of the (already [0, 1]-scaled) input; records its input shapes."""

    def __init__(self, view: str, lut=(0, 1, 2, 3)):
        super().__init__()
        self.view = view
        self.register_buffer("lut", torch.tensor(lut))
        self.calls: list[tuple[int, ...]] = []

    def forward(self, inputs):
        x = inputs[self.view]
        self.calls.append(tuple(x.shape))
        band = sum((x[:, 0] > t).long() for t in THRESHOLDS)
        onehot = nn.functional.one_hot(self.lut[band], 4).movedim(-1, 1).float()
        return {self.view: onehot * 10.0}


def heart_image(nt, nz, ny, nx, spacing, centre_mm=(0.0, 0.0), taper=0.25) -> np.ndarray:
    """Nested LV disc / MYO ring / RV crescent ring; LV radius beats over time and tapers with z."""
    _dt, _dz, dy, dx = spacing
    yy = (np.arange(ny) - (ny - 1) / 2) * dy - centre_mm[0]
    xx = (np.arange(nx) - (nx - 1) / 2) * dx - centre_mm[1]
    y, x = np.meshgrid(yy, xx, indexing="ij")
    d = np.hypot(y, x)
    d_rv = np.hypot(y - 4.0, x + 14.0)
    t = np.arange(nt)[:, None, None, None]
    z = np.arange(nz)[None, :, None, None]
    r = (18.0 + 5.0 * np.cos(2 * np.pi * t / max(nt, 1))) * (1 - taper * z / max(1, nz - 1))
    img = np.where(d_rv < r + 30.0, LEVELS[1], LEVELS[0])
    img = np.where(d < r + 8.0, LEVELS[2], img)
    img = np.where(d < r, LEVELS[3], img)
    return img.astype(np.float32)


def make_study(nt=3, nz=9, ny=61, nx=53, spacing=(30.0, 8.0, 1.7, 1.3), view="sax", centre_mm=(0.0, 0.0),
               affine=None) -> CineStudy:
    img = heart_image(nt, nz, ny, nx, spacing, centre_mm)
    if affine is None:
        affine = np.diag([spacing[3], spacing[2], spacing[1], 1.0])
    return CineStudy(img, spacing, affine=affine, view=view)


def expected_labels(image: np.ndarray, per_slice: bool = False) -> np.ndarray:
    axes = (2, 3) if per_slice else (1, 2, 3)
    lo = image.min(axis=axes, keepdims=True)
    hi = image.max(axis=axes, keepdims=True)
    v = (image - lo) / np.where(hi > lo, hi - lo, 1.0)
    return sum((v > t).astype(np.uint8) for t in THRESHOLDS).astype(np.uint8)


def dice(a, b, k) -> float:
    a, b = a == k, b == k
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


def assert_dice(labels, expected, minimum=0.95):
    assert labels.shape == expected.shape
    assert labels.dtype == np.uint8
    scores = {k: dice(labels, expected, k) for k in (1, 2, 3)}
    assert min(scores.values()) > minimum, scores


def oblique_affine(spacing) -> np.ndarray:
    _dt, dz, dy, dx = spacing
    a, b = np.deg2rad(30.0), np.deg2rad(-20.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    aff = np.eye(4)
    aff[:3, :3] = rz @ rx @ np.diag([dx, dy, dz])
    aff[:3, 3] = [-120.5, 33.0, 71.25]
    return aff


# --------------------------------------------------------------------------------------------------
# spec
# --------------------------------------------------------------------------------------------------


def test_spec_from_published_configs(shared_spec):
    yaml = pytest.importorskip("yaml")
    expect = {
        "seg_sax": ("segmentation", "sax", (192, 192, 16), (1.0, 1.0, 10.0), 4),
        "seg_lax_4c": ("segmentation", "lax_4c", (256, 256), (1.0, 1.0), 4),
        "landmark_heatmap_lax_2c": ("landmark_heatmap", "lax_2c", (256, 256), (1.0, 1.0), 3),
        "landmark_coordinate_lax_4c": ("landmark_coordinate", "lax_4c", (256, 256), (1.0, 1.0), 6),
        "cls_cvd_acdc_sax": ("classification", "sax", (192, 192, 16), (1.0, 1.0, 10.0), 5),
        "reg_ef_acdc_sax": ("regression", "sax", (192, 192, 16), (1.0, 1.0, 10.0), 1),
    }
    for name, (task, view, patch, spacing, out) in expect.items():
        cfg = yaml.safe_load((shared_spec / "configs" / f"{name}.yaml").read_text())
        spec = ModelSpec.from_config(cfg)
        got = (spec.task, spec.view, spec.patch_size, spec.spacing, spec.out_chans)
        assert got == (task, view, patch, spacing, out)
        assert spec.token_px == 16  # 4-pixel patches, then two conv stages that halve: the CineMA token
    small = {"task": "segmentation", "data": {"sax": {"patch_size": [64, 64]}},
             "model": {"name": "convunetr", "views": "sax",
                       "convunetr": {"enc_patch_size": [2, 2, 1], "enc_scale_factor": [2, 2, 1], "enc_conv_chans": [8]}}}
    assert ModelSpec.from_config(small).token_px == 4
    cls = ModelSpec.from_config(yaml.safe_load((shared_spec / "configs" / "cls_cvd_acdc_sax.yaml").read_text()))
    assert cls.classes == ("DCM", "HCM", "MINF", "NOR", "RV") and cls.n_frames == 2 and cls.input_channels == 2
    reg = ModelSpec.from_config(yaml.safe_load((shared_spec / "configs" / "reg_ef_acdc_sax.yaml").read_text()))
    assert reg.regression_target == "ef" and reg.regression_mean == pytest.approx(27.6988, abs=1e-3)
    assert reg.regression_std == pytest.approx(10.8481, abs=1e-3)


def test_spec_from_loaded_model_object():
    class Loaded:  # what the registry hands out
        model = BandNet("lax_4c")
        config = {"task": "segmentation", "data": {"lax": {"patch_size": [256, 256], "spacing": [1.0, 1.0]}},
                  "model": {"name": "convunetr", "views": ["lax_4c"], "out_chans": 4}}
        model_id = "cinema/segmentation/mnms2_lax_4c/0"
        sha256 = "ab" * 32
        views = ("lax_4c",)
        label_map = {0: "background", 1: "RV", 2: "MYO", 3: "LV"}

    study = make_study(nt=2, nz=1, ny=70, nx=80, spacing=(None, 8.0, 1.5, 1.5), view="lax_4c")
    result = run_segmentation(study, Loaded(), device="cpu")
    assert result.provenance["model_id"] == "cinema/segmentation/mnms2_lax_4c/0"
    assert result.provenance["sha256"] == "ab" * 32
    assert_dice(result.labels, expected_labels(study.image))


# --------------------------------------------------------------------------------------------------
# geometry round trips
# --------------------------------------------------------------------------------------------------


def test_round_trip_sax_smaller_than_patch_anisotropic():
    study = make_study(nt=3, nz=9, ny=61, nx=53, spacing=(30.0, 8.0, 1.7, 1.3))
    net = BandNet("sax")
    result = run_segmentation(study, net, seg_spec(), device="cpu", batch_frames=3, shift_passes=1)
    assert result.provenance["centring"]["method"] == "fov"
    assert net.calls == [(3, 1, 192, 192, 16)]  # all frames in one batch, padded to the network size
    assert_dice(result.labels, expected_labels(study.image))


def test_round_trip_sax_larger_than_patch_is_centred_on_lv():
    # 247 x 231 px at 1.3 x 1.7 mm: 321 x 393 mm, far larger than 192 x 192; heart off-centre.
    study = make_study(nt=4, nz=11, ny=231, nx=247, spacing=(25.0, 8.0, 1.7, 1.3), centre_mm=(40.0, -30.0))
    net = BandNet("sax")
    result = run_segmentation(study, net, seg_spec(), device="cpu")
    info = result.provenance["centring"]
    assert info["method"] == "motion"  # the beating LV is where the cine moves
    cz, cy, cx = info["centre_voxel_zyx"]
    assert abs(cy - ((231 - 1) / 2 + 40.0 / 1.7)) < 1.0 and abs(cx - ((247 - 1) / 2 - 30.0 / 1.3)) < 1.0
    stop, start = np.array(info["region"]["stop_xyz"]), np.array(info["region"]["start_xyz"])
    assert list(stop - start)[:2] == [192, 192]  # one network input, same crop for every frame
    assert_dice(result.labels, expected_labels(study.image))


def test_centring_ignores_a_static_lv_lookalike_outside_the_heart():
    # The failure seen on ACDC: a whole-field first pass found a false LV (bright, still tissue) far
    # from the heart and cropped there. A larger static decoy with LV intensity sits 110 mm away.
    spacing = (25.0, 8.0, 1.5, 1.5)
    study = make_study(nt=6, nz=6, ny=240, nx=240, spacing=spacing, centre_mm=(-50.0, -50.0))
    y, x = np.meshgrid((np.arange(240) - 119.5) * 1.5, (np.arange(240) - 119.5) * 1.5, indexing="ij")
    decoy = np.hypot(y - 60.0, x - 60.0) < 30.0
    study.image[:, :, decoy] = LEVELS[3]
    result = run_segmentation(study, BandNet("sax"), seg_spec(), device="cpu")
    info = result.provenance["centring"]
    assert info["method"] == "motion"
    cz, cy, cx = info["centre_voxel_zyx"]
    assert abs(cy - (119.5 - 50.0 / 1.5)) < 2.0 and abs(cx - (119.5 - 50.0 / 1.5)) < 2.0
    # the whole-field pass alone picks the bigger decoy: what the motion prior is for
    whole = run_segmentation(study, BandNet("sax"), seg_spec(), device="cpu", centring="downsample")
    assert whole.provenance["centring"]["centre_voxel_zyx"][1] > 119.5


def test_centring_without_motion_falls_back_to_the_whole_field_pass():
    study = make_study(nt=1, nz=6, ny=231, nx=247, spacing=(25.0, 8.0, 1.7, 1.3), centre_mm=(40.0, -30.0))
    result = run_segmentation(study, BandNet("sax"), seg_spec(), device="cpu")
    info = result.provenance["centring"]
    assert info["method"] == "downsample"
    assert "first pass (motion) found no LV" in info["warnings"]
    cz, cy, cx = info["centre_voxel_zyx"]
    assert abs(cy - ((231 - 1) / 2 + 40.0 / 1.7)) < 1.0 and abs(cx - ((247 - 1) / 2 - 30.0 / 1.3)) < 1.0


def test_round_trip_sliding_centring_and_odd_sizes():
    study = make_study(nt=2, nz=7, ny=203, nx=217, spacing=(25.0, 9.0, 1.25, 1.1), centre_mm=(-25.0, 20.0))
    net = BandNet("sax")
    result = run_segmentation(study, net, seg_spec(), device="cpu", centring="sliding")
    assert result.provenance["centring"]["method"] == "sliding"
    assert_dice(result.labels, expected_labels(study.image))


def test_heart_larger_than_patch_uses_sliding_window_over_the_heart():
    # a 120-patch network: the heart box (about 125 mm plus margins) exceeds it -> windows over the box
    study = make_study(nt=2, nz=6, ny=150, nx=160, spacing=(25.0, 8.0, 1.4, 1.4))
    net = BandNet("sax")
    result = run_segmentation(study, net, seg_spec(patch=[96, 96, 16]), device="cpu")
    region = result.provenance["centring"]["region"]
    size = np.array(region["stop_xyz"]) - np.array(region["start_xyz"])
    assert size[0] > 96 and size[1] > 96
    assert len(net.calls) > 3  # several windows
    assert_dice(result.labels, expected_labels(study.image))


def test_no_lv_falls_back_to_image_centre():
    study = make_study(nt=2, nz=4, ny=180, nx=170, spacing=(25.0, 10.0, 1.5, 1.5))
    net = BandNet("sax", lut=(0, 1, 2, 2))  # never says LV
    result = run_segmentation(study, net, seg_spec(), device="cpu")
    info = result.provenance["centring"]
    assert info["method"] == "image-centre"
    assert any("no LV" in w for w in info["warnings"])
    start, stop = np.array(info["region"]["start_xyz"]), np.array(info["region"]["stop_xyz"])
    grid = np.array(info["region"]["model_grid_xyz"])
    assert np.all(np.abs((start + stop) / 2 - grid / 2) <= 1.0)


def test_affine_does_not_change_voxel_mapping():
    spacing = (30.0, 8.0, 1.7, 1.3)
    a = make_study(nt=2, nz=6, ny=150, nx=170, spacing=spacing, centre_mm=(10.0, 5.0))
    b = make_study(nt=2, nz=6, ny=150, nx=170, spacing=spacing, centre_mm=(10.0, 5.0), affine=oblique_affine(spacing))
    la = run_segmentation(a, BandNet("sax"), seg_spec(), device="cpu").labels
    lb = run_segmentation(b, BandNet("sax"), seg_spec(), device="cpu").labels
    np.testing.assert_array_equal(la, lb)


@pytest.mark.parametrize("shape,spacing", [((2, 1, 97, 113), (40.0, 8.0, 1.8, 1.6)),  # smaller than 256 mm
                                           ((2, 1, 241, 203), (40.0, 8.0, 1.35, 1.45))])  # larger
def test_round_trip_lax_2d(shape, spacing):
    study = make_study(*shape, spacing=spacing, view="lax_4c", centre_mm=(12.0, -8.0))
    result = run_segmentation(study, BandNet("lax_4c"), seg_spec("lax_4c"), device="cpu")
    assert_dice(result.labels, expected_labels(study.image))


def test_per_slice_sax_model_batches_slices():
    study = make_study(nt=3, nz=5, ny=80, nx=90, spacing=(30.0, 8.0, 1.5, 1.5))
    net = BandNet("sax")
    spec = seg_spec(patch=[128, 128], spacing=[1.25, 1.25])
    result = run_segmentation(study, net, spec, device="cpu", batch_frames=2, shift_passes=1)
    assert net.calls == [(10, 1, 128, 128), (5, 1, 128, 128)]  # frames x slices in the batch
    assert_dice(result.labels, expected_labels(study.image, per_slice=True))


def test_interpolation_round_trip_is_identity_for_smooth_fields():
    axes = (AxisMap.make(40, 1.3, 1.0), AxisMap.make(33, 1.7, 1.0), AxisMap.make(9, 8.0, 10.0))
    region = Region.full(axes)
    i = torch.arange(40, dtype=torch.float32)[:, None, None] * 1.3
    j = torch.arange(33, dtype=torch.float32)[None, :, None] * 1.7
    field = (0.01 * i + 0.02 * j + 0 * torch.zeros(1, 1, 9))[None, None]  # linear in-plane, constant in z
    back = region_to_study(study_to_region(field, region), region, background_channel=None)
    assert torch.allclose(back[..., 2:-2, 2:-2, :], field[..., 2:-2, 2:-2, :], atol=1e-4)


def test_window_starts_cover_with_half_overlap():
    assert window_starts(100, 192) == [0]
    assert window_starts(192, 192) == [0]
    s = window_starts(400, 192)
    assert s[0] == 0 and s[-1] == 400 - 192 and all(b - a <= 96 for a, b in zip(s, s[1:]))


# --------------------------------------------------------------------------------------------------
# batching, progress, cancel
# --------------------------------------------------------------------------------------------------


def test_batched_equals_per_frame_loop():
    study = make_study(nt=5, nz=6, ny=120, nx=140, spacing=(30.0, 8.0, 1.6, 1.4), centre_mm=(5.0, 15.0))
    batched_net, loop_net = BandNet("sax"), BandNet("sax")
    batched = run_segmentation(study, batched_net, seg_spec(), device="cpu", batch_frames=5, shift_passes=1)
    loop = run_segmentation(study, loop_net, seg_spec(), device="cpu", batch_frames=1, shift_passes=1)
    np.testing.assert_array_equal(batched.labels, loop.labels)
    # 224 mm field of view: a centring pass over 3 frames (2 windows wide), then the 5 frames
    assert [c[0] for c in batched_net.calls] == [3, 3, 5]
    assert [c[0] for c in loop_net.calls] == [1] * 11


def test_real_network_batched_equals_per_frame_and_loaded_model():
    """A (very small) ConvUNetR from the factory, wrapped as the registry's LoadedModel."""
    factory = pytest.importorskip("napari_cinema.model.factory")
    checkpoint = pytest.importorskip("napari_cinema.model.checkpoint")
    torch.manual_seed(0)
    cfg = {"task": "segmentation",
           "data": {"sax": {"patch_size": [64, 64, 8], "spacing": [3.0, 3.0, 10.0], "in_chans": 1}},
           "model": {"name": "convunetr", "views": "sax", "out_chans": 4,
                     "convunetr": {"size": "tiny", "dec_chans": [4, 8, 8, 16, 16], "enc_conv_chans": [8, 16],
                                   "enc_conv_n_blocks": 1, "dec_n_blocks": 1}}}
    net = factory.build_model(cfg)
    with torch.no_grad():  # a decisive head so that every class shows up
        net.pred_head_dict["sax"].weight.normal_(0.0, 3.0)
        net.pred_head_dict["sax"].bias.zero_()
    loaded = checkpoint.LoadedModel(model=net, config=net.config, model_id="test/tiny", weights_path=None,
                                    sha256="f" * 64, task="segmentation", views=("sax",))
    study = make_study(nt=3, nz=5, ny=80, nx=90, spacing=(30.0, 8.0, 1.5, 1.5))
    batched = run_segmentation(study, loaded, device="cpu", batch_frames=3)
    loop = run_segmentation(study, loaded, device="cpu", batch_frames=1)
    assert len(np.unique(batched.labels)) >= 2
    assert (batched.labels == loop.labels).mean() > 0.999
    assert batched.provenance["model_id"] == "test/tiny" and batched.provenance["sha256"] == "f" * 64


def test_auto_batch_size_and_out_of_memory_fallback():
    sax = make_study(nt=6, nz=10, ny=60, nx=60)
    lax = make_study(nt=20, nz=1, ny=60, nx=60, view="lax_4c")
    assert choose_batch_frames(sax, seg_spec(), "cpu") == 1  # one volume per pass on a CPU
    assert choose_batch_frames(sax, seg_spec(patch=[128, 128]), "cpu") == 1  # 10 slices per pass
    assert choose_batch_frames(lax, seg_spec("lax_4c"), "cpu") == 8  # 8 images per pass

    class Greedy(BandNet):
        def forward(self, inputs):
            if inputs[self.view].shape[0] > 3:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")
            return super().forward(inputs)

    net = Greedy("sax")
    result = run_segmentation(sax, net, seg_spec(), device="cpu", batch_frames=6, shift_passes=1)
    assert [c[0] for c in net.calls] == [3, 3]  # 6 frames ran out of memory: halved, kept halved
    assert result.provenance["batch_frames"] == 3 and "out of memory" in result.provenance["warnings"][0]
    assert_dice(result.labels, expected_labels(sax.image))


def test_progress_and_provenance():
    study = make_study(nt=5, nz=4, ny=60, nx=60)
    seen = []
    result = run_segmentation(study, BandNet("sax"), seg_spec(), device="cpu", batch_frames=2,
                              progress=lambda d, t, m: seen.append((d, t, m)))
    assert [s[0] for s in seen] == [2, 4, 5] and all(s[1] == 5 for s in seen)
    prov = result.provenance
    assert prov["model_id"] == "test/band" and prov["sha256"] == "0" * 64
    assert prov["device"] == "cpu" and prov["device_description"].startswith("CPU")
    assert prov["batch_frames"] == 2 and prov["precision"] == "fp32"
    assert set(prov["timings_s"]) >= {"preprocess_s", "model_s", "postprocess_s", "total_s"}


def test_keep_largest_pieces_removes_stray_cavity_islands_only():
    labels = np.zeros((2, 3, 20, 20), np.uint8)
    labels[:, :, 4:10, 4:10] = 3  # the LV, in every slice
    labels[0, 2, 15:17, 15:17] = 3  # a stray LV island in frame 0
    labels[1, 0:2, :, :] = 0
    labels[1, 1, 4:10, 4:10] = 3
    labels[1, 0, 10:12, 10:12] = 3  # frame 1: meets the LV only across a slice corner (26-connected): kept
    labels[:, 0, 0:2, 0:20] = 2  # two myocardium pieces: left alone
    labels[:, 0, 18:20, 0:20] = 2
    before = labels.copy()
    assert blood_pool_labels({0: "background", 1: "RV", 2: "MYO", 3: "LV"}) == [1, 3]
    removed = keep_largest_pieces(labels, [1, 3])
    assert removed == 4
    assert (labels[0, 2, 15:17, 15:17] == 0).all()
    changed = labels != before
    assert changed.sum() == 4 and changed[0].sum() == 4
    with pytest.raises(ValueError, match="t, z, y, x"):
        keep_largest_pieces(labels[0], [3])


def test_segmentation_drops_a_false_cavity_away_from_the_heart():
    study = make_study(nt=3, nz=6, ny=61, nx=53)
    study.image[:, :, 2:6, 2:6] = 1.0  # LV-bright patch in a corner, far from the heart
    cleaned = run_segmentation(study, BandNet("sax"), seg_spec(), device="cpu")
    raw = run_segmentation(study, BandNet("sax"), seg_spec(), device="cpu", keep_largest=False)
    assert (raw.labels[:, :, 3:5, 3:5] == 3).all()
    assert not (cleaned.labels[:, :, :8, :8] == 3).any()
    assert cleaned.provenance["cleanup"]["largest_piece_of"] == ["RV", "LV"]
    assert cleaned.provenance["cleanup"]["voxels_removed"] == int((raw.labels != cleaned.labels).sum()) > 0
    assert raw.provenance["cleanup"] == {"largest_piece_of": [], "voxels_removed": 0}
    inside = np.ones(study.shape, bool)
    inside[:, :, :8, :8] = False
    assert (raw.labels[inside] == cleaned.labels[inside]).all()  # the heart itself is untouched


def test_phase_shifts_and_shift_averaging():
    assert phase_shifts(16, 1) == [0] and phase_shifts(16, 2) == [0, 8]
    assert phase_shifts(16, 3) == [0, 5, -5] and phase_shifts(16, 4) == [0, 4, -4, 8]
    with pytest.raises(ValueError, match="at least 1"):
        phase_shifts(16, 0)
    x = torch.rand(2, 1, 12, 10, 3)
    ramp = torch.arange(12.0).reshape(1, 1, 12, 1, 1)  # an output that depends on where the input sits

    def predict(t):
        return t + ramp

    single = shift_averaged(predict, [0])
    assert single is predict
    averaged = shift_averaged(predict, [0, 2, -2])(x)
    # each pass sees the input rolled by s and is rolled back: x is untouched, the ramp is averaged
    expected = x + sum(torch.roll(ramp.expand(2, 1, 12, 10, 3), -s, dims=2) for s in (0, 2, -2)) / 3
    torch.testing.assert_close(averaged, expected)
    assert not torch.allclose(averaged, predict(x))
    pointwise = shift_averaged(torch.sigmoid, [0, 5, -5])  # a position-blind network: passes change nothing
    torch.testing.assert_close(pointwise(x), torch.sigmoid(x))


def test_shift_passes_are_averaged_and_recorded():
    study = make_study(nt=2, nz=4)
    default = run_segmentation(study, BandNet("sax"), seg_spec(), device="cpu")
    single = run_segmentation(study, BandNet("sax"), seg_spec(), device="cpu", shift_passes=1)
    assert default.provenance["shift_passes_px"] == [0, 5, -5]
    assert single.provenance["shift_passes_px"] == [0]
    np.testing.assert_array_equal(default.labels, single.labels)  # BandNet is pointwise
    two = run_segmentation(study, BandNet("sax"), replace(seg_spec(), token_px=8), device="cpu", shift_passes=2)
    assert two.provenance["shift_passes_px"] == [0, 4]
    with pytest.raises(EngineError, match="shift_passes"):
        run_segmentation(study, BandNet("sax"), seg_spec(), device="cpu", shift_passes=0)


def test_bf16_autocast_runs_on_cpu():
    study = make_study(nt=2, nz=4, ny=60, nx=60)
    result = run_segmentation(study, BandNet("sax"), seg_spec(), device="cpu", precision="bf16")
    assert result.provenance["precision"] == "bf16"
    assert_dice(result.labels, expected_labels(study.image))


def test_cancel_midway_raises_and_returns_nothing():
    study = make_study(nt=6, nz=4, ny=60, nx=60)
    net = BandNet("sax")
    seen = []

    def cancel():
        return len(seen) >= 1  # after the first chunk

    result = None
    with pytest.raises(Cancelled):
        result = run_segmentation(study, net, seg_spec(), device="cpu", batch_frames=2,
                                  progress=lambda d, t, m: seen.append(d), cancel=cancel)
    assert result is None
    assert len(net.calls) == 3 and seen == [2]  # one chunk of 2 frames (3 shifted passes), no more


def test_cancel_by_raising():
    study = make_study(nt=2, nz=3, ny=40, nx=40)

    def cancel():
        raise Cancelled("stop")

    with pytest.raises(Cancelled):
        run_segmentation(study, BandNet("sax"), seg_spec(), device="cpu", cancel=cancel)


# --------------------------------------------------------------------------------------------------
# landmarks
# --------------------------------------------------------------------------------------------------


def test_soft_argmax_recovers_gaussian_peaks():
    points = np.array([[40.3, 71.8], [90.55, 20.25], [12.9, 100.4]])
    gx, gy = np.meshgrid(np.arange(128), np.arange(120), indexing="ij")
    for sigma in (3.0, 20.0):
        maps = np.stack([np.exp(-((gx - p[0]) ** 2 + (gy - p[1]) ** 2) / (2 * sigma**2)) for p in points])
        got = soft_argmax(torch.as_tensor(maps)[None], beta=1000.0)[0].numpy()
        assert np.abs(got - points).max() <= 0.5
    assert np.abs(got - points).max() < 0.05  # wide maps: sub-pixel


OFFSETS = ((0.0, 0.0), (25.0, -18.0), (-20.0, 30.0))  # model voxels (1 mm) from the blob centre


def _blob_centroid(x):
    w = x[:, 0].clamp_min(0) ** 4
    gx = torch.arange(x.shape[2], dtype=x.dtype)[:, None]
    gy = torch.arange(x.shape[3], dtype=x.dtype)[None, :]
    s = w.sum(dim=(1, 2)).clamp_min(1e-12)
    return (w * gx).sum(dim=(1, 2)) / s, (w * gy).sum(dim=(1, 2)) / s


class BlobHeatNet(nn.Module):
    """Gaussian heat-maps (sigma 20 px) at the input blob's centroid plus fixed offsets."""

    def __init__(self, view):
        super().__init__()
        self.view = view

    def forward(self, inputs):
        x = inputs[self.view]
        cx, cy = _blob_centroid(x)
        gx = torch.arange(x.shape[2], dtype=x.dtype)[None, :, None]
        gy = torch.arange(x.shape[3], dtype=x.dtype)[None, None, :]
        maps = []
        for ox, oy in OFFSETS:
            d2 = (gx - (cx + ox)[:, None, None]) ** 2 + (gy - (cy + oy)[:, None, None]) ** 2
            maps.append(torch.exp(-d2 / (2 * 20.0**2)).clamp(1e-6, 1 - 1e-6))
        heat = torch.stack(maps, dim=1)
        return {self.view: torch.logit(heat)}


class BlobCoordNet(nn.Module):
    """ConvViT-like: (x1, y1, x2, y2, x3, y3) / input size from the blob centroid."""

    def __init__(self, view):
        super().__init__()
        self.view = view

    def forward(self, inputs):
        x = inputs[self.view]
        cx, cy = _blob_centroid(x)
        out = []
        for ox, oy in OFFSETS:
            out += [(cx + ox) / x.shape[2], (cy + oy) / x.shape[3]]
        return torch.stack(out, dim=1)


def blob_study(nt, ny, nx, spacing, centres_yx, view="lax_2c", affine=None):
    _dt, _dz, dy, dx = spacing
    y, x = np.meshgrid(np.arange(ny) * dy, np.arange(nx) * dx, indexing="ij")
    img = np.stack([np.exp(-((y - cy * dy) ** 2 + (x - cx * dx) ** 2) / (2 * 6.0**2)) for cy, cx in centres_yx])
    affine = oblique_affine(spacing) if affine is None else affine
    return CineStudy(img[:, None].astype(np.float32), spacing, affine=affine, view=view)


def _expected_points(centres_yx, spacing):
    _dt, _dz, dy, dx = spacing
    return np.array([[[0.0, cy + oy / dy, cx + ox / dx] for ox, oy in OFFSETS] for cy, cx in centres_yx])


def heat_spec(view="lax_2c"):
    cfg = {"task": "segmentation", "data": {"name": "landmark", "lax": {"patch_size": [256, 256], "spacing": [1, 1]}},
           "model": {"name": "convunetr", "views": view, "out_chans": 3}}
    return ModelSpec.from_config(cfg)


def test_landmark_heatmap_end_to_end_voxels_and_world():
    spacing = (33.0, 7.0, 1.45, 1.3)
    centres = [(70.3, 80.6), (66.8, 85.2), (75.1, 77.7)]  # (row, column) per frame, sub-pixel
    study = blob_study(3, 150, 170, spacing, centres)
    spec = heat_spec()
    assert spec.task == "landmark_heatmap"
    result = run_landmarks(study, BlobHeatNet("lax_2c"), spec, device="cpu")
    expected = _expected_points(centres, spacing)
    assert result.names == ("mv_1", "mv_2", "apex")
    assert result.voxels.shape == (3, 3, 3)
    assert np.abs(result.voxels - expected).max() < 0.5
    np.testing.assert_allclose(result.world, study.world_coordinates(result.voxels), atol=1e-9)
    # world coordinates use the oblique affine: compare with the affine applied by hand
    xyz1 = np.concatenate([expected[..., ::-1], np.ones(expected.shape[:-1] + (1,))], -1)
    assert np.abs(result.world - (xyz1 @ study.affine.T)[..., :3]).max() < 1.0
    assert result.confidence.shape == (3, 3) and np.all(result.confidence > 0.9)


def test_landmark_heatmap_crop_around_given_centre():
    spacing = (33.0, 7.0, 1.5, 1.5)
    centres = [(150.2, 160.7), (148.9, 162.1)]
    study = blob_study(2, 260, 250, spacing, centres)  # 390 x 375 mm: larger than 256
    result = run_landmarks(study, BlobHeatNet("lax_2c"), heat_spec(), device="cpu", centre_zyx=(0, 150, 160))
    assert result.provenance["centring"]["method"] == "given"
    assert np.abs(result.voxels - _expected_points(centres, spacing)).max() < 0.5


def test_landmark_coordinate_model():
    spacing = (33.0, 7.0, 1.4, 1.25)
    centres = [(70.3, 80.6), (66.8, 85.2)]
    study = blob_study(2, 150, 170, spacing, centres, view="lax_4c")
    cfg = {"task": "regression", "data": {"name": "landmark", "lax": {"patch_size": [256, 256], "spacing": [1, 1]}},
           "model": {"name": "convvit", "views": "lax_4c", "out_chans": 6}}
    spec = ModelSpec.from_config(cfg)
    assert spec.task == "landmark_coordinate"
    result = run_landmarks(study, BlobCoordNet("lax_4c"), spec, device="cpu", batch_frames=2)
    assert np.abs(result.voxels - _expected_points(centres, spacing)).max() < 0.5
    assert result.confidence is None


# --------------------------------------------------------------------------------------------------
# classification / regression from the ED/ES pair
# --------------------------------------------------------------------------------------------------


class PairProbe(nn.Module):
    """Returns per-channel means as logits and keeps what it saw."""

    def __init__(self, view, out=None):
        super().__init__()
        self.view = view
        self.out = out
        self.seen = []

    def forward(self, inputs):
        x = inputs[self.view]
        self.seen.append(x.clone())
        means = x.flatten(2).amax(dim=2)  # (B, C) channel maxima
        if self.out is not None:
            return torch.full((x.shape[0], self.out), 1.0)
        return torch.cat([means, means[:, :1] * 0], dim=1)


def pair_spec(task):
    data = {"sax": {"patch_size": [192, 192, 16], "spacing": [1, 1, 10]}}
    if task == "classification":
        data.update(class_column="pathology", pathology=["ED_bright", "ES_bright", "other"])
    else:
        data.update(regression_column="ef", ef={"mean": 55.0, "std": 10.0})
    cfg = {"task": task, "data": data, "model": {"name": "convvit", "views": "sax", "n_frames": 2, "out_chans": 1}}
    return ModelSpec.from_config(cfg)


def test_classification_pair_scaled_together_and_ed_es_from_segmentation():
    study = make_study(nt=6, nz=5, ny=100, nx=100, spacing=(30.0, 8.0, 1.5, 1.5))
    gain = np.linspace(1.0, 2.0, 6)
    study.image[:] *= gain[:, None, None, None].astype(np.float32)  # later frames brighter
    seg = run_segmentation(study, BandNet("sax"), seg_spec(), device="cpu")
    ed, es = seg.ed_es_frames()
    assert (ed, es) == (0, 3)  # LV radius is largest at t=0, smallest at t=nt/2
    probe = PairProbe("sax")
    result = run_classification(study, probe, pair_spec("classification"), segmentation=seg, device="cpu")
    x = probe.seen[0]
    assert x.shape == (1, 2, 192, 192, 16)
    assert float(x.min()) == 0.0 and float(x.max()) == pytest.approx(1.0)
    # the ES frame is brighter: scaled together, the ED channel peaks below 1
    assert float(x[:, 0].max()) == pytest.approx(gain[0] / gain[3], rel=1e-3)
    assert float(x[:, 1].max()) == pytest.approx(1.0)
    assert (result.ed_frame, result.es_frame) == (0, 3)
    assert result.provenance["centring"]["method"] == "segmentation"
    assert result.classes == ("ED_bright", "ES_bright", "other")
    assert result.probabilities.sum() == pytest.approx(1.0)
    assert result.predicted == "ES_bright"


def test_regression_unzscores_and_needs_ed_es():
    study = make_study(nt=4, nz=4, ny=70, nx=70)
    spec = pair_spec("regression")
    with pytest.raises(EngineError, match="ED/ES"):
        run_regression(study, PairProbe("sax", out=1), spec, device="cpu")
    result = run_regression(study, PairProbe("sax", out=1), spec, ed_frame=0, es_frame=2, device="cpu")
    assert result.value == pytest.approx(1.0 * 10.0 + 55.0) and result.target == "ef"
    study.ed_frame, study.es_frame = 1, 3
    result = run_regression(study, PairProbe("sax", out=1), spec, device="cpu")
    assert (result.ed_frame, result.es_frame) == (1, 3)


# --------------------------------------------------------------------------------------------------
# bad input, devices
# --------------------------------------------------------------------------------------------------


def test_view_mismatch_names_both_views():
    study = make_study(nt=2, nz=1, ny=50, nx=50, view="lax_4c")
    with pytest.raises(EngineError, match=r"sax.*lax_4c"):
        run_segmentation(study, BandNet("sax"), seg_spec("sax"), device="cpu")


def test_unknown_view_needs_override():
    study = make_study(nt=2, nz=4, ny=50, nx=50, view="unknown")
    with pytest.raises(EngineError, match="unknown"):
        run_segmentation(study, BandNet("sax"), seg_spec(), device="cpu")
    result = run_segmentation(study, BandNet("sax"), seg_spec(), device="cpu", view="sax")
    assert result.provenance["study_view"] == "sax"


def test_too_small_and_empty_studies():
    with pytest.raises(EngineError, match="too small"):
        run_segmentation(CineStudy(np.zeros((2, 3, 1, 5)), (None, 8.0, 1.0, 1.0), view="sax"),
                         BandNet("sax"), seg_spec(), device="cpu")
    with pytest.raises(EngineError, match="no frames"):
        run_segmentation(CineStudy(np.zeros((0, 3, 10, 10)), (None, 8.0, 1.0, 1.0), view="sax"),
                         BandNet("sax"), seg_spec(), device="cpu")
    with pytest.raises(EngineError, match="segmentation model"):
        run_segmentation(make_study(), PairProbe("sax"), pair_spec("regression"), device="cpu")


def test_tiny_but_valid_study_runs():
    study = CineStudy(np.random.default_rng(0).random((1, 1, 2, 2)).astype(np.float32), (None, 8.0, 1.0, 1.0),
                      view="sax")
    result = run_segmentation(study, BandNet("sax"), seg_spec(), device="cpu")
    assert result.labels.shape == (1, 1, 2, 2)


def test_devices(monkeypatch):
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type in ("cpu", "cuda", "mps")
    assert autocast_dtype(torch.device("cpu")) is None
    assert autocast_dtype(torch.device("cpu"), "bf16") is torch.bfloat16
    monkeypatch.delenv("NAPARI_CINEMA_CPU_BF16", raising=False)
    set_cpu_bf16(True)  # as after a measurement that found bf16 faster
    try:
        assert autocast_dtype("cpu") is torch.bfloat16
        monkeypatch.setenv("NAPARI_CINEMA_CPU_BF16", "0")  # the environment wins
        assert autocast_dtype("cpu") is None
    finally:
        set_cpu_bf16(None)
    assert autocast_dtype("cpu") is None
    assert describe_device("cpu") == f"CPU ({torch.get_num_threads()} threads)"
    with pytest.raises(ValueError, match="unknown device"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailable, match="cuda"):
            pick_device("cuda")
        with pytest.raises(DeviceUnavailable):
            run_segmentation(make_study(), BandNet("sax"), seg_spec(), device="cuda")


# --------------------------------------------------------------------------------------------------
# files: NIfTI (through the CLI), DICOM, the phantom
# --------------------------------------------------------------------------------------------------


def test_segment_command_writes_labels_on_the_nifti_grid(tmp_path, monkeypatch, capsys):
    nib = pytest.importorskip("nibabel")
    from napari_cinema.engine import commands

    spacing = (35.0, 8.0, 1.6, 1.4)
    study = make_study(nt=3, nz=6, ny=140, nx=150, spacing=spacing, centre_mm=(10.0, -12.0))
    aff = oblique_affine(spacing)
    img = nib.Nifti1Image(np.transpose(study.image, (3, 2, 1, 0)), aff)
    img.header.set_zooms((spacing[3], spacing[2], spacing[1], spacing[0]))
    img.header.set_xyzt_units("mm", "msec")
    src = tmp_path / "cine_sax.nii.gz"
    nib.save(img, str(src))

    calls = {}

    def fake_load(model_id, view=None):
        calls["id"] = model_id
        return BandNet("sax"), seg_spec()

    monkeypatch.setattr(commands, "load_model", fake_load)
    parser = argparse.ArgumentParser(prog="napari-cinema")
    commands.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "labels.nii.gz"
    args = parser.parse_args(["segment", str(src), "--out", str(out), "--model", "test/band", "--device", "cpu",
                              "--view", "sax"])
    assert args.handler(args) == 0
    assert calls["id"] == "test/band"
    captured = capsys.readouterr()
    assert "segmenting frame" in captured.err and str(out) in captured.out
    written = nib.load(str(out))
    np.testing.assert_allclose(written.affine, aff, atol=1e-5)
    labels_tzyx = np.transpose(np.asarray(written.dataobj), (3, 2, 1, 0))
    assert_dice(labels_tzyx, expected_labels(study.image))

    # wrong device -> one clear line, status 2
    if not torch.cuda.is_available():
        args = parser.parse_args(["segment", str(src), "--out", str(out), "--model", "x", "--device", "cuda",
                                  "--view", "sax"])
        assert args.handler(args) == 2
        assert "cuda" in capsys.readouterr().err
    # no --model: the registry's default for the view; none available -> one clear line, status 2
    monkeypatch.setattr(commands, "default_model_id", lambda task, view: None)
    args = parser.parse_args(["segment", str(src), "--out", str(out), "--view", "sax"])
    assert args.handler(args) == 2
    assert "--model" in capsys.readouterr().err
    monkeypatch.setattr(commands, "default_model_id", lambda task, view: f"default-{view}")
    args = parser.parse_args(["segment", str(src), "--out", str(out), "--view", "sax", "--quiet"])
    assert args.handler(args) == 0 and calls["id"] == "default-sax"
    # the cavity clean-up is on unless asked off; the provenance says which
    capsys.readouterr()
    for flags, pools, shifts in (([], ["RV", "LV"], [0, 5, -5]), (["--keep-all-pieces", "--shift-passes", "1"], [], [0])):
        args = parser.parse_args(["segment", str(src), "--out", str(out), "--view", "sax", "--quiet", "--json", *flags])
        assert args.handler(args) == 0
        prov = json.loads(capsys.readouterr().out)
        assert prov["cleanup"]["largest_piece_of"] == pools and prov["shift_passes_px"] == shifts
    args = parser.parse_args(["segment", str(src), "--out", str(out), "--view", "sax", "--shift-passes", "0"])
    assert args.handler(args) == 2
    assert "shift_passes must be at least 1" in capsys.readouterr().err


def test_dicom_round_trip(tmp_path):
    dicom = pytest.importorskip("napari_cinema.io.dicom")
    if not hasattr(dicom, "write_dicom_cine"):
        pytest.skip("napari_cinema.io.dicom.write_dicom_cine not available yet")
    spacing = (35.0, 8.0, 1.6, 1.4)
    study = make_study(nt=2, nz=5, ny=90, nx=100, spacing=spacing, affine=oblique_affine(spacing))
    dicom.write_dicom_cine(study, tmp_path / "dcm")
    loaded = dicom.read_dicom_cine(tmp_path / "dcm")
    assert loaded.shape == study.shape
    result = run_segmentation(loaded, BandNet("sax"), seg_spec(), device="cpu", view="sax")
    assert_dice(result.labels, expected_labels(loaded.image))


@pytest.mark.parametrize("overrides", [{"view": "sax"}, {"view": "sax", "matrix": 200, "pixel_mm": 1.6},
                                       {"view": "lax_4c"}])
def test_phantom_study(overrides):
    phantom = pytest.importorskip("napari_cinema.sample_data.phantom", reason="phantom generator not written yet")
    # noise-free, no coil shading: an intensity-band network then has a known answer
    study, _truth = phantom.make_phantom(frames=4, noise=0.0, coil_shading=0.0, **overrides)
    view = study.view
    net = BandNet(view, lut=(0, 0, 3, 3))  # bright blood pools vs everything else
    # every bright pool is labelled 3 here, so the one-piece-per-cavity clean-up does not apply
    result = run_segmentation(study, net, seg_spec(view), device="cpu", keep_largest=False)
    expected = np.where(expected_labels(study.image) >= 2, 3, 0).astype(np.uint8)
    assert result.labels.shape == study.shape
    assert dice(result.labels, expected, 3) > 0.95
    if overrides.get("matrix") == 200:  # 320 mm field of view: the crop comes from the motion-prior pass
        assert result.provenance["centring"]["method"] == "motion"


def test_landmarks_read_off_a_four_chamber_segmentation():
    """engine.landmarks_from_segmentation on the phantom's exact labels: hinges and apex within 2.5 mm of
    the phantom's landmarks, MAPSE within 1 mm; a frame without a cavity gets NaN and a warning."""
    from napari_cinema.analysis.landmarks import mapse
    from napari_cinema.engine import EngineError, SegmentationResult, landmarks_from_segmentation
    from napari_cinema.sample_data import phantom

    study, truth = phantom.make_phantom("lax_4c", frames=10)
    blank = next(t for t in range(1, 10) if t not in (truth["ED_frame"], truth["ES_frame"]))
    labels = np.array(study.labels)
    labels[blank][labels[blank] == 3] = 2  # no cavity in this frame, so no valve opening to find
    seg = SegmentationResult(labels=labels, provenance={"model_id": "truth", "sha256": None})
    lm = landmarks_from_segmentation(study, seg)
    assert lm.names == ("mv_1", "mv_2", "apex") and lm.voxels.shape == (10, 3, 3)
    assert np.isnan(lm.voxels[blank]).all() and lm.provenance["frames_without_landmarks"] == [blank]
    assert f"frame(s) {blank + 1}" in lm.provenance["warnings"][0]
    _, _, dy, dx = study.spacing
    for k, name in enumerate(lm.names):
        ref = np.asarray(truth["landmarks"][name], float)[:, -2:]
        err = np.hypot((lm.voxels[:, k, 1] - ref[:, 0]) * dy, (lm.voxels[:, k, 2] - ref[:, 1]) * dx)
        assert np.nanmax(err) < 2.5, (name, err)
    assert np.allclose(lm.world[0], study.world_coordinates(lm.voxels[0]))
    m = mapse(study, {n: lm.voxels[:, k] for k, n in enumerate(lm.names)}, truth["ED_frame"], truth["ES_frame"])
    assert abs(m["MAPSE_mm"] - truth["MAPSE_view_mm"]) < 1.0, (m["MAPSE_mm"], truth["MAPSE_view_mm"])
    with pytest.raises(EngineError, match="lax_3c"):
        landmarks_from_segmentation(study, seg, view="lax_3c")
