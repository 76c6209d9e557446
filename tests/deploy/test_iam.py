"""deploy/iam/*.json: least privilege per role, checked with a small IAM policy evaluator.

The evaluator covers what these documents use: Allow/Deny statements, Action and Resource
wildcards (``*``, ``?``, case-insensitive actions), and StringLike/StringEquals conditions (with
``IfExists``); explicit deny wins, anything not allowed is denied. Unsupported elements raise.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import storage.layout as layout
from aidetect.settings import Settings
from model.registry import Registry
from serving.app import create_app
from serving.shared import sweep
from storage import LocalStore, ObjectStore
from tests.helpers import image_bytes
from tests.serving.onnx_models import mean_brightness_model
from tests.serving.test_hardening import register_onnx

IAM = Path(__file__).resolve().parents[2] / "deploy" / "iam"
BUCKET = "arn:aws:s3:::aidetect"
SUPPORTED = {"Sid", "Effect", "Action", "Resource", "Condition"}


# the evaluator ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    action: str
    key: str | None = None  # an object request; None: a bucket request (ListBucket)
    context: dict[str, str] = field(default_factory=dict)

    @property
    def resource(self) -> str:
        return BUCKET if self.key is None else f"{BUCKET}/{self.key}"


def _pattern(text: str, *, ignore_case: bool) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in text)
    return re.compile(f"^{body}$", (re.IGNORECASE if ignore_case else 0) | re.DOTALL)


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def _condition_holds(condition: dict[str, dict[str, Any]], context: dict[str, str]) -> bool:
    for operator, tests in condition.items():
        base, if_exists = operator.removesuffix("IfExists"), operator.endswith("IfExists")
        for key, wanted in tests.items():
            if key not in context:
                if if_exists:
                    continue
                return False
            value = context[key]
            if base == "StringLike":
                ok = any(_pattern(w, ignore_case=False).match(value) for w in _as_list(wanted))
            elif base == "StringEquals":
                ok = value in _as_list(wanted)
            else:
                raise ValueError(f"unsupported condition operator {operator}")
            if not ok:
                return False
    return True


def _matches(statement: dict[str, Any], request: Request) -> bool:
    unknown = set(statement) - SUPPORTED
    if unknown:
        raise ValueError(f"unsupported statement elements {unknown}")
    actions = _as_list(statement["Action"])
    resources = _as_list(statement["Resource"])
    return (
        any(_pattern(a, ignore_case=True).match(request.action) for a in actions)
        and any(_pattern(r, ignore_case=False).match(request.resource) for r in resources)
        and _condition_holds(statement.get("Condition", {}), request.context)
    )


def allowed(policies: list[dict[str, Any]], request: Request) -> bool:
    """IAM's identity-policy logic: an explicit Deny wins, then an Allow, else the implicit deny."""
    verdict = False
    for policy in policies:
        assert policy["Version"] == "2012-10-17"
        for statement in policy["Statement"]:
            if _matches(statement, request):
                if statement["Effect"] == "Deny":
                    return False
                assert statement["Effect"] == "Allow"
                verdict = True
    return verdict


def can(policies: list[dict[str, Any]], op: str, key: str) -> bool:
    """The store operation ``op`` (get/put/delete/list) on ``key`` (a key, or a prefix for list)."""
    if op == "list":
        return allowed(policies, Request("s3:ListBucket", context={"s3:prefix": key}))
    action = {"get": "s3:GetObject", "put": "s3:PutObject", "delete": "s3:DeleteObject"}[op]
    return allowed(policies, Request(action, key))


def miss_is_404(policies: list[dict[str, Any]], key: str) -> bool:
    """S3 answers a read of a missing key with 404 (not 403) only when ListBucket is allowed
    for that request, which carries no s3:prefix."""
    return can(policies, "get", key) and allowed(policies, Request("s3:ListBucket"))


def load(*names: str) -> list[dict[str, Any]]:
    return [json.loads((IAM / f"{name}.json").read_text()) for name in names]


