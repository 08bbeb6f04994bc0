"""Reading spec files: YAML without surprises, ``extends:``, ``--set`` overrides, clear errors.

Shared by every catalog (hardware, workloads, planners, suites, studies) so that a user's mistake
reads the same everywhere: ``file: key.path: what was expected``. Loading has no side effects.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from memsim.catalog import catalog_dir
from memsim.errors import SpecError, did_you_mean

M = TypeVar("M", bound=BaseModel)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key written twice in one mapping (YAML silently keeps the last)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


_PARSED: dict[tuple[str, int, int], bytes] = {}  # (path, mtime, size) → the parsed data, pickled


def read_yaml(path: str | Path) -> Any:
    """Parse one YAML file; a syntax error or a duplicate key becomes a SpecError naming the file.

    A file read before and unchanged since (same mtime and size) is not parsed again: a study
    loads the same catalog entries and presets at every point, and pure-Python YAML parsing was
    a twentieth of its time. Each call gets its own copy (callers edit what they read)."""
    path = Path(path)
    try:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    except OSError:
        key = None  # (reading it below says why)
    hit = _PARSED.get(key) if key is not None else None
    if hit is not None:
        return pickle.loads(hit)
    data = _parse_yaml(path)
    if key is not None:
        _PARSED[key] = pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)
    return data


def _parse_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError("file not found", file=str(path)) from None
    except OSError as exc:
        raise SpecError(f"cannot read: {exc.strerror}", file=str(path)) from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"not a UTF-8 text file (byte {exc.start}); expected YAML", file=str(path)) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{where}invalid YAML: {problem}", file=str(path)) from None


def resolve(name_or_path: str | Path, family: str) -> Path:
    """A catalog name (``h100-sxm``) or a path to a user's own YAML file."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml", ".json") or candidate.exists():
        if not candidate.exists():
            raise SpecError("file not found", file=str(candidate))
        return candidate
    folder = catalog_dir(family)
    for suffix in (".yaml", ".yml"):
        hit = folder / f"{name_or_path}{suffix}"
        if hit.exists():
            return hit
    names = catalog_names(family)
    raise SpecError(f"no {family} named {str(name_or_path)!r}{did_you_mean(str(name_or_path), names)}; "
                    f"`memsim {family.rstrip('s')} list` shows them")


def catalog_names(family: str) -> list[str]:
    folder = catalog_dir(family)
    return sorted(p.stem for p in folder.glob("*.y*ml")) if folder.exists() else []


def deep_merge(base: dict, override: dict) -> dict:
    """``override`` on top of ``base``; nested mappings merge, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_mapping(path: Path, family: str, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a mapping, following ``extends: other`` (a catalog name or a path relative to it)."""
    data = read_yaml(path)
    if not isinstance(data, dict):
        got = "an empty file" if data is None else type(data).__name__
        raise SpecError(f"expected a mapping at the top level, got {got}", file=str(path))
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise SpecError("expected a catalog name or a file path", file=str(path), key="extends")
    relative = path.parent / parent
    try:
        parent_path = relative if relative.is_file() else resolve(parent, family)
    except SpecError as exc:
        missing = f" ({exc.file})" if exc.file else ""
        raise SpecError(f"{exc.message}{missing}", file=str(path), key="extends") from None
    if parent_path.resolve() in _seen:
        raise SpecError(f"extends forms a cycle through {parent_path}", file=str(path), key="extends")
    base = load_mapping(parent_path, family, (*_seen, path.resolve()))
    return deep_merge(base, data)


