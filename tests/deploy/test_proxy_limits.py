"""Per-client limits held once for the whole deployment, by the proxy (deploy/haproxy.cfg).

Through the real HAProxy and two real serving replicas (``deployment`` in test_rollout.py:
compose's environments, no Docker), with small limits set through the proxy's variables as
.env sets them. One client (127.0.0.1) runs over each limit; another (127.0.0.250, loopback
too on Linux) is not affected; after a restart of the proxy, the first one is not either.
HAProxy's rate over a window is exact while a client's requests all fall in the window its
first one opened: here they do, with seconds to spare (the shortest window is 10 s).
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from tests.deploy.test_rollout import HAPROXY_CFG, deployment, haproxy, wait_until
from tests.deploy.test_services import COMPOSE, make_dotenv
from tests.helpers import image_bytes, needs_haproxy

FEEDBACK_PER_MINUTE, PREDICT_PER_10S = 4, 5
OTHER_CLIENT = "127.0.0.250"
FEEDBACK_REFUSED = {"detail": "too many feedback reports from this client; try again in 60 s"}
PREDICT_REFUSED = {"detail": "too many predictions from this client; try again in 10 s"}


def metric(text: str, name: str, /, **labels: str) -> float:
    """The sum of a Prometheus text exposition's samples of ``name`` that carry ``labels``."""
    total = 0.0
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample.partition("{")[0] == name and all(f'{k}="{v}"' in sample for k, v in labels.items()):
            total += float(value)
    return total


def test_proxy_limits_default_alike_in_the_config_compose_and_env_example() -> None:
    from aidetect.settings import Settings

    cfg = HAPROXY_CFG.read_text()
    header = cfg.split("\nglobal\n", 1)[0]
    used = dict(re.findall(r"\$\{(\w+)-([^}]*)\}", cfg))
    for name, default in used.items():  # the header lists every variable with its default
        assert re.search(rf"^#   {name} .*, {re.escape(default)}$", header, re.MULTILINE), name
    limits = {name: default for name, default in used.items() if name.endswith(("_PER_MINUTE", "_PER_10S"))}
    assert set(limits) == {"AIDETECT_PROXY_FEEDBACK_PER_MINUTE", "AIDETECT_PROXY_PREDICT_PER_10S"}
    env_example, compose = make_dotenv(), COMPOSE.read_text()
    for name, default in limits.items():  # compose passes each from .env, with the same default
        assert f'{name}: "${{{name}:-{default}}}"' in compose and env_example[name] == default, name
    # feedback: serving's own limiter's rate, over the same minute
    assert float(limits["AIDETECT_PROXY_FEEDBACK_PER_MINUTE"]) == Settings.model_fields["feedback_per_minute"].default
    assert re.search(r"^backend limit_feedback\n +stick-table .* store gpc0_rate\(60s\)$", cfg, re.MULTILINE)
    assert re.search(r"^backend limit_predict\n +stick-table .* store gpc0_rate\(10s\)$", cfg, re.MULTILINE)


