"""CineMA-compatible networks: state-dict compatibility with every published model, shapes, transfer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from napari_cinema.model.convunetr import ConvUNetR
from napari_cinema.model.convvit import ConvViT
from napari_cinema.model.factory import (
    SIZE_PRESETS,
    apply_overrides,
    build_model,
    count_parameters,
    load_config,
    task_metadata,
)
from napari_cinema.model.layers import ChannelLayerNorm, patchify, sincos_pos_embed, unpatchify, upsample_mask
from napari_cinema.model.mae import CineMAE
from napari_cinema.model.transfer import load_mae_weights, mae_to_task_state_dict

PUBLISHED = [
    "cls_cvd_acdc_sax",
    "cls_cvd_mnms2_lax_4c",
    "cls_cvd_mnms2_sax",
    "cls_cvd_mnms_sax",
    "cls_sex_mnms_sax",
    "cls_vendor_mnms2_sax",
    "landmark_coordinate_lax_2c",
    "landmark_coordinate_lax_4c",
    "landmark_heatmap_lax_2c",
    "landmark_heatmap_lax_4c",
    "mae_pretrained",
    "reg_age_mnms_sax",
    "reg_bmi_acdc_sax",
    "reg_ef_acdc_sax",
    "reg_ef_mnms2_lax_4c",
    "seg_lax_4c",
    "seg_sax",
]
CLASSES = {"ConvUNetR": ConvUNetR, "ConvViT": ConvViT, "CineMA": CineMAE}

# small, fast variants: tiny ViT, narrow convs, small inputs
FAST = {
    "enc_conv_chans": [8, 16],
    "dec_chans": [8, 8, 16, 16, 32],
}
SMALL_SAX = [32, 32, 4]
SMALL_LAX = [32, 32]


def _spec(shared_spec: Path, name: str) -> tuple[dict, dict]:
    ref = json.loads((shared_spec / "cinema_state_dicts" / f"{name}.json").read_text())
    config = load_config(shared_spec / "configs" / f"{name}.yaml")
    return ref, config


def _section_key(config: dict) -> str:
    name = config["model"].get("name")
    return f"model.{name}" if name else "model"


def _fast_overrides(config: dict, conv_widths: bool = True) -> dict:
    sec = _section_key(config)
    out = {f"{sec}.size": "tiny", "data.sax.patch_size": SMALL_SAX}
    if "lax" in config["data"]:
        out["data.lax.patch_size"] = SMALL_LAX
    if conv_widths:
        out[f"{sec}.enc_conv_chans"] = FAST["enc_conv_chans"]
        if sec != "model":
            out[f"{sec}.dec_chans"] = FAST["dec_chans"]
    return out


def _diff(ours: dict[str, list[int]], ref: dict[str, list[int]], limit: int = 8) -> str:
    missing = [k for k in ref if k not in ours]
    extra = [k for k in ours if k not in ref]
    shapes = [f"{k}: ours {ours[k]} vs ref {ref[k]}" for k in ref if k in ours and ours[k] != ref[k]]
    return (
        f"missing {len(missing)}: {missing[:limit]}; unexpected {len(extra)}: {extra[:limit]}; "
        f"shape mismatches {len(shapes)}: {shapes[:limit]}"
    )


def test_spec_lists_the_published_models(shared_spec):
    names = sorted(p.stem for p in (shared_spec / "cinema_state_dicts").glob("*.json"))
    assert names == sorted(PUBLISHED)
    for name in names:
        assert (shared_spec / "configs" / f"{name}.yaml").is_file(), name


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_state_dict_compatible(shared_spec, name):
    ref, config = _spec(shared_spec, name)
    with torch.device("meta"):
        model = build_model(config, overrides=ref["overrides"])
    assert isinstance(model, CLASSES[ref["class"]])
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    expected = {k: list(v) for k, v in ref["state_dict"].items()}
    assert ours == expected, _diff(ours, expected)
    assert len(ours) == ref["n_state_dict_keys"]
    assert count_parameters(model) == ref["n_params"]
    by_top: dict[str, int] = {}
    for key, p in model.named_parameters():
        by_top[key.split(".")[0]] = by_top.get(key.split(".")[0], 0) + p.numel()
    assert by_top == ref["params_by_top_module"]
    # pos_embed: a fixed, non-trainable parameter in the state dict
    pos = [(k, p) for k, p in model.named_parameters() if k.endswith("pos_embed")]
    assert pos and all(not p.requires_grad for _, p in pos)
    assert sorted(model.views) == sorted(ref["inputs"]) or ref["class"] == "CineMA"
    if ref["class"] != "CineMA":
        out_key = next(k for k in ref["state_dict"] if k.startswith("pred_head_dict.") and k.endswith(".weight"))
        assert model.out_chans == ref["state_dict"][out_key][0]


@pytest.mark.slow
def test_safetensors_with_published_keys_loads_strict(shared_spec, tmp_path):
    """Random tensors with the published LAX landmark heat-map keys/shapes load strictly and run."""
    from safetensors.torch import load_file, save_file

    ref, config = _spec(shared_spec, "landmark_heatmap_lax_4c")
    gen = torch.Generator().manual_seed(0)
    tensors = {k: torch.randn(*shape, generator=gen) * 0.02 for k, shape in ref["state_dict"].items()}
    path = tmp_path / "lax_4c_0.safetensors"
    save_file(tensors, str(path))
    del tensors
    model = build_model(config, overrides=ref["overrides"]).eval()
    loaded = load_file(str(path))
    result = model.load_state_dict(loaded, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    torch.testing.assert_close(model.encoder.blocks[3].attn.kv.weight, loaded["encoder.blocks.3.attn.kv.weight"])
    (view,) = ref["inputs"]
    with torch.no_grad():
        out = model({view: torch.rand(*ref["inputs"][view])})
    assert list(out[view].shape) == ref["output_shapes"][view]
    assert torch.isfinite(out[view]).all()


@pytest.mark.parametrize("name", PUBLISHED)
def test_fast_forward_shapes(shared_spec, name):
    """Each published family with the tiny preset on a small input: input/output shape convention."""
    ref, config = _spec(shared_spec, name)
    overrides = {**ref["overrides"], **_fast_overrides(config)}
    torch.manual_seed(0)
    model = build_model(config, overrides=overrides).eval()
    batch = 2
    if ref["class"] == "CineMA":
        inputs = {"sax": torch.rand(batch, 1, *SMALL_SAX), "lax_2c": torch.rand(batch, 1, *SMALL_LAX)}
        loss, preds, masks, _ = model(inputs)
        assert loss.ndim == 0 and torch.isfinite(loss)
        for view, x in inputs.items():
            n_patches = math.prod(s // p for s, p in zip(x.shape[2:], model.patch_size_dict[view], strict=True))
            n_keep = int(n_patches * 0.25)
            assert masks[view].shape == (batch, n_patches)
            assert (masks[view].sum(1) == n_patches - n_keep).all()
            assert preds[view].shape == (batch, n_patches - n_keep, math.prod(model.patch_size_dict[view]))
        loss.backward()
        assert model.encoder.blocks[0].attn.q.weight.grad is not None
        feats = model.encode(inputs)
        assert feats["cls"].shape == (batch, 1, SIZE_PRESETS["tiny"]["enc_embed_dim"])
        assert feats["sax"].shape[1] == masks["sax"].shape[1]
        return
    (view,) = ref["inputs"]
    chans = ref["inputs"][view][1]
    spatial = SMALL_SAX if view == "sax" else SMALL_LAX
    x = torch.rand(batch, chans, *spatial)
    with torch.no_grad():
        out = model({view: x})
    out_key = next(k for k in ref["state_dict"] if k.startswith("pred_head_dict.") and k.endswith(".weight"))
    n_out = ref["state_dict"][out_key][0]
    if ref["class"] == "ConvUNetR":
        assert set(out) == {view}
        assert out[view].shape == (batch, n_out, *spatial)
    else:
        assert out.shape == (batch, n_out)
        if "output_shapes" in ref:
            assert list(out.shape[1:]) == ref["output_shapes"]["out"][1:]


def test_tiny_preset_reference_widths_seg(shared_spec):
    """The reference 'tiny' preset with the published conv/decoder widths, SAX and LAX."""
    for name, view, spatial in (("seg_sax", "sax", [64, 64, 4]), ("seg_lax_4c", "lax_4c", [64, 64])):
        _, config = _spec(shared_spec, name)
        key = "sax" if view == "sax" else "lax"
        overrides = {"model.views": view, "model.convunetr.size": "tiny", f"data.{key}.patch_size": spatial}
        model = build_model(config, overrides)
        model.eval()
        with torch.no_grad():
            out = model({view: torch.rand(1, 1, *spatial)})
        assert out[view].shape == (1, 4, *spatial)
        assert model.dec_image_conv_block_dict[view].norm1.weight.shape == (1,)  # reproduced quirk


def test_convvit_two_frames_and_reduction(shared_spec):
    _, config = _spec(shared_spec, "cls_cvd_acdc_sax")
    model = build_model(config, _fast_overrides(config)).eval()
    assert model.n_frames == 2 and model.out_chans == 5
    assert model.enc_down_dict["sax"].conv_blocks[0].patch_embed.conv.in_channels == 2
    x = {"sax": torch.rand(3, 2, *SMALL_SAX)}
    with torch.no_grad():
        out = model(x)
        feats = model.feature_forward(x)
        heads = model.pred_head_dict
        manual = (heads["sax"](feats["sax"].mean(1)) + heads["cls"](feats["cls"][:, 0])) / 2
        cls_only = model(x, reduce="cls")
    assert out.shape == (3, 5)
    torch.testing.assert_close(out, manual)
    torch.testing.assert_close(cls_only, heads["cls"](feats["cls"][:, 0]))
    with pytest.raises(ValueError):
        model({"sax": torch.rand(1, 1, *SMALL_SAX)})  # one frame into a 2-frame model


def test_metadata_from_config(shared_spec):
    _, config = _spec(shared_spec, "reg_ef_acdc_sax")
    with torch.device("meta"):
        model = build_model(config, {"model.views": "sax"})
    assert model.task == "regression" and model.out_chans == 1
    assert model.regression_column == "ef"
    assert model.regression_mean == pytest.approx(27.698811590282546)
    assert model.regression_std == pytest.approx(10.848138374627386)
    _, config = _spec(shared_spec, "cls_sex_mnms_sax")
    meta = task_metadata(apply_overrides(config, {"data.class_column": "sex"}))
    assert meta["class_names"] == ["M", "F"] and meta["out_chans"] == 2
    _, config = _spec(shared_spec, "landmark_coordinate_lax_2c")
    meta = task_metadata(config)
    assert meta["out_chans"] == 6 and meta["regression_mean"] is None and meta["n_frames"] == 1
    assert meta["image_size"] == {"lax_2c": (256, 256)}


def test_config_parsing_tolerates_extra_keys_and_view_lists(tmp_path):
    text = """
