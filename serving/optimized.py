"""Pre-optimised copies of ONNX files, made in a child process and cached on local disk.

Building a session from an exported file optimises its graph (constant folding, fusions, the
CPU's blocked layouts): 40-70 ms of CPU for an EfficientNet-B0 here, in the serving process,
on the cores the live model needs. A child process does that once per file at low priority
and saves the result in onnxruntime's own format; the replica then builds its session from it
with optimisation off (~20 ms, and no pause of the inference thread: see
``ModelHolder._session``). The copy is keyed by the file's sha256, the onnxruntime version and
the CPU (the saved graph may use kernels for this CPU's instruction set), so a replica that
restarts reuses it and another onnxruntime or machine makes its own. The session built from
it is the one the canaries check and that serves. A copy whose bytes no longer match the
digest recorded beside it is made again; one that will not load or fails the checks is
deleted and the original file is used instead.

    python -m serving.optimized SOURCE TARGET   # the child: optimise SOURCE, save TARGET
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path

log = logging.getLogger("aidetect.serving")

SUFFIX = ".ort"
OPTIMIZE_TIMEOUT_S = 300.0  # a starved low-priority child may be slow; past this, build from the original
_CHILD_NICE = 19


def cache_key(sha256: str) -> str:
    """File name of the optimised copy of the file with this sha256, for this onnxruntime and CPU."""
    import onnxruntime

    return f"{sha256}-ort{onnxruntime.__version__}-{_cpu_tag()}{SUFFIX}"


def optimized_copy(source: Path, sha256: str, cache: Path, *, timeout: float = OPTIMIZE_TIMEOUT_S) -> Path | None:
    """The cached optimised copy of ``source`` (whose sha256 is ``sha256``), made now if missing or damaged.

    None when the child process fails or times out: the caller builds from ``source``.
    """
    target = cache / cache_key(sha256)
    digest = _digest_file(target)
    if target.is_file() and digest.is_file() and digest.read_text() == sha256_file(target):
        return target
    discard(target)
    cache.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    command = [sys.executable, "-m", "serving.optimized", str(source), str(part)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)  # noqa: S603 - our own module
    except (OSError, subprocess.TimeoutExpired) as exc:
        part.unlink(missing_ok=True)
        log.warning("could not pre-optimise %s (%s); building from the original", source.name, exc)
        return None
    if result.returncode != 0 or not part.is_file():
        part.unlink(missing_ok=True)
        log.warning("could not pre-optimise %s: %s", source.name, result.stderr.strip()[-500:])
        return None
    _digest_file(part).write_text(sha256_file(part))
    part.replace(target)
    _digest_file(part).replace(digest)
    return target


def discard(path: Path) -> None:
    """Forget a cached copy (one that did not load or pass the checks, or whose bytes changed)."""
    if path.is_file():
        log.warning("optimised copy %s unusable: deleted", path.name)
    path.unlink(missing_ok=True)
    _digest_file(path).unlink(missing_ok=True)


def prune(cache: Path, keep_sha256: set[str]) -> None:
    """Delete the cached copies of files other than those with the sha256s in ``keep_sha256``."""
    if not cache.is_dir():
        return
    for old in cache.iterdir():
        if old.name.split("-", 1)[0] not in keep_sha256:
            old.unlink(missing_ok=True)


def _digest_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def sha256_file(path: Path) -> str:
    """The file's sha256 (hex), read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _cpu_tag() -> str:
    """Eight hex digits naming the CPU model and its instruction-set flags (or the machine type)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        described = [line for line in lines if line.startswith(("model name", "flags", "Features"))][:2]
    except OSError:
        described = []
    text = "\n".join(described) or platform.machine()
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _optimize(source: str, target: str) -> None:
    """In the child: optimise ``source`` fully on one thread at low priority, save it to ``target``."""
    import onnxruntime as ort

    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, 0, _CHILD_NICE)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = target
    options.add_session_config_entry("session.save_model_format", "ORT")
    options.log_severity_level = 3  # not the warning that the saved graph is for this CPU: it is keyed by it
    ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


if __name__ == "__main__":
    _optimize(sys.argv[1], sys.argv[2])
