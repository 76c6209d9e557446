"""``make demo``: the whole loop once, on the embedded default (local folder store, local Prefect).

import CIFAKE -> retrain (v1, promoted) -> serve -> predict new-generator images -> feedback for
the misclassified ones -> gather-feedback -> retrain (v2, promoted) -> serving answers with v2.
The Prefect server and serving stay up afterwards (``make stop`` ends them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from aidetect.settings import Settings, get_settings
from cli.loop import (
    LabelledImage,
    accuracy,
    labelled_images,
    predict_all,
    retrain_with_feedback,
    serving_version,
    train_first_version,
    wait_for_version,
)
from cli.processes import start_recorded, stop_recorded
from cli.stack import wait_http
from storage import ObjectStore, configured_store


def say(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _split_reported(
    images: list[LabelledImage], share: float, seed: int = 0
) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """A stratified random ``share`` of the images to report, the rest held out (never reported)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    reported: list[LabelledImage] = []
    held: list[LabelledImage] = []
    for label in sorted({i[1] for i in images}):
        group = [images[k] for k in rng.permutation([k for k, i in enumerate(images) if i[1] == label])]
        cut = round(len(group) * share)
        reported += group[:cut]
        held += group[cut:]
    return reported, held


def _review_all(store: ObjectStore) -> int:
    from feedback.policy import configured_policy, decide
    from feedback.reviews import load_reviews, save_review
    from feedback.store import iter_feedback

    records = list(iter_feedback(store))
    decisions = decide(records, load_reviews(store), configured_policy())
    pending = [r.id for r in records if decisions[r.id].status == "quarantined"]
    for feedback_id in pending:
        save_review(store, feedback_id, "accept", "demo", "the demo knows the true labels")
    return len(pending)


@dataclass
class _Answers:
    """Serving's answers to the images to report and to the held-out ones (never reported)."""

    reported: list[dict[str, Any]]
    held_out: list[dict[str, Any]]

    @property
    def wrong_reported(self) -> int:
        """How many of the images to report were answered wrongly."""
        return sum(r["label"] != r["truth"] for r in self.reported)

    @classmethod
    def of(cls, client: httpx.Client, reported: list[LabelledImage], held_out: list[LabelledImage]) -> _Answers:
        return cls(predict_all(client, reported), predict_all(client, held_out))


# The demo's own folder, under AIDETECT_HOME (default .aidetect/demo), and the mark it leaves in
# it: each run empties the folder, and only ever one that carries the mark (never a user's files).
DEMO_FOLDER = "demo"
DEMO_MARK = ".aidetect-demo"


class DemoHomeRefused(Exception):
    """The demo's folder holds files the demo did not make: it is left alone."""


def demo_home() -> Path:
    """Where the demo runs: ``$AIDETECT_HOME/demo`` (``.aidetect/demo`` by default), a folder of its own."""
    return (get_settings().home / DEMO_FOLDER).resolve()


def prepare_home(home: Path) -> None:
    """``home`` emptied, with what an earlier demo left running there stopped, and marked as the demo's.

    A folder without the mark is deleted only when it is empty: anything else in it is a user's,
    and the demo refuses (``DemoHomeRefused``) rather than delete it.
    """
    ours = (home / DEMO_MARK).is_file()
    if home.exists() and not ours and (not home.is_dir() or any(home.iterdir())):
        raise DemoHomeRefused(
            f"{home} holds files the demo did not make (it has no {DEMO_MARK}); the demo empties its folder on "
            "each run, so it leaves this one alone. Move those files away, or set AIDETECT_HOME to another folder "
            f"(the demo runs in $AIDETECT_HOME/{DEMO_FOLDER}). An earlier demo's folder, from before demos marked "
            f"theirs, you can delete yourself: rm -r {home}"
        )
    run_dir = home / "run"
    if run_dir.is_dir():
        for name in stop_recorded(run_dir):
            say(f"stopped {name} left by an earlier demo")
    if home.exists():
        shutil.rmtree(home)
    run_dir.mkdir(parents=True)
    (home / DEMO_MARK).write_text("made by `aidetect demo`, which empties this folder on each run\n")