grad_ckpt: false
trainer: {max_steps: 10}
task: segmentation
data:
  sax: {patch_size: [32, 32, 4], in_chans: 1, spacing: [1.0, 1.0, 10.0]}
  lax: {patch_size: [32, 32], in_chans: 1}
  extra: whatever
model:
  name: convunetr
  views: [sax, lax_4c]
  out_chans: 4
  unused: 1
  convunetr: {size: tiny, enc_conv_chans: [8, 16], dec_chans: [8, 8, 16, 16, 32], dropout: 0.0}
"""
    path = tmp_path / "config.yaml"
    path.write_text(text)
    model = build_model(path)
    assert model.views == ["sax", "lax_4c"]
    with torch.no_grad():
        out = model.eval()({"sax": torch.rand(1, 1, 32, 32, 4), "lax_4c": torch.rand(1, 1, 32, 32)})
    assert out["sax"].shape == (1, 4, 32, 32, 4) and out["lax_4c"].shape == (1, 4, 32, 32)
    with pytest.raises(ValueError, match="multiple"):
        model({"lax_4c": torch.rand(1, 1, 40, 40)})


def test_2d_sax_variant_and_other_input_sizes():
    config = {
        "task": "segmentation",
        "data": {"sax": {"patch_size": [64, 64], "in_chans": 1}},
        "model": {
            "name": "convunetr",
            "views": "sax",
            "out_chans": 4,
            "convunetr": {"size": "tiny", "enc_conv_chans": [8, 16], "dec_chans": [8, 8, 16, 16, 32]},
        },
    }
    model = build_model(config).eval()
    assert model.enc_down_dict["sax"].conv_blocks[0].patch_embed.conv.weight.shape == (8, 1, 4, 4)
    assert model.enc_down_dict["sax"].pos_embed.shape == (1, 16, 16)
    with torch.no_grad():
        assert model({"sax": torch.rand(5, 1, 64, 64)})["sax"].shape == (5, 4, 64, 64)
        # another size: pos_embed is interpolated to the new token grid
        assert model({"sax": torch.rand(1, 1, 96, 128)})["sax"].shape == (1, 4, 96, 128)


def test_custom_widths_and_presets():
    assert SIZE_PRESETS["base"] == dict(
        enc_embed_dim=768, enc_depth=12, enc_n_heads=12, dec_embed_dim=512, dec_depth=8, dec_n_heads=16
    )
    assert SIZE_PRESETS["tiny"]["enc_embed_dim"] == 16
    for name, widths in SIZE_PRESETS.items():
        assert widths["enc_embed_dim"] % widths["enc_n_heads"] == 0, name
        assert widths["dec_embed_dim"] % widths["dec_n_heads"] == 0, name
    config = {
        "task": "classification",
        "data": {"lax": {"patch_size": [32, 32]}, "class_column": "c", "c": ["a", "b", "c"]},
        "model": {"name": "convvit", "views": "lax_2c", "n_frames": 2, "convvit": {"size": "small", "enc_depth": 1}},
    }
    with torch.device("meta"):
        model = build_model(config)
    assert len(model.encoder.blocks) == 1 and model.encoder.cls_token.shape == (1, 1, 192)
    assert model.out_chans == 3 and model.class_names == ["a", "b", "c"]


def test_grad_ckpt_same_gradients(shared_spec):
    _, config = _spec(shared_spec, "seg_lax_4c")
    overrides = {
        **_fast_overrides(config),
        "model.views": "lax_4c",
        "model.convunetr.dropout": 0.0,
        "model.convunetr.drop_path": 0.0,
    }
    x = {"lax_4c": torch.rand(2, 1, *SMALL_LAX)}
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = build_model(config, overrides, grad_ckpt=ckpt).train()
        assert model.encoder.blocks[0].grad_ckpt is ckpt
        model(x)["lax_4c"].square().mean().backward()
        grads.append(model.encoder.blocks[0].attn.kv.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_mae_to_task_transfer(shared_spec):
    _, mae_config = _spec(shared_spec, "mae_pretrained")
    mae = build_model(mae_config, _fast_overrides(mae_config))
    mae_sd = mae.state_dict()

    _, cls_config = _spec(shared_spec, "cls_cvd_acdc_sax")
    task = build_model(cls_config, _fast_overrides(cls_config))
    sd = mae_to_task_state_dict(mae_sd, task)
    assert not any(k.startswith(("dec_", "decoder.", "pred_head_dict.")) for k in sd)
    assert not any("mask_token" in k or k.endswith("pos_embed") for k in sd)
    assert not any(".lax_" in k for k in sd)
    assert any(k.startswith("enc_fusion_dict.sax.") for k in sd)  # ConvViT keeps the fusion
    key = "enc_down_dict.sax.conv_blocks.0.patch_embed.conv.weight"
    assert mae_sd[key].shape[1] == 1 and sd[key].shape[1] == 2
    torch.testing.assert_close(sd[key][:, 1:], mae_sd[key])
    torch.testing.assert_close(sd[key][:, :1], mae_sd[key])
    missing = load_mae_weights(task, mae_sd)
    assert sorted(missing) == sorted(
        ["enc_down_dict.sax.pos_embed"] + [k for k in task.state_dict() if k.startswith("pred_head_dict.")]
    )
    torch.testing.assert_close(task.encoder.blocks[0].attn.q.weight, mae_sd["encoder.blocks.0.attn.q.weight"])

    _, seg_config = _spec(shared_spec, "seg_lax_4c")
    seg = build_model(seg_config, {"model.views": "lax_4c", **_fast_overrides(seg_config)})
    sd = mae_to_task_state_dict(mae_sd, seg)
    assert not any(k.startswith("enc_fusion_dict.") for k in sd)  # no fusion in ConvUNetR
    assert all(k.startswith(("enc_down_dict.lax_4c.", "encoder.")) for k in sd)
    missing = load_mae_weights(seg, mae_sd, freeze=True)
    assert "enc_down_dict.lax_4c.pos_embed" in missing
    assert not any(k.startswith(("encoder.", "enc_down_dict.lax_4c.conv")) for k in missing)
    assert not seg.encoder.blocks[0].attn.q.weight.requires_grad
    assert seg.decoder_dict["lax_4c"].blocks[0].up.weight.requires_grad


# --------------------------------------------------------------------------------------------------
# building blocks against the reference formulas
# --------------------------------------------------------------------------------------------------


def _numpy_sincos(embed_dim: int, grid_size: tuple[int, ...]) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in grid_size]), axis=0)
    d = embed_dim // len(grid_size)
    d -= d % 2
    parts = []
    for axis in grid:
        omega = np.exp(-np.log(10000.0) * np.arange(d // 2) / (d // 2))
        out = np.einsum("m,d->md", axis.reshape(-1), omega)
        parts += [np.sin(out), np.cos(out)]
    emb = np.concatenate(parts, axis=1)
    return np.concatenate([emb, np.zeros((emb.shape[0], embed_dim - emb.shape[1]))], axis=1)


@pytest.mark.parametrize(("dim", "grid"), [(768, (12, 12, 16)), (768, (16, 16)), (16, (3, 5, 2)), (512, (4, 6))])
def test_sincos_pos_embed_matches_reference_formula(dim, grid):
    ours = sincos_pos_embed(dim, grid)
    assert ours.dtype == torch.float32 and ours.shape == (math.prod(grid), dim)
    np.testing.assert_allclose(ours.numpy(), _numpy_sincos(dim, grid), atol=1e-6)


def test_patchify_order_and_inverse():
    x = torch.rand(2, 3, 8, 12, 4)
    ref = torch.einsum("nchpwqdr->nhwdpqrc", x.reshape(2, 3, 4, 2, 6, 2, 4, 1)).reshape(2, 4 * 6 * 4, 2 * 2 * 1 * 3)
    torch.testing.assert_close(patchify(x, (2, 2, 1)), ref)
    torch.testing.assert_close(unpatchify(patchify(x, (2, 2, 1)), (2, 2, 1), (4, 6, 4)), x)
    y = torch.rand(2, 1, 8, 12)
    torch.testing.assert_close(unpatchify(patchify(y, (4, 4)), (4, 4), (2, 3)), y)
    m = torch.tensor([[[True, False], [False, True]]])
    up = upsample_mask(m, (2, 3))
    assert up.shape == (1, 4, 6) and up[0, 1, 2] and not up[0, 1, 3] and up[0, 3, 5]


def test_channel_layer_norm():
    norm = ChannelLayerNorm(5)
    x = torch.randn(2, 5, 3, 4, 2)
    ref = F.layer_norm(x.permute(0, 2, 3, 4, 1), (5,), eps=1e-6).permute(0, 4, 1, 2, 3)
    torch.testing.assert_close(norm(x), ref)