# the evaluator on known cases -----------------------------------------------------------------
def test_evaluator_known_cases() -> None:
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "s3:Get*", "Resource": f"{BUCKET}/*"},
            {"Effect": "Deny", "Action": "s3:GetObject", "Resource": f"{BUCKET}/secret/*"},
            {
                "Effect": "Allow",
                "Action": "s3:ListBucket",
                "Resource": BUCKET,
                "Condition": {"StringLike": {"s3:prefix": ["public/*"]}},
            },
        ],
    }
    assert can([policy], "get", "public/a.txt")
    assert allowed([policy], Request("S3:GETOBJECTTAGGING", "a"))  # action names ignore case
    assert not can([policy], "get", "secret/a.txt")  # explicit deny beats the wildcard allow
    assert not can([policy], "put", "public/a.txt")  # nothing allows it: implicit deny
    assert can([policy], "list", "public/") and can([policy], "list", "public/x/")
    assert not can([policy], "list", "secret/") and not can([policy], "list", "")
    assert not allowed([policy], Request("s3:ListBucket"))  # no s3:prefix: the condition fails
    assert not allowed([policy], Request("s3:GetObject", key=None))  # the bucket is not an object
    assert not _pattern(f"{BUCKET}/models/*", ignore_case=False).match(f"{BUCKET}/modelsX")
    allow_elsewhere = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    assert not can([allow_elsewhere, policy], "get", "secret/x")  # a deny in any attached policy wins
    with pytest.raises(ValueError, match="unsupported"):
        allowed([{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "NotAction": "s3:*"}]}], Request("x"))


def test_documents_are_well_formed() -> None:
    names = sorted(p.stem for p in IAM.glob("*.json"))
    assert names == ["serving", "serving-rollback", "train-model", "worker-flows"]
    for policy in load(*names):
        for statement in policy["Statement"]:
            assert set(statement) <= SUPPORTED and statement["Effect"] in ("Allow", "Deny")
            for resource in _as_list(statement["Resource"]):
                assert resource == BUCKET or resource.startswith(f"{BUCKET}/"), resource
            if statement["Effect"] == "Allow":
                assert "*" not in _as_list(statement["Action"]) and "s3:*" not in _as_list(statement["Action"])
                assert f"{BUCKET}/*" not in _as_list(statement["Resource"])  # always a prefix


# key prefixes, from the code ------------------------------------------------------------------
PREFIXES = {name: value for name, value in vars(layout).items() if name.isupper() and str(value).endswith("/")}


def key(name: str) -> str:
    return f"{PREFIXES[name]}x/y.json"


def test_every_layout_prefix_is_known_here() -> None:
    assert set(PREFIXES) == {
        "IMAGES", "DATASETS", "FEEDBACK", "PREDICTIONS", "MODELS", "ALIASES", "EVENTS",
        "DRIFT_REPORTS", "LOCKS", "TRAINING", "FEEDBACK_INDEX", "FEEDBACK_REVIEWS", "FEATURES",
        "RECENT", "HISTORY",
    }  # fmt: skip
    # a new prefix in storage/layout.py: decide which role may touch it, then add it above


SERVING = load("serving")
ROLLBACK = load("serving", "serving-rollback")
WORKER = load("worker-flows")
TRAIN = load("train-model")