def parse_assignment(text: str) -> tuple[list[str], Any]:
    """``"training.zero_stage=3"`` → (["training", "zero_stage"], 3); values are YAML scalars."""
    if "=" not in text:
        raise SpecError(f"--set expects key.path=value, got {text!r}")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise SpecError(f"--set expects key.path=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict, assignments: Iterable[str], file: str) -> dict:
    """Set each dotted key. Intermediate mappings must exist; the leaf may be new, in which case
    the schema decides whether it is allowed (unknown keys fail validation with a did-you-mean)."""
    out = copy.deepcopy(data)
    for text in assignments:
        parts, value = parse_assignment(text)
        node: Any = out
        for depth, part in enumerate(parts[:-1]):
            if isinstance(node, list) and part.isdigit():
                _check_index(text, parts[:depth + 1], node)
                node = node[int(part)]
                continue
            if not isinstance(node, dict):
                raise SpecError(f"--set {text}: {'.'.join(parts[:depth])} is not a mapping", file="--set",
                                key=".".join(parts[:depth]))
            if part not in node:
                node[part] = {}
            node = node[part]
        leaf = parts[-1]
        if isinstance(node, list) and leaf.isdigit():
            _check_index(text, parts, node)
            node[int(leaf)] = value
        elif isinstance(node, dict):
            node[leaf] = value
        else:
            raise SpecError(f"--set {text}: {'.'.join(parts[:-1])} is not a mapping", file="--set",
                            key=".".join(parts[:-1]))
    return out


def _check_index(text: str, parts: list[str], node: list) -> None:
    """A list index past the end is its own mistake (not "is not a mapping")."""
    if int(parts[-1]) >= len(node):
        where = ".".join(parts[:-1])
        raise SpecError(f"index {parts[-1]} is out of range: {where} has {len(node)} entries "
                        f"(0..{len(node) - 1})", file="--set", key=".".join(parts))


def _field_names(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names allowed at ``loc`` inside ``model``, for a did-you-mean on unknown keys."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or current is None:
            continue
        fields = getattr(current, "model_fields", {})
        if part in fields:
            current = _inner_model(fields[part].annotation)
        # a dict key (tier name) keeps the value model found from the annotation
    return list(getattr(current, "model_fields", {}) or [])


def _inner_model(annotation: Any) -> Any:
    """The BaseModel inside ``dict[str, X]``, ``list[X]``, ``X | None``, or X itself."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def validate(model: type[M], data: Any, file: str) -> M:
    """Build ``model`` from ``data``; the first error becomes one SpecError naming the key path."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            allowed = _field_names(model, loc)
            hint = did_you_mean(str(loc[-1]), allowed)
            message = f"unknown key {loc[-1]!r}{hint}"
            if allowed and not hint:
                message += f"; expected one of {', '.join(sorted(allowed))}"
        elif err["type"] == "missing":
            message = "required key is missing"
        else:
            message = err["msg"].removeprefix("Value error, ")
            if "input" in err and not isinstance(err["input"], dict | list) \
                    and f"got {err['input']!r}" not in message:
                message += f" (got {err['input']!r})"
        more = len(exc.errors()) - 1
        if more:
            message += f" [and {more} more problem{'s' if more > 1 else ''}]"
        raise SpecError(message, file=file, key=key or None) from None


def load_spec(model: type[M], name_or_path: str | Path, family: str,
              overrides: Iterable[str] = ()) -> M:
    """Resolve, read (following extends), override, validate: the one way specs come in."""
    path = resolve(name_or_path, family)
    overrides = list(overrides)
    data = apply_overrides(load_mapping(path, family), overrides, str(path))
    return validate_overridden(model, data, str(path), overrides)


def validate_overridden(model: type[M], data: Any, file: str, overrides: Iterable[str]) -> M:
    """:func:`validate`, but a bad value the user gave with ``--set`` is named as the flag's
    mistake (``--set: training.seq_len: ...``), not the packaged file's."""
    try:
        return validate(model, data, file)
    except SpecError as exc:
        keys = [".".join(parse_assignment(text)[0]) for text in overrides]
        if exc.key and any(exc.key == k or exc.key.startswith(k + ".") or k.startswith(exc.key + ".")
                           for k in keys):
            raise SpecError(exc.message, file="--set", key=exc.key) from None
        raise
