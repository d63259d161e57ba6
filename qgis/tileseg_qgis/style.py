"""The model card's class colours on the layers a run made: the mask as a paletted raster (one entry per
class, labelled with its name), the polygons categorized by their ``class`` field, and the objects (one
polygon per object) as outlines in their class's colour."""

from __future__ import annotations

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsPalettedRasterRenderer,
    QgsRasterLayer,
    QgsRendererCategory,
    QgsSymbol,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import Qt
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


def style_objects(layer: QgsVectorLayer, classes: list[dict]) -> None:
    """Outline each object in its class's colour (categorized by the ``class`` field), unfilled: touching
    objects stay apart on the image under them."""
    categories = []
    for entry in classes:
        if entry.get("background"):
            continue
        symbol = QgsSymbol.defaultSymbol(layer.geometryType())
        symbol.setColor(QColor(entry["color"]))
        outline = symbol.symbolLayer(0)
        outline.setBrushStyle(Qt.NoBrush)
        outline.setStrokeColor(QColor(entry["color"]))
        outline.setStrokeWidth(0.4)
        categories.append(QgsRendererCategory(int(entry["index"]), symbol, entry["name"]))
    layer.setRenderer(QgsCategorizedSymbolRenderer(CLASS_FIELD, categories))
    layer.triggerRepaint()
