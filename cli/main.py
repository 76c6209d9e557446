"""The ``aidetect`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from aidetect.settings import PRODUCTION_ALIAS, get_settings
from model.config import DEFAULT_ARCHITECTURE, DEFAULT_EPOCHS
from storage import configured_store

if TYPE_CHECKING:
    from model.imagesets import ImageSet

    Commands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]  # what add_subparsers returns


def _cmd_data_import(args: argparse.Namespace) -> int:
    from model.sources import import_dataset

    path = Path(args.path)
    if not path.exists():
        raise UsageError(f"{path}: no such file or folder")
    store = configured_store(get_settings())
    report = import_dataset(store, path, args.name, limit_per_class=args.limit_per_class, progress=_progress)
    for name, reason in report.skipped[:50]:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    if len(report.skipped) > 50:
        print(f"... and {len(report.skipped) - 50} more skipped", file=sys.stderr)
    print(f"imported {report.taken} images into {report.name}@{report.version} ({len(report.skipped)} skipped)")
    print(json.dumps(report.counts))
    return 0


def _cmd_data_list(args: argparse.Namespace) -> int:
    from model.datasets import list_datasets, read_version_info

    store = configured_store(get_settings())
    for name, versions in list_datasets(store).items():
        for version in versions:
            counts = read_version_info(store, name, version)["counts"]
            total = sum(sum(c.values()) for c in counts.values())
            print(f"{name}@{version}\t{total} images\t{json.dumps(counts)}")
    return 0


def _feedback_state(min_agreeing: int | None, max_per_client: int | None) -> tuple[Any, Any, Any, Any]:
    from feedback.policy import configured_policy, decide
    from feedback.reviews import load_reviews
    from feedback.store import iter_feedback

    store = configured_store(get_settings())
    records = list(iter_feedback(store))
    reviews = load_reviews(store)
    policy = configured_policy(min_agreeing_clients=min_agreeing, max_per_client=max_per_client)
    decisions = decide(records, reviews, policy)
    return store, records, reviews, decisions


def _cmd_feedback_list(args: argparse.Namespace) -> int:
    _, records, _, decisions = _feedback_state(args.min_agreeing_clients, args.max_per_client)
    shown = 0
    for record in records:
        decision = decisions[record.id]
        if args.status != "all" and decision.status != args.status:
            continue
        shown += 1
        print(
            f"{record.id}\t{decision.status}\tclaims {record.claimed_label}\tmodel said {record.predicted_label}"
            f"\timage {record.image_sha256[:12]}\tclient {record.client}\t{decision.reason}"
        )
    print(f"{shown} of {len(records)} reports", file=sys.stderr)
    return 0


def _cmd_feedback_show(args: argparse.Namespace) -> int:
    _, records, reviews, decisions = _feedback_state(args.min_agreeing_clients, args.max_per_client)
    by_id = {r.id: r for r in records}
    if args.id not in by_id:
        raise UsageError(f"no feedback report {args.id!r}")
    record = by_id[args.id]
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
    return 0


def _cmd_feedback_decide(args: argparse.Namespace) -> int:
    from feedback.reviews import save_review

    store, records, _, decisions = _feedback_state(args.min_agreeing_clients, args.max_per_client)
    known = {r.id for r in records}
    ids = list(args.ids)
    if args.all_quarantined:
        ids += [r.id for r in records if decisions[r.id].status == "quarantined" and r.id not in ids]
    if not ids:
        raise UsageError("name report ids, or pass --all-quarantined")
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise UsageError(
            f"no feedback report {unknown[0]!r}" + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
        )
    reviewer = args.reviewer or os.environ.get("USER") or "reviewer"
    for feedback_id in ids:
        save_review(store, feedback_id, args.decision, reviewer, args.note)
    print(f"{args.decision}ed {len(ids)} report(s) as {reviewer}")
    return 0


def _cmd_model_list(args: argparse.Namespace) -> int:
    from model.registry import Registry

    registry = Registry(configured_store(get_settings()))
    live, _ = registry.alias(args.alias)
    for version in registry.versions():
        card = registry.metadata(version)
        accuracy = (card.metrics.test or {}).get("accuracy")
        verdict = "blessed" if card.blessed else "rejected"
        marker = f"  <- {args.alias}" if live and live.version == version else ""
        measured = f"test accuracy {accuracy:.4f}" if accuracy is not None else "test accuracy not measured"
        print(f"{version}\t{card.name}\t{measured}\t{verdict}{marker}")
    return 0


def _cmd_model_show(args: argparse.Namespace) -> int:
    from model.registry import Registry

    print(Registry(configured_store(get_settings())).metadata(args.version).model_dump_json(indent=2))
    return 0


def _cmd_model_promote(args: argparse.Namespace) -> int:
    from model.registry import Registry

    record = Registry(configured_store(get_settings())).promote(args.version, args.alias, reason=args.reason)
    print(f"{args.alias} -> {record.version} (was {record.previous})")
    return 0


def _cmd_model_rollback(args: argparse.Namespace) -> int:
    from model.registry import Registry

    record = Registry(configured_store(get_settings())).rollback(args.alias, reason=args.reason)
    print(f"{args.alias} -> {record.version} (rolled back)")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    """Score image files locally with onnxruntime: the registry's model, checked as serving checks it."""
    from model.inference import share_thread_pool
    from model.preprocess import InvalidImage, decode_image, to_model_input
    from serving.hotswap import ModelHolder, ModelRefused

    files = [Path(f) for f in args.files]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UsageError(f"no such file: {missing[0]}{more}")
    settings = get_settings()
    share_thread_pool()
    holder = ModelHolder(configured_store(settings), settings.cache_dir / "models", alias=args.alias)
    try:
        if args.version:
            live = holder.load_version(args.version)
        elif not holder.refresh():
            raise UsageError(f"alias {args.alias!r} names no model yet: train one (aidetect flow retrain)")
        else:
            live = holder.current  # type: ignore[assignment]
    except ModelRefused as exc:
        raise UsageError(f"the model was refused ({exc.reason}): {exc}") from None
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
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        width = max(len(r["file"]) for r in rows)
        for r in rows:
            result = f"error: {r['error']}" if "error" in r else f"{r['label']:<9} P(ai) {r['p_ai']:.4f}"
            print(f"{r['file']:<{width}}  {result}")
        print(f"model {live.version}", file=sys.stderr)
    return 1 if any("error" in r for r in rows) else 0


