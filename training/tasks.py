"""Training tasks: how records become samples, which loss, which validation metrics.

=================  =========  ==================================================  ===================
task               network    sample                                              monitored metric
=================  =========  ==================================================  ===================
segmentation       ConvUNetR  one frame (3-D) or one slice (2-D per-slice SAX,     val_dice (max)
                              LAX); labels 0 bg, 1 RV, 2 MYO, 3 LV
landmark_heatmap   ConvUNetR  one LAX frame; Gaussian maps (sigma 3 px) of         val_landmark_mm (min)
                              mv_1, mv_2, apex
regression         ConvViT    (ED, ES) pair as 2 channels; z-scored target        val_mae (min)
classification     ConvViT    (ED, ES) pair; class index (label smoothing 0.1)    val_accuracy (max)
mae                CineMAE    any frame / slice of any study, per view            val_loss (min)
=================  =========  ==================================================  ===================

A task is built from the resolved training config; :meth:`Task.setup` reads and prepares the
records (and may fill the config with statistics the model config must carry: regression mean/std,
class lists), :meth:`Task.train_dataset` gives a map-style dataset indexed by ``(item, seed)``
pairs, :meth:`Task.loss` computes the training loss of a batch and :meth:`Task.validate` the
validation metrics (deterministic: fixed centre crops, fixed MAE masks, no random draws).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch.utils.data import Dataset

from napari_cinema.model.factory import config_out_chans, config_views, view_data

from .config import ConfigError
from .datasets import INTERNAL_LABEL_MAP, CaseRecord, DatasetError, check_labels, records_summary
from .losses import HeatmapLoss, PartialDiceCELoss
from .transforms import (
    PreparedCase,
    apply_augment,
    crop_window,
    gaussian_heatmaps,
    make_augment,
    minmax,
    prepare_case,
    window_start,
)

__all__ = [
    "ClassificationTask",
    "EpochBatchSampler",
    "LandmarkTask",
    "MAETask",
    "RegressionTask",
    "SampleDataset",
    "SegmentationTask",
    "Task",
    "build_task",
]

_DEFAULT_SPACING = {"sax3": (1.0, 1.0, 10.0), "sax2": (1.0, 1.0), "lax": (1.0, 1.0)}


def _view_matches(record_view: str, view: str) -> bool:
    return record_view == view


def _strip(record: CaseRecord) -> CaseRecord:
    """A lightweight copy once the record is prepared (the native arrays are not needed any more)."""
    return replace(record, image=np.empty((record.n_frames, 0, 0, 0), np.float32), labels=None, valid=None)


class SampleDataset(Dataset):
    """Items of a task, indexed by ``(item index, sample seed)`` pairs from :class:`EpochBatchSampler`."""

    def __init__(self, task: "Task", items: list[tuple], groups: list[str], train: bool):
        self.task = task
        self.items = items
        self.groups = groups
        self.train = train

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: Any) -> dict[str, Any]:
        idx, seed = key if isinstance(key, tuple) else (key, 0)
        return self.task.make_sample(self.items[idx], int(seed), self.train)


class EpochBatchSampler:
    """Deterministic, resumable, distributed batch order.

    The order of epoch ``e`` depends only on (seed, e): items are permuted (or resampled to
    ``samples_per_epoch``), grouped by view (a batch holds one view), cut into batches, the batches
    shuffled, cut or topped up (repeats) to epoch 0's count rounded up to a multiple of ``world_size``
    (so every epoch has the same number of steps) and dealt out ``rank::world_size`` (as
    DistributedSampler does). Each element is ``(item, sample_seed)``: augmentation draws from that
    seed only. ``start_batch`` skips the batches a resumed run already consumed.
    """

    def __init__(self, groups: Sequence[str], batch_size: int, seed: int, *, rank: int = 0, world_size: int = 1,
                 samples_per_epoch: int | None = None, shuffle: bool = True):
        self.groups = list(groups)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.samples_per_epoch = samples_per_epoch
        self.shuffle = shuffle
        self.epoch = 0
        self.start_batch = 0
        self._n_batches: int | None = None

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def _rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(epoch), 20240601])

    def _batches_per_epoch(self) -> int:
        # Views are batched apart, so an epoch's batch count depends on how the resampled items fall
        # into views; every epoch is cut to epoch 0's count (the loop's steps per epoch, the LR schedule
        # and --resume all rely on it), rounded up to a multiple of world_size.
        if self._n_batches is None:
            n = len(self._group_batches(self._rng(0)))
            self._n_batches = n + (-n) % self.world_size
        return self._n_batches

    def epoch_batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        rng = self._rng(epoch)
        batches = self._group_batches(rng)
        want = self._batches_per_epoch()
        if len(batches) > want:
            batches = batches[:want]
        elif len(batches) < want:  # top up with repeats of this epoch's batches (same items, same seeds)
            batches = batches + [batches[int(i)] for i in rng.integers(0, len(batches), want - len(batches))]
        if self.world_size > 1 and batches:
            batches = batches[self.rank::self.world_size]
        return batches

    def _group_batches(self, rng: np.random.Generator) -> list[list[tuple[int, int]]]:
        n = len(self.groups)
        if self.samples_per_epoch:
            reps = -(-int(self.samples_per_epoch) // n)
            order = np.concatenate([rng.permutation(n) if self.shuffle else np.arange(n) for _ in range(reps)])
            order = order[: int(self.samples_per_epoch)]
        else:
            order = rng.permutation(n) if self.shuffle else np.arange(n)
        seeds = rng.integers(0, 2**31 - 1, size=len(order))
        by_group: dict[str, list[tuple[int, int]]] = {}
        for pos, i in enumerate(order):
            by_group.setdefault(self.groups[int(i)], []).append((int(i), int(seeds[pos])))
        batches: list[list[tuple[int, int]]] = []
        for g in sorted(by_group):
            members = by_group[g]
            batches.extend(members[k:k + self.batch_size] for k in range(0, len(members), self.batch_size))
        if self.shuffle and len(batches) > 1:
            perm = rng.permutation(len(batches))
            batches = [batches[int(p)] for p in perm]
        return batches

    def __len__(self) -> int:
        return len(self.epoch_batches(self.epoch))

    def __iter__(self):
        yield from self.epoch_batches(self.epoch)[self.start_batch:]


# --------------------------------------------------------------------------------------------------
# base
# --------------------------------------------------------------------------------------------------


class Task:
    name = "task"
    monitor = "val_loss"
    mode = "min"
    primary_metric = "val_loss"  # the value shown as the task's score in progress lines

    def __init__(self, cfg: dict[str, Any]):
        self.cfg = cfg
        self.data = cfg["data"]
        self.views = config_views(cfg)
        self.view = self.views[0]
        self.train_cfg = cfg["train"]
        self.optim_cfg = cfg["optim"]
        self.aug_opts = self.train_cfg.get("augment") or {}
        self.geometry = {v: self._geometry(v) for v in self.views}
        self.cases: dict[str, list[PreparedCase]] = {"train": [], "val": []}
        self.summary: dict[str, Any] = {}
        self._augs: dict[Any, Any] = {}

    def _geometry(self, view: str) -> dict[str, Any]:
        vd = view_data(self.cfg, view)
        patch = tuple(int(p) for p in vd["patch_size"])
        ndim = len(patch)
        key = "lax" if not view.startswith("sax") else f"sax{ndim}"
        spacing = tuple(float(s) for s in (vd.get("spacing") or _DEFAULT_SPACING[key]))[:ndim]
        if len(spacing) != ndim:
            raise ConfigError(f"data.{view}.spacing {spacing} must have {ndim} elements like patch_size {patch}")
        return {"patch": patch, "ndim": ndim, "spacing": spacing, "in_chans": int(vd.get("in_chans", 1) or 1)}

    # -- data -----------------------------------------------------------------------------------
    def accept(self, record: CaseRecord) -> str | None:
        """None when the record is usable, else why not (it is skipped)."""
        return None if record.view in self.views else f"view {record.view}"

    def setup(self, train_records: list[CaseRecord], val_records: list[CaseRecord]) -> None:
        for split, records in (("train", train_records), ("val", val_records)):
            kept, skipped = [], {}
            for r in records:
                why = self.accept(r)
                if why is None:
                    kept.append(r)
                else:
                    skipped[why] = skipped.get(why, 0) + 1
            if records and not kept:
                raise DatasetError(
                    f"data.{split}: none of the {len(records)} cases suits a {self.name} model of view(s) "
                    f"{', '.join(self.views)} (skipped: {', '.join(f'{n} x {w}' for w, n in skipped.items())})"
                )
            if skipped:
                warnings.warn(f"data.{split}: skipped {sum(skipped.values())} case(s): "
                              f"{', '.join(f'{n} x {w}' for w, n in skipped.items())}", stacklevel=2)
            self.summary[split] = {"sources": records_summary(kept), "skipped": skipped, "cases": len(kept),
                                   "case_ids": [r.case_id for r in kept]}
            self.cases[split] = [self.prepare(r) for r in kept]
        self.after_setup()
        if not self.items("train"):
            raise DatasetError(f"data.train: the {self.name} task found no training samples")

    def prepare(self, record: CaseRecord) -> PreparedCase:
        g = self.geometry[record.view if record.view in self.geometry else self.view]
        pc = prepare_case(record, g["spacing"], g["ndim"])
        pc.record = _strip(record)
        pc.extra["view"] = record.view if record.view in self.geometry else self.view
        return pc

    def after_setup(self) -> None:
        pass

    def items(self, split: str) -> list[tuple]:
        raise NotImplementedError

    def groups(self, split: str) -> list[str]:
        return [self.view] * len(self.items(split))

    def train_dataset(self) -> SampleDataset:
        items = self.items("train")
        return SampleDataset(self, items, self.groups("train"), train=True)

    def make_sample(self, item: tuple, seed: int, train: bool) -> dict[str, Any]:
        raise NotImplementedError

    def augment(self, key: Any, ndim: int, keys: Mapping[str, str], options: Mapping[str, Any] | None = None):
        if key not in self._augs:
            opts = dict(self.aug_opts)
            opts.update(options or {})
            self._augs[key] = make_augment(ndim, keys, opts)
        return self._augs[key]

    def crop_centre(self, case: PreparedCase, t: int, rng: np.random.Generator | None, jitter_mm: float | None = None
                    ) -> np.ndarray:
        """Heart centre (z, y, x) of frame t, jittered by up to ``crop_jitter_mm`` in-plane when training."""
        c = np.array(case.centres[t], dtype=np.float64)
        if rng is not None:
            j = float(self.aug_opts.get("crop_jitter_mm", 0.0) if jitter_mm is None else jitter_mm)
            if j > 0 and self.aug_opts.get("enabled", True):
                _, dy, dx = case.spacing
                c[1] += rng.uniform(-j, j) / dy
                c[2] += rng.uniform(-j, j) / dx
        return c

    # -- model -----------------------------------------------------------------------------------
    def loss(self, model: torch.nn.Module, batch: Mapping[str, Any], device: torch.device) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def validate(self, model: torch.nn.Module, device: torch.device, autocast) -> dict[str, Any]:
        raise NotImplementedError

    def has_validation(self) -> bool:
        return bool(self.cases["val"])


# --------------------------------------------------------------------------------------------------
# segmentation
# --------------------------------------------------------------------------------------------------


def _crop_2d(img: np.ndarray, centre_yx: Sequence[float], patch_xy: Sequence[int], fill: float = 0) -> np.ndarray:
    """A (Y, X) slice cropped around ``centre_yx`` and returned as (X, Y) of ``patch_xy``."""
    size_yx = (patch_xy[1], patch_xy[0])
    return crop_window(img, window_start(centre_yx, size_yx), size_yx, fill).T


def _crop_3d(vol: np.ndarray, centre_zyx: Sequence[float], patch_xyz: Sequence[int], z_start: int = 0,
             fill: float = 0) -> np.ndarray:
    """A (Z, Y, X) volume cropped in-plane around the centre, z from ``z_start`` (end padding), as (X, Y, Z)."""
    size = (patch_xyz[2], patch_xyz[1], patch_xyz[0])
    ys, xs = window_start(centre_zyx[1:], size[1:])
    return crop_window(vol, (z_start, ys, xs), size, fill).transpose(2, 1, 0)


class SegmentationTask(Task):
    """Ventricle segmentation (3-D volumes or 2-D per-slice), DiceCE with partial labels."""

    name = "segmentation"
    monitor = "val_dice"
    mode = "max"
    primary_metric = "val_dice"

    def __init__(self, cfg: dict[str, Any]):
        super().__init__(cfg)
        lm = self.data.get("label_map") or INTERNAL_LABEL_MAP
        try:
            self.label_map = {int(k): str(v) for k, v in lm.items()}
        except (TypeError, ValueError):
            raise ConfigError(f"data.label_map must map integer values to names, got {lm!r}") from None
        self.n_classes = config_out_chans(cfg)
        if sorted(self.label_map) != list(range(self.n_classes)):
            raise ConfigError(f"data.label_map {self.label_map} must name the values 0..{self.n_classes - 1} "
                              f"(model.out_chans = {self.n_classes})")
        self.cfg["data"]["label_map"] = dict(self.label_map)
        g = self.geometry[self.view]
        self.patch, self.ndim = g["patch"], g["ndim"]
        self.loss_fn = PartialDiceCELoss()

    def accept(self, record: CaseRecord) -> str | None:
        if record.view != self.view:
            return f"view {record.view}"
        if record.labels is None or not record.labelled_frames:
            return "no labels"
        check_labels(record.labels, self.label_map, f"{record.source} case {record.case_id}")
        return None

    def _slices(self, case: PreparedCase, t: int) -> list[int]:
        if case.valid is not None:
            return [int(z) for z in np.where(case.valid[t])[0]]
        return list(range(case.image.shape[1]))

    def items(self, split: str) -> list[tuple]:
        out = []
        for ci, c in enumerate(self.cases[split]):
            reps = c.record.repeat if split == "train" else 1
            for _ in range(reps):
                for t in c.record.labelled_frames:
                    if self.ndim == 2:
                        out.extend((ci, t, z) for z in self._slices(c, t))
                    else:
                        out.append((ci, t, 0))
        return out

    def _classes(self, case: PreparedCase, t: int) -> np.ndarray:
        mask = np.zeros(self.n_classes, bool)
        for v in case.record.classes_of(t):
            if 0 <= int(v) < self.n_classes:
                mask[int(v)] = True
        mask[0] = True
        return mask

    def _input(self, case: PreparedCase, t: int, z: int, centre: np.ndarray, z_start: int = 0):
        if self.ndim == 2:
            img = minmax(_crop_2d(case.image[t, z], centre[1:], self.patch))
            lab = _crop_2d(case.labels[t, z], centre[1:], self.patch)
            valid = np.ones_like(img)
        else:
            img = minmax(_crop_3d(case.image[t], centre, self.patch, z_start))
            lab = _crop_3d(case.labels[t], centre, self.patch, z_start)
            vz = np.ones(case.image.shape[1], np.float32) if case.valid is None else case.valid[t].astype(np.float32)
            vol = np.broadcast_to(vz[:, None, None], case.image.shape[1:]).astype(np.float32)
            valid = _crop_3d(vol, centre, self.patch, z_start, fill=1.0)
        return img, lab, valid

    def _z_start(self, case: PreparedCase, rng: np.random.Generator | None) -> int:
        if self.ndim == 2:
            return 0
        extra = case.image.shape[1] - self.patch[2]
        if extra <= 0:
            return 0
        return int(rng.integers(0, extra + 1)) if rng is not None else extra // 2

    def make_sample(self, item: tuple, seed: int, train: bool) -> dict[str, Any]:
        ci, t, z = item
        case = self.cases["train" if train else "val"][ci]
        rng = np.random.default_rng(seed) if train else None
        centre = self.crop_centre(case, t, rng)
        img, lab, valid = self._input(case, t, z, centre, self._z_start(case, rng))
        sample = {"image": img[None].astype(np.float32), "label": lab[None].astype(np.float32),
                  "valid": valid[None].astype(np.float32)}
        if train:
            aug = self.augment("seg", self.ndim, {"image": "image", "label": "label", "valid": "label"})
            out = apply_augment(aug, sample, seed)
        else:
            out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sample.items()}
        out["label"] = out["label"].round().long()
        out["valid"] = (out["valid"] > 0.5).float()
        out["classes"] = torch.from_numpy(self._classes(case, t))
        return out

    def loss(self, model, batch, device):
        x = batch["image"].to(device, non_blocking=True)
        logits = model({self.view: x})[self.view]
        return self.loss_fn(logits, batch["label"].to(device), batch["classes"].to(device), batch["valid"].to(device))

    @torch.no_grad()
    def predict_frame(self, model, case: PreparedCase, t: int, device, autocast, batch_size: int = 32
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(pred, truth, valid, spacing_xyz): (X, Y, Z) label volumes around the heart centre of frame t."""
        centre = case.centres[t]
        if self.ndim == 2:
            zs = list(range(case.image.shape[1]))
            imgs, labs = [], []
            for z in zs:
                img, lab, _ = self._input(case, t, z, centre)
                imgs.append(img)
                labs.append(lab)
            x = torch.from_numpy(np.stack(imgs)[:, None])
            preds = []
            for k in range(0, len(zs), batch_size):
                with autocast():
                    logits = model({self.view: x[k:k + batch_size].to(device)})[self.view]
                preds.append(logits.float().argmax(1).cpu())
            pred = torch.cat(preds).numpy().transpose(1, 2, 0)  # (X, Y, Z)
            truth = np.stack(labs).transpose(1, 2, 0)
            vz = np.ones(len(zs), bool) if case.valid is None else case.valid[t].astype(bool)
            valid = np.broadcast_to(vz[None, None, :], truth.shape)
        else:
            z0 = self._z_start(case, None)
            img, lab, valid = self._input(case, t, 0, centre, z0)
            with autocast():
                logits = model({self.view: torch.from_numpy(img[None, None]).to(device)})[self.view]
            pred = logits.float().argmax(1)[0].cpu().numpy()
            truth = lab
            valid = valid > 0.5
        dz, dy, dx = case.spacing
        return pred.astype(np.int64), truth.astype(np.int64), np.asarray(valid, bool), np.array([dx, dy, dz])

    @torch.no_grad()
    def validate(self, model, device, autocast) -> dict[str, Any]:
        from monai.metrics import DiceMetric, HausdorffDistanceMetric

        dice_m = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
        hd_m = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
        want_hd = bool(self.train_cfg.get("val_hd95", True))
        names = [self.label_map[c] for c in range(1, self.n_classes)]
        dices: dict[str, list[float]] = {n: [] for n in names}
        hds: dict[str, list[float]] = {n: [] for n in names}
        bs = int(self.train_cfg.get("val_batch_size") or max(8, self.train_cfg["batch_size"]))
        for case in self.cases["val"]:
            for t in case.record.labelled_frames:
                pred, truth, valid, spacing = self.predict_frame(model, case, t, device, autocast, bs)
                pred = np.where(valid, pred, 0)
                truth = np.where(valid, truth, 0)
                classes = self._classes(case, t)
                p1 = F.one_hot(torch.from_numpy(pred), self.n_classes).movedim(-1, 0)[None].float()
                t1 = F.one_hot(torch.from_numpy(truth), self.n_classes).movedim(-1, 0)[None].float()
                d = dice_m(p1, t1)[0].numpy()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    h = hd_m(p1, t1, spacing=spacing.tolist())[0].numpy() if want_hd else None
                for k, n in enumerate(names, start=1):
                    if not classes[k]:
                        continue
                    if np.isfinite(d[k - 1]):
                        dices[n].append(float(d[k - 1]))
                    if h is not None and np.isfinite(h[k - 1]):
                        hds[n].append(float(h[k - 1]))
        out: dict[str, Any] = {}
        per = {n: (float(np.mean(v)) if v else None) for n, v in dices.items()}
        present = [v for v in per.values() if v is not None]
        out["val_dice"] = float(np.mean(present)) if present else None
        for n, v in per.items():
            out[f"val_dice_{n}"] = v
        if want_hd:
            per_h = {n: (float(np.mean(v)) if v else None) for n, v in hds.items()}
            present_h = [v for v in per_h.values() if v is not None]
            out["val_hd95_mm"] = float(np.mean(present_h)) if present_h else None
            for n, v in per_h.items():
                out[f"val_hd95_mm_{n}"] = v
        out["val_cases"] = len(self.cases["val"])
        return out


