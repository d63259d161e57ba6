"""``tileseg models add NAME FILE`` and ``tileseg models check NAME``: serve a model trained elsewhere.

(Not ``models.py``: importing it would shadow ``tileseg.models`` inside the CLI package.)

The options give what a file cannot say about itself (bands, classes, normalisation...); ``--card card.json``
gives the same fields as a JSON object (``bands``, ``classes``, ``mean``, ``std``, ``dtypes``, ``pixel_size``,
``precision``, ``license``, ``provenance``, ``arch``, ``params``); options override it. The geometry is
measured (:mod:`tileseg.models.probe`), never asked for.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click

from tileseg.cli.options import parse_params
from tileseg.engine.errors import OptionsError
from tileseg.models.spec import DEFAULT_DTYPES, ClassInfo, Geometry, InputSpec, InstanceSpec, ModelSpec, parse_length

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def parse_classes(text: str) -> list[dict[str, Any]]:
    """``"0:background:#000000,1:building:#e31a1c"`` as card classes (the colour may be left out).

    Raises:
        OptionsError: a malformed entry.
    """
    classes = []
    for k, entry in enumerate(part.strip() for part in text.split(",") if part.strip()):
        fields = entry.split(":")
        if len(fields) not in (2, 3) or not fields[0].strip().isdigit():
            raise OptionsError(f"class {entry!r}: give INDEX:NAME or INDEX:NAME:#rrggbb")
        color = fields[2].strip() if len(fields) == 3 else _palette(k)
        if not re.fullmatch(r"#[0-9a-fA-F]{6}", color):
            raise OptionsError(f"class {entry!r}: the colour must be #rrggbb")
        classes.append({"index": int(fields[0]), "name": fields[1].strip(), "color": color.lower()})
    return classes


def _palette(k: int) -> str:
    colours = ["#000000", "#e31a1c", "#1f78b4", "#33a02c", "#ff7f00", "#6a3d9a", "#b15928", "#a6cee3"]
    return colours[k % len(colours)]


def _pixel_size(value: str | float | None) -> float | None:
    """``"0.5 m"``, ``"0.25um"`` or a number of metres (bare, or as text), in metres; None stays None.

    Raises:
        OptionsError: not a positive number, or a unit that :func:`~tileseg.models.spec.parse_length` refuses.
    """
    if value is None or isinstance(value, (int, float)):
        return None if value is None else float(value)
    try:
        return parse_length(value, default_unit="m")
    except ValueError as err:
        raise OptionsError(f"pixel size: {err}") from err


def _floats(value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else value
    try:
        return tuple(float(v) for v in items)
    except (TypeError, ValueError):
        raise OptionsError(f"{value!r}: give numbers separated by commas") from None


def build_spec(fields: dict[str, Any]) -> ModelSpec:
    """The card's spec from the merged ``--card`` and options (geometry left to the probe).

    Raises:
        OptionsError: a missing or inconsistent field.
    """
    if not fields.get("bands") or not fields.get("classes"):
        raise OptionsError("give --bands and --classes (or a --card with them)")
    bands = int(fields["bands"])
    classes = fields["classes"]
    classes = parse_classes(classes) if isinstance(classes, str) else classes
    mean = _floats(fields.get("mean")) or (0.0,) * bands
    std = _floats(fields.get("std")) or (1.0,) * bands
    try:
        inp = InputSpec(bands=bands, mean=mean, std=std, dtypes=tuple(fields.get("dtypes") or DEFAULT_DTYPES),
                        pixel_size=_pixel_size(fields.get("pixel_size")))  # fmt: skip
        info = tuple(ClassInfo(int(c["index"]), str(c["name"]), str(c["color"])) for c in classes)
    except (ValueError, KeyError, TypeError) as err:
        raise OptionsError(f"the card's input or classes are invalid: {err}") from err
    precision = fields.get("precision") or "fp32"
    if precision not in ("fp32", "bf16", "fp16"):
        raise OptionsError(f"precision {precision!r}: give fp32, bf16 or fp16 (the reduced precision allowed)")
    placeholder = Geometry(halo=0, multiple=1)  # replaced by the measured geometry
    instances = parse_instances(fields.get("instances"))
    try:
        return ModelSpec(
            name="", arch="", input=inp, classes=info, geometry=placeholder, precision=precision, instances=instances
        )
    except ValueError as err:
        raise OptionsError(f"--instances: {err}") from err


NUMBERS = ("distance", "min_area", "erode")  # the decoding's numeric settings, in pixels


def parse_instances(value: str | dict[str, Any] | None) -> InstanceSpec | None:
    """The card's instance decoding from ``--instances "seed=1,grow=1+2,distance=2,min_area=8"`` (or a card's
    ``instances`` object); None when not given.

    Raises:
        OptionsError: a malformed text or an invalid decoding.
    """
    if not value:
        return None
    try:
        if isinstance(value, str):
            fields = dict(item.split("=", 1) for item in value.split(","))
            value = {
                "seed": int(fields.pop("seed")),
                "grow": [int(g) for g in fields.pop("grow", fields.get("seed", "")).split("+") if g],
                **{k: int(v) for k, v in fields.items() if k in NUMBERS},
            }
            unknown = set(fields) - set(NUMBERS)
            if unknown:
                raise ValueError(f"unknown key(s) {sorted(unknown)}")
        return InstanceSpec(**value)
    except (ValueError, KeyError, TypeError) as err:
        raise OptionsError(
            f"--instances {value!r}: {err}; give seed=CLASS,grow=CLASS+CLASS,distance=PX,min_area=PX[,erode=PX]"
        ) from err


def gather(card: Path | None, options: dict[str, Any]) -> dict[str, Any]:
    """``--card``'s fields with the given options over them.

    Raises:
        OptionsError: a card that is not a readable JSON object.
    """
    fields: dict[str, Any] = {}
    if card is not None:
        try:
            fields = json.loads(card.read_text())
        except (OSError, ValueError) as err:
            raise OptionsError(f"--card {card}: not a readable JSON file ({err})") from err
        if not isinstance(fields, dict):
            raise OptionsError(f"--card {card}: expected a JSON object")
    return {**fields, **{k: v for k, v in options.items() if v not in (None, ())}}


def check_name(name: str) -> str:
    """Raises OptionsError unless ``name`` is a plain file-safe name."""
    if not NAME.match(name):
        raise OptionsError(f"model name {name!r}: use letters, digits, - and _ (at most 64)")
    return name


def echo_report(report, prefix: str = "") -> None:
    """The probe's numbers, one line."""
    mode = "crop (exact)" if report.equivariant else "gaussian blend"
    window = f"fixed window {report.fixed_window}, " if report.fixed_window else ""
    scale = f", output 1/{round(1 / report.output_scale)} upsampled" if report.output_scale != 1 else ""
    click.echo(
        f"{prefix}{window}stride {report.multiple}, offset {report.offset}, shrink {report.shrink}, halo "
        f"{report.halo} (receptive field {report.receptive_field}){scale}; {mode}: {report.why}; "
        f"{report.seconds:.0f} s"
    )


