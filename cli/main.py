"""The ``aidetect`` command line (Typer).

Exit codes: 0 done; 1 a runtime error (one line on stderr naming the problem: the store is
unreachable, a setting is invalid, a version is not registered, a lock is live, ...; the
traceback only with ``--debug`` or ``AIDETECT_DEBUG=1``); 2 a usage error (an unknown option, a
bad value, a file named on the command line that does not exist). Every option shows its
default in ``--help``; ``--install-completion`` / ``--show-completion`` give shell completion.

Nothing heavy is imported here: each command imports what it needs when it runs, so
``aidetect --help`` loads neither TensorFlow, Prefect nor onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from aidetect.settings import PRODUCTION_ALIAS, Settings, get_settings
from model.config import DEFAULT_ARCHITECTURE, DEFAULT_EPOCHS, PRESETS
from storage import configured_store

if TYPE_CHECKING:
    from model.imagesets import ImageSet

PROG = "aidetect"
DEBUG_ENV = "AIDETECT_DEBUG"
# argparse took ``--datasets a b``; click options take one value each (``--datasets a --datasets b``)
MULTI_VALUE_OPTIONS = frozenset({"--datasets"})
PROJECT_PACKAGES = frozenset({"aidetect", "storage", "model", "feedback", "serving", "flows", "cli"})


class UsageError(typer.BadParameter):
    """What the user typed is wrong (a missing file, a missing argument): exit 2, with the usage."""

    def format_message(self) -> str:
        return self.message


class Failure(Exception):
    """A runtime problem the user can act on: its message on stderr, exit 1."""


class _State:
    debug = False


def _setting_default(name: str) -> str:
    """``--help``'s default of an option that defaults to a setting: ``$AIDETECT_X, else 2``."""
    from cli.config import env_name

    field = Settings.model_fields[name]
    return f"${env_name(name, field)}, else {field.get_default(call_default_factory=True)}"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise typer.BadParameter(f"must be a positive integer, got {text!r}") from None
    if value <= 0:
        raise typer.BadParameter(f"must be a positive integer, got {text}")
    return value


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _exit(code: int) -> None:
    if code:
        raise typer.Exit(code)


def _existing(path: Path, what: str = "file or folder") -> Path:
    if not path.exists():
        raise UsageError(f"{path}: no such {what}")
    return path


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
app = typer.Typer(
    name=PROG,
    help="A continuously retrained AI-image detector.",
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    context_settings=CONTEXT,
)


def _group(help_text: str) -> typer.Typer:
    return typer.Typer(help=help_text, no_args_is_help=True, rich_markup_mode=None, context_settings=CONTEXT)


def _show_version(value: bool) -> None:
    if value:
        from aidetect.version import code_version

        print(f"{PROG} {code_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="print the version (package + build) and exit", is_eager=True, callback=_show_version
        ),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", envvar=DEBUG_ENV, help="show the traceback of a runtime error")
    ] = False,
) -> None:
    """A continuously retrained AI-image detector: datasets, the model registry, the flows, feedback, serving."""
    _State.debug = debug


# --- data -----------------------------------------------------------------------------------

data_app = _group("datasets in the store")
app.add_typer(data_app, name="data")


@data_app.command("import")
def data_import(
    path: Annotated[Path, typer.Argument(help="a folder or .tar.gz laid out as ai/ and real/", show_default=False)],
    name: Annotated[str, typer.Option(help="dataset name (a new version is written)", show_default=False)],
    limit_per_class: Annotated[
        int | None, typer.Option(parser=_positive_int, help="take at most N images per class", show_default="all")
    ] = None,
) -> None:
    """Import a folder or .tar.gz laid out as ai/ and real/ as a new dataset version."""
    from model.sources import import_dataset

    _existing(path)
    store = configured_store(get_settings())
    report = import_dataset(store, path, name, limit_per_class=limit_per_class, progress=_progress)
    for skipped, reason in report.skipped[:50]:
        print(f"skipped {skipped}: {reason}", file=sys.stderr)
    if len(report.skipped) > 50:
        print(f"... and {len(report.skipped) - 50} more skipped", file=sys.stderr)
    print(f"imported {report.taken} images into {report.name}@{report.version} ({len(report.skipped)} skipped)")
    print(json.dumps(report.counts))


