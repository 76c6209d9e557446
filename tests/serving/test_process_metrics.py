"""/metrics of a real server carries the standard process metrics next to the project's own.

Serving's registry is its own (apps must not collide), so the process, platform and GC collectors
that prometheus_client puts in its default registry have to be added to it: without them the
memory a replica holds (process_resident_memory_bytes) cannot be watched.
"""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from serving.metrics import Metrics
from storage import LocalStore
from tests.helpers import image_bytes, serving_process


def _samples(text: str) -> dict[str, float]:
    """Sample name (with its labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_process_metrics_next_to_the_projects_on_a_real_server(
    tmp_path: Path, mean_store: tuple[LocalStore, str]
) -> None:
    store, version = mean_store
    env = {"AIDETECT_HOME": str(tmp_path / "home"), "AIDETECT_STORE_URL": str(store.root)}
    with serving_process(env, tmp_path / "serving.log") as (process, base), httpx.Client(base_url=base) as client:
        assert client.post("/v1/predict", files={"file": ("x.jpg", image_bytes())}).status_code == 200
        response = client.get("/metrics")
        rss = _rss_bytes(process.pid)
    assert response.status_code == 200
    samples = _samples(response.text)

    # the process's memory, as the kernel counts it (within a factor of 2: it moves between the two reads)
    reported = samples["process_resident_memory_bytes"]
    assert rss / 2 < reported < rss * 2, (reported, rss)
    for name in ("process_cpu_seconds_total", "process_open_fds", "process_start_time_seconds"):
        assert samples[name] > 0, name
    assert any(name.startswith("python_gc_collections_total") for name in samples)
    assert any(name.startswith("python_info") for name in samples)

    # ...and the project's own, still there
    info = f'aidetect_model_info{{alias="production",role="production",variant="fp32",version="{version}"}}'
    assert samples[info] == 1
    assert sum(v for k, v in samples.items() if k.startswith("aidetect_predictions_total")) == 1
    assert any(k.startswith("aidetect_http_request_duration_seconds_count") for k in samples)


def test_apps_in_one_process_each_get_the_process_metrics() -> None:
    """Each app's registry is its own: a second one registers the collectors again without a clash."""
    first, second = Metrics(), Metrics()
    for metrics in (first, second):
        assert "process_resident_memory_bytes" in _samples(metrics.render().decode())
