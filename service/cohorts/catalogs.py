"""STAC documents as many inputs: an ItemCollection (a GeoJSON FeatureCollection of items), a static catalog or
collection (its items, found by following its links), or the items a search returned
(:mod:`tileseg.cohorts.stac_search`).

Each item becomes the engine's :class:`~tileseg.engine.io.stac.StacItem`, with its assets' hrefs made
absolute (a ``file://`` href becomes a local path), so that the engine opens its asset (``--asset``) or stacks
its bands (``--bands``) exactly as for an item given alone; an item travels to worker processes as it is, and
is never read again from where it came.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tileseg.cohorts.errors import CatalogError, MissingInputError, NoInputsError, StacApiError
from tileseg.engine.io.stac import StacItem, parse_item
from tileseg.urls import mask_text, mask_url

if TYPE_CHECKING:
    import pystac

DOCUMENT_MAX_BYTES = 64 * 1024**2  # an ItemCollection of thousands of items is a few MB


def engine_item(item: pystac.Item) -> StacItem:
    """The engine's view of a pystac item: its id and its assets, each href absolute.

    Raises:
        UnreadableInputError: an item without assets.
    """
    doc = item.to_dict(include_self_link=False, transform_hrefs=False)
    local = {}
    for key, asset in item.assets.items():
        href = asset.get_absolute_href() or asset.href
        doc["assets"][key]["href"] = href
        if href.lower().startswith("file://"):
            local[key] = local_path(href)
    location = item.get_self_href() or "."
    parsed = parse_item(json.dumps(doc).encode(), location)
    # a file:// href names a local file wherever the item came from (a URL location would make it a URL)
    assets = {k: replace(a, href=local[k]) if k in local else a for k, a in parsed.assets.items()}
    return replace(parsed, assets=assets)


def local_path(href: str) -> str:
    """A ``file://`` URL as the local path it names; any other href as it is."""
    return urlsplit(href).path if href.lower().startswith("file://") else href


def read_document(location: str) -> dict[str, Any]:
    """The JSON document at ``location`` (a local path or an http(s) URL).

    Raises:
        MissingInputError: no such local file.
        StacApiError: a URL that does not answer, or answers with an error.
        CatalogError: not a JSON object, or too large.
    """
    shown = mask_url(location) if "://" in location else location
    if "://" in location:
        import httpx

        try:
            with httpx.stream("GET", location, timeout=30.0, follow_redirects=True) as response:
                response.raise_for_status()
                data = bytearray()
                for chunk in response.iter_bytes():
                    data += chunk
                    if len(data) > DOCUMENT_MAX_BYTES:
                        raise CatalogError(f"{shown}: more than {DOCUMENT_MAX_BYTES} bytes: not a STAC document")
        except httpx.HTTPError as err:
            raise StacApiError(f"{shown} does not answer: {mask_text(' '.join(str(err).split()))}") from err
    else:
        path = Path(location)
        if not path.is_file():
            raise MissingInputError(f"{location}: no such file")
        if path.stat().st_size > DOCUMENT_MAX_BYTES:
            raise CatalogError(f"{location}: more than {DOCUMENT_MAX_BYTES} bytes: not a STAC document")
        data = bytearray(path.read_bytes())
    try:
        doc = json.loads(bytes(data))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CatalogError(f"{shown} is not JSON: {err}") from err
    if not isinstance(doc, dict):
        raise CatalogError(f"{shown} is not a STAC document (a JSON object)")
    return doc


def items_of(location: str, doc: dict[str, Any]) -> list[StacItem]:
    """The items a STAC document holds: itself (an Item), its features (an ItemCollection), or every item a
    static catalog or collection links to, recursively.

    Raises:
        CatalogError: not an Item, an ItemCollection, a Catalog or a Collection, or one pystac cannot read.
        NoInputsError: a collection or catalog without any item.
    """
    import pystac

    shown = mask_url(location) if "://" in location else location
    kind = doc.get("type")
    try:
        if kind == "Feature":
            return [engine_item(pystac.Item.from_dict(doc, href=location))]
        if kind == "FeatureCollection":
            collection = pystac.ItemCollection.from_dict(doc, preserve_dict=False)
            items = []
            for item in collection.items:
                if item.get_self_href() is None:
                    item.set_self_href(location)  # relative hrefs resolve against the collection's file
                items.append(engine_item(item))
        elif kind in ("Catalog", "Collection"):
            catalog = pystac.read_dict(doc, href=location)
            items = [engine_item(item) for item in catalog.get_items(recursive=True)]  # type: ignore[attr-defined]
        else:
            raise CatalogError(
                f"{shown} is a {kind or 'JSON document'}, not a STAC Item, ItemCollection, Catalog or Collection"
            )
    except (pystac.STACError, pystac.STACTypeError, KeyError, TypeError, ValueError, OSError) as err:
        if isinstance(err, CatalogError):
            raise
        raise CatalogError(f"{shown}: not a readable STAC {kind or 'document'}: {mask_text(str(err))}") from err
    if not items:
        raise NoInputsError(f"{shown}: the STAC {kind} holds no item")
    return items


__all__ = ["engine_item", "items_of", "local_path", "read_document"]