@data_app.command("list")
def data_list() -> None:
    """Every dataset version, with its image counts."""
    from model.datasets import list_datasets, read_version_info

    store = configured_store(get_settings())
    for name, versions in list_datasets(store).items():
        for version in versions:
            counts = read_version_info(store, name, version)["counts"]
            total = sum(sum(c.values()) for c in counts.values())
            print(f"{name}@{version}\t{total} images\t{json.dumps(counts)}")


# --- model ----------------------------------------------------------------------------------

model_app = _group("the model registry")
app.add_typer(model_app, name="model")
AliasOption = Annotated[str, typer.Option(help="the registry alias")]


@model_app.command("list")
def model_list(alias: AliasOption = PRODUCTION_ALIAS) -> None:
    """Registered versions: test accuracy, gate verdict, which one the alias names."""
    from model.registry import Registry

    registry = Registry(configured_store(get_settings()))
    live, _ = registry.alias(alias)
    for version in registry.versions():
        card = registry.metadata(version)
        accuracy = (card.metrics.test or {}).get("accuracy")
        verdict = "blessed" if card.blessed else "rejected"
        marker = f"  <- {alias}" if live and live.version == version else ""
        measured = f"test accuracy {accuracy:.4f}" if accuracy is not None else "test accuracy not measured"
        print(f"{version}\t{card.name}\t{measured}\t{verdict}{marker}")


@model_app.command("show")
def model_show(version: Annotated[str, typer.Argument(help="a registered version", show_default=False)]) -> None:
    """A version's metadata (its model card) as JSON."""
    from model.registry import Registry

    print(Registry(configured_store(get_settings())).metadata(version).model_dump_json(indent=2))


@model_app.command("promote")
def model_promote(
    version: Annotated[str, typer.Argument(help="a registered version", show_default=False)],
    alias: AliasOption = PRODUCTION_ALIAS,
    reason: Annotated[str, typer.Option(help="kept in the alias history")] = "manual promotion",
) -> None:
    """Point an alias at a version (every serving replica following it swaps)."""
    from model.registry import Registry

    record = Registry(configured_store(get_settings())).promote(version, alias, reason=reason)
    print(f"{alias} -> {record.version} (was {record.previous})")


@model_app.command("rollback")
def model_rollback(
    alias: AliasOption = PRODUCTION_ALIAS,
    reason: Annotated[str, typer.Option(help="kept in the alias history")] = "manual rollback",
) -> None:
    """Point an alias back at its previous version."""
    from model.registry import Registry

    record = Registry(configured_store(get_settings())).rollback(alias, reason=reason)
    print(f"{alias} -> {record.version} (rolled back)")


@model_app.command("register")
def model_register(
    file: Annotated[Path, typer.Argument(help="a .onnx or .keras model file", show_default=False)],
    input_fit: Annotated[
        Literal["resize", "mosaic"] | None,
        typer.Option(help="how images fit the model's input", show_default="the file's metadata, else resize"),
    ] = None,
    threshold: Annotated[float, typer.Option(help="P(ai) at or above which the verdict is ai")] = 0.5,
    temperature: Annotated[float, typer.Option(help="calibration temperature of its scores")] = 1.0,
    note: Annotated[str, typer.Option(help="kept in the version's metadata")] = "",
) -> None:
    """Register a .onnx or .keras model trained elsewhere (checked, canaries recorded; not promoted)."""
    from model.register import register_model_file

    if not file.is_file():
        raise UsageError(f"{file}: no such file")
    version = register_model_file(
        configured_store(get_settings()),
        file,
        input_fit=input_fit,
        threshold=threshold,
        temperature=temperature,
        note=note,
    )
    print(version)
    print(f"registered {file.name} as {version}; next: aidetect model evaluate {version} --data PATH", file=sys.stderr)