def _labelled_images(path: Path) -> tuple[ImageSet, list[tuple[str, str]]]:
    """A labelled folder or archive (``ai/`` and ``real/``) as an ImageSet, and what was skipped."""
    import hashlib

    import numpy as np

    from model.imagesets import ImageSet
    from model.preprocess import InvalidImage, decode_image
    from model.sources import SourceImage, iter_source

    if not path.exists():
        raise UsageError(f"{path}: no such file or folder")
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
        raise UsageError(f"{path}: no images under ai/ or real/ ({len(skipped)} skipped)")
    name = path.name.split(".")[0] or "data"
    return ImageSet(images, np.asarray(labels, np.float32), shas, [name] * len(images), generators), skipped


def _cmd_model_register(args: argparse.Namespace) -> int:
    """Register a .onnx or .keras model trained elsewhere (checked, canaries recorded; not promoted)."""
    from model.register import register_model_file

    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    version = register_model_file(
        configured_store(get_settings()),
        path,
        input_fit=args.input_fit,
        threshold=args.threshold,
        temperature=args.temperature,
        note=args.note,
    )
    print(version)
    print(f"registered {path.name} as {version}; next: aidetect model evaluate {version} --data PATH", file=sys.stderr)
    return 0


def _cmd_model_evaluate(args: argparse.Namespace) -> int:
    """The gate's evaluation of one version on a labelled folder or archive: JSON, plots, a table."""
    from model.evaluation import evaluate_model
    from model.inference import share_thread_pool
    from model.plots import evaluation_plots
    from model.registry import Registry
    from model.robustness import TIERS
    from serving.hotswap import ModelHolder, ModelRefused
    from storage import NotFound, configured_store

    data, skipped = _labelled_images(Path(args.data))
    settings = get_settings()
    store = configured_store(settings)
    if args.version not in Registry(store).versions():
        raise UsageError(f"no model version {args.version!r} (aidetect model list shows them)")
    share_thread_pool()
    holder = ModelHolder(store, settings.cache_dir / "models")
    try:
        live = holder.load_version(args.version)
    except (ModelRefused, NotFound) as exc:
        raise UsageError(f"model {args.version} cannot be evaluated: {exc}") from None
    beta = live.card.beta
    tiers = ("clean",) if args.clean_only else TIERS
    _progress(f"evaluating {args.version} on {len(data)} images ({len(skipped)} skipped), tiers: {', '.join(tiers)}")
    metrics, scores = evaluate_model(live.model, data, None, live.card.temperature, beta, tiers)
    out = Path(args.out or f"evaluation-{args.version}")
    plots = evaluation_plots(data.y, scores, metrics, out / "plots", label=args.version)
    report = {
        "version": args.version,
        "data": str(args.data),
        "images": len(data),
        "skipped": [{"file": f, "reason": r} for f, r in skipped],
        "metrics": metrics,
        "plots": {name: str(p) for name, p in plots.items()},
    }
    (out / "metrics.json").write_text(json.dumps(report, indent=2, default=float))
    if args.json:
        print(json.dumps(report, indent=2, default=float))
        return 0
    rows = [("images", f"{len(data)} ({int(data.y.sum())} ai, {len(data) - int(data.y.sum())} real)")]
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
    print(f"metrics and plots: {out}/", file=sys.stderr)
    return 0


