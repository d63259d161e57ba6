"""Pieces the architectures share: conv stacks, argument checks, size checks and receptive-field arithmetic.

Receptive fields are derived from the layer list, never by running a network. Along one axis, a feature map
pixel ``i`` depends on a contiguous run of input pixels ``[span.lo(i), span.hi(i)]``; :class:`Span` carries
that mapping through convolutions, poolings, transposed convolutions, crops and concatenations, so each
architecture describes its own wiring once and reads off the context every output pixel needs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import nn


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``; otherwise raise a ValueError naming the valid ones."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, not {value!r}")
    return value


def check_int(name: str, value: int, minimum: int = 1, maximum: int | None = None) -> int:
    """Return ``value`` as an int if it is an integer in ``[minimum, maximum]``; otherwise raise ValueError."""
    # bool is an int subclass; True as a width is certainly a mistake
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, not {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise ValueError(f"{name} must be at least {minimum}{upper}, not {value}")
    return int(value)


class ConvStack(nn.Sequential):
    """``count`` 3x3 convolutions, each followed by (optional) BatchNorm and ReLU.

    Args:
        in_channels: channels coming in.
        out_channels: channels of every convolution's output.
        count: how many convolutions.
        padding: ``"same"`` (zero padding 1, size kept) or ``"valid"`` (no padding, 2 pixels lost per conv).
        batch_norm: put a BatchNorm after each convolution (its bias is then redundant and left out).
    """

    def __init__(self, in_channels: int, out_channels: int, count: int = 2, *, padding: str = "same",
                 batch_norm: bool = True) -> None:
        layers: list[nn.Module] = []
        for k in range(count):
            layers.append(nn.Conv2d(in_channels if k == 0 else out_channels, out_channels, 3,
                                    padding=1 if padding == "same" else 0, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def check_input(net: str, x: torch.Tensor, in_channels: int) -> None:
    """Raise ValueError unless ``x`` is a ``(B, in_channels, H, W)`` batch."""
    if x.dim() != 4:
        raise ValueError(f"{net} takes a (batch, bands, height, width) tensor, got shape {tuple(x.shape)}")
    if x.shape[1] != in_channels:
        raise ValueError(f"{net} was built for {in_channels} band(s), the input has {x.shape[1]}")


def valid_input_sizes(multiple: int, offset: int, shrink: int, min_output: int, near: int) -> list[int]:
    """The valid input lengths closest to ``near``: at most one below and one above (or equal) it.

    An input length ``I`` is valid when its output ``O = I - 2 * shrink`` is at least ``min_output`` and
    ``O % multiple == offset``.
    """
    smallest = min_output + (offset - min_output) % multiple + 2 * shrink
    if near <= smallest:
        return [smallest]
    above = near + (offset - (near - 2 * shrink)) % multiple
    below = above - multiple
    return [below, above] if below >= smallest and above != near else [above]


def check_sizes(net: str, x: torch.Tensor, multiple: int, offset: int = 0, shrink: int = 0,
                min_output: int | None = None) -> None:
    """Raise ValueError, naming the nearest valid sizes, if the input's height or width does not fit the net.

    Args:
        net: the network's description, for the message.
        x: the ``(B, C, H, W)`` input.
        multiple, offset, shrink: as in :class:`tileseg.models.spec.Geometry`.
        min_output: the smallest output length the net can produce (defaults to ``multiple``, or
            ``offset`` when that is positive).
    """
    if min_output is None:
        min_output = offset if offset > 0 else multiple
    for axis, size in (("height", x.shape[-2]), ("width", x.shape[-1])):
        out = size - 2 * shrink
        if out >= min_output and out % multiple == offset:
            continue
        nearest = " or ".join(str(s) for s in valid_input_sizes(multiple, offset, shrink, min_output, size))
        if shrink:
            rule = f"(size - {2 * shrink}) % {multiple} == {offset} and size >= {min_output + 2 * shrink}"
        else:
            rule = f"a multiple of {multiple}"
        raise ValueError(f"{net} cannot take an input {axis} of {size}: it needs {rule}; nearest valid: {nearest}")


def round_up(value: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is at least ``value``."""
    return -(-value // multiple) * multiple


def default_tile(halo: int, multiple: int) -> int:
    """A core tile length (a multiple of the stride) that keeps the halo overhead moderate on CPU.

    Each window is about ``core + 2 * halo`` long; a core of at least 3.2 halos spends at most about 2.6x
    the core's own compute per window, and below 384 pixels per-call overheads start to show.
    """
    return round_up(max(384, math.ceil(3.2 * halo)), multiple)


class Span:
    """Along one axis, the input pixels ``[lo(i), hi(i)]`` that pixel ``i`` of a feature map depends on.

    Pixels are indexed on an unbounded line: a padded convolution's zero padding adds no dependency, so the
    spans of pixels away from the border are what matters. Each operation returns a new span; results are
    memoised because nested skip pathways (U-Net++) revisit the same nodes many times.
    """

    def __init__(self, lo: Callable[[int], int], hi: Callable[[int], int]) -> None:
        self.lo = functools.cache(lo)
        self.hi = functools.cache(hi)

    @classmethod
    def identity(cls) -> Span:
        """The input itself: pixel ``i`` depends on input pixel ``i``."""
        return cls(lambda i: i, lambda i: i)

    def conv(self, kernel: int, stride: int = 1, padding: int = 0) -> Span:
        """After a convolution or pooling: output ``i`` reads inputs ``stride*i - padding + [0, kernel)``."""
        return Span(lambda i: self.lo(stride * i - padding),
                    lambda i: self.hi(stride * i - padding + kernel - 1))

    def up(self, kernel: int, stride: int, padding: int = 0) -> Span:
        """After a transposed convolution: output ``o`` receives input ``i`` when ``0 <= o + padding -
        stride*i < kernel``."""
        return Span(lambda o: self.lo(-((kernel - 1 - o - padding) // stride)),  # ceil((o+p-k+1)/s)
                    lambda o: self.hi((o + padding) // stride))

    def shift(self, by: int) -> Span:
        """After a crop that drops ``by`` leading pixels: pixel ``i`` is the old pixel ``i + by``."""
        return Span(lambda i: self.lo(i + by), lambda i: self.hi(i + by))

    def __or__(self, other: Span) -> Span:
        """Features of two branches combined pixel by pixel (a sum or a concatenation)."""
        return Span(lambda i: min(self.lo(i), other.lo(i)), lambda i: max(self.hi(i), other.hi(i)))

    def tile_halo(self, multiple: int, offset: int = 0, shrink: int = 0) -> int:
        """The least halo that makes tiling exact: the smallest ``h >= shrink`` such that, with cores on the
        stride grid, every core pixel's span lies inside its tile's window, so that neither the window's
        edge nor a padded convolution's zeros reach it.

        In window coordinates the window starts at input 0 (on the pooling grid), output ``o`` lies over
        input ``o + shrink``, the core is outputs ``[m, m + core)`` with ``m = h - shrink``, and the window's
        output is ``core + 2m`` grown to the next valid length. This is less than the receptive-field
        radius: a pixel late in its stride period reaches further back, but its core starts further back
        too, and the window with it.
        """
        h = shrink
        while not all(self._fits(core, h - shrink, multiple, offset, shrink) for core in (multiple, 2 * multiple)):
            h += 1
        return h

    def _fits(self, core: int, margin: int, multiple: int, offset: int, shrink: int) -> bool:
        out = core + 2 * margin
        out += (offset - out) % multiple
        last = out + 2 * shrink - 1
        return all(self.lo(o) >= 0 and self.hi(o) <= last for o in range(margin, margin + core))

    def radius(self, period: int, shrink: int = 0) -> int:
        """The context, on each side, that output pixels need: the largest distance from an output pixel's
        own input position (``o + shrink``) to the ends of its span, over one period of the stride grid."""
        return max(max(o + shrink - self.lo(o), self.hi(o) - o - shrink) for o in range(period))