def register(group: click.Group, user_errors) -> None:
    """Add ``add``, ``check`` and ``quantize`` to the ``models`` group; ``user_errors`` prints the product's
    errors."""
    from tileseg.cli.quantize import register as register_quantize

    register_quantize(group, user_errors)

    @group.command("add")
    @click.argument("name")
    @click.argument("file", type=click.Path(path_type=Path))
    @click.option("--card", "card_path", type=click.Path(path_type=Path), help="A JSON file with the fields below.")
    @click.option("--arch", help="A state dict's architecture: a zoo name (unet...) or smp:Unet, smp:FPN...")
    @click.option("--param", "params", multiple=True, help="The architecture's KEY=VALUE (repeat).")
    @click.option("--bands", type=int, help="Input bands.")
    @click.option("--classes", help='"INDEX:NAME:#rrggbb,..." one per output channel, in channel order.')
    @click.option("--mean", help="Per-band mean after scaling to [0, 1], comma-separated (default 0).")
    @click.option("--std", help="Per-band std after scaling to [0, 1], comma-separated (default 1).")
    @click.option("--dtypes", help="Accepted input dtypes, comma-separated (default: all).")
    @click.option("--pixel-size", help="The pixel size it was trained at, with its unit: 0.5m, 0.25um.")
    @click.option("--precision", help="The reduced precision it may run in (bf16, fp16); default fp32 only.")
    @click.option(
        "--instances",
        help='How its classes decode into objects: "seed=1,grow=1+2,distance=2,min_area=8[,erode=1]" (the core '
        "class, the classes objects grow into, how far, the smallest object, cores eroded first); default: none.",
    )
    @click.option("--license", "license_", help="Licence of the weights.")
    @click.option("--provenance", help="Where it came from: data, training, authors.")
    @click.option("--probe-budget", type=float, default=900.0, show_default=True, help="Seconds the probe may take.")
    @click.option("--replace", "replace_existing", is_flag=True, help="Overwrite an installed model of that name.")
    @user_errors
    def add(name, file, card_path, arch, params, probe_budget, replace_existing, **options) -> None:
        """Check FILE (TorchScript, ONNX, or a state dict of --arch), measure its tiling geometry and install it
        as NAME in the weights directory. TorchScript and ONNX files are programs: add only files you trust."""
        from tileseg.models.importer import add_model

        options["dtypes"] = tuple(options["dtypes"].split(",")) if options.get("dtypes") else None
        options["license"] = options.pop("license_")
        fields = gather(card_path, options)
        spec = build_spec(fields)
        extra = {k: fields[k] for k in ("license", "provenance") if fields.get(k)}
        card = add_model(
            check_name(name), file, spec, arch=arch or fields.get("arch"),
            params={**fields.get("params", {}), **parse_params(params)}, budget=probe_budget,
            replace_existing=replace_existing, extra=extra, log=lambda line: click.echo(f"  {line}", err=True),
        )  # fmt: skip
        from tileseg.models.probe import ProbeReport

        report = ProbeReport(**{k: v for k, v in card["probe"].items() if k != "torch"})
        echo_report(report, prefix=f"added {name} ({card['format']}, {card['arch']}): ")

    @group.command("check")
    @click.argument("name")
    @click.option("--probe-budget", type=float, default=900.0, show_default=True, help="Seconds the probe may take.")
    @user_errors
    def check(name: str, probe_budget: float) -> None:
        """Measure NAME's geometry again and report any drift from its card (exit 1 on drift)."""
        from tileseg.models.importer import check_model

        report, drifts = check_model(name, budget=probe_budget)
        echo_report(report, prefix=f"{name}: ")
        if drifts:
            raise OptionsError(f"{name} drifted from its card: {'; '.join(drifts)}")
        click.echo(f"{name}: matches its card")