def _cmd_flow_retrain(args: argparse.Namespace) -> int:
    from flows.retrain import retrain

    result = retrain(
        datasets=args.datasets or None,
        architecture=args.architecture,
        image_size=args.image_size,
        epochs=args.epochs,
        max_train_images=args.max_train_images,
        augment=not args.no_augment,
        warm_start=not args.no_warm_start,
        weights=args.weights,
        seed=args.seed,
    )
    print(json.dumps({k: result[k] for k in ("version", "promoted", "verdict", "champion")}, indent=2))
    return 0


def _cmd_flow_gather(args: argparse.Namespace) -> int:
    from flows.gather import gather_feedback

    print(gather_feedback(dataset=args.dataset))
    return 0


def _cmd_flow_drift(args: argparse.Namespace) -> int:
    import json

    from flows.drift import monitor_drift

    summary = monitor_drift(window_hours=args.window_hours, alias=args.alias, min_rows=args.min_rows)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from serving.server import serve

    serve(args.host, args.port)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from cli.demo import run_demo

    return run_demo(args)


def _cmd_up(args: argparse.Namespace) -> int:
    from cli.stack import run_up

    return run_up(args)


def _cmd_deploy(args: argparse.Namespace) -> int:
    import os

    from cli.stack import ROOT, deploy

    if not os.environ.get("PREFECT_API_URL"):
        raise UsageError("PREFECT_API_URL is not set: point it at the Prefect server to deploy to")
    deploy({**os.environ, "AIDETECT_CODE_DIR": os.environ.get("AIDETECT_CODE_DIR", str(ROOT))})
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    from cli.processes import stop_recorded

    stopped = stop_recorded(Path(args.home) / "run")
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    return 0


def _cmd_lock_show(args: argparse.Namespace) -> int:
    from flows.lease import describe, list_leases, read_lease

    store = configured_store(get_settings())
    if args.name is None:
        records = list_leases(store)
        if not records:
            print("no locks: every flow is free", file=sys.stderr)
    else:
        record = read_lease(store, args.name)
        if record is None:
            print(f"{args.name}\tfree")
        records = [record] if record else []
    now = time.time()
    for record in records:
        print(f"{record.name}\t{'stale' if record.stale(now) else 'live'}\t{describe(record, now)}")
    return 0


