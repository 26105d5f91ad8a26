"""Geometry of pasting a plate crop into a scene (numpy + OpenCV, no torch): shared by the
detector's trainer and the HD proxy."""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

Box = tuple[float, float, float, float]


def inner_box(quad: npt.ArrayLike, inner: Box) -> Box:
    """Axis-aligned box of the crop's inner rectangle (fractions l, t, r, b of the crop) mapped
    through the quadrilateral the crop is warped into (corners tl, tr, br, bl)."""
    src = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32)
    m = cv2.getPerspectiveTransform(src, np.asarray(quad, np.float32))
    x0, y0, x1, y1 = inner
    pts = np.array([[[x0, y0], [x1, y0], [x1, y1], [x0, y1]]], np.float32)
    q = np.asarray(cv2.perspectiveTransform(pts, m)[0], np.float64)
    return float(q[:, 0].min()), float(q[:, 1].min()), float(q[:, 0].max()), float(q[:, 1].max())