def _labelled_images(path: Path) -> tuple[ImageSet, list[tuple[str, str]]]:
    """A labelled folder or archive (``ai/`` and ``real/``) as an ImageSet, and what was skipped."""
    import hashlib

    import numpy as np

    from model.imagesets import ImageSet
    from model.preprocess import InvalidImage, decode_image
    from model.sources import SourceImage, iter_source

    images: list[bytes] = []
    labels: list[float] = []
    shas: list[str] = []
    generators: list[str] = []
    skipped: list[tuple[str, str]] = []
    seen: set[str] = set()
    for item in iter_source(path):
        if not isinstance(item, SourceImage):
            skipped.append(item)
            continue
        try:
            decode_image(item.data)
        except InvalidImage as exc:
            skipped.append((item.path, str(exc)))
            continue
        sha = hashlib.sha256(item.data).hexdigest()
        if sha in seen:
            skipped.append((item.path, "duplicate of an earlier image"))
            continue
        seen.add(sha)
        images.append(item.data)
        labels.append(1.0 if item.label == "ai" else 0.0)
        shas.append(sha)
        generators.append(item.generator)
    if not images:
        raise Failure(f"{path}: no images under ai/ or real/ ({len(skipped)} skipped)")
    name = path.name.split(".")[0] or "data"
    return ImageSet(images, np.asarray(labels, np.float32), shas, [name] * len(images), generators), skipped


