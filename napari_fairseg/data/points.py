"""Optic disc / cup masks as point clouds and back (seed 003, FairDiff's point representation).

FairDiff generates fundus masks as point clouds (seed 003 §2.2, Eq. 3–4): the outline pixels of
the disc get ``z = −z0`` and those of the cup ``z = +z0``; the public reference code uses
``z0 = 5`` and 512 points by farthest-point sampling. A generated cloud becomes a mask again by
filling each outline's polygon (points in angular order; the reference draws and closes them,
see :func:`_fill`), the cup kept inside the disc.

Masks here are class maps ``(H, W)``: 0 background, 1 rim, 2 cup (the FairSeg classes after
decoding, :data:`~.kinds.FAIRSEG_MASK_CODES`); the disc is rim ∪ cup. Points are ``(N, 3)``
float: ``x`` (column) and ``y`` (row) in pixels, and ``z``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: seed 003's reference values: the outline's z mark and the points per mask
Z0, N_POINTS = 5.0, 512
#: bounds on a cloud and a mask (a generator file, perhaps a hostile one, sets both)
MAX_POINTS, MAX_SIDE = 65_536, 4096
RIM, CUP = 1, 2


def _outline(region: np.ndarray) -> np.ndarray:
    """``(K, 2)`` (row, col) of the region's boundary pixels: those with a neighbour outside it.

    (The reference code runs Canny on the binary mask, which marks the same contour to within a
    pixel; on a binary mask the inner boundary is exact and needs no smoothing scale.)
    """
    return np.argwhere(region & ~ndimage.binary_erosion(region, border_value=0))


def farthest_point_sampling(points: np.ndarray, n: int, *, rng: np.random.Generator | None = None) -> np.ndarray:
    """Indices of ``n`` points of ``points`` ``(K, D)``, each the farthest from those chosen before.

    Starts from a random point (``rng``) or the first. With ``K < n`` the order repeats, so that
    every cloud has ``n`` points.
    """
    k = len(points)
    if k == 0:
        raise ValueError("no points to sample from")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    m = min(n, k)
    chosen = np.empty(m, int)
    chosen[0] = int(rng.integers(k)) if rng is not None else 0
    dist = np.linalg.norm(points - points[chosen[0]], axis=1)
    for i in range(1, m):
        chosen[i] = int(np.argmax(dist))
        dist = np.minimum(dist, np.linalg.norm(points - points[chosen[i]], axis=1))
    return np.resize(chosen, n)


def mask_to_points(label: np.ndarray, *, n_points: int = N_POINTS, z0: float = Z0,
                   rng: np.random.Generator | None = None) -> np.ndarray:
    """Seed 003 Eq. 3–4: the disc and cup outlines of ``label`` ``(H, W)`` as ``(n_points, 3)``.

    Raises
    ------
    ValueError
        A label that is not 2D, holds values other than 0, 1, 2, or has no disc.
    """
    if isinstance(n_points, bool) or not isinstance(n_points, (int, np.integer)) or not 1 <= n_points <= MAX_POINTS:
        raise ValueError(f"n_points must be a whole number 1 … {MAX_POINTS}, got {n_points!r}")
    if not 0 < z0 < float("inf"):
        raise ValueError(f"z0 must be a finite number > 0 (disc at -z0, cup at +z0), got {z0!r}")
    label = np.asarray(label)
    if label.dtype.kind not in "iub":
        raise ValueError(f"a mask holds whole class values, got dtype {label.dtype}")
    if label.ndim != 2:
        raise ValueError(f"a fundus mask is 2D (H, W), got shape {label.shape}")
    bad = set(np.unique(label).tolist()) - {0, RIM, CUP}
    if bad:
        raise ValueError(f"mask values must be 0 (background), 1 (rim), 2 (cup), found {sorted(bad)}")
    disc, cup = label >= RIM, label == CUP
    if not disc.any():
        raise ValueError("the mask has no optic disc (no rim or cup pixel)")
    parts = []
    for region, z in ((disc, -z0), (cup, z0)):
        rc = _outline(region)
        parts.append(np.column_stack([rc[:, 1], rc[:, 0], np.full(len(rc), z)]).astype(float))
    cloud = np.concatenate(parts)
    return cloud[farthest_point_sampling(cloud, n_points, rng=rng)]


def _fill(xy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The region one outline's points ``(K, 2)`` (x, y) enclose.

    The points are joined in the order of their angle around their centroid and the polygon is
    filled (outlines of the disc and the cup are star-shaped about their centre). The reference
    code draws the points and closes the gaps with a morphological closing instead, which only
    fills when neighbouring points nearly touch: with 512 points on a large disc, or a sparse
    generated cloud, it returned scattered dots.
    """
    from skimage.draw import polygon

    canvas = np.zeros(shape, bool)
    if not len(xy):
        return canvas
    cols = np.clip(xy[:, 0], 0, shape[1] - 1)
    rows = np.clip(xy[:, 1], 0, shape[0] - 1)
    canvas[np.rint(rows).astype(int), np.rint(cols).astype(int)] = True
    if len(xy) >= 3:
        order = np.argsort(np.arctan2(rows - rows.mean(), cols - cols.mean()))
        rr, cc = polygon(rows[order], cols[order], shape=shape)
        canvas[rr, cc] = True
    return canvas


