"""``aidetect config``: the effective settings and where each came from; the README's reference table.

Both read the one settings class (``aidetect.settings.Settings``): its fields, their types,
constraints, defaults and descriptions. ``config show`` adds the value this process gets and
its source; ``config reference`` renders the fields as the Markdown table the README carries
between ``REFERENCE_START`` and ``REFERENCE_END`` (``--write README.md`` replaces it there).
"""

from __future__ import annotations

import enum
import os
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import SecretStr
from pydantic.fields import FieldInfo

from aidetect.settings import Settings

MASK = "********"
REFERENCE_START = "<!-- config-reference:start -->"
REFERENCE_END = "<!-- config-reference:end -->"
REGENERATE = ".venv/bin/aidetect config reference --write README.md"
_SECRET_QUERY = re.compile(r"token|key|secret|password|passwd|pass|sig|signature|auth|credential", re.IGNORECASE)


def env_name(name: str, field: FieldInfo) -> str:
    """The environment variable that sets the field (its alias, else prefix + name, upper case)."""
    alias = field.validation_alias
    if isinstance(alias, str):
        return alias.upper()
    return f"{Settings.model_config.get('env_prefix', '')}{name}".upper()


def mask_url(text: str) -> str:
    """``text`` with any credentials of a URL in it replaced by ``MASK``: the password (or a lone
    user name, often a token) and query parameters named like a secret."""
    if "://" not in text:
        return text
    try:
        parts = urlsplit(text)
        hostport = parts.netloc.rpartition("@")[2]
        netloc = parts.netloc
        if "@" in parts.netloc:
            user = parts.username if parts.password is not None else None
            netloc = f"{user}:{MASK}@{hostport}" if user else f"{MASK}@{hostport}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode([(k, MASK if _SECRET_QUERY.search(k) else v) for k, v in pairs], safe="*")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:  # not parseable as a URL (a bad port, say): show nothing of it
        return MASK


def shown_value(value: Any) -> Any:
    """A setting's value as ``config show`` prints it (JSON-ready): secrets masked, paths as text."""
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, str):
        return mask_url(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [shown_value(v) for v in value]
    return value


def _text(value: Any) -> str:
    """A shown value as one line of text (as it would be written in the environment)."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return ",".join(_text(v) for v in value) if value else "empty"
    if value == "":
        return "empty"
    return str(value)


@dataclass(frozen=True)
class Effective:
    """One setting as this process has it."""

    name: str
    env: str
    value: Any  # as shown: masked, JSON-ready
    source: str  # "environment", ".env file <path>" or "default"


def _dotenv_files() -> list[Path]:
    configured = Settings.model_config.get("env_file")
    if configured is None:
        return []
    listed = [configured] if isinstance(configured, str | os.PathLike) else list(configured)
    return [Path(p) for p in listed if Path(p).is_file()]


def _dotenv_names() -> dict[str, Path]:
    """Upper-cased variable names in the .env file(s) the settings read, with the file (the last wins)."""
    found: dict[str, Path] = {}
    files = _dotenv_files()
    if files:
        from dotenv import dotenv_values

        for path in files:
            found.update({key.upper(): path for key in dotenv_values(path)})
    return found


def effective_settings(settings: Settings, environ: typing.Mapping[str, str] | None = None) -> list[Effective]:
    """Every setting: its value in ``settings`` (masked) and where it came from.

    The environment wins over a .env file, which wins over the default, as pydantic-settings reads
    them; names match case-insensitively, as the settings are read.
    """
    environ = os.environ if environ is None else environ
    in_env = {key.upper() for key in environ}
    in_dotenv = _dotenv_names()
    rows = []
    for name, field in Settings.model_fields.items():
        env = env_name(name, field)
        if env in in_env:
            source = "environment"
        elif env in in_dotenv:
            source = f".env file {in_dotenv[env]}"
        else:
            source = "default"
        rows.append(Effective(name, env, shown_value(getattr(settings, name)), source))
    return rows


def show_table(rows: list[Effective]) -> str:
    """``config show``'s table: variable, value, source; one setting a line."""
    width = max(len(r.env) for r in rows)
    value_width = min(48, max(len(_text(r.value)) for r in rows))
    return "\n".join(f"{r.env:<{width}}  {_text(r.value):<{value_width}}  {r.source}" for r in rows)


# --- the reference --------------------------------------------------------------------------


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        named = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(named)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin in (list, tuple, set):
        return f"list of {_type_name(args[0])} (comma-separated)" if args else "list"
    if annotation is SecretStr:
        return "secret"
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def _constraints(field: FieldInfo) -> str:
    bounds = []
    for item in field.metadata:
        for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            if getattr(item, attr, None) is not None:
                bounds.append(f"{sign} {_text(getattr(item, attr))}")
    return ", ".join(bounds)


def type_text(field: FieldInfo) -> str:
    """The field's type as the reference writes it, with its bounds (``float, > 0``)."""
    bounds = _constraints(field)
    name = _type_name(field.annotation)
    return f"{name}, {bounds}" if bounds else name


def default_text(field: FieldInfo) -> str:
    """The field's default as the reference writes it."""
    return _text(shown_value(field.get_default(call_default_factory=True)))


def _cell(text: str) -> str:
    """``text`` as one table cell: one line, ``|`` escaped, and outside code spans a ``<`` that would open
    an HTML tag as ``&lt;`` (Markdown would take ``<dir>`` for one and hide it)."""
    spans = " ".join(text.split()).replace("|", "\\|").split("`")
    return "`".join(s if i % 2 else re.sub(r"<(?=[A-Za-z/!?])", "&lt;", s) for i, s in enumerate(spans))


def reference_markdown() -> str:
    """The configuration reference: one table row per setting, from the settings class alone
    (never from this process's environment)."""
    lines = [
        f"<!-- generated from aidetect/settings.py by `{REGENERATE}`; edit the settings, not this table -->",
        "",
        "| Setting | Environment variable | Type | Default | Description |",
        "|---|---|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        default = default_text(field)
        lines.append(
            f"| `{name}` | `{env_name(name, field)}` | {_cell(type_text(field))} | "
            f"{'`' + _cell(default) + '`' if default not in ('unset', 'empty') else default} | "
            f"{_cell(field.description or '')} |"
        )
    return "\n".join(lines) + "\n"


class NoMarkers(ValueError):
    """The file has no (or broken) reference markers."""


def reference_block(text: str) -> str:
    """What ``text`` (the README) holds between the reference markers."""
    start, end = text.find(REFERENCE_START), text.find(REFERENCE_END)
    if start < 0 or end < start:
        raise NoMarkers(f"no {REFERENCE_START} ... {REFERENCE_END} markers (in this order)")
    return text[start + len(REFERENCE_START) : end].strip("\n") + "\n"


def with_reference(text: str) -> str:
    """``text`` with the block between the markers replaced by the generated reference."""
    reference_block(text)  # the markers are there
    start = text.index(REFERENCE_START) + len(REFERENCE_START)
    end = text.index(REFERENCE_END)
    return f"{text[:start]}\n{reference_markdown()}{text[end:]}"
