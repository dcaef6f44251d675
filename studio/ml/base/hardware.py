"""What this machine computes on: the device a model loads on, a real bitsandbytes 4-bit probe, memory probes.

`choose_device` is the one rule for where (and in which compute dtype) the studio puts a model:
CUDA in bf16 where supported (fp16 before Ampere), else the CPU in fp32; training, chat, blend,
merge and export all ask it. `detect_device` finds the accelerator (CUDA, then Apple MPS, else the CPU), reads its memory and
capabilities, and proves that bitsandbytes NF4 works there by quantizing a small Linear4bit and
running a forward pass. `memory_snapshot` is the cheap per-step probe training events use.
`capability_summary` / `doctor_report` turn those facts plus `studio.core.train.estimator` into the
sentence `lora-studio doctor` prints. torch and bitsandbytes are imported inside the functions.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata

import psutil

from studio.core.errors import StudioError
from studio.core.train.estimator import (
    KNOWN_MODELS,
    Estimate,
    EstimateRequest,
    estimate,
    format_bytes,
    verdict,
)

log = logging.getLogger(__name__)

SUMMARY_SEQ_LEN = 2048
SUMMARY_RANK = 16


@dataclass(frozen=True)
class DeviceChoice:
    """Where a model goes: the device kind, its name, the compute dtype, its memory."""

    kind: str  # "cuda" | "cpu" | "mps"
    name: str
    dtype: str  # compute dtype: "bf16" | "fp16" | "fp32"
    total_memory: int  # the accelerator's memory, or system RAM


DEVICE_CHOICES = ("auto", "cuda", "cpu", "mps")
GPU_ROOM = 1.3  # a model that needs N bytes goes on the GPU only with N x 1.3 free


@dataclass
class DeviceInfo:
    kind: str  # "cuda" | "mps" | "cpu"
    name: str
    total_memory_bytes: int  # the accelerator's memory; system RAM on the CPU
    free_memory_bytes: int
    compute_capability: tuple[int, int] | None
    bf16_supported: bool
    cuda_version: str | None
    torch_version: str
    cpu_count: int
    ram_total_bytes: int
    ram_available_bytes: int
    bnb_4bit_works: bool
    bnb_reason: str  # why 4-bit does not work ("" when it does)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["compute_capability"] = list(self.compute_capability) if self.compute_capability else None
        return data


@dataclass(frozen=True)
class MemorySnapshot:
    kind: str  # "cuda" | "mps" | "cpu"
    allocated_bytes: int  # tensors alive now (CUDA/MPS); process RSS on the CPU
    reserved_bytes: int  # held by the caching allocator (CUDA); process RSS on the CPU
    peak_bytes: int  # max allocated since the last reset (CUDA); peak RSS on the CPU
    rss_bytes: int  # this process's resident memory, on every device

    def to_dict(self) -> dict:
        return asdict(self)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def choose_device(requested: str | None = "auto", *, needed_bytes: int | None = None) -> DeviceChoice:
    """CUDA when present (bf16 if the GPU supports it, else fp16), else the CPU in fp32.

    `requested` is auto (None too), cuda, cpu or mps. With `needed_bytes`, "auto" takes the GPU
    only when that much (with room) is free there, else the CPU: a merge or blend that would not
    fit runs slowly instead of failing.
    """
    import torch

    requested = requested or "auto"
    if requested not in DEVICE_CHOICES:
        raise StudioError(f"Unknown device {requested!r}.", hint="Use auto, cuda, cpu or mps.")
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        index = torch.cuda.current_device()
        fits = True
        if requested == "auto" and needed_bytes is not None:
            free, _ = torch.cuda.mem_get_info(index)
            fits = needed_bytes * GPU_ROOM < free
            if not fits:
                log.info("The model needs more than the GPU's free memory; using the CPU.")
        if fits:
            props = torch.cuda.get_device_properties(index)
            dtype = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            return DeviceChoice("cuda", props.name, dtype, int(props.total_memory))
    elif requested == "cuda":
        raise StudioError("The GPU was asked for, but PyTorch sees no CUDA GPU.",
                          hint="Check the NVIDIA driver and that a CUDA build of PyTorch is installed, "
                               "or use the CPU.")
    if requested == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise StudioError("The Apple GPU was asked for, but MPS is not available.")
        return DeviceChoice("mps", "Apple GPU", "fp32", int(psutil.virtual_memory().total))
    return DeviceChoice("cpu", _cpu_name(), "fp32", int(psutil.virtual_memory().total))


def probe_bnb_4bit(device: str) -> tuple[bool, str]:
    """Quantize a small Linear4bit to NF4 (double quantization) on `device` and run a forward.

    Returns (works, reason). The output is checked against the same matmul through the dequantized
    weight, so a kernel that runs but computes garbage also counts as not working.
    """
    try:
        import bitsandbytes as bnb
        import torch

        generator = torch.Generator().manual_seed(0)
        weight = torch.randn(64, 64, generator=generator) / 8
        dtype = torch.bfloat16 if device != "mps" else torch.float16
        layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=dtype, quant_type="nf4",
                                  compress_statistics=True)
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4",
                                         compress_statistics=True)
        layer = layer.to(device)
        if not getattr(layer.weight, "bnb_quantized", False) or layer.weight.dtype != torch.uint8:
            return False, f"bitsandbytes did not quantize the weight on {device}."
        x = torch.randn(4, 64, generator=generator).to(device=device, dtype=dtype)
        with torch.no_grad():
            y = layer(x)
            dequantized = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
            expected = x.float() @ dequantized.float().t()
        if y.shape != (4, 64) or not torch.isfinite(y).all():
            return False, "the 4-bit forward pass returned a wrong shape or non-finite values."
        error = (y.float() - expected).abs().max().item()
        scale = expected.abs().max().item()
        if error > 0.05 * scale + 1e-3:
            return False, f"the 4-bit forward pass is wrong (max error {error:.3g} for values up to {scale:.3g})."
        return True, ""
    except Exception as err:  # any failure here means "no 4-bit on this device"; say which
        return False, f"{type(err).__name__}: {err}".strip()


def detect_device(probe_bnb: bool = True) -> DeviceInfo:
    """The device training would use, with its memory and whether bitsandbytes 4-bit works on it."""
    import torch

    ram = psutil.virtual_memory()
    cpu_count = os.cpu_count() or 1
    common = dict(torch_version=torch.__version__, cpu_count=cpu_count, ram_total_bytes=int(ram.total),
                  ram_available_bytes=int(ram.available), cuda_version=torch.version.cuda)
    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        free, total = torch.cuda.mem_get_info(index)
        kind, name = "cuda", props.name
        capability: tuple[int, int] | None = (props.major, props.minor)
        bf16 = bool(torch.cuda.is_bf16_supported())
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        kind, name, capability = "mps", f"Apple GPU ({platform.machine()})", None
        total = int(torch.mps.recommended_max_memory()) if hasattr(torch.mps, "recommended_max_memory") \
            else int(ram.total)
        free = max(0, total - int(torch.mps.driver_allocated_memory()))
        try:
            bf16 = bool(torch.ones(1, dtype=torch.bfloat16, device="mps").sum().item() == 1)
        except Exception:  # older macOS: no bf16 on MPS
            bf16 = False
    else:
        kind, name, capability = "cpu", _cpu_name(), None
        total, free = int(ram.total), int(ram.available)
        bf16 = True  # torch computes bf16 on every CPU (emulated where there is no native support)
    works, reason = probe_bnb_4bit(kind) if probe_bnb else (False, "not probed")
    if not works:
        log.info("bitsandbytes 4-bit does not work on %s: %s", kind, reason)
    return DeviceInfo(kind=kind, name=name, total_memory_bytes=int(total), free_memory_bytes=int(free),
                      compute_capability=capability, bf16_supported=bf16, bnb_4bit_works=works,
                      bnb_reason=reason, **common)


def _rss() -> tuple[int, int]:
    """(current RSS, peak RSS) of this process, in bytes."""
    info = psutil.Process().memory_info()
    peak = getattr(info, "peak_wset", 0)  # Windows
    if not peak:
        try:
            import resource

            maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            peak = maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB on Linux
        except (ImportError, OSError):
            peak = info.rss
    return int(info.rss), int(max(peak, info.rss))


def memory_snapshot(kind: str | None = None) -> MemorySnapshot:
    """Memory in use now: CUDA allocated/reserved/peak, MPS allocated, or process RSS on the CPU.

    `kind` defaults to CUDA when torch is loaded and sees a GPU, else the CPU; torch is never
    imported just to answer this.
    """
    rss, peak_rss = _rss()
    torch = sys.modules.get("torch")
    if kind is None:
        kind = "cuda" if torch is not None and torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        import torch

        return MemorySnapshot("cuda", int(torch.cuda.memory_allocated()), int(torch.cuda.memory_reserved()),
                              int(torch.cuda.max_memory_allocated()), rss)
    if kind == "mps":
        import torch

        allocated = int(torch.mps.current_allocated_memory())
        return MemorySnapshot("mps", allocated, int(torch.mps.driver_allocated_memory()), allocated, rss)
    return MemorySnapshot("cpu", rss, rss, peak_rss, rss)


def ladder(device: DeviceInfo, estimator: Callable[[EstimateRequest], Estimate] = estimate,
           seq_len: int = SUMMARY_SEQ_LEN) -> list[dict]:
    """Each known model shape with its predicted peak and verdict on this device (QLoRA r16 all-linear,
    batch 1, gradient checkpointing; 16-bit weights where bitsandbytes 4-bit does not work)."""
    quant = "4bit" if device.bnb_4bit_works else "none"
    rows = []
    for name, config in KNOWN_MODELS.items():
        est = estimator(EstimateRequest.on_device(device.kind, config=config, quant=quant, rank=SUMMARY_RANK,
                                                  alpha=2 * SUMMARY_RANK, targets="all-linear", seq_len=seq_len,
                                                  batch_size=1, gradient_checkpointing=True))
        rows.append({"model": name, "parameters": est.total_params, "quant": quant,
                     "predicted_peak_bytes": est.predicted_peak_bytes,
                     "verdict": verdict(est, device.total_memory_bytes)})
    return rows


def _size_label(row: dict) -> str:
    """The size a model is known by: 'Llama-3.1-8B' -> '8B'."""
    tail = row["model"].rsplit("-", 1)[-1]
    return tail if tail[:-1].replace(".", "").isdigit() and tail.endswith("B") \
        else f"{row['parameters'] / 1e9:.1f}B"


def capability_summary(device: DeviceInfo, estimator: Callable[[EstimateRequest], Estimate] = estimate,
                       seq_len: int = SUMMARY_SEQ_LEN) -> str:
    """One sentence: the biggest known model shape this device can QLoRA-train, or the CPU fallback."""
    if device.kind == "cpu":
        return (f"no GPU: training runs on the CPU, slowly ({device.cpu_count} cores, "
                f"{format_bytes(device.ram_total_bytes)} RAM); small models such as the default "
                "SmolLM2-135M are practical.")
    rows = ladder(device, estimator, seq_len)
    label = "this GPU" if device.kind == "cuda" else "this Mac's GPU"
    method = "QLoRA-train" if device.bnb_4bit_works else "LoRA-train (16-bit, no bitsandbytes 4-bit)"
    fitting = [row for row in rows if row["verdict"] == "fits"]
    tight = [row for row in rows if row["verdict"] == "tight"]
    if not fitting and not tight:
        smallest = rows[0]
        return (f"{label} ({format_bytes(device.total_memory_bytes)}) is too small to {method} even a "
                f"{_size_label(smallest)} model at seq {seq_len} "
                f"(needs about {format_bytes(smallest['predicted_peak_bytes'])}); try shorter sequences "
                "or a smaller model.")
    text = f"{label} can {method} "
    if fitting:
        best = fitting[-1]
        text += f"{_size_label(best)} models at seq {seq_len} (like {best['model']})"
        bigger_tight = [row for row in tight if row["parameters"] > best["parameters"]]
        if bigger_tight:
            text += f"; {bigger_tight[-1]['model']} would be tight"
    else:
        text += f"{_size_label(tight[-1])} models at seq {seq_len}, but only just"
    return text + "."


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def doctor_report(probe_bnb: bool = True) -> dict:
    """Everything `lora-studio doctor` shows, as plain JSON-able data."""
    device = detect_device(probe_bnb=probe_bnb)
    packages = ("lora-studio", "torch", "transformers", "peft", "bitsandbytes", "accelerate",
                "safetensors", "PySide6-Essentials", "psutil")
    return {
        "device": device.to_dict(),
        "summary": capability_summary(device),
        "ladder": ladder(device) if device.kind != "cpu" else [],
        "versions": {"python": platform.python_version(), **{p: _version(p) for p in packages}},
        "platform": {"system": platform.system(), "release": platform.release(),
                     "machine": platform.machine()},
        "memory": memory_snapshot("cpu").to_dict(),
    }


def format_doctor(report: dict) -> str:
    """The doctor report as the lines a person reads in a terminal."""
    dev = report["device"]
    lines = [f"Device: {dev['kind']} — {dev['name']}"]
    if dev["kind"] != "cpu":
        lines.append(f"GPU memory: {format_bytes(dev['free_memory_bytes'])} free of "
                     f"{format_bytes(dev['total_memory_bytes'])}")
        if dev["compute_capability"]:
            major, minor = dev["compute_capability"]
            lines.append(f"Compute capability: {major}.{minor}, CUDA {dev['cuda_version']}")
    lines.append(f"CPU and RAM: {dev['cpu_count']} cores, {format_bytes(dev['ram_available_bytes'])} RAM available "
                 f"of {format_bytes(dev['ram_total_bytes'])}")
    lines.append(f"bf16: {'yes' if dev['bf16_supported'] else 'no'}")
    lines.append("bitsandbytes 4-bit: " + ("works" if dev["bnb_4bit_works"] else f"no ({dev['bnb_reason']})"))
    for row in report.get("ladder", []):
        lines.append(f"  {row['model']:<14} {row['quant']:<5} needs ~{format_bytes(row['predicted_peak_bytes'])}: "
                     f"{row['verdict']}")
    versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v)
    lines.append(f"Versions: {versions}")
    plat = report["platform"]
    lines.append(f"Platform: {plat['system']} {plat['release']} ({plat['machine']})")
    lines.append("")
    lines.append(report["summary"][:1].upper() + report["summary"][1:])
    return "\n".join(lines)
