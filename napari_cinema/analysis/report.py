"""The analysis report: a NaN-free JSON document, a per-frame CSV and a multi-page PDF.

``report.json`` holds the DESIGN.md report fields at the top level (``LVEDV_ml`` ... ``ES_frame``, the
indexed ``*_ml_m2``/``LVM_g_m2`` when height and weight are known, ``HR_bpm``/``CO_l_min`` when timing is
known, ``volumes``, ``model``, ``warnings``), plus ``null_reasons`` ({key: why it is null}), ``flags``
(against reference ranges, with citations), ``aha``, ``landmarks``, ``rates`` and provenance. A value
that cannot be computed is ``null`` and its reason is in ``null_reasons``; NaN and infinity never
appear (the file is written with ``allow_nan=False``).
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io.writers import atomic_path

SCHEMA = "napari-cinema.report/1"

# DESIGN.md contract, in this order at the top of report.json.
CORE_FIELDS = ("LVEDV_ml", "LVESV_ml", "LVSV_ml", "LVEF_pct", "RVEDV_ml", "RVESV_ml", "RVSV_ml", "RVEF_pct",
               "LVM_g", "ED_frame", "ES_frame")
INDEXED_FIELDS = ("LVEDV_ml_m2", "LVESV_ml_m2", "LVSV_ml_m2", "RVEDV_ml_m2", "RVESV_ml_m2", "RVSV_ml_m2",
                  "LVM_g_m2")
TIMING_FIELDS = ("HR_bpm", "CO_l_min", "CI_l_min_m2")
EXTRA_FIELDS = ("BSA_m2", "PER_ml_s", "PFR_early_ml_s", "PFR_late_ml_s", "PFR_E_A_ratio", "MAPSE_mm",
                "MAPSE_mv_1_mm", "MAPSE_mv_2_mm", "LV_length_ED_mm", "LV_length_ES_mm",
                "LV_long_axis_shortening_pct")
ALL_FIELDS = CORE_FIELDS + INDEXED_FIELDS + TIMING_FIELDS + EXTRA_FIELDS

UNITS = {"_ml_m2": "ml/m²", "_g_m2": "g/m²", "_ml_s": "ml/s", "_ml": "ml", "_g": "g", "_pct": "%",
         "_bpm": "bpm", "_l_min_m2": "l/min/m²", "_l_min": "l/min", "_m2": "m²", "_mm": "mm"}


def unit_of(key: str) -> str:
    for suffix, unit in UNITS.items():
        if key.endswith(suffix):
            return unit
    return ""


def clean(value: Any) -> Any:
    """JSON-safe copy: numpy scalars/arrays to Python, non-finite floats to None, Paths to str."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return [clean(v) for v in value.tolist()]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, Path):
        return str(value)
    return value


