"""Device choice, mixed precision and frame-batch sizing for inference (Qt-free).

``pick_device('auto')`` prefers CUDA, then Apple MPS, then the CPU; naming a device that is not
available raises :class:`DeviceUnavailable` with a message a user can act on.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class DeviceUnavailable(RuntimeError):
    """The requested device does not exist on this machine (or this torch build)."""


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """Device names usable here, best first (always ends with 'cpu')."""
    out = []
    if torch.cuda.is_available():
        out.append("cuda")
    if _mps_available():
        out.append("mps")
    out.append("cpu")
    return out


def pick_device(name: str | torch.device | None = "auto") -> torch.device:
    """A torch device from 'auto' | 'cpu' | 'cuda' | 'cuda:N' | 'mps' (or a torch.device).

    'auto' picks CUDA, then MPS, then CPU. Asking for an unavailable device raises
    :class:`DeviceUnavailable` rather than silently falling back, so a batch job asked to use
    the GPU never runs for hours on the CPU.
    """
    if isinstance(name, torch.device):
        name = str(name)
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device(available_devices()[0])
    kind = name.split(":")[0]
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only torch build" if torch.version.cuda is None else f"CUDA {torch.version.cuda} build"
            raise DeviceUnavailable(
                f"device 'cuda' was requested but no CUDA GPU is available ({build}); "
                "use --device cpu or --device auto"
            )
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceUnavailable(
                f"device {name!r} was requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
        return dev
    if kind == "mps":
        if not _mps_available():
            raise DeviceUnavailable(
                "device 'mps' was requested but Apple Metal (MPS) is not available here; "
                "use --device cpu or --device auto"
            )
        return torch.device("mps")
    raise ValueError(f"unknown device {name!r}; choose one of {DEVICE_CHOICES}")


def describe_device(device: torch.device | str) -> str:
    """A short human description for the GUI and provenance, e.g. 'CPU (2 threads)'."""
    device = torch.device(device) if not isinstance(device, torch.device) else device
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return f"CUDA: {props.name} ({props.total_memory / 2**30:.0f} GiB)"
    if device.type == "mps":
        return "MPS (Apple GPU)"
    return f"CPU ({torch.get_num_threads()} threads)"


_CPU_BF16: bool | None = None  # set by cpu_bf16_is_faster(record=True) or set_cpu_bf16()


def _cpu_bf16_env() -> bool | None:
    value = os.environ.get("NAPARI_CINEMA_CPU_BF16")
    if value is None or not value.strip():
        return None
    return value.strip().lower() in ("1", "true", "yes", "on")


def set_cpu_bf16(enabled: bool | None) -> None:
    """Use bf16 autocast on the CPU in 'auto' precision (None: back to the default, off)."""
    global _CPU_BF16
    _CPU_BF16 = enabled


def cpu_bf16_enabled() -> bool:
    """Whether 'auto' precision uses bf16 on the CPU: ``NAPARI_CINEMA_CPU_BF16`` if set, else the
    recorded measurement, else False (bf16 changes the numbers slightly; only worth it where faster)."""
    env = _cpu_bf16_env()
    if env is not None:
        return env
    return bool(_CPU_BF16)


def autocast_dtype(device: torch.device | str, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype to run ``device`` with, or None for plain float32.

    'auto': bfloat16 on CUDA GPUs that support it; float32 on MPS; on the CPU float32 unless bf16 was
    measured faster here (:func:`cpu_bf16_is_faster` with ``record=True``, or the environment variable
    ``NAPARI_CINEMA_CPU_BF16=1``). 'fp32', 'bf16', 'fp16' force a choice.
    """
    device = torch.device(device) if not isinstance(device, torch.device) else device
    precision = (precision or "auto").lower()
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu" and cpu_bf16_enabled():
        return torch.bfloat16
    return None


def precision_name(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


def _conv_workload() -> Callable[[], Any]:
    """A stand-in for the U-Net decoders that dominate CPU time: 3x3 convs at full resolution."""
    conv = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.GELU(),
                               torch.nn.Conv2d(32, 32, 3, padding=1)).eval()
    x = torch.rand(8, 16, 128, 128)
    return lambda: conv(x)


def cpu_bf16_is_faster(fn: Callable[[], Any] | None = None, repeats: int = 3, margin: float = 0.85,
                       record: bool = False) -> bool:
    """Time ``fn`` (one representative forward pass; default a conv workload) in float32 and under CPU
    bf16 autocast; True when bf16 takes less than ``margin`` of the float32 time.

    With ``record=True`` the answer is kept for this process, so 'auto' precision follows it.
    """

    def best(enabled: bool) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
                fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    fn = fn or _conv_workload()
    best(False)  # warm-up
    best(True)
    faster = best(True) < margin * best(False)
    if record:
        set_cpu_bf16(faster)
    return faster


def memory_available_bytes(device: torch.device) -> int:
    """Free memory on ``device`` (CUDA: free device memory; else available system RAM)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # pragma: no cover - psutil is a napari dependency
        try:
            pages = os.sysconf("SC_AVPHYS_PAGES")
            return int(pages * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return 4 * 2**30


def estimate_item_bytes(patch_voxels: int, slices_per_item: int, out_chans: int, n_windows: int = 1) -> int:
    """Rough peak memory of one frame in a batch: network activations plus engine buffers.

    The conv stages at full resolution dominate the CineMA U-Nets: about a dozen float32 maps of
    32 channels alive at once at the input resolution.
    """
    activ = patch_voxels * slices_per_item * 32 * 4 * 12
    buffers = patch_voxels * slices_per_item * (out_chans + 2) * 4 * max(1, n_windows)
    return int(activ + buffers)


def auto_batch_frames(device: torch.device, n_frames: int, item_bytes: int, *, cpu_cap: int = 8,
                      gpu_cap: int = 64, fraction: float = 0.5) -> int:
    """Frames per chunk from the memory free on ``device`` (at least 1, at most ``n_frames``).

    On the CPU, batching beyond a few frames gains little (the cores are already busy), so the
    chunk is capped at ``cpu_cap`` frames; GPUs take up to ``gpu_cap``.
    """
    free = memory_available_bytes(device)
    by_memory = max(1, int(fraction * free // max(1, item_bytes)))
    cap = gpu_cap if device.type in ("cuda", "mps") else cpu_cap
    return int(max(1, min(n_frames, by_memory, cap)))