@model_app.command("evaluate")
def model_evaluate(
    version: Annotated[str, typer.Argument(help="a registered version", show_default=False)],
    data: Annotated[Path, typer.Option(help="a folder or .tar.gz laid out as ai/ and real/", show_default=False)],
    out: Annotated[
        Path | None, typer.Option(help="where metrics.json and plots/ go", show_default="evaluation-VERSION/")
    ] = None,
    clean_only: Annotated[
        bool, typer.Option("--clean-only", help="skip the JPEG and half-size robustness tiers")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the whole report as JSON")] = False,
) -> None:
    """The gate's evaluation of a version on a labelled folder or archive: JSON, plots, a table."""
    from model.evaluation import evaluate_model
    from model.inference import share_thread_pool
    from model.plots import evaluation_plots
    from model.registry import Registry
    from model.robustness import TIERS
    from serving.hotswap import ModelHolder, ModelRefused
    from storage import NotFound

    _existing(data)
    settings = get_settings()
    store = configured_store(settings)
    if version not in Registry(store).versions():
        raise Failure(f"no model version {version!r} (aidetect model list shows them)")
    images, skipped = _labelled_images(data)
    share_thread_pool()
    holder = ModelHolder(store, settings.cache_dir / "models")
    try:
        live = holder.load_version(version)
    except (ModelRefused, NotFound) as exc:
        raise Failure(f"model {version} cannot be evaluated: {exc}") from None
    tiers = ("clean",) if clean_only else TIERS
    _progress(f"evaluating {version} on {len(images)} images ({len(skipped)} skipped), tiers: {', '.join(tiers)}")
    metrics, scores = evaluate_model(live.model, images, None, live.card.temperature, live.card.beta, tiers)
    folder = out or Path(f"evaluation-{version}")
    plots = evaluation_plots(images.y, scores, metrics, folder / "plots", label=version)
    report = {
        "version": version,
        "data": str(data),
        "images": len(images),
        "skipped": [{"file": f, "reason": r} for f, r in skipped],
        "metrics": metrics,
        "plots": {name: str(p) for name, p in plots.items()},
    }
    (folder / "metrics.json").write_text(json.dumps(report, indent=2, default=float))
    if as_json:
        print(json.dumps(report, indent=2, default=float))
        return
    _print_evaluation(images, metrics)
    print(f"metrics and plots: {folder}/", file=sys.stderr)


def _print_evaluation(images: ImageSet, metrics: dict[str, Any]) -> None:
    ai = int(images.y.sum())
    rows = [("images", f"{len(images)} ({ai} ai, {len(images) - ai} real)")]
    for key in ("accuracy", "f1", "precision", "recall_ai", "recall_real", "roc_auc", "ece", "mean_prediction"):
        value = metrics.get(key)
        rows.append((key, "-" if value is None or value != value else f"{value:.4f}"))
    for tier, tier_metrics in metrics["robustness"].items():
        rows.append((f"accuracy, {tier}", f"{tier_metrics['accuracy']:.4f}"))
    for generator, slice_metrics in metrics["slices"].get("generator", {}).items():
        rows.append((f"accuracy, generator {generator or '(none)'}", f"{slice_metrics['accuracy']:.4f}"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


# --- flow -----------------------------------------------------------------------------------

flow_app = _group("run a flow once, here (no Prefect worker needed)")
app.add_typer(flow_app, name="flow")


@flow_app.command("retrain")
def flow_retrain(
    datasets: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NAME[@VERSION]",
            help="datasets to train on (several: --datasets a b)",
            show_default="latest of every dataset",
        ),
    ] = None,
    architecture: Annotated[str, typer.Option(help=f"a preset: {', '.join(PRESETS)}")] = DEFAULT_ARCHITECTURE,
    image_size: Annotated[
        int | None, typer.Option(parser=_positive_int, help="a multiple of 32", show_default="the preset's")
    ] = None,
    epochs: Annotated[int, typer.Option(parser=_positive_int, help="training epochs")] = DEFAULT_EPOCHS,
    max_train_images: Annotated[
        int | None, typer.Option(parser=_positive_int, help="train on at most N images", show_default="all")
    ] = None,
    no_warm_start: Annotated[
        bool, typer.Option("--no-warm-start", help="train from scratch, not from the champion")
    ] = False,
    no_augment: Annotated[bool, typer.Option("--no-augment", help="train without augmentation")] = False,
    weights: Annotated[
        str | None,
        typer.Option(
            help="start from: none, imagenet, or a .weights.h5/.keras file (a store key or a local path); "
            "replaces the warm start",
            show_default="the champion, else the preset's default",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="shuffling, augmentation and initialisation")] = 0,
) -> None:
    """Train, validate, export, register and promote (if the gate blesses it)."""
    from flows.retrain import retrain

    result = retrain(
        datasets=datasets or None,
        architecture=architecture,
        image_size=image_size,
        epochs=epochs,
        max_train_images=max_train_images,
        augment=not no_augment,
        warm_start=not no_warm_start,
        weights=weights,
        seed=seed,
    )
    print(json.dumps({k: result[k] for k in ("version", "promoted", "verdict", "champion")}, indent=2))


@flow_app.command("gather-feedback")
def flow_gather(dataset: Annotated[str, typer.Option(help="the feedback dataset")] = "feedback") -> None:
    """Accepted, misclassified feedback -> a new dataset version."""
    from flows.gather import gather_feedback

    print(gather_feedback(dataset=dataset))


@flow_app.command("monitor-drift")
def flow_drift(
    window_hours: Annotated[int, typer.Option(parser=_positive_int, help="predictions of the last N hours")] = 24,
    alias: AliasOption = PRODUCTION_ALIAS,
    min_rows: Annotated[int, typer.Option(parser=_positive_int, help="fewer predictions: no report")] = 100,
) -> None:
    """Recent predictions vs the live model's reference (Evidently)."""
    from flows.drift import monitor_drift

    summary = monitor_drift(window_hours=window_hours, alias=alias, min_rows=min_rows)
    print(json.dumps(summary, indent=2, default=str))


# --- feedback -------------------------------------------------------------------------------

feedback_app = _group("feedback reports")
review_app = _group("list, show, accept or reject reports")
feedback_app.add_typer(review_app, name="review")
app.add_typer(feedback_app, name="feedback")

MinAgreeing = Annotated[
    int | None,
    typer.Option(
        parser=_positive_int,
        help="independent clients whose agreement accepts a claim",
        show_default=_setting_default("feedback_min_agreeing_clients"),
    ),
]
MaxPerClient = Annotated[
    int | None,
    typer.Option(
        parser=_positive_int,
        help="most images one client brings into a dataset version",
        show_default=_setting_default("feedback_max_per_client"),
    ),
]


def _feedback_state(min_agreeing: int | None, max_per_client: int | None) -> tuple[Any, Any, Any, Any]:
    from feedback.policy import configured_policy, decide
    from feedback.reviews import load_reviews
    from feedback.store import iter_feedback

    settings = get_settings()
    store = configured_store(settings)
    records = list(iter_feedback(store))
    reviews = load_reviews(store)
    policy = configured_policy(settings, min_agreeing_clients=min_agreeing, max_per_client=max_per_client)
    decisions = decide(records, reviews, policy)
    return store, records, reviews, decisions


@review_app.command("list")
def feedback_list(
    status: Annotated[
        Literal["quarantined", "accepted", "rejected", "all"], typer.Option(help="which reports")
    ] = "quarantined",
    min_agreeing_clients: MinAgreeing = None,
    max_per_client: MaxPerClient = None,
) -> None:
    """Reports with their status and why."""
    _, records, _, decisions = _feedback_state(min_agreeing_clients, max_per_client)
    shown = 0
    for record in records:
        decision = decisions[record.id]
        if status != "all" and decision.status != status:
            continue
        shown += 1
        print(
            f"{record.id}\t{decision.status}\tclaims {record.claimed_label}\tmodel said {record.predicted_label}"
            f"\timage {record.image_sha256[:12]}\tclient {record.client}\t{decision.reason}"
        )
    print(f"{shown} of {len(records)} reports", file=sys.stderr)


@review_app.command("show")
def feedback_show(
    report_id: Annotated[str, typer.Argument(metavar="ID", help="a report id", show_default=False)],
    min_agreeing_clients: MinAgreeing = None,
    max_per_client: MaxPerClient = None,
) -> None:
    """One report, its review and the other reports of its image (JSON)."""
    _, records, reviews, decisions = _feedback_state(min_agreeing_clients, max_per_client)
    by_id = {r.id: r for r in records}
    if report_id not in by_id:
        raise Failure(f"no feedback report {report_id!r}")
    record = by_id[report_id]
    same_image = [r for r in records if r.image_sha256 == record.image_sha256]
    out = {
        "report": json.loads(record.model_dump_json()),
        "status": decisions[record.id].status,
        "reason": decisions[record.id].reason,
        "review": reviews[record.id].__dict__ if record.id in reviews else None,
        "other_reports_of_this_image": [
            {"id": r.id, "claimed_label": r.claimed_label, "client": r.client, "status": decisions[r.id].status}
            for r in same_image
            if r.id != record.id
        ],
    }
    print(json.dumps(out, indent=2, default=str))


def _decide(
    decision: Literal["accept", "reject"],
    ids: list[str] | None,
    all_quarantined: bool,
    reviewer: str | None,
    note: str | None,
    min_agreeing_clients: int | None,
    max_per_client: int | None,
) -> None:
    from feedback.reviews import save_review

    if not ids and not all_quarantined:
        raise UsageError("name report ids, or pass --all-quarantined")
    store, records, _, decisions = _feedback_state(min_agreeing_clients, max_per_client)
    known = {r.id for r in records}
    chosen = list(ids or [])
    if all_quarantined:
        chosen += [r.id for r in records if decisions[r.id].status == "quarantined" and r.id not in chosen]
    unknown = [i for i in chosen if i not in known]
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise Failure(f"no feedback report {unknown[0]!r}{more}")
    reviewer = reviewer or os.environ.get("USER") or "reviewer"
    for feedback_id in chosen:
        save_review(store, feedback_id, decision, reviewer, note)
    print(f"{decision}ed {len(chosen)} report(s) as {reviewer}")


IdsArgument = Annotated[list[str] | None, typer.Argument(metavar="ID", help="report ids", show_default=False)]
AllQuarantined = Annotated[bool, typer.Option("--all-quarantined", help="every report now in quarantine")]
Reviewer = Annotated[str | None, typer.Option(help="your name", show_default="$USER")]
Note = Annotated[str | None, typer.Option(help="kept with the decision", show_default="none")]


@review_app.command("accept")
def feedback_accept(
    ids: IdsArgument = None,
    all_quarantined: AllQuarantined = False,
    reviewer: Reviewer = None,
    note: Note = None,
    min_agreeing_clients: MinAgreeing = None,
    max_per_client: MaxPerClient = None,
) -> None:
    """Accept reports (the latest decision wins)."""
    _decide("accept", ids, all_quarantined, reviewer, note, min_agreeing_clients, max_per_client)


@review_app.command("reject")
def feedback_reject(
    ids: IdsArgument = None,
    all_quarantined: AllQuarantined = False,
    reviewer: Reviewer = None,
    note: Note = None,
    min_agreeing_clients: MinAgreeing = None,
    max_per_client: MaxPerClient = None,
) -> None:
    """Reject reports (the latest decision wins)."""
    _decide("reject", ids, all_quarantined, reviewer, note, min_agreeing_clients, max_per_client)


# --- predict, serve -------------------------------------------------------------------------


@app.command("predict")
def predict(
    files: Annotated[list[Path], typer.Argument(metavar="FILE", help="image files", show_default=False)],
    alias: Annotated[str, typer.Option(help="the alias whose model scores them")] = PRODUCTION_ALIAS,
    version: Annotated[
        str | None, typer.Option(help="a registered version instead of the alias", show_default="the alias's")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON list instead of a table")] = False,
) -> None:
    """Score image files locally with onnxruntime: the registry's model, checked as serving checks it."""
    from model.inference import share_thread_pool
    from model.preprocess import InvalidImage, decode_image, to_model_input
    from serving.hotswap import ModelHolder, ModelRefused

    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UsageError(f"no such file: {missing[0]}{more}")
    settings = get_settings()
    share_thread_pool()
    holder = ModelHolder(configured_store(settings), settings.cache_dir / "models", alias=alias)
    try:
        if version:
            live = holder.load_version(version)
        elif not holder.refresh():
            raise Failure(f"alias {alias!r} names no model yet: train one (aidetect flow retrain)")
        else:
            live = holder.current  # type: ignore[assignment]
    except ModelRefused as exc:
        raise Failure(f"the model was refused ({exc.reason}): {exc}") from None
    rows: list[dict[str, Any]] = []
    for path in files:
        try:
            pixels = to_model_input(decode_image(path.read_bytes()), live.image_size, live.model.input_fit)
        except InvalidImage as exc:
            rows.append({"file": str(path), "error": str(exc)})
            continue
        raw = float(live.model.predict(pixels[None])[0][0])
        label, p_ai = live.verdict(raw)
        rows.append({"file": str(path), "label": label, "p_ai": round(p_ai, 4), "model_version": live.version})
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        width = max(len(r["file"]) for r in rows)
        for r in rows:
            result = f"error: {r['error']}" if "error" in r else f"{r['label']:<9} P(ai) {r['p_ai']:.4f}"
            print(f"{r['file']:<{width}}  {result}")
        print(f"model {live.version}", file=sys.stderr)
    _exit(1 if any("error" in r for r in rows) else 0)


Port = Annotated[int, typer.Option(min=1, max=65535, help="TCP port")]


@app.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="address to listen on (0.0.0.0: every interface)")] = "127.0.0.1",
    port: Port = 8000,
) -> None:
    """Run the HTTP service (the web page, the API under /v1, /metrics)."""
    from serving.server import serve as run_server

    run_server(host, port)


