"""MkDocs hook: the reference tables, generated from the code each time the site is built.

A page asks for a table with an HTML comment on a line of its own (invisible where the Markdown is read as it
is, e.g. on a forge)::

    <!-- tileseg-reference: options -->    every field of tileseg.engine.options.SegmentOptions
    <!-- tileseg-reference: settings -->   every field of tileseg.settings.Settings, inherited ones included
    <!-- tileseg-reference: errors -->     every subclass of tileseg.errors.TilesegError, with its HTTP status

Nothing is copied by hand: names, types, defaults and descriptions come from the pydantic models, codes and
docstrings from the exception classes, and the HTTP status from the API's own mapping
(``tileseg.api.errors.status_for``). An unknown table name, or a product that cannot be imported, fails the
build; the CLI's pages come from mkdocs-click and the Python API's from mkdocstrings (see mkdocs.yml).
"""

from __future__ import annotations

import datetime
import enum
import html
import importlib
import inspect
import re
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path, PurePath
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority, get_plugin_logger

log = get_plugin_logger(__name__)

MARKER = re.compile(r"^<!--\s*tileseg-reference:\s*([\w-]+)\s*-->\s*$", re.MULTILINE)

# Imported before the error classes are walked, so that every module defining one has run. The API's app and
# the CLI import nearly everything; the rest is named in case a later change stops them from doing so.
REQUIRED_MODULES = ("tileseg.api.main", "tileseg.cli")
OPTIONAL_MODULES = ("tileseg.models", "tileseg.engine", "tileseg.jobs.service", "tileseg.training.errors")


@event_priority(100)  # before mkdocstrings' own on_config, which makes the Python handler
def on_config(config: Any, **kwargs: Any) -> None:
    """Keep the ``tileseg`` console script out of the Python API's search paths.

    Run as ``.venv/bin/mkdocs``, Python puts the script's folder first on ``sys.path``. That folder also holds
    the ``tileseg`` console script, a file without a suffix, which Griffe (mkdocstrings' loader, whose search
    paths are a copy of ``sys.path`` taken when mkdocstrings starts) would take for a namespace package named
    ``tileseg`` and document instead of the installed one. Only folders where ``tileseg`` is such a file are
    dropped; nothing is imported from them.
    """
    for entry in [p for p in sys.path if p and (Path(p) / "tileseg").is_file()]:
        sys.path.remove(entry)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any, **kwargs: Any) -> str:
    """Replace each marker on the page by its table."""

    def table(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in TABLES:
            raise PluginError(f"{page.file.src_uri}: unknown reference table {name!r}; known: {', '.join(TABLES)}")
        _import_product()
        return TABLES[name]()

    return MARKER.sub(table, markdown)


_imported = False


def _import_product() -> None:
    global _imported
    if _imported:
        return
    for name in REQUIRED_MODULES:
        importlib.import_module(name)
    for name in OPTIONAL_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is None or not name.startswith(err.name):
                raise  # the module exists and something it imports is missing: a real failure
            log.info("reference: %s is not there (moved?); its errors are found through the other imports", name)
    _imported = True


# --- options ------------------------------------------------------------------------------------------------


def options_table() -> str:
    """Every field of SegmentOptions: the option, its command-line flag, type, default, where it applies."""
    from tileseg.engine.options import SegmentOptions

    rows = []
    for name, field in SegmentOptions.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        # the CLI makes one --flag per field (tileseg.cli.options), the form and the job record one field each
        flag = f"`--{name.replace('_', '-')}`"
        scope = "command line only" if extra.get("scope") == "cli" else "everywhere"
        default = "`auto`" if extra.get("auto") and field.default is None else _value(field.default, name)
        rows.append(
            [f"`{name}`", flag, _type(field.annotation, field.metadata), default, scope, _text(field.description)]
        )
    return _table(["option", "flag", "type", "default", "where", "description"], rows)


# --- settings -----------------------------------------------------------------------------------------------


def settings_table() -> str:
    """Every field of Settings (inherited ones too): its environment variable, type, default, description."""
    from tileseg.settings import Settings

    prefix = Settings.model_config.get("env_prefix", "")
    declared = {name: _declaring_class(Settings, name) for name in Settings.model_fields}
    several = len(set(declared.values())) > 1  # once Settings extends an engine class, say which reads what
    rows = []
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias if isinstance(field.validation_alias, str) else None
        variable = alias or f"{prefix}{name}".upper()
        default = field.get_default(call_default_factory=True)
        row = [f"`{variable}`", _type(field.annotation, field.metadata), _value(default, name)]
        if several:
            row.append(_dotted(declared[name]))
        rows.append([*row, _text(field.description)])
    header = ["variable", "type", "default", *(["declared in"] if several else []), "description"]
    return _table(header, rows)


def _declaring_class(model: type, name: str) -> str:
    """The class in ``model``'s hierarchy that declares the field ``name`` (the nearest, if it is redeclared)."""
    for cls in model.__mro__:
        if name in inspect.get_annotations(cls):
            return f"{cls.__module__}.{cls.__qualname__}"
    return f"{model.__module__}.{model.__qualname__}"


# --- errors -------------------------------------------------------------------------------------------------


def errors_table() -> str:
    """The root error and every subclass: code, HTTP status, class, the builtins it is also, its meaning."""
    from tileseg.errors import TilesegError

    status_of = _status_function()
    rows = []
    for cls, parent in _walk(TilesegError):
        # what else it is: the product's error it specialises, then the builtins it also inherits
        also = [parent.__qualname__] if parent is not None else []
        also += [b.__name__ for b in cls.__mro__ if b.__module__ == "builtins" and b not in _TOP]
        code = cls.__dict__.get("code", getattr(cls, "code", None))
        status = "?" if status_of is None else str(status_of(_bare(cls)))
        rows.append(
            [
                f"`{code}`",
                status,
                _dotted(f"{cls.__module__}.{cls.__qualname__}"),
                ", ".join(f"`{a}`" for a in also) or "—",
                _first_paragraph(cls),
            ]
        )
    return _table(["code", "HTTP", "error", "is also a", "meaning"], rows)


_TOP = (Exception, BaseException, object)


def _walk(root: type, parent: type | None = None, seen: set[type] | None = None) -> list[tuple[type, type | None]]:
    """The class and its subclasses, depth first, children by name, each once (under its first parent met);
    private classes (``_Name``) left out."""
    seen = set() if seen is None else seen
    seen.add(root)
    found = [(root, parent)]
    for sub in sorted(set(root.__subclasses__()), key=lambda c: (c.__module__, c.__qualname__)):
        if sub not in seen and not sub.__name__.startswith("_"):
            found.extend(_walk(sub, root, seen))
    return found


def _bare(cls: type[BaseException]) -> BaseException:
    """An instance to ask the API's mapping about, made without calling the class's ``__init__`` (whose
    arguments differ from class to class). With two builtin bases (``ValueError`` and ``OSError``) only one
    of their ``__new__`` is allowed to make it: the first that is."""
    for base in cls.__mro__:
        if base.__module__ == "builtins":
            try:
                return base.__new__(cls)
            except TypeError:
                continue
    raise TypeError(f"cannot make a bare {cls.__qualname__}")


def _status_function() -> Callable[[BaseException], int] | None:
    try:
        from tileseg.api.errors import status_for
    except ImportError as err:
        log.warning("reference: the HTTP status of errors is left out: %s", err)
        return None
    return status_for


# --- formatting ---------------------------------------------------------------------------------------------


def _type(annotation: Any, metadata: list[Any] | None = None) -> str:
    """A type as a reader wants it: enums by their values, constraints spelled out, lists as written."""
    text = _annotation(annotation)
    # pydantic-settings' NoDecode marker (the class itself): the service splits the value on commas
    if any(getattr(m, "__name__", None) == "NoDecode" for m in metadata or ()):
        text += ", comma-separated"
    bounds = []
    for item in metadata or ():
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"), ("max_length", "length ≤")):
            value = getattr(item, attr, None)
            if value is not None:
                bounds.append(f"{sign} {_value(value, '')}")
    return f"{text} ({', '.join(bounds)})" if bounds else text


def _annotation(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_annotation(a) for a in args)
    if origin is typing.Annotated:
        return _annotation(args[0])
    if origin in (list, tuple, set, frozenset):
        inner = [a for a in args if a is not Ellipsis]
        return f"list of {_annotation(inner[0])}" if inner else "list"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " \\| ".join(f"`{m.value}`" for m in annotation)
    if annotation is type(None):
        return "none"
    if isinstance(annotation, type):
        return {"str": "text", "bool": "true/false", "Path": "path", "timedelta": "duration"}.get(
            annotation.__name__, annotation.__name__
        )
    return str(annotation).replace("typing.", "")


def _value(value: Any, name: str) -> str:
    """A default as one would write it in an option or an environment variable."""
    if value is None:
        return "—"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, datetime.timedelta):
        return f"`{_iso_duration(value)}`"
    if isinstance(value, PurePath):
        return f"`{value}`"
    if isinstance(value, (list, tuple, set)):
        return f"`{','.join(map(str, value))}`" if value else "—"
    if isinstance(value, int) and name.endswith("_bytes") and value >= 1024:
        return f"`{value}` ({_binary(value)})"
    if isinstance(value, int) and value >= 10**6:
        return f"`{value}` ({_power(value)})" if _power(value) else f"`{value}`"
    return f"`{value}`"