def check_shape(shape) -> tuple[int, int]:
    """``(H, W)`` as two whole numbers 1 … :data:`MAX_SIDE`, or a ValueError."""
    ok = (isinstance(shape, (tuple, list)) and len(shape) == 2
          and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 1 <= v <= MAX_SIDE for v in shape))
    if not ok:
        raise ValueError(f"a mask shape is two sizes 1 … {MAX_SIDE} pixels (H, W), got {shape!r}")
    return int(shape[0]), int(shape[1])


def points_to_mask(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A class map ``shape`` from a cloud ``(N, 3)``: ``z < 0`` outline the disc, ``z > 0`` the
    cup; the cup is kept inside the disc (0 background, 1 rim, 2 cup). Points off the image are
    moved onto its border; a cloud with no disc point gives an empty map."""
    points = np.asarray(points, float)
    if points.ndim != 2 or points.shape[1] != 3 or not np.isfinite(points).all():
        raise ValueError(f"points must be a finite (N, 3) array, got shape {points.shape}")
    shape = check_shape(shape)
    disc = _fill(points[points[:, 2] < 0, :2], shape)
    cup = _fill(points[points[:, 2] > 0, :2], shape) & disc
    out = np.zeros(shape, np.int16)
    out[disc] = RIM
    out[cup] = CUP
    return out


def cup_to_disc_ratio(label: np.ndarray) -> float:
    """The vertical cup-to-disc ratio of a class map ``(H, W)`` (1 rim, 2 cup): the cup's
    height over the disc's (rim ∪ cup), in rows; NaN without a disc, 0 without a cup."""
    label = np.asarray(label)
    disc_rows = np.flatnonzero((label > 0).any(axis=1))
    if not len(disc_rows):
        return float("nan")
    cup_rows = np.flatnonzero((label == 2).any(axis=1))
    height = disc_rows[-1] - disc_rows[0] + 1
    return float((cup_rows[-1] - cup_rows[0] + 1) / height) if len(cup_rows) else 0.0


def cup_inside_disc(label: np.ndarray) -> bool:
    """Whether the cup (2) is wholly surrounded by rim (1): no cup pixel touches the background
    (4-neighbourhood) or the image border."""
    label = np.asarray(label)
    cup = label == 2
    if not cup.any():
        return True
    padded = np.pad(label, 1, constant_values=0)
    c = np.pad(cup, 1)
    neighbours = [np.roll(padded, s, axis=a) for s, a in ((1, 0), (-1, 0), (1, 1), (-1, 1))]
    return not any(((n == 0) & c).any() for n in neighbours)