# --- the embedded default on this machine ---------------------------------------------------


@app.command("demo")
def demo(
    data: Annotated[str, typer.Option(help="base dataset (.tar.gz or folder)")] = "../shared/data/cifake-dev.tar.gz",
    newgen: Annotated[str, typer.Option(help="images from a new generator")] = "../shared/data/newgen-dev.tar.gz",
    architecture: Annotated[str, typer.Option(help="a preset (model/config.py)")] = DEFAULT_ARCHITECTURE,
    epochs: Annotated[int, typer.Option(parser=_positive_int, help="training epochs")] = DEFAULT_EPOCHS,
    limit_per_class: Annotated[int, typer.Option(parser=_positive_int, help="base images imported per class")] = 4000,
    max_train_images: Annotated[int, typer.Option(parser=_positive_int, help="train on at most N images")] = 20000,
    report_share: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="share of the new-generator images reported")
    ] = 0.8,
    serve_port: Port = 8000,
    prefect_port: Annotated[int, typer.Option(min=1, max=65535, help="the Prefect server's port")] = 4200,
) -> None:
    """Run the whole loop once on the embedded default (local store, local Prefect)."""
    from cli.demo import run_demo

    args = argparse.Namespace(
        data=data,
        newgen=newgen,
        architecture=architecture,
        epochs=epochs,
        limit_per_class=limit_per_class,
        max_train_images=max_train_images,
        report_share=report_share,
        serve_port=serve_port,
        prefect_port=prefect_port,
    )
    _exit(run_demo(args))