@needs_haproxy
def test_the_proxy_limits_each_client_across_replicas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    limits = {
        "AIDETECT_PROXY_FEEDBACK_PER_MINUTE": str(FEEDBACK_PER_MINUTE),
        "AIDETECT_PROXY_PREDICT_PER_10S": str(PREDICT_PER_10S),
    }
    # each replica's own limiter at the same rate: alone, each would take all of a client's reports.
    # No drain: nothing is rolled out here, and the replicas stop at the end without one
    own = {
        "AIDETECT_FEEDBACK_PER_MINUTE": str(FEEDBACK_PER_MINUTE),
        "AIDETECT_FEEDBACK_BURST": str(FEEDBACK_PER_MINUTE),
        "AIDETECT_DRAIN_SECONDS": "0",
    }
    images = [image_bytes(size=(48, 48), fmt="PNG", seed=n) for n in range(16)]

    def png(n: int) -> tuple[str, bytes, str]:
        return (f"{n}.png", images[n], "image/png")

    def report(client: httpx.Client, n: int) -> httpx.Response:
        return client.post("/v1/feedback", data={"label": "ai"}, files={"file": png(n)})

    def predict(client: httpx.Client, n: int) -> httpx.Response:
        return client.post("/v1/predict", files={"file": png(n)})

    with (
        deployment(tmp_path, monkeypatch, replicas=2, serving=own, proxy=limits) as deployed,
        httpx.Client(base_url=deployed.base, timeout=30) as client,
        httpx.Client(
            base_url=deployed.base, timeout=30, transport=httpx.HTTPTransport(local_address=OTHER_CLIENT)
        ) as other,
    ):
        # feedback: the limit holds for both replicas together
        reports = [report(client, n) for n in range(FEEDBACK_PER_MINUTE + 2)]
        assert [r.status_code for r in reports] == [201] * FEEDBACK_PER_MINUTE + [429, 429], [r.text for r in reports]
        for refused in reports[FEEDBACK_PER_MINUTE:]:
            assert refused.headers["Retry-After"] == "60" and refused.headers["content-type"] == "application/json"
            assert refused.json() == FEEDBACK_REFUSED
        replicas = deployed.containers.replicas()
        scraped = [httpx.get(deployed.containers.url(r, "/metrics"), timeout=5).text for r in replicas]
        stored = [metric(text, "aidetect_feedback_total", status="quarantined") for text in scraped]
        # spread over both, each below the limit it holds alone; the refusals were the proxy's
        assert len(stored) == 2 and sum(stored) == FEEDBACK_PER_MINUTE, stored
        assert all(0 < n < FEEDBACK_PER_MINUTE for n in stored), stored
        assert [metric(text, "aidetect_feedback_total", status="rate_limited") for text in scraped] == [0, 0]

        # predictions: single, batch and heatmaps share one budget
        first = predict(client, 0)
        assert first.status_code == 200, first.text
        heatmap = f"/v1/predictions/{first.json()['id']}/heatmap"
        within = [
            client.get(heatmap),
            client.post("/v1/predict/batch", files=[("files", png(1)), ("files", png(2))]),
            predict(client, 3),
            predict(client, 4),
        ]
        assert [r.status_code for r in within] == [200] * 4, [r.text[:200] for r in within]
        over = [
            predict(client, 5),
            client.get(heatmap),
            client.post("/v1/predict/batch", files=[("files", png(6))]),
        ]
        for refused in over:
            assert refused.status_code == 429, refused.text
            assert refused.headers["Retry-After"] == "10" and refused.json() == PREDICT_REFUSED

        # another address has budgets of its own; the first client's are still spent
        assert report(other, 8).status_code == 201
        assert predict(other, 9).status_code == 200
        assert report(client, 10).status_code == predict(client, 11).status_code == 429

        # what reached the replicas: only what the proxy let through (3 + 2 batched + the other's 1)
        scraped = [httpx.get(deployed.containers.url(r, "/metrics"), timeout=5).text for r in replicas]
        assert sum(metric(text, "aidetect_predictions_total") for text in scraped) == 6
        # and the proxy's own counters (its monitor frontend, scraped by Prometheus)
        proxy = httpx.get(f"{deployed.monitor}/metrics", timeout=5).text
        assert metric(proxy, "haproxy_frontend_requests_denied_total", proxy="http") == 2 + 3 + 2
        assert metric(proxy, "haproxy_sticktable_used", name="limit_feedback") == 2
        assert metric(proxy, "haproxy_sticktable_used", name="limit_predict") == 2

        # a restart of the proxy (`docker compose restart proxy`) gives every client a fresh budget:
        # the counters live in its memory
        deployed.proxy.terminate()
        deployed.proxy.wait(10)
        with haproxy(deployed.proxy_env, deployed.logs), httpx.Client(base_url=deployed.base, timeout=30) as again:
            wait_until(lambda: again.get("/readyz").status_code == 200, 30, "no replica behind the restarted proxy")
            assert report(again, 12).status_code == 201
            assert predict(again, 13).status_code == 200
            # and nothing a client had is gone: the replicas and the store hold it, not the proxy
            assert again.get(heatmap).status_code == 200
            assert again.get(f"/v1/predictions/{first.json()['id']}/annotated").status_code == 200