def _cmd_lock_clear(args: argparse.Namespace) -> int:
    from flows.lease import LeaseLive, clear_lease, describe

    store = configured_store(get_settings())
    try:
        record = clear_lease(store, args.name, force=args.force)
    except LeaseLive as exc:
        raise UsageError(f"{exc}: its holder is renewing it; pass --force only if that run is gone") from None
    now = time.time()
    if record.stale(now):
        print(f"cleared {args.name} (stale: {describe(record, now)})")
    else:
        print(
            f"warning: {args.name} was live ({describe(record, now)}). That run stops at its next renewal, "
            "before it registers or promotes, but until then a new run may work alongside it",
            file=sys.stderr,
        )
        print(f"cleared {args.name} (forced)")
    return 0


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class UsageError(Exception):
    """A problem with what the user asked for; printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aidetect", description="A continuously retrained AI-image detector.")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_data_commands(commands)
    _add_model_commands(commands)
    _add_flow_commands(commands)
    _add_feedback_commands(commands)
    _add_predict_command(commands)
    _add_serve_command(commands)
    _add_local_commands(commands)
    _add_lock_commands(commands)
    return parser


def _add_data_commands(commands: Commands) -> None:
    data = commands.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    imp = data.add_parser("import", help="import a folder or .tar.gz laid out as ai/ and real/")
    imp.add_argument("path")
    imp.add_argument("--name", required=True, help="dataset name (a new version is written)")
    imp.add_argument("--limit-per-class", type=_positive_int, default=None, help="take at most N images per class")
    imp.set_defaults(func=_cmd_data_import)
    data.add_parser("list", help="dataset versions").set_defaults(func=_cmd_data_list)


def _add_model_commands(commands: Commands) -> None:
    mdl = commands.add_parser("model", help="the model registry").add_subparsers(dest="model_command", required=True)
    lst = mdl.add_parser("list", help="registered versions")
    lst.add_argument("--alias", default=PRODUCTION_ALIAS)
    lst.set_defaults(func=_cmd_model_list)
    show = mdl.add_parser("show", help="a version's metadata")
    show.add_argument("version")
    show.set_defaults(func=_cmd_model_show)
    prm = mdl.add_parser("promote", help="point an alias at a version")
    prm.add_argument("version")
    prm.add_argument("--alias", default=PRODUCTION_ALIAS)
    prm.add_argument("--reason", default="manual promotion")
    prm.set_defaults(func=_cmd_model_promote)
    _add_model_register(mdl)
    _add_model_evaluate(mdl)
    rbk = mdl.add_parser("rollback", help="point an alias back at its previous version")
    rbk.add_argument("--alias", default=PRODUCTION_ALIAS)
    rbk.add_argument("--reason", default="manual rollback")
    rbk.set_defaults(func=_cmd_model_rollback)


def _add_model_register(mdl: Commands) -> None:
    reg = mdl.add_parser("register", help="register a .onnx or .keras model trained elsewhere (not promoted)")
    reg.add_argument("file")
    reg.add_argument("--input-fit", choices=["resize", "mosaic"], default=None, help="how images fit the input")
    reg.add_argument("--threshold", type=float, default=0.5, help="P(ai) at or above which the verdict is ai")
    reg.add_argument("--temperature", type=float, default=1.0, help="calibration temperature of its scores")
    reg.add_argument("--note", default="", help="kept in the version's metadata")
    reg.set_defaults(func=_cmd_model_register)


def _add_model_evaluate(mdl: Commands) -> None:
    evl = mdl.add_parser(
        "evaluate", help="the gate's evaluation of a version on a labelled folder or archive (ai/, real/)"
    )
    evl.add_argument("version")
    evl.add_argument("--data", required=True, help="a folder or .tar.gz laid out as ai/ and real/")
    evl.add_argument("--out", help="where metrics.json and plots/ go (default: evaluation-VERSION/)")
    evl.add_argument("--clean-only", action="store_true", help="skip the JPEG and half-size robustness tiers")
    evl.add_argument("--json", action="store_true", help="print the whole report as JSON")
    evl.set_defaults(func=_cmd_model_evaluate)


def _add_flow_commands(commands: Commands) -> None:
    flw = commands.add_parser("flow", help="run a flow once").add_subparsers(dest="flow_command", required=True)
    _add_flow_retrain(flw)
    gat = flw.add_parser("gather-feedback", help="misclassified feedback -> a dataset version")
    gat.add_argument("--dataset", default="feedback")
    gat.set_defaults(func=_cmd_flow_gather)
    drf = flw.add_parser("monitor-drift", help="recent predictions vs the live model's reference (Evidently)")
    drf.add_argument("--window-hours", type=_positive_int, default=24)
    drf.add_argument("--alias", default=PRODUCTION_ALIAS)
    drf.add_argument("--min-rows", type=_positive_int, default=100, help="fewer predictions: no report")
    drf.set_defaults(func=_cmd_flow_drift)


def _add_flow_retrain(flw: Commands) -> None:
    ret = flw.add_parser("retrain", help="train, validate, export, register and promote")
    ret.add_argument("--datasets", nargs="*", help="name or name@version (default: latest of every dataset)")
    ret.add_argument(
        "--architecture",
        default=DEFAULT_ARCHITECTURE,
        help="a preset: effnet-lite0-multiscale (default), tiny, effnet-lite0-swin, effnet-b5-swin, ...",
    )
    ret.add_argument("--image-size", type=_positive_int, default=None, help="a multiple of 32 (default: the preset's)")
    ret.add_argument("--epochs", type=_positive_int, default=DEFAULT_EPOCHS)
    ret.add_argument("--max-train-images", type=_positive_int, default=None)
    ret.add_argument("--no-warm-start", action="store_true", help="train from scratch, not from the champion")
    ret.add_argument("--no-augment", action="store_true", help="train without augmentation")
    ret.add_argument(
        "--weights",
        default=None,
        help="start from: none, imagenet, or a .weights.h5/.keras file (a store key or a local path); "
        "replaces the warm start (default: the champion, else the preset's default)",
    )
    ret.add_argument("--seed", type=int, default=0, help="shuffling, augmentation and initialisation")
    ret.set_defaults(func=_cmd_flow_retrain)


def _add_feedback_commands(commands: Commands) -> None:
    fbk = commands.add_parser("feedback", help="feedback reports").add_subparsers(
        dest="feedback_command", required=True
    )
    rev = fbk.add_parser("review", help="list, show, accept or reject reports").add_subparsers(
        dest="review_command", required=True
    )
    policy_args = argparse.ArgumentParser(add_help=False)
    policy_args.add_argument(
        "--min-agreeing-clients", type=_positive_int, help="default: AIDETECT_FEEDBACK_MIN_AGREEING_CLIENTS (2)"
    )
    policy_args.add_argument(
        "--max-per-client", type=_positive_int, help="default: AIDETECT_FEEDBACK_MAX_PER_CLIENT (50)"
    )
    rls = rev.add_parser("list", help="reports with their status and why", parents=[policy_args])
    rls.add_argument("--status", choices=["quarantined", "accepted", "rejected", "all"], default="quarantined")
    rls.set_defaults(func=_cmd_feedback_list)
    rsh = rev.add_parser(
        "show", help="one report, its review and the other reports of its image", parents=[policy_args]
    )
    rsh.add_argument("id")
    rsh.set_defaults(func=_cmd_feedback_show)
    for decision in ("accept", "reject"):
        cmd = rev.add_parser(decision, help=f"{decision} reports (the latest decision wins)", parents=[policy_args])
        cmd.add_argument("ids", nargs="*", help="report ids")
        cmd.add_argument("--all-quarantined", action="store_true", help="every report now in quarantine")
        cmd.add_argument("--reviewer", default=None, help="your name (default: $USER)")
        cmd.add_argument("--note", default=None)
        cmd.set_defaults(func=_cmd_feedback_decide, decision=decision)


def _add_predict_command(commands: Commands) -> None:
    prd = commands.add_parser("predict", help="score image files locally (onnxruntime, the registry's model)")
    prd.add_argument("files", nargs="+", help="image files")
    prd.add_argument("--alias", default=PRODUCTION_ALIAS, help="the alias whose model scores them")
    prd.add_argument("--version", default=None, help="a registered version instead of the alias")
    prd.add_argument("--json", action="store_true", help="one JSON list instead of a table")
    prd.set_defaults(func=_cmd_predict)


def _add_serve_command(commands: Commands) -> None:
    srv = commands.add_parser("serve", help="run the HTTP service")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    srv.set_defaults(func=_cmd_serve)


def _add_local_commands(commands: Commands) -> None:
    """The embedded default on this machine: the demo, the long-running stack, deploying, stopping."""
    demo = commands.add_parser("demo", help="run the whole loop once on the embedded default")
    demo.add_argument("--data", default="../shared/data/cifake-dev.tar.gz", help="base dataset (.tar.gz or folder)")
    demo.add_argument("--newgen", default="../shared/data/newgen-dev.tar.gz", help="images from a new generator")
    demo.add_argument("--architecture", default=DEFAULT_ARCHITECTURE, help="a preset (model/config.py)")
    demo.add_argument("--epochs", type=_positive_int, default=DEFAULT_EPOCHS)
    demo.add_argument("--limit-per-class", type=_positive_int, default=4000, help="base images imported per class")
    demo.add_argument("--max-train-images", type=_positive_int, default=20000)
    demo.add_argument("--report-share", type=float, default=0.8, help="share of the new-generator images reported")
    demo.add_argument("--serve-port", type=int, default=8000)
    demo.add_argument("--prefect-port", type=int, default=4200)
    demo.set_defaults(func=_cmd_demo)
    up = commands.add_parser(
        "up", help="the long-running local stack: Prefect server + UI, deployments, workers, serving"
    )
    up.add_argument("--home", default=".aidetect/up", help="store, Prefect database and logs (AIDETECT_HOME)")
    up.add_argument("--port", type=int, default=8000, help="serving")
    up.add_argument("--prefect-port", type=int, default=4200)
    up.set_defaults(func=_cmd_up)
    dep = commands.add_parser("deploy", help="create the cpu/gpu work pools and register prefect.yaml's deployments")
    dep.set_defaults(func=_cmd_deploy)
    stop = commands.add_parser("stop", help="stop the services a demo left running")
    stop.add_argument("--home", default=".aidetect/demo")
    stop.set_defaults(func=_cmd_stop)


def _add_lock_commands(commands: Commands) -> None:
    lck = commands.add_parser("lock", help="the flows' leases in the store (locks/)").add_subparsers(
        dest="lock_command", required=True
    )
    show = lck.add_parser("show", help="each lock: holder, age, expiry, live or stale")
    show.add_argument("name", nargs="?", help="one lock (e.g. retrain); default: all")
    show.set_defaults(func=_cmd_lock_show)
    clr = lck.add_parser("clear", help="remove a stale lock (its holder stopped renewing it)")
    clr.add_argument("name", help="the lock, e.g. retrain")
    clr.add_argument(
        "--force", action="store_true", help="also a live one (its run then stops before it registers or promotes)"
    )
    clr.set_defaults(func=_cmd_lock_clear)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    # TensorFlow's C++ start-up chatter drowns the progress lines; warnings still show.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    from storage import StoreError

    try:
        result: Any = args.func(args)
    except (UsageError, ValueError, FileNotFoundError, KeyError, StoreError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"aidetect: error: {message}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
