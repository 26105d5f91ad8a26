"""Plate detector pre/post-processing (numpy + OpenCV only, no I/O besides the sidecar loader).

The model is a small single-class anchor-free detector (TTFNet/CenterNet-like) at output stride 4:
  - input  `image`: float32 (1, 3, H, W), BGR, values in [0, 1], letterboxed at the top-left
    corner of an H x W canvas filled with PAD_VALUE;
  - output `heat`:  float32 (1, 1, H/stride, W/stride), plate-centre probability (sigmoid applied);
  - output `ltrb`:  float32 (1, 4, H/stride, W/stride), distances in input pixels from each cell
    centre ((j + 0.5) * stride, (i + 0.5) * stride) to the box's left, top, right and bottom.
Decoding keeps local maxima of `heat` above the score threshold, builds boxes from `ltrb`, runs
NMS and maps boxes back to frame pixels.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

PAD_VALUE = 114
FloatArray = npt.NDArray[np.float32]
UInt8Array = npt.NDArray[np.uint8]


class DetectorSpecError(ValueError):
    """The detector sidecar JSON is missing or has a bad field."""

    def __init__(self, source: str, field: str, reason: str) -> None:
        super().__init__(f"{source}: {field}: {reason}")
        self.source = source
        self.field = field


class DetectorOutputError(ValueError):
    """The model returned outputs that do not match the spec."""

    def __init__(self, output: str, reason: str) -> None:
        super().__init__(f"detector output {output!r}: {reason}")
        self.output = output


@dataclass(frozen=True, slots=True)
class DetectorSpec:
    """Everything pre/post-processing needs to know about a detector model (its sidecar)."""

    input_width: int = 384
    input_height: int = 384
    stride: int = 4
    score_threshold: float = 0.3
    nms_iou: float = 0.4
    max_detections: int = 16
    min_box_size: float = 4.0
    input_name: str = "image"
    heat_output: str = "heat"
    ltrb_output: str = "ltrb"
    version: str = "0"

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "<dict>") -> DetectorSpec:
        known = {f for f in cls.__slots__}
        unknown = sorted(set(raw) - known - {"comment", "metrics", "training"})
        if unknown:
            raise DetectorSpecError(source, unknown[0], "unknown field")
        values = {k: v for k, v in raw.items() if k in known}
        spec = cls(**values)
        for name in ("input_width", "input_height", "stride", "max_detections"):
            value = getattr(spec, name)
            if not isinstance(value, int) or value <= 0:
                raise DetectorSpecError(source, name, "must be a positive integer")
        if spec.input_width % spec.stride or spec.input_height % spec.stride:
            raise DetectorSpecError(source, "stride", "must divide the input size")
        if not 0.0 < spec.score_threshold < 1.0:
            raise DetectorSpecError(source, "score_threshold", "must be in (0, 1)")
        if not 0.0 < spec.nms_iou <= 1.0:
            raise DetectorSpecError(source, "nms_iou", "must be in (0, 1]")
        return spec

    @classmethod
    def from_file(cls, path: Path) -> DetectorSpec:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise DetectorSpecError(str(path), "<file>", "not found") from exc
        except json.JSONDecodeError as exc:
            raise DetectorSpecError(str(path), "<file>", f"invalid JSON: {exc.msg}") from exc
        if not isinstance(raw, dict):
            raise DetectorSpecError(str(path), "<file>", "not a JSON object")
        return cls.from_dict(raw, source=str(path))


@dataclass(frozen=True, slots=True)
class LetterboxMeta:
    """How a frame was mapped onto the model canvas: canvas = frame * scale (top-left)."""

    scale: float
    frame_width: int
    frame_height: int


@dataclass(frozen=True, slots=True)
class Detection:
    """A detected plate: box (x1, y1, x2, y2) in frame pixels and the detector's score."""

    box: tuple[float, float, float, float]
    score: float


def downscale(image: UInt8Array, width: int, height: int) -> UInt8Array:
    """Anti-aliased resize that stays fast on one core.

    OpenCV's INTER_AREA costs 3-20 ms for a 720p-1280px frame here; two bilinear steps (to twice
    the target, then exactly halving, which averages 2x2 pixels) cost well under 1 ms."""
    src_h, src_w = image.shape[:2]
    if width * 2 < src_w and height * 2 < src_h:
        image = np.asarray(
            cv2.resize(image, (width * 2, height * 2), interpolation=cv2.INTER_LINEAR),
            dtype=np.uint8,
        )
    return np.asarray(
        cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR), dtype=np.uint8
    )


