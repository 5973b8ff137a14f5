"""The documentation stays true to the code: every setting is in docs/configuration.md with its default,
every relative link in README.md and docs/*.md leads to a file (and heading) that exists, every path the
README names is shipped, and the README stays a short guide."""

from __future__ import annotations

import re
import tomllib
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from gateway.settings import Settings
from harness import ROOT

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
CONFIGURATION = ROOT / "docs" / "configuration.md"
README_MAX_LINES = 220

# The root section's heading; nested models are found by the TOML table in their heading's code spans.
ROOT_HEADING = "Top-level settings"
# How a dict field's key is written in its table's name: [routes.<name>], [webhooks.tenants.<tenant>].
KEY_NAMES = {"routes": "name", "tenants": "tenant", "operators": "tenant"}

HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")
CODE_SPAN = re.compile(r"`([^`]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


# -- the settings ---------------------------------------------------------------------------------------------


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds (through unions, Annotated, dict and list)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        for model in _models(arg):
            if model not in found:
                found.append(model)
    return found


def _is_dict(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is dict:
        return True
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        return any(_is_dict(arg) for arg in typing.get_args(annotation))
    return False


def _discriminator(model: type[BaseModel]) -> str | None:
    """``backend = "whisper"`` for a member of a union told apart by a Literal field."""
    for name, field in model.model_fields.items():
        if typing.get_origin(field.annotation) is typing.Literal and len(typing.get_args(field.annotation)) == 1:
            return f'{name} = "{typing.get_args(field.annotation)[0]}"'
    return None


def _sections() -> Iterator[tuple[type[BaseModel], str, tuple[str, ...]]]:
    """(model, where it is in the TOML file, the code spans its docs section's heading must hold), recursively."""
    seen: set[tuple[type[BaseModel], str]] = set()

    def walk(model: type[BaseModel], table: str, spans: tuple[str, ...]) -> Iterator[tuple[type[BaseModel], str, tuple[str, ...]]]:
        if (model, table) in seen:
            return
        seen.add((model, table))
        yield model, table, spans
        for name, field in model.model_fields.items():
            members = _models(field.annotation)
            for member in members:
                sub = f"{table}.{name}" if table else name
                if _is_dict(field.annotation):
                    sub += f".<{KEY_NAMES.get(name, 'key')}>"
                sub_spans: tuple[str, ...] = (f"[{sub}]",)
                if len(members) > 1:
                    tag = _discriminator(member)
                    assert tag is not None, f"{member.__name__}: a union member without a Literal field to tell it by"
                    sub_spans += (tag,)
                yield from walk(member, sub, sub_spans)

    yield from walk(Settings, "", ())


def _markdown_sections(text: str) -> list[tuple[str, list[str]]]:
    """(heading text, the lines under it up to the next heading), outside fenced code blocks."""
    sections: list[tuple[str, list[str]]] = [("", [])]
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        match = None if fenced else HEADING.match(line)
        if match:
            sections.append((match.group(2), []))
        else:
            sections[-1][1].append(line)
    return sections


def _find_section(sections: list[tuple[str, list[str]]], spans: tuple[str, ...]) -> list[str]:
    if not spans:
        matches = [lines for heading, lines in sections if heading == ROOT_HEADING]
        where = f"a heading {ROOT_HEADING!r}"
    else:
        matches = [lines for heading, lines in sections if all(s in CODE_SPAN.findall(heading) for s in spans)]
        where = "a heading with " + " and ".join(f"`{s}`" for s in spans)
    assert len(matches) == 1, f"docs/configuration.md needs exactly one section with {where} (found {len(matches)})"
    return matches[0]


def _rows(lines: list[str]) -> dict[str, list[str]]:
    """A section's table rows by the setting their first cell names: {name: [default cell, meaning cell]}."""
    rows: dict[str, list[str]] = {}
    for line in lines:
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        names = CODE_SPAN.findall(cells[0]) if cells else []
        if len(cells) >= 3 and names:
            rows[names[0]] = cells[1:]
    return rows


def _toml_value(span: str) -> Any:
    return tomllib.loads(f"value = {span}")["value"]


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _check_default(where: str, field: Any, cell: str) -> None:
    if field.default is PydanticUndefined and field.default_factory is None:
        assert "required" in cell.lower(), f"{where}: a required setting, whose default cell must say 'required': {cell!r}"
        return
    default = field.default_factory() if field.default_factory is not None else field.default
    if default is None:
        assert "unset" in cell.lower(), f"{where}: the default is None, which the default cell must call 'unset': {cell!r}"
        return
    if _models(field.annotation):
        if isinstance(default, dict):  # e.g. routes: echo and whisper
            missing = [key for key in default if key not in cell]
            assert not missing, f"{where}: the default cell must name {missing}: {cell!r}"
        return
    spans = CODE_SPAN.findall(cell)
    assert spans, f"{where}: the default cell needs the default as TOML in a code span: {cell!r}"
    try:
        shown = _toml_value(spans[0])
    except tomllib.TOMLDecodeError as exc:
        pytest.fail(f"{where}: the default `{spans[0]}` is not a TOML value: {exc}")
    assert shown == _plain(default), f"{where}: documented default `{spans[0]}`, the code's is {default!r}"


def _settings_cases() -> list[tuple[str, type[BaseModel], tuple[str, ...], str]]:
    return [(table or "(top level)", model, spans, name)
            for model, table, spans in _sections() for name in model.model_fields]


@pytest.mark.parametrize(("table", "model", "spans", "name"), _settings_cases(),
                         ids=[f"{t}:{n}" for t, _m, _s, n in _settings_cases()])
def test_every_setting_is_documented_with_its_default(table: str, model: type[BaseModel], spans: tuple[str, ...],
                                                       name: str) -> None:
    sections = _markdown_sections(CONFIGURATION.read_text())
    rows = _rows(_find_section(sections, spans))
    where = f"docs/configuration.md {' '.join(spans) or ROOT_HEADING}: `{name}`"
    assert name in rows, f"{where} is missing (a table row whose first cell is `{name}`)"
    default_cell, meaning = rows[name][0], rows[name][1]
    assert meaning, f"{where}: say what it means"
    _check_default(where, model.model_fields[name], default_cell)


def test_the_settings_walk_reaches_every_nested_model() -> None:
    tables = {table for _model, table, _spans in _sections()}
    assert {"", "auth", "auth.operators.<tenant>", "tls", "webhooks", "webhooks.tenants.<tenant>", "routes.<name>"} <= tables


def test_configuration_documents_no_setting_that_does_not_exist() -> None:
    sections = _markdown_sections(CONFIGURATION.read_text())
    for model, _table, spans in _sections():
        extra = set(_rows(_find_section(sections, spans))) - set(model.model_fields)
        assert not extra, f"docs/configuration.md {' '.join(spans) or ROOT_HEADING}: no such setting: {sorted(extra)}"


# -- links and paths ------------------------------------------------------------------------------------------


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(heading) for heading, _lines in _markdown_sections(path.read_text())[1:]}


def _links(path: Path) -> Iterator[str]:
    fenced = False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if not fenced:
            yield from LINK.findall(re.sub(r"`[^`]*`", "", line))


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files_that_exist(path: Path) -> None:
    broken = []
    for target in _links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file_part, _, fragment = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target} (no {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest})")
        elif fragment and dest.suffix == ".md" and fragment not in _anchors(dest):
            broken.append(f"{target} (no heading #{fragment} in {dest.relative_to(ROOT)})")
    assert not broken, f"{path.relative_to(ROOT)}: broken links: {broken}"


def test_the_readme_names_only_paths_the_repository_ships() -> None:
    """Its examples run as written: every file or folder of the repository it names exists."""
    named = re.findall(r"(?<![\w./-])((?:tests|docs|k8s|docker|bench|scripts|proto|protos|clients|gateway)/[\w./-]*)",
                       README.read_text())
    missing = sorted({p for p in (n.rstrip(".") for n in named) if not (ROOT / p).exists()})
    assert not missing, f"README.md names paths that do not exist: {missing}"


def test_the_readme_is_a_short_guide() -> None:
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; at most {README_MAX_LINES} (the rest goes to docs/)"
