"""Small shared test helpers (pytest puts this folder on sys.path)."""

from __future__ import annotations


def tiny_seg_config(view: str = "lax_4c", out_chans: int = 4, data_name: str = "acdc") -> dict:
    """A ~56 k-parameter 2-D ConvUNetR (32 x 32) config, built through the real factory by the tests."""
    return {
        "task": "segmentation",
        "data": {"name": data_name, "lax": {"spacing": [1.0, 1.0], "patch_size": [32, 32], "in_chans": 1}},
        "model": {
            "name": "convunetr",
            "views": view,
            "out_chans": out_chans,
            "convunetr": {"size": "tiny", "enc_conv_chans": [8, 16], "enc_conv_n_blocks": 1,
                          "dec_chans": [8, 8, 16, 16, 16]},
        },
    }
