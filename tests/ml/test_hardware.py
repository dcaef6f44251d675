"""Device detection, the real bitsandbytes 4-bit probe, memory snapshots and the doctor report."""

from __future__ import annotations

import dataclasses
import json
import mmap

import pytest

from studio.core.train.estimator import EstimateRequest, estimate
from studio.ml.base.hardware import (
    DeviceInfo,
    capability_summary,
    detect_device,
    doctor_report,
    format_doctor,
    ladder,
    memory_snapshot,
    probe_bnb_4bit,
)

GIB = 1024**3


@pytest.fixture(scope="module")
def device() -> DeviceInfo:
    return detect_device()


def _expected_kind() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "cpu"


def test_detect_device_describes_this_machine(device):
    assert device.kind == _expected_kind()
    assert isinstance(device.bnb_4bit_works, bool)
    assert isinstance(device.bnb_reason, str)
    assert device.ram_total_bytes > 0 and 0 < device.ram_available_bytes <= device.ram_total_bytes
    assert device.total_memory_bytes > 0 and device.free_memory_bytes >= 0
    assert device.cpu_count >= 1 and device.torch_version
    if device.kind == "cpu":
        assert device.compute_capability is None and device.total_memory_bytes == device.ram_total_bytes
        # The design relies on bitsandbytes quantizing to 4-bit on the CPU too.
        assert device.bnb_4bit_works, device.bnb_reason
    if device.bnb_4bit_works:
        assert device.bnb_reason == ""
    else:
        assert device.bnb_reason
    json.dumps(device.to_dict())


def test_bnb_probe_reports_a_reason_when_it_fails():
    works, reason = probe_bnb_4bit("no-such-device")
    assert works is False and reason


def test_memory_snapshot_sees_this_process_grow():
    before = memory_snapshot("cpu")
    assert before.kind == "cpu" and before.rss_bytes > 0 and before.peak_bytes >= before.rss_bytes
    # A fresh anonymous mapping with every page written: malloc could hand back pages an earlier
    # test freed (already resident), so RSS would not move; a new mapping always adds resident pages.
    size = 64 * 1024 * 1024
    blob = mmap.mmap(-1, size)
    for offset in range(0, size, mmap.PAGESIZE):
        blob[offset] = 1
    after = memory_snapshot("cpu")
    assert after.rss_bytes - before.rss_bytes > 32 * 1024 * 1024
    assert after.peak_bytes >= after.rss_bytes
    blob.close()
    default = memory_snapshot()
    assert default.kind == ("cuda" if _expected_kind() == "cuda" else "cpu")


def test_cpu_summary_says_no_gpu(device):
    cpu = dataclasses.replace(device, kind="cpu", compute_capability=None)
    assert capability_summary(cpu).startswith("no GPU: training runs on the CPU, slowly")


def _gpu(device: DeviceInfo, gib: float, bnb: bool = True) -> DeviceInfo:
    return dataclasses.replace(device, kind="cuda", name="Test GPU", total_memory_bytes=int(gib * GIB),
                               free_memory_bytes=int(gib * GIB), compute_capability=(9, 0),
                               bnb_4bit_works=bnb, bnb_reason="" if bnb else "no kernel")


def test_gpu_summary_picks_the_biggest_model_that_fits(device):
    calls = []

    def counting(request: EstimateRequest):
        calls.append(request)
        return estimate(request)

    text = capability_summary(_gpu(device, 16), counting)
    assert text.startswith("this GPU can QLoRA-train 8B models at seq 2048")
    assert calls and all(r.rank == 16 and r.targets == "all-linear" and r.batch_size == 1
                         and r.gradient_checkpointing and r.quant == "4bit" for r in calls)
    assert "32B models" in capability_summary(_gpu(device, 80))
    assert "too small" in capability_summary(_gpu(device, 2))
    assert "16-bit" in capability_summary(_gpu(device, 80, bnb=False))
    rows = ladder(_gpu(device, 24))
    assert [row["verdict"] for row in rows][:2] == ["fits", "fits"]
    assert rows[-1]["verdict"] == "won't fit"
    sizes = [row["predicted_peak_bytes"] for row in rows]
    assert sizes == sorted(sizes)


def test_doctor_report_and_its_text(device):
    report = doctor_report()
    assert set(report) >= {"device", "summary", "ladder", "versions", "platform", "memory"}
    assert report["device"]["kind"] == device.kind
    assert report["versions"]["torch"] and report["versions"]["peft"] and report["versions"]["python"]
    json.dumps(report)
    text = format_doctor(report)
    assert "Device:" in text and "bitsandbytes 4-bit:" in text
    assert report["summary"][1:] in text
    gpu_report = {**report, "device": _gpu(device, 24).to_dict(), "ladder": ladder(_gpu(device, 24))}
    gpu_text = format_doctor(gpu_report)
    assert "Llama-3.1-8B" in gpu_text and "Compute capability: 9.0" in gpu_text