@app.command("up")
def up(
    home: Annotated[str, typer.Option(help="store, Prefect database and logs (AIDETECT_HOME)")] = ".aidetect/up",
    port: Annotated[int, typer.Option(min=1, max=65535, help="serving's port")] = 8000,
    prefect_port: Annotated[int, typer.Option(min=1, max=65535, help="the Prefect server's port")] = 4200,
) -> None:
    """The long-running local stack: Prefect server + UI, deployments, workers, serving."""
    from cli.stack import run_up

    _exit(run_up(argparse.Namespace(home=home, port=port, prefect_port=prefect_port)))


@app.command("deploy")
def deploy() -> None:
    """Create the cpu/gpu work pools and register prefect.yaml's deployments (PREFECT_API_URL)."""
    from cli.stack import ROOT
    from cli.stack import deploy as run_deploy

    if not os.environ.get("PREFECT_API_URL"):
        raise Failure("PREFECT_API_URL is not set: point it at the Prefect server to deploy to")
    run_deploy({**os.environ, "AIDETECT_CODE_DIR": os.environ.get("AIDETECT_CODE_DIR", str(ROOT))})


@app.command("stop")
def stop(
    home: Annotated[
        str | None, typer.Option(help="the demo's folder", show_default="$AIDETECT_HOME/demo, else .aidetect/demo")
    ] = None,
) -> None:
    """Stop the services a demo left running."""
    from cli.demo import demo_home
    from cli.processes import stop_recorded

    stopped = stop_recorded((Path(home) if home else demo_home()) / "run")
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