# (role, op, prefix name): what each role's code does (see deploy/iam/README.md)
MAY = [
    *((SERVING, "get", p) for p in ("ALIASES", "MODELS", "FEEDBACK", "FEEDBACK_INDEX", "FEEDBACK_REVIEWS", "IMAGES")),
    (SERVING, "get", "DRIFT_REPORTS"),  # the reports, for browsers (serving.routes.reports)
    *((SERVING, "put", p) for p in ("PREDICTIONS", "IMAGES", "FEEDBACK", "FEEDBACK_INDEX")),
    *((SERVING, "list", p) for p in ("MODELS", "FEEDBACK_INDEX", "FEEDBACK_REVIEWS")),
    # what any replica answers for (serving.shared): written on predict, deleted by a browser or the sweep
    *((SERVING, op, p) for op in ("get", "put", "delete", "list") for p in ("RECENT", "HISTORY")),
    *((ROLLBACK, "put", p) for p in ("ALIASES", "EVENTS")),
    *((WORKER, "get", p) for p in ("FEEDBACK", "FEEDBACK_REVIEWS", "IMAGES", "DATASETS", "MODELS", "ALIASES")),
    *((WORKER, "get", p) for p in ("PREDICTIONS", "TRAINING", "LOCKS")),
    *((WORKER, "put", p) for p in ("DATASETS", "MODELS", "ALIASES", "EVENTS", "DRIFT_REPORTS", "LOCKS")),
    *((WORKER, "list", p) for p in ("FEEDBACK", "FEEDBACK_REVIEWS", "DATASETS", "MODELS", "PREDICTIONS")),
    (WORKER, "delete", "LOCKS"),
    *((TRAIN, "get", p) for p in ("DATASETS", "MODELS")),
    (TRAIN, "put", "TRAINING"),
    (TRAIN, "list", "DATASETS"),
    # the frozen backbone's feature cache (model.multiscale)
    *((TRAIN, op, "FEATURES") for op in ("get", "put", "list")),
]
MAY_NOT = [
    *((SERVING, "delete", p) for p in PREFIXES if p not in ("RECENT", "HISTORY")),
    *(
        (SERVING, "put", p)
        for p in ("MODELS", "ALIASES", "EVENTS", "DATASETS", "TRAINING", "LOCKS", "FEEDBACK_REVIEWS")
    ),
    *((SERVING, "get", p) for p in ("DATASETS", "TRAINING", "PREDICTIONS", "LOCKS", "FEATURES")),
    (SERVING, "put", "FEATURES"),
    *((ROLLBACK, "put", p) for p in ("MODELS", "DATASETS")),
    *((ROLLBACK, "delete", p) for p in ("MODELS", "ALIASES")),
    *((WORKER, "delete", p) for p in PREFIXES if p != "LOCKS"),
    *(
        (WORKER, "put", p)
        for p in ("FEEDBACK", "FEEDBACK_INDEX", "FEEDBACK_REVIEWS", "IMAGES", "PREDICTIONS", "TRAINING")
    ),
    *((TRAIN, "put", p) for p in PREFIXES if p not in ("TRAINING", "FEATURES")),  # incl. ALIASES: cannot promote
    *((TRAIN, "delete", p) for p in PREFIXES),
    *((TRAIN, "get", p) for p in ("IMAGES", "FEEDBACK", "PREDICTIONS", "ALIASES", "LOCKS", "TRAINING")),
    *((TRAIN, "list", p) for p in ("MODELS", "FEEDBACK", "IMAGES")),
]


def _id(case: tuple[list[dict[str, Any]], str, str]) -> str:
    role = {id(SERVING): "serving", id(ROLLBACK): "serving+rollback", id(WORKER): "worker", id(TRAIN): "train"}
    return f"{role[id(case[0])]}-{case[1]}-{case[2]}"


def test_serving_reads_the_drift_reports_and_writes_none() -> None:
    assert can(SERVING, "get", layout.DRIFT_LATEST)  # exported on /metrics (serving/drift_status.py)
    assert can(SERVING, "get", layout.drift_report_key(layout.new_version_id(), layout.DRIFT_REPORT_HTML))
    assert not can(SERVING, "put", layout.DRIFT_LATEST)
    assert not can(SERVING, "put", key("DRIFT_REPORTS"))
    assert can(WORKER, "put", layout.DRIFT_LATEST)


@pytest.mark.parametrize("case", MAY, ids=_id)
def test_role_may(case: tuple[list[dict[str, Any]], str, str]) -> None:
    policies, op, prefix = case
    assert can(policies, op, PREFIXES[prefix] if op == "list" else key(prefix))


@pytest.mark.parametrize("case", MAY_NOT, ids=_id)
def test_role_may_not(case: tuple[list[dict[str, Any]], str, str]) -> None:
    policies, op, prefix = case
    assert not can(policies, op, PREFIXES[prefix] if op == "list" else key(prefix))


