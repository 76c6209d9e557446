"""The ``aidetect`` command line explains itself: help with defaults, ``--version``, exit codes
(0 / 1 runtime / 2 usage), shell completion, ``config show`` and the README's configuration
reference generated from the settings class."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aidetect.settings import Settings, get_settings
from cli import config
from cli.main import app, main
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
HEAVY = {"tensorflow", "keras", "prefect", "onnxruntime", "jax", "evidently", "fastapi", "uvicorn", "boto3"}


@pytest.fixture(autouse=True)
def clean_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Every test reads settings from its own environment: no AIDETECT_* from outside, a fresh home."""
    for name in list(os.environ):
        if name.upper().startswith("AIDETECT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AIDETECT_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``aidetect ARGS`` in this process: (exit status, stdout, stderr)."""
    get_settings.cache_clear()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _commands() -> Iterator[tuple[str, object]]:
    import typer

    def walk(command: object, path: str) -> Iterator[tuple[str, object]]:
        children = getattr(command, "commands", None)
        if children is None:
            yield path, command
            return
        for name, child in children.items():
            yield from walk(child, f"{path} {name}")

    yield from walk(typer.main.get_command(app), "aidetect")


def test_every_option_has_help_and_shows_its_default() -> None:
    commands = dict(_commands())
    assert {
        "aidetect serve",
        "aidetect flow retrain",
        "aidetect feedback review accept",
        "aidetect config show",
    } <= set(commands)
    missing = []
    for path, command in commands.items():
        for param in command.params:  # type: ignore[attr-defined]
            if param.param_type_name != "option" or param.name == "help":
                continue
            if not param.help:
                missing.append(f"{path} {param.opts[0]}: no help")
            if not (param.is_flag or param.required) and param.show_default in (None, False):
                missing.append(f"{path} {param.opts[0]}: no default shown")
    assert missing == []


def test_help_shows_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "serve", "--help")
    assert code == 0
    assert re.search(r"--host .*\[default: 127\.0\.0\.1\]", " ".join(out.split()))
    assert "[default: 8000" in out
    code, out, _ = run(capsys, "feedback", "review", "list", "--help")
    flat = " ".join(out.split())
    # the policy's numbers: the setting and its default, read from the settings class
    for name in ("feedback_min_agreeing_clients", "feedback_max_per_client"):
        default = Settings.model_fields[name].default
        assert f"[default: ($AIDETECT_{name.upper()}, else {default})]" in flat, flat
    assert "[default: quarantined]" in flat
    code, out, _ = run(capsys, "flow", "retrain", "--help")
    flat = " ".join(out.split())
    assert "[default: effnet-lite0-multiscale]" in flat and "[default: 10]" in flat and "--no-warm-start" in flat
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "--version" in out and "--install-completion" in out and "config" in out


