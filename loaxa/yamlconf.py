"""Load YAML configuration into pydantic models, with errors that name file, line, column and field.

Every problem is reported as ``PATH:LINE:COLUMN: field.path: message`` (1-based line and column),
whether it is a YAML syntax error, a duplicate key, an unknown key, a wrong type, a bad id or a
missing required field. Nothing is half-loaded: either the whole file validates or nothing is returned.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, model_validator

M = TypeVar("M", bound=BaseModel)
Loc = tuple[str | int, ...]

MAX_CONFIG_BYTES = 1024 * 1024


@dataclass(frozen=True)
class ConfigProblem:
    path: str
    line: int
    column: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.field}: {self.message}"


class ConfigError(Exception):
    """One or more problems in a configuration file."""

    def __init__(self, problems: Sequence[ConfigProblem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def _construct(node: yaml.Node, loc: Loc, marks: dict[Loc, tuple[int, int]], problems: list[tuple[Loc, yaml.Node, str]],
               loader: yaml.SafeLoader) -> Any:
    marks[loc] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool):
                problems.append((loc, key_node, "mapping keys must be plain scalars"))
                continue
            key = str(key) if not isinstance(key, str) else key
            if key in out:
                problems.append((loc + (key,), key_node, f"duplicate key {key!r}"))
                continue
            marks[loc + (key,)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = _construct(value_node, loc + (key,), marks, problems, loader)
            # the value's own mark is more precise for type errors; keep the key's for "unknown key"
            marks[loc + (key, "__key__")] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(child, loc + (i,), marks, problems, loader) for i, child in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def load_yaml_with_marks(text: str, path: str) -> tuple[Any, dict[Loc, tuple[int, int]]]:
    """Parse YAML; return the data and a map from data path to (line, column). Raises ConfigError."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        marks: dict[Loc, tuple[int, int]] = {}
        dup: list[tuple[Loc, yaml.Node, str]] = []
        data = {} if node is None else _construct(node, (), marks, dup, loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        msg = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise ConfigError([ConfigProblem(path, line, col, "(yaml)", f"YAML syntax error: {msg}")]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem(path, 1, 1, "(yaml)", f"YAML error: {exc}")]) from exc
    finally:
        loader.dispose()
    if dup:
        raise ConfigError([
            ConfigProblem(path, n.start_mark.line + 1, n.start_mark.column + 1, _dotted(loc) or "(top)", msg)
            for loc, n, msg in dup
        ])
    return data, marks


def _dotted(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _data_loc(data: Any, loc: Sequence[str | int]) -> tuple[Loc, bool]:
    """Follow pydantic's error location through the data, skipping union tags and validator names.

    Returns the longest path that exists in the data and whether the whole location was found.
    """
    path: list[str | int] = []
    cur = data
    complete = True
    for i, part in enumerate(loc):
        if isinstance(cur, dict) and part in cur:
            path.append(part)
            cur = cur[part]
        elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            path.append(part)
            cur = cur[part]
        elif i == len(loc) - 1:
            path.append(part)  # a missing key: name it, place it at its parent
            complete = False
        # otherwise: a union tag or a function name in pydantic's location; skip it
    return tuple(path), complete


def problems_from_validation(exc: ValidationError, data: Any, marks: dict[Loc, tuple[int, int]],
                             path: str) -> list[ConfigProblem]:
    problems = []
    for err in exc.errors():
        loc, complete = _data_loc(data, err["loc"])
        if err["type"] == "extra_forbidden":
            pos = marks.get(loc + ("__key__",)) or marks.get(loc)
            msg = "unknown key (check the spelling; see the example configs)"
        else:
            pos = marks.get(loc) if complete else None
            msg = err["msg"]
            if err["type"] == "missing":
                msg = "required field is missing"
        if pos is None:  # walk up to the nearest ancestor we know a place for
            for cut in range(len(loc), -1, -1):
                if loc[:cut] in marks:
                    pos = marks[loc[:cut]]
                    break
        line, col = pos or (1, 1)
        problems.append(ConfigProblem(path, line, col, _dotted(loc) or "(top)", msg))
    problems.sort(key=lambda p: (p.line, p.column))
    return problems


def load_config(path: str | os.PathLike[str], model: type[M]) -> M:
    """Read ``path`` and validate it as ``model``; raise :class:`ConfigError` listing every problem."""
    p = Path(path)
    shown = str(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError([ConfigProblem(shown, 1, 1, "(file)", f"cannot read: {exc.strerror}")]) from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError([ConfigProblem(shown, 1, 1, "(file)", f"larger than {MAX_CONFIG_BYTES} bytes")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError([ConfigProblem(shown, line, 1, "(file)", "not valid UTF-8")]) from exc
    data, marks = load_yaml_with_marks(text, shown)
    if not isinstance(data, dict):
        raise ConfigError([ConfigProblem(shown, 1, 1, "(top)", "the file must be a mapping of sections")])
    try:
        return model.model_validate(data, context={"base_dir": p.resolve().parent})
    except ValidationError as exc:
        raise ConfigError(problems_from_validation(exc, data, marks, shown)) from exc


class StrictModel(BaseModel):
    """Base for configuration sections: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class Secret(StrictModel):
    """A secret (password, token, key). Write it as ``{file: PATH}``, ``{env: NAME}`` or, for tests
    and demos only, ``{value: "..."}``. Relative files are taken from the config file's folder."""

    file: Path | None = None
    env: str | None = None
    value: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _resolve_base(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, str):
            raise ValueError("write a secret as {file: PATH} or {env: NAME}, not inline text")
        if isinstance(data, dict) and data.get("file") and info.context and "base_dir" in info.context:
            f = Path(str(data["file"]))
            if not f.is_absolute():
                data = {**data, "file": str(Path(info.context["base_dir"]) / f)}
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> Secret:
        given = [n for n in ("file", "env", "value") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of file, env, value")
        return self

    def get(self) -> str:
        """The secret's text (read now, so a rotated file is picked up on restart)."""
        if self.value is not None:
            return self.value
        if self.env is not None:
            val = os.environ.get(self.env)
            if val is None:
                raise RuntimeError(f"environment variable {self.env} (a configured secret) is not set")
            return val
        assert self.file is not None
        try:
            return self.file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise RuntimeError(f"cannot read secret file {self.file}: {exc.strerror}") from exc

    def __repr__(self) -> str:  # never print the value
        return f"Secret(file={self.file!s}, env={self.env})" if self.value is None else "Secret(value=***)"