@dataclass
class Report:
    """Everything one analysis produced. ``measures`` holds the scalar report fields."""

    study: dict[str, Any]
    measures: dict[str, Any] = field(default_factory=dict)
    null_reasons: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    volumes: dict[str, list] = field(default_factory=dict)
    model: dict[str, Any] | None = None
    patient: dict[str, Any] = field(default_factory=dict)
    flags: dict[str, Any] = field(default_factory=dict)
    aha: dict[str, Any] | None = None
    landmarks: dict[str, Any] | None = None
    rates: dict[str, Any] | None = None
    cycle: dict[str, Any] = field(default_factory=dict)
    probabilities: dict[str, float] | None = None
    ef_regression: dict[str, Any] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    # Plot-only data (not in the JSON): smoothed volume and dV/dt curves.
    curves: dict[str, Any] = field(default_factory=dict, repr=False)

    # -- building ---------------------------------------------------------------------------------
    def set(self, key: str, value: Any, reason: str | None = None, digits: int | None = 3) -> None:
        """Store a measure; None/NaN becomes null with ``reason`` (required then) in null_reasons."""
        if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
            value = None
        if value is None:
            self.measures[key] = None
            self.null_reasons[key] = reason or self.null_reasons.get(key) or "not computable"
            return
        if isinstance(value, (np.integer, int)) and not isinstance(value, bool):
            value = int(value)
        elif isinstance(value, (float, np.floating)):
            value = round(float(value), digits) if digits is not None else float(value)
        self.measures[key] = value
        self.null_reasons.pop(key, None)

    def get(self, key: str) -> Any:
        return self.measures.get(key)

    def warn(self, message: str) -> None:
        if message and message not in self.warnings:
            self.warnings.append(message)

    # -- output -----------------------------------------------------------------------------------
    def to_json_dict(self) -> dict[str, Any]:
        """The report.json document: DESIGN.md fields at the top level, never NaN."""
        d: dict[str, Any] = {"schema": SCHEMA}
        for key in ALL_FIELDS:
            if key in self.measures:
                d[key] = self.measures[key]
        for key, v in self.measures.items():
            d.setdefault(key, v)
        d["volumes"] = self.volumes
        d["model"] = self.model
        d["warnings"] = list(self.warnings)
        d["null_reasons"] = dict(self.null_reasons)
        d["flags"] = self.flags
        d["study"] = self.study
        d["patient"] = self.patient
        d["cycle"] = self.cycle
        d["rates"] = self.rates
        d["aha"] = self.aha
        d["landmarks"] = self.landmarks
        d["probabilities"] = self.probabilities
        d["ef_regression"] = self.ef_regression
        d["provenance"] = self.provenance
        d = clean(d)
        # A non-finite value that slipped into a top-level measure still gets its reason.
        for key in ALL_FIELDS:
            if key in d and d[key] is None and key not in d["null_reasons"]:
                d["null_reasons"][key] = "not computable"
        return d

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_json_dict(), indent=indent, allow_nan=False)

    def volumes_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        v = self.volumes
        # single-slice (long-axis) studies have areas, not volumes
        cols = ("frame", "time_ms", "LV_ml", "RV_ml", "MYO_ml") + tuple(
            c for c in ("LV_area_mm2", "RV_area_mm2", "MYO_area_mm2") if c in v)
        w.writerow(cols)
        for i in range(len(v.get("frame", []))):
            row = []
            for c in cols:
                x = None if v.get(c) is None else v[c][i]  # time_ms is None when the timing is unknown
                row.append("" if x is None else (x if isinstance(x, int) else f"{x:.4f}"))
            w.writerow(row)
        return buf.getvalue()

    def summary_row(self) -> dict[str, Any]:
        """One row for summary.csv."""
        row = {k: self.measures.get(k) for k in CORE_FIELDS + INDEXED_FIELDS + TIMING_FIELDS +
               ("BSA_m2", "PER_ml_s", "PFR_early_ml_s", "PFR_late_ml_s", "MAPSE_mm")}
        row["n_warnings"] = len(self.warnings)
        row["model"] = (self.model or {}).get("id")
        return row