def test_version_prints_the_package_version_and_build(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    from aidetect.version import __version__

    monkeypatch.setenv("AIDETECT_BUILD", "abc1234")
    code, out, _ = run(capsys, "--version")
    assert (code, out) == (0, f"aidetect {__version__}+abc1234\n")


def test_exit_codes_usage_2_runtime_1_with_one_line_and_a_traceback_only_with_debug(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run(capsys, "model", "list", "--no-such-option")
    assert code == 2 and "No such option: --no-such-option" in err and "Usage: aidetect model list" in err
    code, _, err = run(capsys, "data", "import", "somewhere")  # --name is required
    assert code == 2 and "Missing option '--name'" in err
    code, _, err = run(capsys, "serve", "--port", "70000")
    assert code == 2 and "Invalid value for '--port'" in err and "65535" in err

    # a store that is not there: an S3 endpoint on a closed loopback port
    monkeypatch.setenv("AIDETECT_STORE_URL", "s3://bucket/prefix")
    monkeypatch.setenv("AIDETECT_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    code, out, err = run(capsys, "data", "list")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("aidetect: error: object store unreachable"), err
    assert "AIDETECT_STORE_URL" in err and "Traceback" not in err

    monkeypatch.setenv("AIDETECT_DEBUG", "1")  # the traceback, for a bug report
    get_settings.cache_clear()
    with pytest.raises(Exception, match="unreachable"):
        main(["data", "list"])
    monkeypatch.delenv("AIDETECT_DEBUG")

    monkeypatch.setenv("AIDETECT_BATCH_MAX_SIZE", "1000")
    code, _, err = run(capsys, "model", "list")
    assert code == 1 and err.count("\n") == 1
    assert "invalid settings: AIDETECT_BATCH_MAX_SIZE='1000': Input should be less than or equal to 256" in err


def test_a_bad_secret_setting_is_never_echoed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A webhook URL carries its token: refused, the error names the variable and never shows the value,
    neither in `aidetect`'s line nor in the traceback a worker or `python -m flows.notifications` prints."""
    token = os.urandom(8).hex()
    bad = f"ftp://hooks.example.com/x?token={token}"
    with pytest.raises(ValueError) as caught:
        Settings(notify_webhook_url=bad)
    assert "notify_webhook_url must be an http:// or https:// URL" in str(caught.value)
    assert token not in str(caught.value) and token not in repr(caught.value)

    monkeypatch.setenv("AIDETECT_NOTIFY_WEBHOOK_URL", bad)
    code, out, err = run(capsys, "config", "show")
    assert code == 1 and "AIDETECT_NOTIFY_WEBHOOK_URL: notify_webhook_url must be" in err
    assert token not in out + err

    env = {**os.environ, "AIDETECT_HOME": str(tmp_path / "home")}
    result = subprocess.run(
        [sys.executable, "-m", "flows.notifications"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0 and "notify_webhook_url must be an http:// or https:// URL" in result.stderr
    assert token not in result.stdout + result.stderr


def test_the_installed_command_exits_1_on_a_runtime_error_and_help_imports_nothing_heavy(tmp_path: Path) -> None:
    aidetect = Path(sys.executable).parent / "aidetect"
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("AIDETECT_")}
    env["AIDETECT_HOME"] = str(tmp_path / "home")
    failed = subprocess.run(
        [str(aidetect), "lock", "clear", "retrain"], capture_output=True, text=True, env=env, timeout=120
    )
    assert (failed.returncode, failed.stdout, failed.stderr) == (1, "", "aidetect: error: no lock 'retrain'\n")
    debug = subprocess.run(
        [str(aidetect), "--debug", "lock", "clear", "retrain"], capture_output=True, text=True, env=env, timeout=120
    )
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "KeyError" in debug.stderr

    code = (
        "import sys\nfrom cli.main import main\nrc = main(['--help'])\n"
        f"print(rc, sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(HEAVY)!r})))"
    )
    helped = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.splitlines()[-1] == "0 []"


def test_shell_completion(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = run(capsys, "--show-completion", "bash")
    assert code == 0 and "_AIDETECT_COMPLETE=complete_bash" in out and "complete -o default -F" in out
    # what bash then asks: the words so far, the one being completed
    monkeypatch.setenv("_AIDETECT_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", "aidetect lock c")
    monkeypatch.setenv("COMP_CWORD", "2")
    code, out, _ = run(capsys)
    assert code == 0 and out.split() == ["clear"]
    monkeypatch.setenv("COMP_WORDS", "aidetect feedback review list --status ")
    monkeypatch.setenv("COMP_CWORD", "5")
    code, out, _ = run(capsys)
    assert out.split() == ["quarantined", "accepted", "rejected", "all"]


def test_datasets_takes_several_values_as_before() -> None:
    from cli.main import _expand_multi_value

    assert _expand_multi_value(["flow", "retrain", "--datasets", "a", "b@3", "--epochs", "2"]) == [
        "flow",
        "retrain",
        "--datasets",
        "a",
        "--datasets",
        "b@3",
        "--epochs",
        "2",
    ]
    assert _expand_multi_value(["flow", "retrain", "--datasets", "--seed", "1"]) == ["flow", "retrain", "--seed", "1"]
    assert _expand_multi_value(["flow", "retrain", "--datasets=a"]) == ["flow", "retrain", "--datasets=a"]


def test_config_show_masks_secrets_and_names_each_source(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secrets = ("token-for-the-admin-routes-1234", "s3-password-x", "hook-secret-y")
    monkeypatch.setenv("AIDETECT_ADMIN_TOKEN", secrets[0])
    monkeypatch.setenv("aidetect_s3_endpoint_url", f"http://minio:{secrets[1]}@127.0.0.1:9000")  # any case
    monkeypatch.setenv("AIDETECT_NOTIFY_WEBHOOK_URL", f"https://hooks.example.com/x?token={secrets[2]}")
    monkeypatch.setenv("AIDETECT_BATCH_MAX_SIZE", "8")
    dotenv = tmp_path / "settings.env"
    dotenv.write_text("AIDETECT_FEEDBACK_BURST=3\nAIDETECT_BATCH_MAX_SIZE=9\n")
    monkeypatch.setitem(Settings.model_config, "env_file", str(dotenv))  # as if the settings read a .env file

    code, out, _ = run(capsys, "config", "show", "--json")
    assert code == 0
    assert not any(secret in out for secret in secrets)
    rows = {row["name"]: row for row in json.loads(out)}
    assert list(rows) == list(Settings.model_fields)  # every setting, in the class's order
    assert rows["admin_token"] == {
        "name": "admin_token",
        "env": "AIDETECT_ADMIN_TOKEN",
        "value": "********",
        "source": "environment",
    }
    assert rows["s3_endpoint_url"]["value"] == "http://minio:********@127.0.0.1:9000"
    assert rows["notify_webhook_url"]["value"] == "********"
    assert (rows["batch_max_size"]["value"], rows["batch_max_size"]["source"]) == (8, "environment")  # env wins
    assert (rows["feedback_burst"]["value"], rows["feedback_burst"]["source"]) == (3, f".env file {dotenv}")
    assert (rows["model_alias"]["value"], rows["model_alias"]["source"]) == ("production", "default")
    assert rows["admin_token"]["source"] == "environment"

    code, table, _ = run(capsys, "config", "show")
    assert code == 0 and not any(secret in table for secret in secrets)
    lines = {line.split()[0]: line.split() for line in table.splitlines()}
    assert lines["AIDETECT_BATCH_MAX_SIZE"] == ["AIDETECT_BATCH_MAX_SIZE", "8", "environment"]
    assert lines["AIDETECT_SHADOW_ALIAS"] == ["AIDETECT_SHADOW_ALIAS", "unset", "default"]


def test_urls_lose_their_credentials() -> None:
    assert config.mask_url("s3://bucket/prefix") == "s3://bucket/prefix"
    assert (
        config.mask_url("https://user:pw@host:8443/p?a=1&api_key=k")
        == "https://user:********@host:8443/p?a=1&api_key=********"
    )
    assert config.mask_url("https://tok3n@host/p") == "https://********@host/p"
    assert config.mask_url("not a url") == "not a url"


def test_the_readme_configuration_reference_is_generated_from_the_settings() -> None:
    block = config.reference_block(README.read_text())
    assert block == config.reference_markdown(), (
        "README.md's configuration reference is not the one aidetect/settings.py gives "
        f"(a setting was added or changed): regenerate it with `{config.REGENERATE}`"
    )


def test_the_reference_has_a_row_per_setting_and_config_reference_writes_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    reference = config.reference_markdown()
    rows = [line for line in reference.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == list(Settings.model_fields)
    no_description = [name for name, field in Settings.model_fields.items() if not field.description]
    assert no_description == [], "every setting needs a description= (the README's reference shows it)"
    row = next(r for r in rows if r.startswith("| `batch_max_size`"))
    assert row.startswith("| `batch_max_size` | `AIDETECT_BATCH_MAX_SIZE` | int, >= 1, <= 256 | `16` | ")
    assert "| `model_variant` | `AIDETECT_MODEL_VARIANT` | one of `fp32`, `int8` | `fp32` |" in reference
    assert "| `admin_token` | `AIDETECT_ADMIN_TOKEN` | secret | unset |" in reference

    readme = tmp_path / "README.md"
    stale = f"# x\n\nbefore\n{config.REFERENCE_START}\n| old |\n{config.REFERENCE_END}\nafter\n"
    readme.write_text(stale)
    code, out, _ = run(capsys, "config", "reference", "--write", str(readme))
    assert code == 0 and "updated" in out
    assert readme.read_text() == f"# x\n\nbefore\n{config.REFERENCE_START}\n{reference}{config.REFERENCE_END}\nafter\n"
    code, out, _ = run(capsys, "config", "reference", "--write", str(readme))
    assert code == 0 and "already up to date" in out
    code, out, _ = run(capsys, "config", "reference")
    assert code == 0 and out == reference
    readme.write_text("no markers here\n")
    code, _, err = run(capsys, "config", "reference", "--write", str(readme))
    assert code == 1 and "no <!-- config-reference:start -->" in err


def test_the_feedback_policy_has_one_source(capsys: pytest.CaptureFixture[str], monkeypatch, tmp_path: Path) -> None:
    """AIDETECT_FEEDBACK_MIN_AGREEING_CLIENTS reaches the CLI, serving and the gather flow (one
    ``configured_policy``); an option overrides it for one command only."""
    from feedback.policy import Policy, configured_policy
    from feedback.records import FeedbackRecord
    from feedback.store import save_feedback
    from storage import LocalStore

    store = LocalStore(tmp_path / "home" / "store")
    record = FeedbackRecord(image_sha256="s0", image_key="images/s0.jpg", claimed_label="ai", client="c")
    save_feedback(store, record)
    code, out, _ = run(capsys, "feedback", "review", "list")
    assert code == 0 and "waiting for 1 more independent report(s)" in out  # the default: 2 clients

    monkeypatch.setenv("AIDETECT_FEEDBACK_MIN_AGREEING_CLIENTS", "3")
    monkeypatch.setenv("AIDETECT_FEEDBACK_MAX_PER_CLIENT", "7")
    code, out, _ = run(capsys, "feedback", "review", "list")
    assert code == 0 and "waiting for 2 more independent report(s)" in out
    code, out, _ = run(capsys, "feedback", "review", "list", "--min-agreeing-clients", "1", "--status", "all")
    assert "\taccepted\t" in out and "1 independent clients agree" in out
    code, _, err = run(capsys, "feedback", "review", "list", "--min-agreeing-clients", "0")
    assert code == 2 and "must be a positive integer, got 0" in err
    # what serving (configured_policy(settings)) and gather-feedback (configured_policy()) build
    assert configured_policy(get_settings()) == configured_policy() == Policy(3, 7)
    with pytest.raises(ValueError, match="at least 1"):
        configured_policy(min_agreeing_clients=0)  # never silently the default


def test_notify_apply_and_remove_the_automations(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, prefect_api: None
) -> None:
    from prefect import get_client

    from flows.notifications import AUTOMATION_PREFIX, NOTICES

    def ours() -> list[str]:
        with get_client(sync_client=True) as client:
            return sorted(a.name for a in client.read_automations() if a.name.startswith(AUTOMATION_PREFIX))

    code, _, err = run(capsys, "notify", "apply")
    assert code == 1 and "no webhook: set AIDETECT_NOTIFY_WEBHOOK_URL" in err
    code, _, err = run(capsys, "notify", "apply", "--webhook-url", "ftp://hooks.example.com/x")
    assert code == 2 and "--webhook-url: notify_webhook_url must be an http:// or https:// URL" in err
    assert ours() == []

    monkeypatch.setenv("AIDETECT_NOTIFY_WEBHOOK_URL", "http://127.0.0.1:9/hooks/aidetect?token=secret")
    try:
        code, out, err = run(capsys, "notify", "apply")
        assert code == 0, err
        assert out.startswith(f"{len(NOTICES)} automations on http://") and "secret" not in out
        assert ours() == sorted(AUTOMATION_PREFIX + n.name for n in NOTICES)
        assert [line.strip() for line in out.splitlines()[1:]] == [AUTOMATION_PREFIX + n.name for n in NOTICES]
    finally:
        code, out, _ = run(capsys, "notify", "remove")
    assert code == 0 and out.startswith(f"removed {len(NOTICES)} automations from http://")
    assert ours() == []


def test_notify_needs_a_prefect_api(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("AIDETECT_", "PREFECT_"))}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect"), "AIDETECT_HOME": str(tmp_path / "home")}
    result = subprocess.run(
        [sys.executable, "-m", "cli", "notify", "apply", "--webhook-url", "https://hooks.example.com/x"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 1 and result.stderr == (
        "aidetect: error: PREFECT_API_URL is not set: point it at the Prefect server whose automations to change\n"
    )
