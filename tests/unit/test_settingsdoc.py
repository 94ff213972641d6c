"""docs/SETTINGS.md is the rendering of the settings classes, and its names are the ones read."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from lorafarm import settingsdoc

ROOT = Path(__file__).resolve().parents[2]
CLASSES = [cls for _, cls, _, _ in settingsdoc.SECTIONS]


def test_settings_md_is_the_fresh_rendering() -> None:
    committed = (ROOT / "docs" / "SETTINGS.md").read_text()
    assert committed == settingsdoc.render(), (
        "docs/SETTINGS.md is stale: run `.venv/bin/python -m lorafarm.settingsdoc > docs/SETTINGS.md`"
    )


def test_every_field_has_a_row_and_a_meaning() -> None:
    text = settingsdoc.render()
    for cls in CLASSES:
        for name, field in cls.model_fields.items():
            assert field.description, f"{cls.__name__}.{name} has no description for the table"
            for env in settingsdoc.env_names(cls, name):
                assert f"`{env}`" in text, f"{env} ({cls.__name__}.{name}) is missing from the table"


def _probe_value(annotation: Any, default: Any) -> str | None:
    """A value of the field's type, unlike its default, as an environment variable carries it."""
    if get_origin(annotation) is Literal:
        return next(str(choice) for choice in get_args(annotation) if choice != default)
    args = set(get_args(annotation)) or {annotation}
    if bool in args:
        return "false" if default else "true"
    for kind, text in ((int, "7"), (float, "7.5"), (str, "probe")):
        if kind in args:
            return text
    return None


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_each_documented_name_is_read_by_the_class(cls: type[BaseSettings], monkeypatch: pytest.MonkeyPatch) -> None:
    """Setting the variable changes the field, or is refused by its validation: either way it is read."""
    for name, field in cls.model_fields.items():
        baseline = getattr(cls(), name)
        value = _probe_value(field.annotation, baseline)
        if value is None:
            continue
        for env in settingsdoc.env_names(cls, name):
            with monkeypatch.context() as env_patch:
                env_patch.setenv(env, value)
                try:
                    got = getattr(cls(), name)
                except ValidationError:
                    continue
                assert got != baseline, f"{env}={value} does not set {cls.__name__}.{name}"
