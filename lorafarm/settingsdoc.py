"""The settings table (environment variable, default, meaning), rendered from the settings classes.

``python -m lorafarm.settingsdoc > docs/SETTINGS.md``. ``tests/unit/test_settingsdoc.py`` fails when
the file and a fresh rendering differ, so the table cannot drift from the code. ``env_names`` is
also what the deploy tests use to check the variables that compose and Kubernetes set.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from typing import Any, Literal, get_args, get_origin

from pydantic import AliasChoices, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

from common.settings import CommonSettings
from router.settings import RouterSettings
from worker.settings import WorkerSettings

#: (title, class, the class it extends, who reads it). A subclass's table lists only the
#: fields it adds or whose default it changes.
SECTIONS: tuple[tuple[str, type[BaseSettings], type[BaseSettings] | None, str], ...] = (
    ("Router and workers", CommonSettings, None, "Read by `python -m router` and by `python -m worker`."),
    ("Router", RouterSettings, CommonSettings, "Read by `python -m router`."),
    (
        "Worker",
        WorkerSettings,
        CommonSettings,
        "Read by `python -m worker` (`--base REPO_ID`, repeated for a multi-base worker, overrides `LORAFARM_BASE`).",
    ),
)

#: Variables read by the libraries lorafarm uses, not by its settings, that the deploy files set.
THIRD_PARTY_ENV: dict[str, str] = {
    "HF_HOME": "huggingface_hub's cache folder: the model cache volume of the worker images.",
    "HF_HUB_DISABLE_XET": "`1`: download plain files, never through Xet (the devhub serves no Xet).",
    "HF_HUB_DISABLE_TELEMETRY": "`1`: huggingface_hub sends no telemetry.",
}

_HEADER = """\
# Settings

Every setting is an environment variable. This file is generated from the settings classes
(`common/settings.py`, `router/settings.py`, `worker/settings.py`) by
`python -m lorafarm.settingsdoc > docs/SETTINGS.md`; `tests/unit/test_settingsdoc.py` fails
when the two disagree. Names are case-insensitive; where a row lists two names, the first one
set wins. Lists are comma-separated.
"""


def env_names(cls: type[BaseSettings], field_name: str) -> tuple[str, ...]:
    """The environment variables that set one field, as pydantic-settings looks them up."""
    field = cls.model_fields[field_name]
    alias = field.validation_alias or field.alias
    if isinstance(alias, AliasChoices):
        names = [choice for choice in alias.choices if isinstance(choice, str)]
    elif isinstance(alias, str):
        names = [alias]
    else:
        names = [f"{cls.model_config.get('env_prefix', '')}{field_name}"]
    return tuple(name.upper() for name in names)


def env_map(cls: type[BaseSettings]) -> dict[str, str]:
    """Every environment variable the class reads, mapped to its field name."""
    return {env: name for name in cls.model_fields for env in env_names(cls, name)}


def _own_fields(cls: type[BaseSettings], parent: type[BaseSettings] | None) -> Iterator[str]:
    for name, field in cls.model_fields.items():
        inherited = parent.model_fields.get(name) if parent else None
        if inherited is None or _default(name, inherited) != _default(name, field):
            yield name


def _format(name: str, value: Any) -> str:
    if value is None:
        return "*(unset)*"
    if isinstance(value, SecretStr):
        return "*(secret)*"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list | tuple | set):
        return f"`{','.join(str(v) for v in value)}`" if value else "*(empty)*"
    if isinstance(value, int) and name.endswith("_bytes") and value >= 2**20:
        unit, size = ("GiB", value / 2**30) if value >= 2**30 else ("MiB", value / 2**20)
        return f"`{value}` ({size:g} {unit})"
    if value == "":
        return '`""`'
    return f"`{value}`"


def _default(name: str, field: FieldInfo) -> str:
    if field.default is not PydanticUndefined:
        return _format(name, field.default)
    if field.default_factory is not None:
        value = field.get_default(call_default_factory=True, validated_data={})
        # A factory that returns a container is a constant default; one that returns a scalar
        # (a host name, a pid) differs per machine and is not printed.
        return _format(name, value) if isinstance(value, list | tuple | set | dict) else "*(computed)*"
    return "*(required)*"


def _meaning(field: FieldInfo) -> str:
    text = (field.description or "").strip()
    if get_origin(field.annotation) is Literal:
        text += " One of " + ", ".join(f"`{choice}`" for choice in get_args(field.annotation)) + "."
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def render() -> str:
    """The whole of docs/SETTINGS.md."""
    lines = [_HEADER]
    for title, cls, parent, readers in SECTIONS:
        rows = [
            (
                " or ".join(f"`{env}`" for env in env_names(cls, name)),
                _default(name, cls.model_fields[name]),
                _meaning(cls.model_fields[name]),
            )
            for name in _own_fields(cls, parent)
        ]
        lines += [f"## {title}", "", readers, "", *_table(("Variable", "Default", "Meaning"), rows), ""]
    lines += [
        "## Read by libraries",
        "",
        "Not lorafarm settings; the deploy files set them for huggingface_hub.",
        "",
        *_table(("Variable", "Meaning"), [(f"`{env}`", meaning) for env, meaning in THIRD_PARTY_ENV.items()]),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
