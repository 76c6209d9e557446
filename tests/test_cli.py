"""The ``aidetect`` command: what it prints, and clear errors for bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import image_bytes


def _run(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AIDETECT_HOME": str(home)}
    env.pop("AIDETECT_STORE_URL", None)
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, env=env, timeout=300)


def test_data_import_reports_taken_and_skipped_files(tmp_path: Path) -> None:
    for label in ("ai", "real"):
        (tmp_path / "src" / label).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "src" / label / f"{i}.png").write_bytes(
                image_bytes(seed=i + (10 if label == "ai" else 0), fmt="PNG")
            )
    (tmp_path / "src" / "ai" / "bad.jpg").write_bytes(b"garbage")
    result = _run(["data", "import", str(tmp_path / "src"), "--name", "toy"], tmp_path / "home")
    assert result.returncode == 0, result.stderr
    assert "imported 6 images into toy@" in result.stdout
    assert "(1 skipped)" in result.stdout
    assert "skipped ai/bad.jpg: not a recognised image format" in result.stderr
    listed = _run(["data", "list"], tmp_path / "home")
    assert listed.stdout.startswith("toy@") and "6 images" in listed.stdout


def test_errors_name_the_problem(tmp_path: Path) -> None:
    missing = _run(["data", "import", str(tmp_path / "nowhere"), "--name", "x"], tmp_path / "home")
    assert missing.returncode == 2
    assert "no such file or folder" in missing.stderr and "Traceback" not in missing.stderr
    bad_limit = _run(["data", "import", str(tmp_path), "--name", "x", "--limit-per-class", "0"], tmp_path / "home")
    assert bad_limit.returncode == 2 and "positive integer" in bad_limit.stderr
    unknown = _run(["model", "promote", "no-such-version"], tmp_path / "home")
    assert unknown.returncode == 1 and "not registered" in unknown.stderr  # runtime errors: 1
    no_rollback = _run(["model", "rollback"], tmp_path / "home")
    assert no_rollback.returncode == 1 and "no previous version" in no_rollback.stderr
    bad_store = subprocess.run(
        [sys.executable, "-m", "cli", "data", "list"],
        capture_output=True,
        text=True,
        env={**os.environ, "AIDETECT_STORE_URL": "ftp://host/x"},
        timeout=60,
    )
    assert bad_store.returncode == 1 and "AIDETECT_STORE_URL='ftp://host/x'" in bad_store.stderr
    assert "store_url must be a folder" in bad_store.stderr and "Traceback" not in bad_store.stderr


def test_feedback_review_lists_accepts_and_refuses_unknown_ids(tmp_path: Path) -> None:
    from feedback.records import FeedbackRecord
    from feedback.store import save_feedback
    from storage import LocalStore

    home = tmp_path / "home"
    store = LocalStore(home / "store")
    reports = [
        FeedbackRecord(image_sha256=f"s{i}", image_key=f"images/s{i}.jpg", claimed_label="ai", client="c")
        for i in range(3)
    ]
    for record in reports:
        save_feedback(store, record)
    listed = _run(["feedback", "review", "list"], home)
    assert listed.returncode == 0, listed.stderr
    assert all(r.id in listed.stdout for r in reports) and "waiting for 1 more" in listed.stdout
    accepted = _run(["feedback", "review", "accept", reports[0].id, "--reviewer", "alice"], home)
    assert accepted.returncode == 0 and "accepted 1 report(s) as alice" in accepted.stdout
    shown = _run(["feedback", "review", "show", reports[0].id], home)
    assert '"status": "accepted"' in shown.stdout and '"reviewer": "alice"' in shown.stdout
    rest = _run(["feedback", "review", "reject", "--all-quarantined"], home)
    assert rest.returncode == 0 and "rejected 2 report(s)" in rest.stdout
    assert _run(["feedback", "review", "list"], home).stdout == ""
    unknown = _run(["feedback", "review", "accept", "nope"], home)
    assert unknown.returncode == 1 and "no feedback report 'nope'" in unknown.stderr


def test_predict_scores_files_with_the_registry_model(tmp_path: Path) -> None:
    import json

    import numpy as np
    from PIL import Image

    from model.registry import Registry
    from storage import LocalStore
    from tests.serving.onnx_models import mean_brightness_model
    from tests.serving.test_hardening import register_onnx

    store = LocalStore(tmp_path / "store")
    env = {**os.environ, "AIDETECT_HOME": str(tmp_path / "home"), "AIDETECT_STORE_URL": str(store.root)}

    def predict(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "cli", "predict", *args]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)

    for name, value in (("bright.png", 250), ("dark.png", 5)):
        Image.fromarray(np.full((48, 64, 3), value, np.uint8)).save(tmp_path / name)
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    files = [str(tmp_path / n) for n in ("bright.png", "dark.png")]

    no_model = predict(*files)
    assert no_model.returncode == 1 and "names no model yet" in no_model.stderr
    registry = Registry(store)
    version = register_onnx(registry, mean_brightness_model(tmp_path / "mean.onnx"))
    registry.promote(version, reason="test")

    table = predict(*files)  # P(ai) is the mean brightness: bright -> ai, dark -> real
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert "bright.png" in lines[0] and " ai " in lines[0] and "P(ai) 0.9804" in lines[0]
    assert "dark.png" in lines[1] and " real " in lines[1]
    assert f"model {version}" in table.stderr
    as_json = predict(*files, str(tmp_path / "junk.jpg"), "--json", "--version", version)
    assert as_json.returncode == 1  # one file was not an image
    rows = json.loads(as_json.stdout)
    assert [r.get("label") for r in rows] == ["ai", "real", None]
    assert rows[0]["model_version"] == version and rows[0]["p_ai"] == 0.9804
    assert "not a recognised image format" in rows[2]["error"]
    missing = predict(str(tmp_path / "nowhere.jpg"))
    assert missing.returncode == 2 and "no such file" in missing.stderr and "Traceback" not in missing.stderr
    unknown = predict(*files, "--version", "no-such-version")
    assert unknown.returncode == 1 and "Traceback" not in unknown.stderr


def test_model_evaluate_runs_the_gates_evaluation_on_a_labelled_folder(tmp_path: Path) -> None:
    import json

    import numpy as np
    from PIL import Image

    from model.registry import Registry
    from storage import LocalStore
    from tests.serving.onnx_models import mean_brightness_model
    from tests.serving.test_hardening import register_onnx

    store = LocalStore(tmp_path / "store")
    env = {**os.environ, "AIDETECT_HOME": str(tmp_path / "home"), "AIDETECT_STORE_URL": str(store.root)}

    def evaluate(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "cli", "model", "evaluate", *args]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)

    # P(ai) is the mean brightness: 4 bright ai images, 1 dark one (missed), 4 dark real ones
    data = tmp_path / "labelled"
    values = {"ai": [200, 215, 230, 245, 20], "real": [10, 30, 50, 70]}
    for label, levels in values.items():
        (data / label).mkdir(parents=True)
        for level in levels:
            Image.fromarray(np.full((40, 56, 3), level, np.uint8)).save(data / label / f"{level}.png")
    (data / "real" / "junk.jpg").write_bytes(b"not an image")
    version = register_onnx(Registry(store), mean_brightness_model(tmp_path / "mean.onnx"), train={"beta": 0.5})

    out = tmp_path / "report"
    result = evaluate(version, "--data", str(data), "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == json.loads((out / "metrics.json").read_text())
    metrics = report["metrics"]
    assert report["images"] == 9 and metrics["n"] == 9
    assert metrics["accuracy"] == 8 / 9 and metrics["recall_ai"] == 4 / 5 and metrics["recall_real"] == 1.0
    assert metrics["confusion"] == {"tp": 4, "fn": 1, "fp": 0, "tn": 4}
    assert set(metrics["robustness"]) == {"clean", "jpeg_q50_75", "half_size"}  # the gate's tiers
    assert [s["file"] for s in report["skipped"]] == ["real/junk.jpg"]
    for name in ("confusion_matrix.png", "roc.png", "reliability.png"):
        assert (out / "plots" / name).read_bytes()[:4] == b"\x89PNG", name

    table = evaluate(version, "--data", str(data), "--out", str(out), "--clean-only")
    assert table.returncode == 0, table.stderr
    assert "accuracy   " in table.stdout and "0.8889" in table.stdout and "recall_ai" in table.stdout
    assert "jpeg" not in table.stdout

    empty = tmp_path / "empty"
    (empty / "ai").mkdir(parents=True)
    for args, words, code in (
        ((version, "--data", str(tmp_path / "nowhere")), "no such file or folder", 2),  # usage: what was typed
        (("no-such-version", "--data", str(data)), "no model version 'no-such-version'", 1),  # runtime
        ((version, "--data", str(empty)), "no images under ai/ or real/", 1),
    ):
        failed = evaluate(*args, "--out", str(out))
        assert failed.returncode == code and words in failed.stderr and "Traceback" not in failed.stderr, failed.stderr


def test_lock_show_lists_locks_and_clear_refuses_a_live_one_without_force(tmp_path: Path) -> None:
    import re
    import time

    from flows.lease import LeaseRecord, read_lease
    from storage import LocalStore
    from storage.layout import lock_key

    home = tmp_path / "home"
    store = LocalStore(home / "store")
    now = time.time()
    live = LeaseRecord("retrain", "retrain r2", "fr-2", "worker-1", 42, now - 300, now - 10, now + 110)
    stale = LeaseRecord("drift", "drift r1", None, "worker-2", 7, now - 7200, now - 3600, now - 3480)
    for record in (live, stale):
        store.put(lock_key(record.name), record.encode())

    shown = _run(["lock", "show"], home)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    # the seconds tick while the command starts
    assert re.fullmatch(
        r"drift\tstale\tdrift r1, flow run -, worker-2:7, taken 2h00m ago \(.* UTC\), "
        r"renewed 60m\d\ds ago, expired 58m\d\ds ago",
        lines[0],
    ), lines[0]
    found = re.fullmatch(
        r"retrain\tlive\tretrain r2, flow run fr-2, worker-1:42, taken 5m\d\ds ago \(.* UTC\), "
        r"renewed (\d+)s ago, expires in (\d+)s",
        lines[1],
    )
    assert found and abs(int(found[1]) + int(found[2]) - 120) <= 1, lines[1]  # rounded to the second
    one = _run(["lock", "show", "retrain"], home)
    assert one.returncode == 0 and one.stdout.count("\n") == 1 and one.stdout.startswith("retrain\tlive")
    assert _run(["lock", "show", "gather"], home).stdout == "gather\tfree\n"

    refused = _run(["lock", "clear", "retrain"], home)
    assert refused.returncode == 1 and "retrain is live (retrain r2" in refused.stderr and "--force" in refused.stderr
    assert "Traceback" not in refused.stderr and read_lease(store, "retrain") == live
    cleared = _run(["lock", "clear", "drift"], home)
    assert cleared.returncode == 0 and cleared.stdout.startswith("cleared drift (stale: drift r1")
    forced = _run(["lock", "clear", "retrain", "--force"], home)
    assert forced.returncode == 0 and forced.stdout == "cleared retrain (forced)\n"
    assert "warning: retrain was live (retrain r2" in forced.stderr
    assert list(store.list("locks/")) == []
    missing = _run(["lock", "clear", "retrain"], home)
    assert missing.returncode == 1 and "no lock 'retrain'" in missing.stderr
    assert _run(["lock", "show"], home).stderr == "no locks: every flow is free\n"