# --------------------------------------------------------------------------------------------------
# landmark heat-maps
# --------------------------------------------------------------------------------------------------


class LandmarkTask(Task):
    """Heat-maps of mv_1, mv_2 and apex (Gaussian, sigma 3 px) on LAX frames; sigmoid Dice + BCE."""

    name = "landmark_heatmap"
    monitor = "val_landmark_mm"
    mode = "min"
    primary_metric = "val_landmark_mm"

    def __init__(self, cfg: dict[str, Any]):
        super().__init__(cfg)
        self.names = [str(n) for n in (self.data.get("landmark_names") or ["mv_1", "mv_2", "apex"])]
        self.sigma = float(self.data.get("heatmap_sigma", 3.0))
        n_out = config_out_chans(cfg)
        if n_out != len(self.names):
            raise ConfigError(f"model.out_chans {n_out} must equal the number of landmarks {self.names}")
        g = self.geometry[self.view]
        if g["ndim"] != 2:
            raise ConfigError(f"landmark heat-maps are 2-D; data.{self.view}.patch_size must have 2 elements")
        self.patch = g["patch"]
        self.loss_fn = HeatmapLoss()

    def accept(self, record: CaseRecord) -> str | None:
        if record.view != self.view:
            return f"view {record.view}"
        if not record.landmarks or any(n not in record.landmarks for n in self.names):
            return "no landmarks"
        return None

    def items(self, split: str) -> list[tuple]:
        out = []
        for ci, c in enumerate(self.cases[split]):
            reps = c.record.repeat if split == "train" else 1
            for _ in range(reps):
                out.extend((ci, t, 0) for t in range(c.n_frames))
        return out

    def _input(self, case: PreparedCase, t: int, centre: np.ndarray):
        img = minmax(_crop_2d(case.image[t, 0], centre[1:], self.patch))
        size_yx = (self.patch[1], self.patch[0])
        y0, x0 = window_start(centre[1:], size_yx)
        pts_xy = np.array([[case.landmarks[n][t, 2] - x0, case.landmarks[n][t, 1] - y0] for n in self.names])
        return img, pts_xy

    def make_sample(self, item: tuple, seed: int, train: bool) -> dict[str, Any]:
        ci, t, _ = item
        case = self.cases["train" if train else "val"][ci]
        rng = np.random.default_rng(seed) if train else None
        centre = self.crop_centre(case, t, rng)
        img, pts = self._input(case, t, centre)
        maps = gaussian_heatmaps(pts, self.patch, self.sigma)
        sample = {"image": img[None].astype(np.float32), "heatmap": maps}
        if train:
            aug = self.augment("lm", 2, {"image": "image", "heatmap": "map"})
            return apply_augment(aug, sample, seed)
        return {k: torch.from_numpy(v) for k, v in sample.items()}

    def loss(self, model, batch, device):
        logits = model({self.view: batch["image"].to(device)})[self.view]
        return self.loss_fn(logits, batch["heatmap"].to(device))

    @torch.no_grad()
    def validate(self, model, device, autocast) -> dict[str, Any]:
        errs: dict[str, list[float]] = {n: [] for n in self.names}
        for case in self.cases["val"]:
            _, dy, dx = case.spacing
            for t in range(case.n_frames):
                centre = case.centres[t]
                img, pts = self._input(case, t, centre)
                with autocast():
                    logits = model({self.view: torch.from_numpy(img[None, None]).to(device)})[self.view]
                maps = torch.sigmoid(logits.float())[0].cpu().numpy()
                for k, n in enumerate(self.names):
                    ix, iy = np.unravel_index(int(np.argmax(maps[k])), maps[k].shape)
                    errs[n].append(float(math.hypot((ix - pts[k][0]) * dx, (iy - pts[k][1]) * dy)))
        out: dict[str, Any] = {f"val_landmark_mm_{n}": (float(np.mean(v)) if v else None) for n, v in errs.items()}
        allv = [x for v in errs.values() for x in v]
        out["val_landmark_mm"] = float(np.mean(allv)) if allv else None
        out["val_cases"] = len(self.cases["val"])
        return out