def test_no_role_administers_the_bucket() -> None:
    for policies in (SERVING, ROLLBACK, WORKER, TRAIN):
        for action in ("s3:DeleteBucket", "s3:PutBucketPolicy", "s3:CreateBucket", "s3:ListAllMyBuckets"):
            assert not allowed(policies, Request(action)), action
        assert not allowed(policies, Request("s3:GetObject", None))


def test_misses_are_404_where_the_code_relies_on_them() -> None:
    # serving: an alias not set yet, exists() before storing an image, an unknown feedback id
    for k in ("registry/aliases/production.json", "images/ab.png", "feedback/2026/01/01/x.json"):
        assert miss_is_404(SERVING, k), k
    # the flows: a free lease, an alias not set yet
    for k in ("locks/retrain.json", "registry/aliases/production.json"):
        assert miss_is_404(WORKER, k), k


# what serving really does, recorded ----------------------------------------------------------
class Recording(ObjectStore):
    """A local store that notes every (op, key) serving asks of it."""

    def __init__(self, inner: LocalStore):
        self.inner, self.url, self.calls = inner, inner.url, set[tuple[str, str]]()

    def get(self, key: str) -> bytes:
        self.calls.add(("get", key))
        return self.inner.get(key)

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        self.calls.add(("get", key))
        return self.inner.get_with_etag(key)

    def put(self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False) -> str:
        self.calls.add(("put", key))
        return self.inner.put(key, data, if_match=if_match, if_none_match=if_none_match)

    def exists(self, key: str) -> bool:
        self.calls.add(("get", key))  # HEAD needs s3:GetObject
        return self.inner.exists(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        self.calls.add(("list", prefix))
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.calls.add(("delete", key))
        self.inner.delete(key)


def test_serving_needs_nothing_beyond_its_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = LocalStore(tmp_path / "store")
    registry = Registry(local)
    v1 = register_onnx(registry, mean_brightness_model(tmp_path / "a.onnx"))
    registry.promote(v1, reason="test")
    registry.promote(register_onnx(registry, mean_brightness_model(tmp_path / "b.onnx")), reason="test")
    store = Recording(local)
    monkeypatch.setattr("serving.app.configured_store", lambda settings, url=None: store)
    token = "a-long-random-admin-token-for-tests"
    settings = Settings(home=tmp_path / "home", store_url=str(local.root), admin_token=token, log_flush_seconds=0.05)  # type: ignore[arg-type]
    with TestClient(create_app(settings)) as client:
        predicted = client.post("/v1/predict", files={"file": ("x.png", image_bytes(fmt="PNG"))})
        assert predicted.status_code == 200, predicted.text
        sent = client.post("/v1/feedback", data={"label": "ai"}, files={"file": ("y.png", image_bytes(fmt="PNG"))})
        assert sent.status_code == 201, sent.text
        assert client.get(f"/v1/feedback/{sent.json()['id']}").status_code == 200
        assert client.get(f"/v1/predictions/{predicted.json()['id']}/heatmap").status_code == 200
        assert client.get("/v1/history").status_code == 200
        assert client.delete("/v1/history").json() == {"cleared": 1}
        sweep(store, timedelta(0), datetime.now(UTC))  # the retention sweep, everything past it
        auth = {"Authorization": f"Bearer {token}"}
        assert client.post("/v1/admin/reload", headers=auth).status_code == 200
        everyday = set(store.calls)
        assert client.post("/v1/admin/rollback", headers=auth).status_code == 200
    rollback = store.calls - everyday
    assert {op for op, _ in everyday} >= {"get", "put", "list"}
    assert any(k.startswith("predictions/") for op, k in store.calls if op == "put")  # the log was flushed
    assert {k.split("/")[0] for op, k in store.calls if op == "delete"} == {"recent", "history"}
    for op, k in sorted(everyday):
        assert can(SERVING, op, k), (op, k)
    for op, k in sorted(rollback):
        assert can(ROLLBACK, op, k), (op, k)
    assert any(not can(SERVING, op, k) for op, k in rollback)  # the add-on is needed for it