# --- lock -----------------------------------------------------------------------------------

lock_app = _group("the flows' leases in the store (locks/)")
app.add_typer(lock_app, name="lock")


@lock_app.command("show")
def lock_show(
    name: Annotated[str | None, typer.Argument(help="one lock (e.g. retrain)", show_default="all")] = None,
) -> None:
    """Each lock: holder, age, expiry, live or stale."""
    from flows.lease import describe, list_leases, read_lease

    store = configured_store(get_settings())
    if name is None:
        records = list_leases(store)
        if not records:
            print("no locks: every flow is free", file=sys.stderr)
    else:
        record = read_lease(store, name)
        if record is None:
            print(f"{name}\tfree")
        records = [record] if record else []
    now = time.time()
    for record in records:
        print(f"{record.name}\t{'stale' if record.stale(now) else 'live'}\t{describe(record, now)}")


@lock_app.command("clear")
def lock_clear(
    name: Annotated[str, typer.Argument(help="the lock, e.g. retrain", show_default=False)],
    force: Annotated[
        bool, typer.Option("--force", help="also a live one (its run then stops before it registers or promotes)")
    ] = False,
) -> None:
    """Remove a stale lock (its holder stopped renewing it)."""
    from flows.lease import LeaseLive, clear_lease, describe

    store = configured_store(get_settings())
    try:
        record = clear_lease(store, name, force=force)
    except LeaseLive as exc:
        raise Failure(f"{exc}: its holder is renewing it; pass --force only if that run is gone") from None
    now = time.time()
    if record.stale(now):
        print(f"cleared {name} (stale: {describe(record, now)})")
    else:
        print(
            f"warning: {name} was live ({describe(record, now)}). That run stops at its next renewal, "
            "before it registers or promotes, but until then a new run may work alongside it",
            file=sys.stderr,
        )
        print(f"cleared {name} (forced)")


# --- config ---------------------------------------------------------------------------------

config_app = _group("the settings (AIDETECT_* environment variables)")
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show(
    as_json: Annotated[bool, typer.Option("--json", help="a JSON list instead of a table")] = False,
) -> None:
    """Every setting: its effective value (secrets masked) and where it came from."""
    from dataclasses import asdict

    from cli.config import effective_settings, show_table

    rows = effective_settings(get_settings())
    print(json.dumps([asdict(r) for r in rows], indent=2) if as_json else show_table(rows))


@config_app.command("reference")
def config_reference(
    write: Annotated[
        Path | None,
        typer.Option(
            help="replace the reference between the config-reference markers in this file (README.md)",
            show_default="print it",
        ),
    ] = None,
) -> None:
    """The Markdown configuration reference, generated from the settings class."""
    from cli.config import NoMarkers, reference_markdown, with_reference

    if write is None:
        print(reference_markdown(), end="")
        return
    _existing(write, "file")
    text = write.read_text()
    try:
        updated = with_reference(text)
    except NoMarkers as exc:
        raise Failure(f"{write}: {exc}") from None
    if updated != text:
        write.write_text(updated)
    print(f"{write}: configuration reference {'updated' if updated != text else 'already up to date'}")


# --- notify ---------------------------------------------------------------------------------

notify_app = _group("Prefect automations that post drift, challenger verdicts and failed runs to a webhook")
app.add_typer(notify_app, name="notify")


def _prefect_api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise Failure("PREFECT_API_URL is not set: point it at the Prefect server whose automations to change")
    return str(url)


