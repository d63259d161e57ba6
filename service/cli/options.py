"""Command-line options made from the options model (:mod:`tileseg.engine.options`): a field is a ``--flag``
with the field's type, default, choices and description, so that nothing is declared twice."""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterable
from typing import Any

import click
from pydantic import BaseModel, ValidationError

from tileseg.engine.errors import OptionsError
from tileseg.engine.options import base_type


def click_options(model: type[BaseModel]) -> Callable:
    """A decorator adding one click option per field of ``model`` (fields in declaration order)."""

    def decorate(command: Callable) -> Callable:
        for name in reversed(list(model.model_fields)):
            command = _option(model, name)(command)
        return command

    return decorate


def _option(model: type[BaseModel], name: str) -> Callable:
    field = model.model_fields[name]
    flag = f"--{name.replace('_', '-')}"
    kind = base_type(field.annotation)
    default = field.default.value if isinstance(field.default, enum.Enum) else field.default
    common: dict[str, Any] = {"help": field.description, "default": default}
    if kind is bool:
        return click.option(flag, name, is_flag=True, **common)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return click.option(
            flag, name, type=click.Choice([m.value for m in kind]), show_default=default is not None, **common
        )
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if kind is int and extra.get("auto"):
        return click.option(flag, name, type=AUTO_INT, show_default="auto", **{**common, "default": None})
    if kind in (int, float):
        return click.option(flag, name, type=kind, show_default=default is not None, **common)
    return click.option(flag, name, type=str, **common)  # bands: "1,2,3", parsed by the model


class _AutoInt(click.ParamType):
    """A whole number, or ``auto`` (left to the engine to choose)."""

    name = "INTEGER|auto"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
            return None
        try:
            return int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is neither a whole number nor auto", param, ctx)


AUTO_INT = _AutoInt()


def build(model: type[BaseModel], values: dict[str, Any]) -> BaseModel:
    """The options model from a command's keyword arguments (only the model's own fields are taken).

    Raises:
        click.BadParameter: a value the model refuses, naming the option and the reason.
    """
    own = {k: v for k, v in values.items() if k in model.model_fields and v is not None}
    try:
        return model(**own)
    except ValidationError as err:
        first = err.errors()[0]
        name = str(first["loc"][0]) if first.get("loc") else "options"
        raise click.BadParameter(
            first["msg"].removeprefix("Value error, "), param_hint=f"--{name.replace('_', '-')}"
        ) from None


def parse_params(items: Iterable[str]) -> dict[str, Any]:
    """Architecture hyper-parameters given as ``--param KEY=VALUE`` (``tileseg train`` and ``tileseg models
    add``): true/false and none/null in any case, then JSON (numbers, lists, quoted text), else the text.

    Raises:
        OptionsError: an item without ``=``, or with an empty key.
    """
    params: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key:
            raise OptionsError(f"--param {item!r}: give KEY=VALUE")
        words = {"true": True, "false": False, "none": None, "null": None}
        if raw.lower() in words:
            params[key] = words[raw.lower()]
            continue
        try:
            params[key] = json.loads(raw)
        except ValueError:
            params[key] = raw
    return params


__all__ = ["build", "click_options", "parse_params"]
