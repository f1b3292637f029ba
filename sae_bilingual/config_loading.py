"""YAML data -> typed dataclasses, checked field by field (the recipe loader's machinery).

:func:`from_dict` builds any dataclass from plain YAML data, checking names and types
recursively, and raises a :class:`~sae_bilingual.errors.ConfigError` that names the offending
field by its dotted path (``sae.k``, ``models[0].layers``) and says what would be valid;
:func:`set_dotted` applies a ``--set a.b.c=value`` override to the data first. Nothing here
knows the recipe's schema (:mod:`sae_bilingual.config`). :func:`load_yaml` is ``yaml.safe_load``
refusing a key given twice in one mapping (PyYAML keeps the last silently).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import TYPE_CHECKING, Any, Literal, Union

import yaml

from sae_bilingual.errors import ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping key given twice (merge keys ``<<`` excepted)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.setdefault(key, key_node.start_mark.line + 1)
        except TypeError:  # an unhashable (complex) key: construct_mapping says so
            continue
        if first != key_node.start_mark.line + 1:
            raise ConfigError(
                f"{key_node.start_mark.name}: key {key!r} appears twice (line {first} and line "
                f"{key_node.start_mark.line + 1}); YAML would silently keep only the second: "
                "merge them into one"
            )
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_yaml(text: str, source: str = "<recipe>") -> Any:
    """``yaml.safe_load(text)``, but a key repeated in one mapping is a :class:`ConfigError`
    naming both lines of ``source``."""
    loader = _UniqueKeyLoader(text)
    loader.name = source
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def yaml_error_line(e: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where (PyYAML's text spans several lines).

    A tag such as ``!!python/object/apply`` is refused by the safe loader before anything is
    constructed; the line says so, since such a tag is how YAML would run code."""
    problem = str(getattr(e, "problem", None) or e).splitlines()[0]
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    tag = re.search(r"constructor for the tag '([^']+)'", problem)
    if isinstance(e, yaml.constructor.ConstructorError) and tag:
        shown = tag.group(1).replace("tag:yaml.org,2002:", "!!")
        return (f"not valid YAML here: the tag {shown}{where} is refused (read with yaml.safe_load, which builds "
                "no Python objects: nothing was executed); write a plain value: a number, string or list")
    context = getattr(e, "context", None)
    return f"not valid YAML ({context + ': ' if context else ''}{problem}{where}); quote a string, close a list"


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """``data[a][b][c] = value`` for ``a.b.c``; a number indexes a list (``models.0.layers``)."""
    keys = dotted.split(".")
    cur: Any = data
    for i, name in enumerate(keys):
        here = ".".join(keys[: i + 1])
        last = i == len(keys) - 1
        key: Any = name  # a str, or an int into a list
        if isinstance(cur, list):
            if not name.isdigit() or int(name) >= len(cur):
                raise ConfigError(f"--set {dotted}: {here} is not an index into the {len(cur)} entries of "
                                  f"{'.'.join(keys[:i])} (use 0..{len(cur) - 1})")
            key = int(name)
        elif not isinstance(cur, dict):
            raise ConfigError(f"--set {dotted}: {'.'.join(keys[:i])} is {cur!r}, not a mapping or list "
                              "to set a field in")
        elif not last and key not in cur:
            if keys[i + 1].isdigit():
                raise ConfigError(f"--set {dotted}: the recipe has no {here} list to index; write "
                                  f"{here} in the recipe first")
            cur[key] = {}
        if last:
            cur[key] = value
        else:
            cur = cur[key]


T = typing.TypeVar("T", bound="DataclassInstance")


def from_dict(cls: type[T], data: Any, path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, checking every field name and type."""
    where = path or "recipe"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of fields, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"{_join(path, unknown[0])}: unknown field; valid fields here are {', '.join(names)}"
        )
    kwargs = {name: _coerce(hints[name], data[name], _join(path, name)) for name in names if name in data}
    return cls(**kwargs)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, path)
            except ConfigError:
                continue
        allowed = " or ".join(_type_name(a) for a in args)
        raise ConfigError(f"{path}: expected {allowed}, got {type(value).__name__} {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
        return {str(k): _coerce(args[1], v, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{path}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{path}: expected a number, got str {value!r}") from None
        if not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {type(value).__name__} {value!r}")
        return value
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{path}: expected null, got {value!r}")
        return None
    raise ConfigError(f"{path}: unsupported field type {tp!r}")  # pragma: no cover
