"""The benchmark's GPU-busy sampler: NVML faked (no GPU here), sampled on a thread, averaged over a window."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pynvml

from benchmarks.gpubusy import GpuBusy, window_mean


def test_samples_the_visible_gpu_and_averages_its_window(monkeypatch):
    calls = []
    readings = iter(range(0, 1000, 10))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    monkeypatch.setattr(pynvml, "nvmlInit", lambda: calls.append("init"))
    monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: calls.append("shutdown"))
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", lambda i: calls.append(i) or i)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetUtilizationRates", lambda h: SimpleNamespace(gpu=min(next(readings), 100) if h == 3 else -1))
    with GpuBusy(period=0.01) as busy:
        time.sleep(0.3)
    assert calls[:2] == ["init", 3] and calls[-1] == "shutdown"  # the first visible GPU, NVML closed after
    times = [t for t, _ in busy.samples]
    assert len(busy.samples) >= 5 and times == sorted(times)
    assert [u for _, u in busy.samples][:3] == [0, 10, 20]
    inside = [u for t, u in busy.samples if times[1] <= t <= times[3]]
    assert busy.mean(times[1], times[3]) == round(sum(inside) / len(inside) / 100, 3)


def test_no_nvml_no_samples_and_no_figure(monkeypatch):
    def broken():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", broken)
    with GpuBusy(period=0.01) as busy:
        time.sleep(0.05)
    assert busy.samples == [] and busy.mean(0.0, time.time()) is None


def test_window_mean_needs_a_window_with_samples():
    samples = [(10.0, 100), (11.0, 50), (12.0, 0)]
    assert window_mean(samples, 10.0, 11.0) == 0.75
    assert window_mean(samples, None, 11.0) is None and window_mean(samples, 20.0, 30.0) is None


def test_a_gpu_named_by_uuid_is_sampled(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-3aaa")
    monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByUUID", lambda u: u)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetUtilizationRates", lambda h: SimpleNamespace(gpu=70 if h == "GPU-3aaa" else -1))
    with GpuBusy(period=0.01) as busy:
        time.sleep(0.1)
    assert busy.samples and {u for _, u in busy.samples} == {70}
