"""Great-circle distances between people and facilities, vectorised and chunked in numpy.

Distances are on a sphere of the mean Earth radius (IUGG, 6371.0088 km), as in
``takamul.synth.geo``: the spherical error (under 0.5%) is far below the error of using a straight
line for a road journey, and the synthetic population was placed with the same sphere.

Two forms are used:

* :func:`haversine_km` — the haversine formula (Sinnott 1984), elementwise with numpy
  broadcasting; exact to rounding for every distance, used for scalar pairs and for the final
  nearest-facility distances.
* :class:`GreatCircle` — a people × facilities distance matrix produced block by block. Each point
  becomes a unit vector; a block of dot products is one BLAS matrix product and the distance is
  ``2 R asin(|p - q| / 2)`` with ``|p - q|² = 2 - 2 p·q``. That is the same great-circle distance
  (the haversine ``a`` equals ``(|p - q| / 2)²``), at the cost of about 0.1 m absolute rounding
  near zero distance, and it is several times faster than evaluating the haversine on every pair.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_BLOCK_ELEMENTS",
    "EARTH_RADIUS_KM",
    "GreatCircle",
    "haversine_km",
    "row_blocks",
    "unit_vectors",
]

FloatArray = npt.NDArray[np.float64]

# Mean Earth radius R1 = (2a + b) / 3 of WGS 84 (IUGG); the same value as takamul.synth.geo.
EARTH_RADIUS_KM = 6371.0088
# Matrix elements per block: 2 million float64 are 16 MB, so the few temporaries of one block
# stay under ~100 MB however many people there are.
DEFAULT_BLOCK_ELEMENTS = 2_000_000


def haversine_km(
    lat1: npt.ArrayLike, lon1: npt.ArrayLike, lat2: npt.ArrayLike, lon2: npt.ArrayLike
) -> FloatArray:
    """Great-circle distance in km by the haversine formula; arguments broadcast like numpy.

    ``haversine_km(lat[:, None], lon[:, None], flat[None, :], flon[None, :])`` is a full matrix.
    """
    p1 = np.radians(np.asarray(lat1, dtype=np.float64))
    p2 = np.radians(np.asarray(lat2, dtype=np.float64))
    dp = p2 - p1
    dl = np.radians(np.asarray(lon2, dtype=np.float64) - np.asarray(lon1, dtype=np.float64))
    a = np.sin(dp / 2.0) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2.0) ** 2
    # Rounding can push a just above 1 for antipodal points; asin would then return NaN.
    return np.asarray(2.0 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0))))


def _coordinates(values: npt.ArrayLike, name: str, limit: float) -> FloatArray:
    array = np.ascontiguousarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} has a missing or infinite value")
    if np.any(np.abs(array) > limit):
        raise ValueError(f"{name} outside [-{limit:g}, {limit:g}] degrees")
    return array


def unit_vectors(lat: npt.ArrayLike, lon: npt.ArrayLike) -> FloatArray:
    """(n, 3) Cartesian unit vectors of points given in degrees."""
    phi = np.radians(np.asarray(lat, dtype=np.float64))
    lam = np.radians(np.asarray(lon, dtype=np.float64))
    cos_phi = np.cos(phi)
    return np.column_stack([cos_phi * np.cos(lam), cos_phi * np.sin(lam), np.sin(phi)])


def row_blocks(n_rows: int, n_cols: int, block_elements: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of consecutive row blocks holding at most ``block_elements`` elements."""
    if block_elements < 1:
        raise ValueError("block_elements must be at least 1")
    rows = max(1, block_elements // max(1, n_cols))
    for start in range(0, n_rows, rows):
        yield start, min(n_rows, start + rows)


class GreatCircle:
    """Great-circle distances (km) from origins (people, areas) to destinations (facilities).

    The matrix is never held whole: :meth:`block` returns a band of rows, so 1,000,000 people ×
    1,000 facilities runs in a constant ~100 MB.
    """

    def __init__(
        self,
        origin_lat: npt.ArrayLike,
        origin_lon: npt.ArrayLike,
        dest_lat: npt.ArrayLike,
        dest_lon: npt.ArrayLike,
    ) -> None:
        self.origin_lat = _coordinates(origin_lat, "origin latitude", 90.0)
        self.origin_lon = _coordinates(origin_lon, "origin longitude", 360.0)
        self.dest_lat = _coordinates(dest_lat, "destination latitude", 90.0)
        self.dest_lon = _coordinates(dest_lon, "destination longitude", 360.0)
        if self.origin_lat.shape != self.origin_lon.shape:
            raise ValueError("origin latitude and longitude differ in length")
        if self.dest_lat.shape != self.dest_lon.shape:
            raise ValueError("destination latitude and longitude differ in length")
        # Unit vectors are computed once; every block reuses them. The destinations are kept
        # transposed and contiguous so a block is one (rows × 3) @ (3 × m) product.
        self._origin_xyz = unit_vectors(self.origin_lat, self.origin_lon)
        self._dest_xyz_t = np.ascontiguousarray(unit_vectors(self.dest_lat, self.dest_lon).T)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.origin_lat.shape[0], self.dest_lat.shape[0])

    def _dots(self, start: int, stop: int) -> FloatArray:
        # einsum rather than ``@``: numpy's own loop for this thin (rows × 3) @ (3 × m) product
        # is several times faster than an OpenBLAS call, and does not depend on which BLAS
        # kernel the machine selects (OPENBLAS_CORETYPE slows BLAS by up to 10× here).
        return np.einsum("ik,kj->ij", self._origin_xyz[start:stop], self._dest_xyz_t)

    def chord2_block(self, start: int, stop: int) -> FloatArray:
        """Squared chord lengths |p − q|² (unit sphere) of origins ``start:stop``.

        Increasing with the great-circle distance, so catchment and band tests can be made on it
        with thresholds from :meth:`km_to_chord2`, without trigonometry on the matrix.
        """
        d = self._dots(start, stop)
        # In place: |p − q|² = 2 − 2 p·q, clipped at 0 where rounding makes it slightly negative.
        np.multiply(d, -2.0, out=d)
        np.add(d, 2.0, out=d)
        np.maximum(d, 0.0, out=d)
        return d

    @staticmethod
    def km_to_chord2(km: float) -> float:
        """The squared chord of a great-circle distance: 4 sin²(km / 2R), capped at the antipode."""
        if km < 0:
            return -1.0
        half = min(km, math.pi * EARTH_RADIUS_KM) / (2.0 * EARTH_RADIUS_KM)
        return 4.0 * math.sin(half) ** 2

    def block(self, start: int, stop: int) -> FloatArray:
        """Distances (km) of origins ``start:stop`` to every destination."""
        d = self.chord2_block(start, stop)
        # In place: the arc 2R·asin(chord / 2); chord/2 ≤ 1 for unit vectors, clipped for rounding.
        np.sqrt(d, out=d)
        np.multiply(d, 0.5, out=d)
        np.minimum(d, 1.0, out=d)
        np.arcsin(d, out=d)
        np.multiply(d, 2.0 * EARTH_RADIUS_KM, out=d)
        return d

    def nearest(
        self, block_elements: int = DEFAULT_BLOCK_ELEMENTS
    ) -> tuple[npt.NDArray[np.intp], FloatArray]:
        """Index of and haversine distance (km) to the nearest destination, for every origin.

        The nearest destination is the largest dot product (no trigonometry on the matrix); the
        distance to it alone is then computed exactly with the haversine formula.
        """
        n, m = self.shape
        if m == 0:
            raise ValueError("no destinations")
        index = np.empty(n, dtype=np.intp)
        for start, stop in row_blocks(n, m, block_elements):
            index[start:stop] = np.argmax(self._dots(start, stop), axis=1)
        km = haversine_km(
            self.origin_lat, self.origin_lon, self.dest_lat[index], self.dest_lon[index]
        )
        return index, km