def letterbox(image: UInt8Array, width: int, height: int) -> tuple[UInt8Array, LetterboxMeta]:
    """Resize `image` (H, W, 3 uint8) to fit width x height keeping aspect, pad bottom/right."""
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image must be a non-empty HxWx3 array, got shape {image.shape}")
    frame_h, frame_w = int(image.shape[0]), int(image.shape[1])
    scale = min(width / frame_w, height / frame_h)
    new_w = max(1, min(width, round(frame_w * scale)))
    new_h = max(1, min(height, round(frame_h * scale)))
    resized = downscale(image, new_w, new_h)
    canvas = np.full((height, width, 3), PAD_VALUE, dtype=np.uint8)
    canvas[:new_h, :new_w] = resized
    return canvas, LetterboxMeta(scale=scale, frame_width=frame_w, frame_height=frame_h)


def fit_input(
    frame_width: int, frame_height: int, pixels: int, multiple: int = 32, max_side: int = 1024
) -> tuple[int, int]:
    """The detector input (width, height) that shows a frame largest within a pixel budget.

    Both sides are multiples of `multiple` (the network's coarsest stride) and at most
    `max_side`, their product at most `pixels`; among those, the size whose letterbox scale
    (capped at 1: a frame is never magnified) is largest wins, then the smallest. A 1280x720
    frame in the budget of 384x384 gets 512x288 (scale 0.40 instead of 0.30); a square frame
    keeps 384x384; a frame smaller than the budget gets its own size rounded up."""
    if frame_width <= 0 or frame_height <= 0:
        raise ValueError(f"frame size must be positive, got {frame_width}x{frame_height}")
    if multiple <= 0 or pixels < multiple * multiple or max_side < multiple:
        raise ValueError(f"no input fits: pixels={pixels}, multiple={multiple}, max={max_side}")
    best: tuple[float, int, int, int] | None = None  # (-scale, area, w, h)
    for w in range(multiple, max_side + 1, multiple):
        h = min(max_side, (pixels // w) // multiple * multiple)
        if h < multiple:
            break
        scale = min(w / frame_width, h / frame_height, 1.0)
        h = min(h, _round_up(frame_height * scale, multiple))  # no rows the frame cannot fill
        key = (-scale, w * h, w, h)
        if best is None or key < best:
            best = key
    assert best is not None
    return best[2], best[3]


def trim_input(
    frame_width: int, frame_height: int, width: int, height: int, multiple: int = 32
) -> tuple[int, int]:
    """The detector input (width, height) that shows a frame at the scale of the `width` x
    `height` letterbox with the padding trimmed: each side the frame's scaled size rounded up to
    `multiple`, at most the letterbox's. A 1280x720 frame in 384x384 gets 384x224: the same
    scale (0.30), 42% fewer pixels. The letterbox pads bottom and right, so the frame sits at
    the same place in both inputs."""
    if frame_width <= 0 or frame_height <= 0:
        raise ValueError(f"frame size must be positive, got {frame_width}x{frame_height}")
    if multiple <= 0 or width < multiple or height < multiple:
        raise ValueError(f"no input fits: {width}x{height}, multiple={multiple}")
    scale = min(width / frame_width, height / frame_height)
    return (
        min(width, _round_up(frame_width * scale, multiple)),
        min(height, _round_up(frame_height * scale, multiple)),
    )


def _round_up(value: float, multiple: int) -> int:
    """`value` rounded up to a multiple of `multiple` (at least one `multiple`)."""
    return max(multiple, math.ceil(value / multiple - 1e-9) * multiple)


def to_input(canvas: UInt8Array) -> FloatArray:
    """HxWx3 uint8 BGR canvas -> (1, 3, H, W) float32 in [0, 1]."""
    chw = np.ascontiguousarray(canvas.transpose(2, 0, 1), dtype=np.float32)
    chw *= np.float32(1.0 / 255.0)
    return chw[np.newaxis]


def preprocess(
    image: UInt8Array, spec: DetectorSpec, u8: bool = False
) -> tuple[FloatArray | UInt8Array, LetterboxMeta]:
    """Frame (H, W, 3 uint8 BGR) -> model input and the mapping back to the frame. `u8`: the
    letterboxed image as (1, H, W, 3) uint8, for a model that converts it itself
    (`OpenVinoModel.load(u8_image=True)`); otherwise (1, 3, H, W) float32 in [0, 1]."""
    canvas, meta = letterbox(image, spec.input_width, spec.input_height)
    return (canvas[np.newaxis] if u8 else to_input(canvas)), meta


def box_iou(box: FloatArray, boxes: FloatArray) -> FloatArray:
    """IoU of one (4,) box against (N, 4) boxes, all x1, y1, x2, y2."""
    ix1 = np.maximum(box[0], boxes[:, 0])
    iy1 = np.maximum(box[1], boxes[:, 1])
    ix2 = np.minimum(box[2], boxes[:, 2])
    iy2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0).astype(np.float32)


def nms(boxes: FloatArray, scores: FloatArray, iou_threshold: float, limit: int) -> list[int]:
    """Greedy non-maximum suppression; indices of kept boxes, best first, at most `limit`."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < limit:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        if rest.size == 0:
            break
        overlaps = box_iou(boxes[best], boxes[rest])
        order = rest[overlaps <= iou_threshold]
    return keep


def decode(heat: FloatArray, ltrb: FloatArray, spec: DetectorSpec) -> tuple[FloatArray, FloatArray]:
    """Raw outputs -> (boxes (N, 4) in input pixels, scores (N,)) of local heat maxima."""
    grid_h, grid_w = spec.input_height // spec.stride, spec.input_width // spec.stride
    grid = f"{grid_h}x{grid_w}"
    if heat.shape != (1, 1, grid_h, grid_w):
        raise DetectorOutputError(spec.heat_output, f"shape {heat.shape}, want 1x1x{grid}")
    if ltrb.shape != (1, 4, grid_h, grid_w):
        raise DetectorOutputError(spec.ltrb_output, f"shape {ltrb.shape}, want 1x4x{grid}")
    plane = np.ascontiguousarray(heat[0, 0], dtype=np.float32)
    peaks = cv2.dilate(plane, np.ones((3, 3), np.uint8))
    mask = (plane >= peaks) & (plane >= spec.score_threshold)
    ys, xs = np.nonzero(mask)
    scores = plane[ys, xs].astype(np.float32)
    dist = ltrb[0][:, ys, xs].astype(np.float32)  # (4, N)
    cx = (xs.astype(np.float32) + 0.5) * spec.stride
    cy = (ys.astype(np.float32) + 0.5) * spec.stride
    boxes = np.stack([cx - dist[0], cy - dist[1], cx + dist[2], cy + dist[3]], axis=1)
    return boxes.astype(np.float32).reshape(-1, 4), scores


def to_frame(boxes: FloatArray, meta: LetterboxMeta) -> FloatArray:
    """Input-pixel boxes -> frame-pixel boxes, clipped to the frame."""
    out = boxes / np.float32(meta.scale)
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, meta.frame_width)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, meta.frame_height)
    return out.astype(np.float32)


def postprocess(
    outputs: Mapping[str, FloatArray], meta: LetterboxMeta, spec: DetectorSpec
) -> list[Detection]:
    """Model outputs -> plates in frame pixels, best score first."""
    for name in (spec.heat_output, spec.ltrb_output):
        if name not in outputs:
            raise DetectorOutputError(name, "missing from model outputs")
    boxes, scores = decode(outputs[spec.heat_output], outputs[spec.ltrb_output], spec)
    if scores.size == 0:
        return []
    boxes = to_frame(boxes, meta)
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    valid = (widths * meta.scale >= spec.min_box_size) & (heights * meta.scale >= 1.0)
    boxes, scores = boxes[valid], scores[valid]
    keep = nms(boxes, scores, spec.nms_iou, spec.max_detections)
    return [
        Detection(box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])), score=float(scores[i]))
        for i in keep
        for b in (boxes[i],)
    ]


# ----------------------------------------------------------------------------- box refinement
def refine_window(
    box: tuple[float, float, float, float], frame_width: int, frame_height: int, context: float
) -> tuple[int, int, int, int] | None:
    """A square window around a coarse box for a second, zoomed detector pass.

    Its side is `context` times the box's plate-shaped extent (max of width and twice the
    height), shifted to stay inside the frame where it fits and clipped where it does not.
    None when the box or the window is degenerate."""
    x1, y1, x2, y2 = box
    bw, bh = x2 - x1, y2 - y1
    if bw <= 0 or bh <= 0 or context <= 0:
        return None
    side = context * max(bw, 2.0 * bh)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    wx1 = min(max(0.0, cx - side / 2.0), max(0.0, frame_width - side))
    wy1 = min(max(0.0, cy - side / 2.0), max(0.0, frame_height - side))
    ix1, iy1 = int(wx1), int(wy1)
    ix2 = min(frame_width, int(np.ceil(wx1 + side)))
    iy2 = min(frame_height, int(np.ceil(wy1 + side)))
    if ix2 - ix1 < 8 or iy2 - iy1 < 8:
        return None
    return ix1, iy1, ix2, iy2


def pick_refined(
    coarse: tuple[float, float, float, float],
    candidates: list[Detection],
    offset: tuple[int, int],
) -> Detection | None:
    """The zoomed pass's detection that refines `coarse`: the best-scoring candidate (window
    pixels, shifted by `offset` to frame pixels) whose centre lies inside the coarse box."""
    ox, oy = offset
    x1, y1, x2, y2 = coarse
    best: Detection | None = None
    for cand in candidates:
        bx1, by1, bx2, by2 = cand.box
        cx, cy = (bx1 + bx2) / 2.0 + ox, (by1 + by2) / 2.0 + oy
        if not (x1 <= cx <= x2 and y1 <= cy <= y2):
            continue
        if best is None or cand.score > best.score:
            best = Detection(box=(bx1 + ox, by1 + oy, bx2 + ox, by2 + oy), score=cand.score)
    return best