@notify_app.command("apply")
def notify_apply(
    webhook_url: Annotated[
        str | None,
        typer.Option(
            help="the http(s) URL to post to (a URL given here shows in the process list: prefer the setting)",
            show_default="$AIDETECT_NOTIFY_WEBHOOK_URL",
        ),
    ] = None,
) -> None:
    """Create or update the automations on the Prefect server (`aidetect deploy` does it too)."""
    from pydantic import ValidationError

    if webhook_url is not None:
        try:
            secret = Settings(notify_webhook_url=webhook_url).notify_webhook_url
        except ValidationError as exc:
            mine = [e for e in exc.errors() if tuple(e["loc"][:1]) == ("notify_webhook_url",)]
            if not mine:  # another setting is wrong
                raise
            raise UsageError(f"--webhook-url: {mine[0]['msg'].removeprefix('Value error, ')}") from None
    else:
        secret = get_settings().notify_webhook_url
    if secret is None:
        raise Failure("no webhook: set AIDETECT_NOTIFY_WEBHOOK_URL (or pass --webhook-url)")
    api = _prefect_api_url()
    from flows.notifications import apply_notifications

    names = apply_notifications(secret.get_secret_value())
    print(f"{len(names)} automations on {api} post to the webhook:")
    for name in names:
        print(f"  {name}")


@notify_app.command("remove")
def notify_remove() -> None:
    """Delete the automations and the webhook block from the Prefect server."""
    api = _prefect_api_url()
    from flows.notifications import remove_notifications

    removed = remove_notifications()
    print(f"removed {len(removed)} automations from {api}" + "".join(f"\n  {name}" for name in removed))


# --- errors and the entry point -------------------------------------------------------------


def _settings_problem(exc: Any) -> str:
    """A pydantic ValidationError of the settings as one line naming each variable."""
    from cli.config import env_name

    parts = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error.get("loc") else ""
        where = env_name(field, Settings.model_fields[field]) if field in Settings.model_fields else field
        message = str(error.get("msg", "")).removeprefix("Value error, ")
        value = error.get("input")
        secret = field in Settings.model_fields and "SecretStr" in str(Settings.model_fields[field].annotation)
        shown = f"={value!r}" if isinstance(value, str | int | float) and not secret else ""
        parts.append(f"{where}{shown}: {message}")
    return "invalid settings: " + "; ".join(parts)


def error_message(exc: BaseException) -> str:
    """What a runtime error says on stderr: one line, naming the problem."""
    from pydantic import ValidationError

    from storage import NotFound, StoreUnavailable

    if isinstance(exc, ValidationError) and exc.title == Settings.__name__:
        return _settings_problem(exc)
    if isinstance(exc, StoreUnavailable):
        return (
            f"{exc} (AIDETECT_STORE_URL, AIDETECT_S3_ENDPOINT_URL: is the store up and reachable? "
            "`aidetect config show` prints the settings in use)"
        )
    if isinstance(exc, NotFound):
        return str(exc)
    if isinstance(exc, KeyError):
        return str(exc.args[0]) if exc.args else "not found"
    known = isinstance(exc, Failure | ValueError | OSError | RuntimeError)
    if known or type(exc).__module__.split(".")[0] in PROJECT_PACKAGES:  # ModelRefused, AliasConflict, ...
        return " ".join(str(exc).split()) or type(exc).__name__
    return f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)"


def _expand_multi_value(argv: Sequence[str]) -> list[str]:
    """``--datasets a b`` (argparse's ``nargs="*"``) as click takes it: ``--datasets a --datasets b``."""
    out: list[str] = []
    current: str | None = None
    for word in argv:
        if word == "--":
            current = None
        elif word in MULTI_VALUE_OPTIONS:
            current = word
            continue
        elif current is not None and not word.startswith("-"):
            out += [current, word]
            continue
        else:
            current = None
        out.append(word)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the exit status (0 done, 1 runtime error, 2 usage error)."""
    # TensorFlow's C++ start-up chatter drowns the progress lines; warnings still show.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = _expand_multi_value(sys.argv[1:] if argv is None else argv)
    _State.debug = False
    command = typer.main.get_command(app)
    try:
        command.main(args=args, prog_name=PROG, standalone_mode=True)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except Exception as exc:
        if _State.debug or _debug_env():
            raise
        print(f"{PROG}: error: {error_message(exc)}", file=sys.stderr)
        return 1
    return 0


def _debug_env() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


if __name__ == "__main__":
    sys.exit(main())