def _fresh_home() -> Path:
    """The demo's folder (``demo_home``), prepared, and made this process's AIDETECT_HOME."""
    home = demo_home()
    prepare_home(home)
    os.environ["AIDETECT_HOME"] = str(home)
    os.environ.pop("AIDETECT_STORE_URL", None)
    get_settings.cache_clear()
    return home


def _start_prefect(home: Path, port: int) -> tuple[str, dict[str, str]]:
    """A Prefect server of the demo's own, which this process then uses; its URL and the children's environment."""
    prefect_url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PREFECT_HOME": str(home / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    say(f"starting the Prefect server on {prefect_url}")
    prefect = start_recorded(
        "prefect",
        [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        home / "run",
        env,
    )
    wait_http(f"{prefect_url}/api/health", 120, "the Prefect server", prefect)
    os.environ["PREFECT_API_URL"] = f"{prefect_url}/api"
    os.environ["PREFECT_HOME"] = env["PREFECT_HOME"]
    return prefect_url, env


def _import_base(settings: Settings, data: Path, limit_per_class: int) -> None:
    from model.sources import import_dataset

    say(f"importing {data}")
    store = configured_store(settings)
    report = import_dataset(store, data, "cifake", limit_per_class=limit_per_class, progress=say)
    say(f"imported {report.taken} images as cifake@{report.version} ({len(report.skipped)} skipped)")


def _train_v1(args: argparse.Namespace) -> dict[str, Any] | None:
    """v1 on the base data alone; None if the gate did not promote it."""
    say(f"training v1 ({args.architecture}, {args.epochs} epochs, up to {args.max_train_images} training images)")
    first = train_first_version(args.architecture, args.epochs, args.max_train_images)
    if not first["promoted"]:
        say(f"v1 was not promoted: {first['verdict']['reasons']}")
        return None
    say(f"v1 = {first['version']}, CIFAKE test accuracy {first['metrics']['by_dataset']['cifake']['accuracy']:.4f}")
    return first


def _start_serving(port: int, run_dir: Path, env: dict[str, str]) -> str:
    """Serving on 127.0.0.1:``port``, ready; its URL."""
    serve_url = f"http://127.0.0.1:{port}"
    say(f"starting serving on {serve_url}")
    serving = start_recorded(
        "serving",
        [sys.executable, "-m", "cli", "serve", "--port", str(port)],
        run_dir,
        # the demo files all its reports at once, like a bulk import; real clients get 30 a minute
        {**env, "AIDETECT_ALIAS_POLL_SECONDS": "1", "AIDETECT_FEEDBACK_BURST": "1000"},
    )
    wait_http(f"{serve_url}/readyz", 120, "serving", serving)
    return serve_url


def _images_to_send(newgen: Path, data: Path) -> list[LabelledImage]:
    """The new generator's images, or the base dataset's last 200 when there are none."""
    if newgen.exists():
        images = labelled_images(newgen)
        say(f"sending {len(images)} new-generator images from {newgen.name}")
        return images
    say(f"{newgen} not found: sending held-out CIFAKE images instead")
    return labelled_images(data)[-200:]


def _report_and_gather(client: httpx.Client, answers: list[dict[str, Any]], settings: Settings) -> None:
    """Feedback with the true label for every answer, reviewed, gathered into a feedback dataset version."""
    from flows.gather import gather_feedback

    # A user labelling a sample of the new generator's images: right answers are reported too,
    # so the expert for the new source sees both labels (gather-feedback misclassified_only=False).
    for r in answers:
        client.post("/v1/feedback", data={"prediction_id": r["id"], "label": r["truth"]}).raise_for_status()

    # One client filed every report, so they wait in quarantine for agreement from other
    # clients or for a reviewer; the demo plays the reviewer (aidetect feedback review accept).
    reviewed = _review_all(configured_store(settings))
    say(f"reviewer accepted {reviewed} quarantined report(s)")
    feedback_version = gather_feedback(misclassified_only=False)
    say(f"gathered feedback into feedback@{feedback_version}")


def _train_v2(client: httpx.Client, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """v2 on the base data + feedback, warm-started from v1: the gate's result, and the version serving then uses."""
    say("retraining v2 on cifake + feedback, warm-started from v1")
    second = retrain_with_feedback(args.architecture, args.epochs, args.max_train_images)
    v2 = second["version"]
    say(f"v2 = {v2}: {'promoted' if second['promoted'] else 'rejected: ' + '; '.join(second['verdict']['reasons'])}")
    live = wait_for_version(client, v2, 60) if second["promoted"] else serving_version(client)
    say(f"serving now answers with {live}")
    return second, live


def _summary(
    started: float,
    args: argparse.Namespace,
    first: dict[str, Any],
    second: dict[str, Any],
    live: str,
    before: _Answers,
    after: _Answers,
) -> dict[str, Any]:
    return {
        "wall_seconds": round(time.monotonic() - started, 1),
        "v1": first["version"],
        "v2": second["version"],
        "v2_promoted": second["promoted"],
        "v2_gate_reasons": second["verdict"]["reasons"],
        "v2_gate_notes": second["verdict"]["notes"],
        "serving_version": live,
        "cifake_test_accuracy": {
            "v1": first["metrics"]["by_dataset"]["cifake"]["accuracy"],
            "v2": second["metrics"]["by_dataset"]["cifake"]["accuracy"],
        },
        "architecture": args.architecture,
        "held_out_newgen_accuracy": {"v1": accuracy(before.held_out), "served_after": accuracy(after.held_out)},
        "reported_images_accuracy": {"v1": accuracy(before.reported), "served_after": accuracy(after.reported)},
        "feedback_submitted": len(before.reported),
        "v1_wrong_among_reported": before.wrong_reported,
    }


def _print_done(summary: dict[str, Any], serve_url: str, prefect_url: str, settings: Settings, home: Path) -> None:
    print(json.dumps(summary, indent=2))
    print(
        f"""
Done in {summary["wall_seconds"]:.0f} s.
  serving page   {serve_url}/   (API docs: {serve_url}/docs)
  Prefect UI     {prefect_url}   (flow runs, logs and the retrain/gather artifacts)
  artifacts      {settings.runs_dir}   (per run: model files, summary.json)
  object store   {settings.resolved_store_url}
  the registry   AIDETECT_HOME={home} .venv/bin/aidetect model list
Serving and the Prefect server keep running; `make stop` (or `aidetect stop --home {home}`) stops them.""",
        flush=True,
    )


def run_demo(args: argparse.Namespace) -> int:
    started = time.monotonic()
    data = Path(args.data)
    if not data.exists():
        print(
            f"aidetect demo: no dataset at {data}. Pass one laid out as ai/ and real/ "
            "(a folder or .tar.gz), e.g. `make demo DATA=/path/to/cifake-dev.tar.gz`.",
            file=sys.stderr,
        )
        return 2
    try:
        home = _fresh_home()
    except DemoHomeRefused as refused:
        print(f"aidetect demo: {refused}", file=sys.stderr)
        return 2
    settings = get_settings()
    say(f"store: {settings.resolved_store_url}")
    prefect_url, env = _start_prefect(home, args.prefect_port)
    _import_base(settings, data, args.limit_per_class)
    first = _train_v1(args)
    if first is None:
        return 1
    serve_url = _start_serving(args.serve_port, home / "run", env)

    with httpx.Client(base_url=serve_url, timeout=60) as client:
        reported, held_out = _split_reported(_images_to_send(Path(args.newgen), data), args.report_share)
        before = _Answers.of(client, reported, held_out)
        say(
            f"v1 on the {len(held_out)} held-out images: accuracy {accuracy(before.held_out):.3f}; on the "
            f"{len(reported)} to report: {accuracy(before.reported):.3f} ({before.wrong_reported} wrong); "
            "all of them labelled -> feedback"
        )
        _report_and_gather(client, before.reported, settings)
        second, live = _train_v2(client, args)
        after = _Answers.of(client, reported, held_out)
        gain = f"v1 {accuracy(before.held_out):.3f} -> {accuracy(after.held_out):.3f}"
        say(f"held-out new-generator accuracy (images nobody reported): {gain}")

    summary = _summary(started, args, first, second, live, before, after)
    (home / "demo-summary.json").write_text(json.dumps(summary, indent=2))
    _print_done(summary, serve_url, prefect_url, settings, home)
    # A rejected v2 is the gate doing its job (the reasons are printed above and in the
    # registry); the demo fails only when a promoted v2 never reached serving.
    return 1 if second["promoted"] and live != second["version"] else 0