def write_report(report: Report, out_dir: str | Path, *, pdf: bool = True, png_dir: str | Path | None = None) -> dict[str, Path]:
    """Write ``report.json``, ``volumes.csv`` and (with ``pdf``) ``report.pdf`` into ``out_dir``,
    each atomically (report.json last, so its presence means the folder is complete). ``png_dir`` also
    saves every PDF page as PNG (for a quick look or a GUI preview). Returns {name: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    with atomic_path(out / "volumes.csv") as tmp:
        tmp.write_text(report.volumes_csv())
    paths["volumes.csv"] = out / "volumes.csv"
    if pdf or png_dir is not None:
        try:
            figs = report_figures(report)
            if pdf:
                from matplotlib.backends.backend_pdf import PdfPages

                with atomic_path(out / "report.pdf") as tmp:
                    with PdfPages(tmp) as pp:
                        for fig in figs:
                            pp.savefig(fig)
                        info = pp.infodict()
                        info["Title"] = f"napari-cinema report: {report.study.get('name', '')}"
                        info["Creator"] = "napari-cinema"
                paths["report.pdf"] = out / "report.pdf"
            if png_dir is not None:
                png_dir = Path(png_dir)
                png_dir.mkdir(parents=True, exist_ok=True)
                for i, fig in enumerate(figs, 1):
                    p = png_dir / f"report_page{i}.png"
                    with atomic_path(p) as tmp:
                        fig.savefig(tmp, dpi=110, format="png")
                    paths[p.name] = p
        except Exception as exc:  # the numbers matter more than the pictures: keep report.json
            report.warn(f"report.pdf not written: {type(exc).__name__}: {exc}")
    text = report.to_json()
    with atomic_path(out / "report.json") as tmp:
        tmp.write_text(text)
    paths["report.json"] = out / "report.json"
    return paths


# -- figures -------------------------------------------------------------------------------------

LABELS = {
    "LVEDV_ml": "LV end-diastolic volume", "LVESV_ml": "LV end-systolic volume", "LVSV_ml": "LV stroke volume",
    "LVEF_pct": "LV ejection fraction", "RVEDV_ml": "RV end-diastolic volume", "RVESV_ml": "RV end-systolic volume",
    "RVSV_ml": "RV stroke volume", "RVEF_pct": "RV ejection fraction", "LVM_g": "LV mass (ED)",
    "LVEDV_ml_m2": "LV EDV index", "LVESV_ml_m2": "LV ESV index", "LVSV_ml_m2": "LV SV index",
    "RVEDV_ml_m2": "RV EDV index", "RVESV_ml_m2": "RV ESV index", "RVSV_ml_m2": "RV SV index",
    "LVM_g_m2": "LV mass index", "BSA_m2": "Body surface area (Mosteller)", "HR_bpm": "Heart rate",
    "CO_l_min": "Cardiac output", "CI_l_min_m2": "Cardiac index", "PER_ml_s": "Peak ejection rate",
    "PFR_early_ml_s": "Peak filling rate, early (E)", "PFR_late_ml_s": "Peak filling rate, late (A)",
    "PFR_E_A_ratio": "E/A filling-rate ratio", "MAPSE_mm": "MAPSE (mean of hinges)",
    "MAPSE_mv_1_mm": "MAPSE hinge mv_1", "MAPSE_mv_2_mm": "MAPSE hinge mv_2",
    "LV_length_ED_mm": "LV long-axis length ED", "LV_length_ES_mm": "LV long-axis length ES",
    "LV_long_axis_shortening_pct": "LV long-axis shortening", "ED_frame": "ED frame", "ES_frame": "ES frame",
}

A4 = (8.27, 11.69)


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
    return str(v)


def _wrap(text: str, width: int = 110) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]


def _summary_page(report: Report):
    from matplotlib.figure import Figure

    fig = Figure(figsize=A4)
    s = report.study
    fig.text(0.06, 0.965, "napari-cinema analysis report", fontsize=15, weight="bold")
    model = report.model or {}
    lines = [
        f"Study: {s.get('name', '')}   view: {s.get('view', '')}   frames: {s.get('n_frames', '')}   "
        f"slices: {s.get('n_slices', '')}",
        f"Source: {s.get('source', '')}",
        f"Labels: {model.get('id') or 'unknown'}   " + (f"({model.get('description')})" if model.get('description') else ""),
        f"Created: {report.provenance.get('created', '')}   software: napari-cinema {report.provenance.get('version', '')}",
    ]
    p = report.patient or {}
    pt = ", ".join(f"{k}={v}" for k, v in p.items() if v is not None and k != "patient_id")
    if pt:
        lines.append(f"Patient: {pt}")
    y = 0.94
    for line in lines:
        for part in _wrap(line, 120):
            fig.text(0.06, y, part, fontsize=8, family="monospace")
            y -= 0.016
    rows = []
    keys = [k for k in ALL_FIELDS if k in report.measures and k not in ("ED_frame", "ES_frame")]
    for k in keys:
        v = report.measures.get(k)
        f = report.flags.get(k) or {}
        rng = f.get("range")
        rtxt = "" if not rng or (rng[0] is None and rng[1] is None) else \
            f"{_fmt(rng[0])}–{_fmt(rng[1])}"
        flag = f.get("flag") or ""
        src = f.get("source", "")
        rows.append([LABELS.get(k, k), _fmt(v), unit_of(k), rtxt, flag.upper() if flag in ("low", "high") else flag, src])
    ed, es = report.measures.get("ED_frame"), report.measures.get("ES_frame")
    how = report.cycle.get("ed_es_source", "")
    how = "manual" if "manual" in how and "detected" not in how else ("detected" if "detected" in how else how)
    rows.insert(0, ["ED / ES frame", f"{_fmt(ed)} / {_fmt(es)}", "", "", "", how])
    top = y - 0.01
    height = min(0.62, 0.0165 * (len(rows) + 1))
    ax = fig.add_axes([0.06, top - height, 0.88, height])
    ax.axis("off")
    table = ax.table(cellText=rows, colLabels=["Measure", "Value", "Unit", "Reference", "Flag", "Source"],
                     bbox=[0, 0, 1, 1], cellLoc="left", colLoc="left",
                     colWidths=[0.34, 0.11, 0.09, 0.14, 0.08, 0.24])
    table.auto_set_font_size(False)
    table.set_fontsize(7.5)
    table.scale(1, 1.0)
    for (r, c), cell in table.get_celld().items():
        cell.set_edgecolor("0.8")
        if r == 0:
            cell.set_facecolor("0.9")
            cell.set_text_props(weight="bold")
        elif c == 4 and cell.get_text().get_text() in ("LOW", "HIGH"):
            cell.set_facecolor("#ffd6cc")
            cell.set_text_props(weight="bold", color="#a00000")
    y = top - height - 0.025
    notes: list[str] = []
    if report.warnings:
        notes.append("Warnings:")
        notes += [f"  • {w}" for w in report.warnings]
    by_reason: dict[str, list[str]] = {}
    for k, r in report.null_reasons.items():
        if k in ALL_FIELDS:
            by_reason.setdefault(r, []).append(k)
    if by_reason:
        notes.append("Not computed:")
        notes += [f"  • {', '.join(keys)}: {r}" for r, keys in by_reason.items()]
    srcs = sorted({f.get("source") for f in report.flags.values() if f.get("source")})
    if srcs:
        from .reference_ranges import SOURCES

        notes.append("Reference ranges (flags low/high outside the range; see report.json 'flags' for notes):")
        for key in srcs:
            notes.append(f"  [{key}] {SOURCES[key]['citation']} doi:{SOURCES[key]['doi']} "
                         f"({SOURCES[key]['convention']})")
    for line in notes:
        for part in _wrap(line, 125):
            if y < 0.03:
                fig.text(0.06, y, "… (see report.json)", fontsize=7)
                return fig
            fig.text(0.06, y, part, fontsize=7)
            y -= 0.014
    return fig


def _volume_page(report: Report):
    from matplotlib.figure import Figure

    v = report.volumes
    has_rates = bool(report.curves.get("dvdt_ml_s") is not None)
    fig = Figure(figsize=(A4[1], A4[0]))  # landscape
    axes = fig.subplots(2 if has_rates else 1, 1, squeeze=False)[:, 0]
    ax = axes[0]
    t = v.get("time_ms")
    use_time = t is not None and all(x is not None for x in t)
    x = np.array(t if use_time else v.get("frame", []), dtype=float)
    colors = {"LV": "#e6453a", "RV": "#3388ff", "MYO": "#33b34d"}

    def series(name: str, suffix: str) -> np.ndarray:
        return np.array([np.nan if a is None else a for a in v.get(f"{name}{suffix}", [])], dtype=float)

    suffix, quantity = "_ml", "volume (ml)"
    if not any(np.isfinite(series(n, "_ml")).any() for n in ("LV", "RV", "MYO") if series(n, "_ml").size) and \
            "LV_area_mm2" in v:
        suffix, quantity = "_area_mm2", "area in the image plane (mm²)"
    for name in ("LV", "RV", "MYO"):
        y = series(name, suffix)
        if y.size and np.isfinite(y).any():
            ax.plot(x, y, "o-" if np.isfinite(y).sum() < x.size or x.size < 3 else ".-", color=colors[name],
                    label=f"{name} ({'cavity' if name != 'MYO' else 'myocardium'})", ms=4)
    sm = report.curves.get("smooth_ml")
    if sm is not None:
        ax.plot(report.curves["fine_t_ms"], sm, "-", color=colors["LV"], alpha=0.4, lw=2,
                label=f"LV Fourier low-pass (harmonics {report.rates.get('lowpass_harmonics')})")
    for key, ls in (("ED_frame", "--"), ("ES_frame", ":")):
        f = report.measures.get(key)
        if f is not None and f < len(x):
            ax.axvline(x[f], color="k", ls=ls, lw=1)
            ax.text(x[f], ax.get_ylim()[1], f" {key[:2]}", va="top", fontsize=9)
    ax.set_xlabel("time (ms)" if use_time else "frame")
    ax.set_ylabel(quantity)
    ax.set_title(f"{'Volume' if suffix == '_ml' else 'Area'} curves — {report.study.get('name', '')}")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    if has_rates:
        ax2 = axes[1]
        ax2.plot(report.curves["fine_t_ms"], report.curves["dvdt_ml_s"], color="0.3", lw=1.2)
        ax2.axhline(0, color="0.6", lw=0.8)
        r = report.rates or {}
        for key, tkey, sign, col in (("PER_ml_s", "PER_time_ms", -1, "#a00000"),
                                     ("PFR_early_ml_s", "PFR_early_time_ms", 1, "#0060a0"),
                                     ("PFR_late_ml_s", "PFR_late_time_ms", 1, "#00a060")):
            if r.get(key) is not None and r.get(tkey) is not None:
                ax2.plot([r[tkey]], [sign * r[key]], "o", color=col)
                ax2.annotate(f"{key.split('_ml')[0]} {r[key]:.0f} ml/s", (r[tkey], sign * r[key]),
                             textcoords="offset points", xytext=(5, 5 * sign), fontsize=8, color=col)
        ax2.set_xlabel("time (ms)")
        ax2.set_ylabel("dV/dt LV (ml/s)")
        ax2.set_title("Ejection and filling rates (derivative of the low-pass LV volume)")
        ax2.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _bullseye_page(report: Report):
    from matplotlib.figure import Figure

    from .aha import plot_bullseye

    segs = report.aha["segments"]
    fig = Figure(figsize=(A4[1], A4[0]))
    axes = [fig.add_axes([0.03 + 0.325 * i, 0.22, 0.29, 0.62]) for i in range(3)]
    cbars = [fig.add_axes([0.06 + 0.325 * i, 0.14, 0.23, 0.025]) for i in range(3)]
    ed = {s["segment"]: s["thickness_ED_mm"] for s in segs}
    es = {s["segment"]: s["thickness_ES_mm"] for s in segs}
    th = {s["segment"]: s["thickening_pct"] for s in segs}
    finite = [v for v in list(ed.values()) + list(es.values()) if v is not None]
    hi = max(finite) if finite else 15.0
    for ax, cax, vals, title, cmap, lo, top, unit in (
            (axes[0], cbars[0], ed, "Wall thickness ED", "viridis", 0, hi, "mm"),
            (axes[1], cbars[1], es, "Wall thickness ES", "viridis", 0, hi, "mm"),
            (axes[2], cbars[2], th, "Thickening", "RdYlGn", -20, 100, "%")):
        sm = plot_bullseye(ax, vals, title=title, cmap=cmap, vmin=lo, vmax=top, unit=unit,
                           fmt="{:.0f}" if unit == "%" else "{:.1f}")
        fig.colorbar(sm, cax=cax, orientation="horizontal", label=unit)
    ref = report.aha.get("reference", {})
    fig.suptitle("AHA 16-segment wall thickness and thickening (bull's-eye: anterior up, septum left)", y=0.96)
    fig.text(0.02, 0.03, f"slices base→apex: {report.aha.get('slices')}; reference slice {ref.get('slice')}; "
                         f"RV insertion arc {ref.get('insertion_arc_deg', float('nan')):.0f}°; base/apex from "
                         f"{ref.get('base_apex_from')}; {ref.get('method')}", fontsize=7)
    return fig


def _landmark_page(report: Report):
    from matplotlib.figure import Figure

    lm = report.landmarks
    curves = lm.get("curves") or {}
    fig = Figure(figsize=(A4[1], A4[0]))
    ax1, ax2 = fig.subplots(1, 2)
    t = report.volumes.get("time_ms")
    use_time = t is not None and all(x is not None for x in t)
    x = np.array(t if use_time else report.volumes.get("frame", []), dtype=float)
    disp = curves.get("displacement_mm", {})
    for key, col in (("mv_1", "#3388ff"), ("mv_2", "#e6453a"), ("mean", "k")):
        y = np.array([np.nan if a is None else a for a in disp.get(key, [])], dtype=float)
        if y.size:
            ax1.plot(x[: y.size], y, ".-", color=col, label=key, lw=2 if key == "mean" else 1)
    ax1.set_title(f"Mitral annular displacement towards the apex (MAPSE {_fmt(lm.get('MAPSE_mm'))} mm)")
    ax1.set_xlabel("time (ms)" if use_time else "frame")
    ax1.set_ylabel("mm")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    y = np.array([np.nan if a is None else a for a in curves.get("length_mm", [])], dtype=float)
    if y.size:
        ax2.plot(x[: y.size], y, ".-", color="0.2")
    ax2.set_title(f"LV long-axis length (shortening {_fmt(lm.get('LV_long_axis_shortening_pct'))} %)")
    ax2.set_xlabel("time (ms)" if use_time else "frame")
    ax2.set_ylabel("apex to mitral annulus midpoint (mm)")
    ax2.grid(alpha=0.3)
    for a in (ax1, ax2):
        for key, ls in (("ED_frame", "--"), ("ES_frame", ":")):
            f = report.measures.get(key)
            if f is not None and f < len(x):
                a.axvline(x[f], color="k", ls=ls, lw=1)
    fig.tight_layout()
    return fig


def _probability_page(report: Report):
    from matplotlib.figure import Figure

    probs = report.probabilities or {}
    fig = Figure(figsize=(A4[1], A4[0]))
    ax = fig.add_subplot(1, 2, 1)
    names = list(probs)
    vals = [float(probs[n]) for n in names]
    ax.barh(names, vals, color="#5577aa")
    for i, v in enumerate(vals):
        ax.text(min(v + 0.01, 0.9), i, f"{100 * v:.1f}%", va="center", fontsize=9)
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("probability")
    ax.set_title("Disease classification (model output; not a diagnosis)")
    ax.grid(axis="x", alpha=0.3)
    if report.ef_regression:
        ax2 = fig.add_subplot(1, 2, 2)
        ax2.axis("off")
        lines = ["EF regression (model output):"] + [f"  {k}: {_fmt(v)}" for k, v in report.ef_regression.items()]
        ax2.text(0.0, 0.9, "\n".join(lines), va="top", fontsize=10, family="monospace")
    fig.tight_layout()
    return fig


def report_figures(report: Report) -> list:
    """The report pages as matplotlib Figures (Agg; no pyplot state, safe in worker processes)."""
    figs = [_summary_page(report)]
    if report.volumes.get("frame"):
        figs.append(_volume_page(report))
    if report.aha and report.aha.get("segments"):
        figs.append(_bullseye_page(report))
    if report.landmarks and report.landmarks.get("curves"):
        figs.append(_landmark_page(report))
    if report.probabilities or report.ef_regression:
        figs.append(_probability_page(report))
    return figs


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
