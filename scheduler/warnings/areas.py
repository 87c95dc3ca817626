"""Which communes a CAP ``<area>`` covers.

A commune (a gateway of the scheduler's config) matches when:
- a ``<geocode>`` value equals its administrative ``code`` or its gateway id (the id may be the code),
  whatever the ``valueName``; or
- a ``<polygon>`` or ``<circle>`` intersects its ``boundary`` (a polygon) or, without one, contains
  its ``location`` (a point).

Coordinates are WGS 84, written latitude first as in CAP; shapely works in (x=lon, y=lat). A circle is
turned into a 64-sided polygon on a local equirectangular projection, which is accurate to well
under 1 % at the few-kilometre radii of a commune warning.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from shapely.geometry import Point, Polygon
from shapely.geometry.base import BaseGeometry

from .cap import Area, Circle

EARTH_RADIUS_KM = 6371.0088


@dataclass(frozen=True)
class Commune:
    gateway: str
    name: str | None = None
    code: str | None = None
    location: tuple[float, float] | None = None  # (lat, lon)
    boundary: tuple[tuple[float, float], ...] | None = None  # (lat, lon) ring

    def geometry(self) -> BaseGeometry | None:
        if self.boundary:
            return Polygon([(lon, lat) for lat, lon in self.boundary])
        if self.location:
            return Point(self.location[1], self.location[0])
        return None


def circle_polygon(c: Circle, sides: int = 64) -> BaseGeometry:
    if c.radius_km == 0:
        return Point(c.lon, c.lat)
    dlat = math.degrees(c.radius_km / EARTH_RADIUS_KM)
    dlon = dlat / max(math.cos(math.radians(c.lat)), 1e-6)
    return Polygon([(c.lon + dlon * math.cos(2 * math.pi * i / sides), c.lat + dlat * math.sin(2 * math.pi * i / sides))
                    for i in range(sides)])


def _shapes(area: Area) -> list[BaseGeometry]:
    shapes: list[BaseGeometry] = []
    for pts in area.polygons:
        poly = Polygon([(lon, lat) for lat, lon in pts])
        shapes.append(poly if poly.is_valid else poly.buffer(0))
    shapes += [circle_polygon(c) for c in area.circles]
    return shapes


def match_areas(areas: Iterable[Area], communes: Sequence[Commune]) -> list[str]:
    """Gateway ids of the communes any of ``areas`` covers, in the order of ``communes``."""
    areas = list(areas)
    codes = {v for a in areas for _n, v in a.geocodes}
    shapes = [s for a in areas for s in _shapes(a)]
    out: list[str] = []
    for c in communes:
        if c.gateway in codes or (c.code is not None and c.code in codes):
            out.append(c.gateway)
            continue
        geom = c.geometry()
        if geom is not None and any(s.intersects(geom) for s in shapes):
            out.append(c.gateway)
    return out
