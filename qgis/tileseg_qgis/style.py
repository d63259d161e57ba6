"""The model card's class colours on the layers a run made: the mask as a paletted raster (one entry per
class, labelled with its name) and the polygons categorized by their ``class`` field."""

from __future__ import annotations

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsPalettedRasterRenderer,
    QgsRasterLayer,
    QgsRendererCategory,
    QgsSymbol,
    QgsVectorLayer,
)
from qgis.PyQt.QtGui import QColor

CLASS_FIELD = "class"  # the polygons' class index, as the server writes it (tileseg.engine.vectors.sink)


def style_mask(layer: QgsRasterLayer, classes: list[dict]) -> None:
    """Render band 1 of ``layer`` with one colour per class of the card (``{"index", "name", "color"}``)."""
    palette = [QgsPalettedRasterRenderer.Class(int(c["index"]), QColor(c["color"]), c["name"]) for c in classes]
    layer.setRenderer(QgsPalettedRasterRenderer(layer.dataProvider(), 1, palette))
    layer.triggerRepaint()


def style_polygons(layer: QgsVectorLayer, classes: list[dict]) -> None:
    """Fill each polygon with its class's colour (categorized by the ``class`` field); background classes
    make no polygons and get no category."""
    categories = []
    for entry in classes:
        if entry.get("background"):
            continue
        symbol = QgsSymbol.defaultSymbol(layer.geometryType())
        symbol.setColor(QColor(entry["color"]))
        categories.append(QgsRendererCategory(int(entry["index"]), symbol, entry["name"]))
    layer.setRenderer(QgsCategorizedSymbolRenderer(CLASS_FIELD, categories))
    layer.triggerRepaint()
