"""The items a STAC API's search returns, through pystac-client: ``tileseg segment --stac-search URL`` and the
service's batches take their inputs from here.

A search names its collections, an area (``bbox``: west, south, east, north in degrees), a date range
(``datetime``: an RFC 3339 instant or an interval ``start/end``, either end open as ``..``) and, where the API
implements the query extension, conditions on the items' properties (``query``, e.g.
``{"eo:cloud_cover": {"lt": 20}}``). Every collection named is checked to exist first: most APIs answer an
unknown collection with an empty result, which would read as "nothing there".
"""

from __future__ import annotations

import difflib
import json
import warnings
from typing import TYPE_CHECKING, Any

from tileseg.cohorts.errors import NoInputsError, StacApiError, UnknownCollectionError
from tileseg.urls import mask_text, mask_url

if TYPE_CHECKING:
    import pystac

TIMEOUT_SECONDS = 30.0  # per request: an API that does not answer in this long is reported, not waited on


def search_items(
    api_url: str,
    collections: list[str] | None,
    bbox: list[float] | None,
    datetime: str | None,
    query: dict | None,
    max_items: int | None,
) -> list[pystac.Item]:
    """The items that the STAC API at ``api_url`` finds for a search, in the order it returns them.

    Args:
        api_url: the API's landing page, e.g. ``https://earth-search.aws.element84.com/v1``.
        collections: the collections to search (each must exist), or None for all.
        bbox: ``[west, south, east, north]`` in degrees, or None.
        datetime: an instant or an interval (``2024-06-01/2024-08-31``, ``2024-06-01/..``), or None.
        query: the query extension's conditions on properties, or None (the API must implement it if given).
        max_items: stop after this many items, or None for all the search matches.

    Returns:
        The items (pystac), each with its assets' hrefs as the API gives them.

    Raises:
        StacApiError: the API does not answer, answers an error, is no STAC API with item search, or lacks the
            query extension that ``query`` needs.
        UnknownCollectionError: a collection the API does not have (the message names those it has).
        NoInputsError: the search matched no item.
    """
    from pystac_client import Client
    from pystac_client.exceptions import APIError

    shown = mask_url(api_url)
    try:
        client = Client.open(api_url, timeout=TIMEOUT_SECONDS)
        _check_collections(client, collections, shown)
        if query is not None and not client.conforms_to("QUERY"):
            raise StacApiError(f"STAC API {shown} does not implement the query extension: leave --query out")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pystac-client's notes on conformance: checked above
            search = client.search(
                collections=collections or None,
                bbox=bbox,
                datetime=datetime,
                query=query,
                max_items=max_items,
            )
            items = list(search.items())
    except (APIError, OSError, ValueError, TypeError, KeyError) as err:
        if isinstance(err, UnknownCollectionError | StacApiError):
            raise
        raise StacApiError(f"STAC API {shown}: {_one_line(err)}") from err
    if not items:
        raise NoInputsError(
            f"the search of STAC API {shown} ({describe_search(collections, bbox, datetime, query)}) found no item"
        )
    return items


def _check_collections(client: Any, collections: list[str] | None, shown: str) -> None:
    """Raise :class:`UnknownCollectionError` for the first collection of ``collections`` the API lacks."""
    for name in collections or []:
        try:
            found = client.get_collection(name)
        except Exception as err:  # pystac-client raises APIError, or a 404 surfaces as an HTTP error
            if "404" not in str(err):
                raise
            found = None
        if found is None:
            have = sorted(c.id for c in client.get_collections())
            close = difflib.get_close_matches(name, have, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UnknownCollectionError(
                f"STAC API {shown} has no collection {name!r}{hint} (it has: {', '.join(have) or 'none'})"
            )


def describe_search(
    collections: list[str] | None, bbox: list[float] | None, datetime: str | None, query: dict | None
) -> str:
    """A search's terms in words, for messages."""
    terms = [
        f"collections {','.join(collections)}" if collections else "all collections",
        *([f"bbox {','.join(f'{v:g}' for v in bbox)}"] if bbox else []),
        *([f"datetime {datetime}"] if datetime else []),
        *([f"query {json.dumps(query, sort_keys=True)}"] if query else []),
    ]
    return ", ".join(terms)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return mask_text(text)[:300]


__all__ = ["describe_search", "search_items"]
