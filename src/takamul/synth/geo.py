"""Coordinates: points at a distance and bearing from another point, and great-circle distance.

Distances are in kilometres; a spherical Earth is accurate enough for travel to care.
"""

from __future__ import annotations

import math

__all__ = ["haversine_km", "offset"]

_EARTH_KM = 6371.0088


def offset(lat: float, lon: float, km: float, bearing: float) -> tuple[float, float]:
    """The point ``km`` from (lat, lon) along ``bearing`` (radians), on the sphere."""
    d = km / _EARTH_KM
    la1, lo1 = math.radians(lat), math.radians(lon)
    la2 = math.asin(math.sin(la1) * math.cos(d) + math.cos(la1) * math.sin(d) * math.cos(bearing))
    lo2 = lo1 + math.atan2(
        math.sin(bearing) * math.sin(d) * math.cos(la1), math.cos(d) - math.sin(la1) * math.sin(la2)
    )
    return round(math.degrees(la2), 5), round(math.degrees(lo2), 5)


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * _EARTH_KM * math.asin(math.sqrt(a))