def _iso_duration(value: datetime.timedelta) -> str:
    seconds = int(value.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{hours}H" if hours else "", f"{minutes}M" if minutes else "", f"{seconds}S" if seconds else ""]
    return "PT" + ("".join(parts) or "0S")


def _binary(value: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or value % 1024:
            return f"{value} {unit}"
        value //= 1024
    return f"{value} PiB"


def _power(value: int) -> str:
    """``10⁹`` or ``2²⁸`` where the number is one, else empty."""
    digits = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")
    for base in (10, 2):
        exponent = 0
        rest = value
        while rest % base == 0 and rest > 1:
            rest //= base
            exponent += 1
        if rest == 1:
            return f"{base}{str(exponent).translate(digits)}"
    return ""


_ROLE = re.compile(r":(?:class|func|mod|meth|attr|data|exc):`~?([^`]+)`")


def _text(text: str | None) -> str:
    """A description fit for one table cell: reST literals and roles as Markdown code, no line breaks."""
    if not text:
        return ""
    text = _ROLE.sub(r"`\1`", text).replace("``", "`")
    return " ".join(text.split()).replace("|", "\\|")


def _first_paragraph(cls: type) -> str:
    doc = cls.__dict__.get("__doc__") or ""
    return _text(inspect.cleandoc(doc).split("\n\n", 1)[0])


def _dotted(path: str) -> str:
    """A dotted name as code that may wrap after its dots only (a table column stays narrow, names stay whole)."""
    return "<code>" + ".<wbr>".join(html.escape(part) for part in path.split(".")) + "</code>"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


TABLES: dict[str, Callable[[], str]] = {
    "options": options_table,
    "settings": settings_table,
    "errors": errors_table,
}