# --------------------------------------------------------------------------------------------------
# (ED, ES) pair models: regression and classification
# --------------------------------------------------------------------------------------------------


class _PairTask(Task):
    target_key = ""

    def __init__(self, cfg: dict[str, Any]):
        super().__init__(cfg)
        g = self.geometry[self.view]
        self.patch, self.ndim = g["patch"], g["ndim"]
        n_frames = int((cfg["model"] or {}).get("n_frames") or 1)
        if n_frames != 2:
            raise ConfigError(f"a {self.name} run takes the (ED, ES) pair: set model.n_frames: 2 (got {n_frames})")
        if self.view == "sax" and self.ndim != 3:
            raise ConfigError(f"a SAX {self.name} model sees whole volumes: data.sax.patch_size needs 3 elements")

    def accept(self, record: CaseRecord) -> str | None:
        if record.view != self.view:
            return f"view {record.view}"
        if record.ed_frame is None or record.es_frame is None:
            return "no ED/ES frames"
        if record.targets.get(self.target_key) is None:
            return f"no {self.target_key} target"
        return None

    def items(self, split: str) -> list[tuple]:
        out = []
        for ci, c in enumerate(self.cases[split]):
            reps = c.record.repeat if split == "train" else 1
            out.extend((ci, 0, 0) for _ in range(reps))
        return out

    def _pair(self, case: PreparedCase, rng: np.random.Generator | None) -> np.ndarray:
        ed, es = case.record.ed_frame, case.record.es_frame
        centre = self.crop_centre(case, ed, rng)
        if self.ndim == 3:
            extra = case.image.shape[1] - self.patch[2]
            z0 = 0 if extra <= 0 else (int(rng.integers(0, extra + 1)) if rng is not None else extra // 2)
            frames = [_crop_3d(case.image[t], centre, self.patch, z0) for t in (ed, es)]
        else:
            frames = [_crop_2d(case.image[t, 0], centre[1:], self.patch) for t in (ed, es)]
        return minmax(np.stack(frames))

    def target(self, case: PreparedCase) -> Any:
        raise NotImplementedError

    def make_sample(self, item: tuple, seed: int, train: bool) -> dict[str, Any]:
        ci = item[0]
        case = self.cases["train" if train else "val"][ci]
        rng = np.random.default_rng(seed) if train else None
        sample = {"image": self._pair(case, rng).astype(np.float32)}
        if train:
            aug = self.augment("pair", self.ndim, {"image": "image"})
            out = apply_augment(aug, sample, seed)
        else:
            out = {"image": torch.from_numpy(sample["image"])}
        out["target"] = self.target(case)
        return out

    def _outputs(self, model, device, autocast) -> tuple[torch.Tensor, list[PreparedCase]]:
        outs = []
        for case in self.cases["val"]:
            x = torch.from_numpy(self._pair(case, None)[None]).to(device)
            with autocast():
                outs.append(model({self.view: x}).float().cpu())
        return torch.cat(outs), self.cases["val"]


class RegressionTask(_PairTask):
    """A z-scored scalar (EF by default) from the (ED, ES) pair; MSE."""

    name = "regression"
    monitor = "val_mae"
    mode = "min"
    primary_metric = "val_mae"

    def __init__(self, cfg: dict[str, Any]):
        super().__init__(cfg)
        self.target_key = str(self.data["regression_column"])
        self.mean: float | None = None
        self.std: float | None = None

    def after_setup(self) -> None:
        stats = self.data.get(self.target_key)
        values = np.array([float(c.record.targets[self.target_key]) for c in self.cases["train"]])
        if isinstance(stats, Mapping) and stats.get("mean") is not None and stats.get("std") is not None:
            self.mean, self.std = float(stats["mean"]), float(stats["std"])
        else:
            self.mean = float(values.mean())
            self.std = float(values.std()) if len(values) > 1 and values.std() > 1e-6 else 1.0
        if not self.std or self.std <= 0:
            raise ConfigError(f"data.{self.target_key}.std must be positive")
        self.cfg["data"][self.target_key] = {"mean": self.mean, "std": self.std}

    def target(self, case: PreparedCase) -> torch.Tensor:
        return torch.tensor([(float(case.record.targets[self.target_key]) - self.mean) / self.std], dtype=torch.float32)

    def loss(self, model, batch, device):
        out = model({self.view: batch["image"].to(device)})
        return F.mse_loss(out.float(), batch["target"].to(device))

    @torch.no_grad()
    def validate(self, model, device, autocast) -> dict[str, Any]:
        out, cases = self._outputs(model, device, autocast)
        pred = out[:, 0].numpy() * self.std + self.mean
        truth = np.array([float(c.record.targets[self.target_key]) for c in cases])
        err = pred - truth
        return {"val_mae": float(np.abs(err).mean()), "val_rmse": float(np.sqrt((err ** 2).mean())),
                "val_cases": len(cases)}


class ClassificationTask(_PairTask):
    """Classes (ACDC groups by default) from the (ED, ES) pair; CE with label smoothing."""

    name = "classification"
    monitor = "val_accuracy"
    mode = "max"
    primary_metric = "val_accuracy"

    def __init__(self, cfg: dict[str, Any]):
        super().__init__(cfg)
        self.target_key = str(self.data["class_column"])
        self.classes: list[str] | None = [str(c) for c in self.data[self.target_key]] \
            if self.data.get(self.target_key) else None

    def after_setup(self) -> None:
        seen = sorted({str(c.record.targets[self.target_key]) for s in ("train", "val") for c in self.cases[s]})
        if self.classes is None:
            self.classes = sorted({str(c.record.targets[self.target_key]) for c in self.cases["train"]})
            self.cfg["data"][self.target_key] = list(self.classes)
        unknown = [c for c in seen if c not in self.classes]
        if unknown:
            raise DatasetError(f"{self.target_key} values {unknown} are not among the classes {self.classes} "
                               f"(data.{self.target_key})")
        n_out = config_out_chans(self.cfg)
        if n_out != len(self.classes):
            raise ConfigError(f"{len(self.classes)} classes but the model has {n_out} outputs")
        self.ls = float(self.optim_cfg.get("label_smoothing", 0.1))

    def target(self, case: PreparedCase) -> torch.Tensor:
        return torch.tensor(self.classes.index(str(case.record.targets[self.target_key])), dtype=torch.long)

    def loss(self, model, batch, device):
        out = model({self.view: batch["image"].to(device)})
        return F.cross_entropy(out.float(), batch["target"].to(device), label_smoothing=self.ls)

    @torch.no_grad()
    def validate(self, model, device, autocast) -> dict[str, Any]:
        out, cases = self._outputs(model, device, autocast)
        probs = torch.softmax(out, dim=1)
        truth = torch.tensor([self.classes.index(str(c.record.targets[self.target_key])) for c in cases])
        res: dict[str, Any] = {"val_accuracy": float((probs.argmax(1) == truth).float().mean()),
                               "val_loss": float(F.cross_entropy(out, truth)), "val_cases": len(cases)}
        res["val_auroc"] = auroc(probs.numpy(), truth.numpy(), len(self.classes))
        return res


def auroc(probs: np.ndarray, truth: np.ndarray, n_classes: int) -> float | None:
    """Macro one-vs-rest AUROC (MONAI compute_roc_auc) over the classes present; None if < 2 present."""
    from monai.metrics import compute_roc_auc

    present = sorted(set(int(t) for t in truth))
    if len(present) < 2:
        return None
    onehot = np.eye(n_classes)[truth]
    vals = []
    for c in present:
        try:
            vals.append(float(compute_roc_auc(torch.from_numpy(probs[:, c]), torch.from_numpy(onehot[:, c]))))
        except (ValueError, AssertionError):
            continue
    vals = [v for v in vals if math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


# --------------------------------------------------------------------------------------------------
# MAE pre-training
# --------------------------------------------------------------------------------------------------


class MAETask(Task):
    """Masked-autoencoder pre-training on every frame (and slice, for 2-D SAX) of every study."""

    name = "mae"
    monitor = "val_loss"
    mode = "min"
    primary_metric = "val_loss"

    def __init__(self, cfg: dict[str, Any]):
        super().__init__(cfg)
        self.mask_ratio = self.train_cfg.get("mask_ratio")
        self.val_masks: dict[tuple[int, str], torch.Tensor] = {}

    def accept(self, record: CaseRecord) -> str | None:
        return None if record.view in self.views else f"view {record.view} (not in model.views)"

    def items(self, split: str) -> list[tuple]:
        out = []
        for ci, c in enumerate(self.cases[split]):
            v = c.extra["view"]
            two_d_stack = self.geometry[v]["ndim"] == 2
            reps = c.record.repeat if split == "train" else 1
            frames = range(c.n_frames) if split == "train" else [c.record.ed_frame or 0]
            for _ in range(reps):
                for t in frames:
                    if two_d_stack:
                        out.extend((ci, t, z) for z in range(c.image.shape[1]))
                    else:
                        out.append((ci, t, 0))
        return out

    def groups(self, split: str) -> list[str]:
        return [self.cases[split][i[0]].extra["view"] for i in self.items(split)]

    def _input(self, case: PreparedCase, t: int, z: int, centre: np.ndarray, rng) -> np.ndarray:
        g = self.geometry[case.extra["view"]]
        if g["ndim"] == 2:
            return minmax(_crop_2d(case.image[t, z], centre[1:], g["patch"]))
        extra = case.image.shape[1] - g["patch"][2]
        z0 = 0 if extra <= 0 else (int(rng.integers(0, extra + 1)) if rng is not None else extra // 2)
        return minmax(_crop_3d(case.image[t], centre, g["patch"], z0))

    def make_sample(self, item: tuple, seed: int, train: bool) -> dict[str, Any]:
        ci, t, z = item
        case = self.cases["train" if train else "val"][ci]
        rng = np.random.default_rng(seed) if train else None
        centre = self.crop_centre(case, t, rng)
        img = self._input(case, t, z, centre, rng)[None].astype(np.float32)
        if train:
            ndim = self.geometry[case.extra["view"]]["ndim"]
            aug = self.augment(("mae", ndim), ndim, {"image": "image"},
                               {"noise_prob": 0.0, "dropout_prob": 0.0})
            out = apply_augment(aug, {"image": img}, seed)
            out["image"] = out["image"].clamp(0, 1)
        else:
            out = {"image": torch.from_numpy(img)}
        out["view"] = case.extra["view"]
        return out

    def loss(self, model, batch, device):
        views = batch["view"]
        view = views[0] if isinstance(views, (list, tuple)) else str(views)
        loss, _, _, _ = model({view: batch["image"].to(device)}, mask_ratio=self.mask_ratio)
        return loss

    def sample_view_of(self, item: tuple, split: str) -> str:
        return self.cases[split][item[0]].extra["view"]

    @torch.no_grad()
    def validate(self, model, device, autocast) -> dict[str, Any]:
        gen = torch.Generator().manual_seed(12345)
        losses = []
        ratio = float(self.mask_ratio if self.mask_ratio is not None else getattr(model, "mask_ratio", 0.75))
        for k, item in enumerate(self.items("val")):
            s = self.make_sample(item, 0, False)
            view = self.sample_view_of(item, "val")
            x = s["image"][None].to(device)
            grid = model.enc_down_dict[view].grid_for(x.shape[2:])
            n = int(np.prod(grid))
            n_mask = int(round(n * ratio))
            noise = torch.rand(1, n, generator=gen)
            mask = torch.zeros(1, n, dtype=torch.bool)
            mask[0, noise.argsort(dim=1)[0, :n_mask]] = True
            with autocast():
                loss, _, _, _ = model({view: x}, mask_dict={view: mask.to(device)})
            losses.append(float(loss.float()))
        return {"val_loss": float(np.mean(losses)) if losses else None, "val_cases": len(self.cases["val"])}


TASK_CLASSES = {
    "segmentation": SegmentationTask,
    "landmark_heatmap": LandmarkTask,
    "regression": RegressionTask,
    "classification": ClassificationTask,
    "mae": MAETask,
}


def build_task(cfg: dict[str, Any]) -> Task:
    try:
        cls = TASK_CLASSES[cfg["task"]]
    except KeyError:
        raise ConfigError(f"unknown task {cfg.get('task')!r}; expected one of {', '.join(TASK_CLASSES)}") from None
    return cls(cfg)
