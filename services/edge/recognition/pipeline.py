"""`PlateRecognizer`: decode -> resize -> detect -> crop -> read -> post-process, timed per stage.

The recogniser depends on two `InferenceModel`s (see runtime.py) and the pure pre/post code of
detector.py and reader.py; `PlateRecognizer.from_dir` wires in the OpenVINO adapter.
Bad input (undecodable bytes, empty or degenerate arrays, absurdly large images) never raises
from `recognize*`: it gives an empty result whose `error` says why.
"""

from __future__ import annotations

import dataclasses
import logging
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt

from services.edge.recognition import detector as det
from services.edge.recognition import reader as rdr
from services.edge.recognition import second_reader as sr
from services.edge.recognition.runtime import (
    InferenceModel,
    ModelLoadError,
    OpenVinoModel,
    RuntimeOptions,
)

log = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
STAGES = ("decode", "resize", "detect", "read", "total")
# INT8 detector by default (1.4.0: held-out recall 80.2% vs 81.4% FP32 at 0.35; faster where the
# CPU has VNNI, about as fast without); falls back to the FP32 IR when the INT8 one is absent.
DEFAULT_DETECTOR = "detector_int8"
# INT8 reader by default since session 14 (NNCF post-training quantisation of the FP32 reader,
# `python -m services.edge.training reader_int8`; rule 2: S 691 against 694, held-out crops 370
# against 371 of 407, 720p detect + read x0.80 on a CPU without BF16); falls back to the FP32 IR
# when the INT8 one is absent. It shares the FP32 reader's sidecar (reader.json).
DEFAULT_READER = "reader_int8"


@dataclass(frozen=True, slots=True)
class PipelineOptions:
    """Tunables of the composed pipeline (not of either model)."""

    # The detector's main pass: "square" letterboxes every frame into the sidecar's input size;
    # "aspect" fits the frame's aspect ratio into the same pixel budget (1280x720 -> 512x288,
    # plates a third larger at the same inference cost; one compiled copy per frame shape, at
    # most `detect_shapes` besides the square one, the least recently used dropped first).
    # "aspect" failed its rule in session 8 (more boxes: +2 wrong reads on held-out scenes, +40%
    # detect time with their refinements; docs/models.md). "trim" keeps the square's scale and
    # trims its padding (1280x720 -> 384x224: the same plates, 42% fewer pixels; session 10).
    detect_fit: Literal["square", "aspect", "trim"] = "square"
    detect_shapes: int = 8
    # The detector's score threshold; 0 keeps the one in its sidecar (`score_threshold`).
    score_threshold: float = 0.0
    # Zoomed second detector pass for small plates (docs/models.md, "Box refinement"): a coarse
    # box narrower than `refine_below` model-input pixels (of the square letterbox) is detected
    # again in a square window `refine_context` times its size, at `refine_input` px; 0 turns
    # it off.
    refine_below: float = 64.0
    refine_context: float = 3.0
    refine_input: int = 192
    refine_min_score: float = 0.3
    # A refined small box is zoomed again in a window `rezoom_context` times its extent (tighter
    # than the first: the plate takes more of the zoomed input) and takes that pass's box when
    # it confirms one centred in it (`refine_min_score`); otherwise it keeps its refined box.
    # Boxes of small, blurred plates come out loose from one zoom, and a loose box is read less
    # surely. On since session 13 (rule 2: +10 S over held-out data and four fresh proxy seeds,
    # the same crops, x1.04 720p detect + read paired; docs/models.md). 0 turns it off.
    rezoom_context: float = 2.0
    # At most this many zoom windows of a frame go through the detector in one call (session
    # 12: two windows in one call cost about 60% of two calls); 1 = one call a window. 1 by
    # default: with the shipped defaults a frame rarely has two windows (x0.998), and the
    # batched models (compiled at load) cost 32 MB; with the cascade on, 4 saves 4-8%.
    refine_batch: int = 1
    # A small box of the detector's own (not a cascade candidate) that the zoomed pass does not
    # confirm (no zoomed detection of at least `refine_min_score` centred in it) is dropped
    # instead of read with its coarse box: a cheaper path for clutter boxes (session 10, rule 3:
    # +8 S over held-out data, 15% off the 720p median; docs/models.md).
    refine_drops_unconfirmed: bool = True
    # Detection cascade (docs/models.md, session 8): boxes scored from `candidate_threshold` up
    # to the detector's own threshold, at most `max_candidates` a frame and small enough to be
    # refined, are kept only when the zoomed pass confirms them (score >= `candidate_confirm`)
    # and their reading is at least `candidate_min_read` sure. 0 turns it off.
    candidate_threshold: float = 0.0
    max_candidates: int = 3
    candidate_confirm: float = 0.5
    candidate_min_read: float = 0.5
    crop_margin_x: float = 0.06
    crop_margin_y: float = 0.10
    # Test-time variants: when a reading's confidence is below `variants_below`, the plate is
    # read again with these (x, y) crop margins and each candidate text scores its mean
    # probability over all reads (docs/models.md, session 3). On since session 11 (rule 2:
    # with the second-read gate at 0.4, +49 S over held-out data and four fresh proxy seeds,
    # mostly fewer wrong and extra reads, at the same 720p median); 0 turns it off. Crops
    # (`recognize(crops=True)`) are read once: their margins are the image's.
    read_variants: tuple[tuple[float, float], ...] = ((0.03, 0.05), (0.10, 0.15))
    variants_below: float = 0.9
    # Second opinion (docs/models.md, sessions 5 and 7): a one-line plate our reader reads with
    # confidence below `second_read_below`, in a box the detector scores at least
    # `second_min_detector`, is read again by the second reader in `models/second_reader.xml`
    # (PP-OCRv4's recogniser fine-tuned for plates); its reading wins under
    # `second_reader.choose`'s rules when at least `second_min_confidence` sure. 0 turns it off
    # (and skips loading the model). 0.95 until session 10; 0.8 with detector 1.4.0 (about 6 S
    # of ~680 for a quarter fewer calls of the 6-16 ms second reader); 0.4 since session 11,
    # with the reading variants on: their mean confidence already drops the misreads the crops
    # disagree on (S 693-695 for gates 0.4-0.8 on used seeds), and the second reader is called
    # a third as often (docs/models.md, session 11).
    second_read_below: float = 0.4
    # The two readers' inference precision: "f32", the runtime's own hint (FP32 unless a
    # caller's RuntimeOptions says otherwise), or "auto": OpenVINO's default for the CPU, BF16
    # where the CPU computes it natively (AMX, AVX-512 BF16), FP32 elsewhere
    # (docs/models.md, sessions 9 and 12). "auto" since session 12 (rules 1-2: S 669 against
    # 666 over held-out data, the same 371 held-out crops, 720p detect + read x0.84 on an AMX
    # CPU); CPUs without native BF16 compute exactly as before.
    second_precision: Literal["f32", "auto"] = "auto"
    reader_precision: Literal["f32", "auto"] = "auto"
    second_min_detector: float = 0.6
    # Boxes scored from `second_low_detector` up to `second_min_detector` are read again too,
    # but there the second reading counts only when it looks like a plate (five characters or
    # more, a digit among them: `second_reader.looks_like_a_plate`). 0 turns it off. Session 14
    # (rule 1: the second reader in every box read clutter words as surely as plates).
    second_low_detector: float = 0.0
    second_min_confidence: float = 0.9
    second_max_length: int = 10
    min_read_confidence: float = 0.3
    min_text_length: int = 2
    max_plates: int = 8
    top_n: int = 5
    max_decode_side: int = 4096
    max_pixels: int = 400_000_000


@dataclass(frozen=True, slots=True)
class RecognizedPlate:
    """One plate read in a frame; `box` is x1, y1, x2, y2 in the pixels of the given image."""

    text: str
    confidence: float
    char_confidences: tuple[float, ...]
    candidates: tuple[tuple[str, float], ...]
    box: tuple[float, float, float, float]
    detector_score: float


@dataclass(frozen=True, slots=True)
class RecognitionResult:
    """All plates of one image, the time each stage took, and why it is empty when rejected."""

    plates: tuple[RecognizedPlate, ...]
    timings_ms: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    width: int = 0
    height: int = 0


# ----------------------------------------------------------------------------- decoding
def image_size_from_header(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header without decoding pixels; None if unknown."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return int(width), int(height)
        i += 2 + length
    return None


_REDUCED = (
    (8, cv2.IMREAD_REDUCED_COLOR_8),
    (4, cv2.IMREAD_REDUCED_COLOR_4),
    (2, cv2.IMREAD_REDUCED_COLOR_2),
)


def decode_image(
    data: bytes, max_side: int, max_pixels: int
) -> tuple[npt.NDArray[np.uint8] | None, float, str | None]:
    """Bytes -> (BGR image, factor to multiply boxes by to get original pixels, error).

    Images whose long side exceeds `max_side` are decoded at 1/2, 1/4 or 1/8 size (JPEG DCT
    scaling), so a 10000 x 10000 upload never allocates the full frame."""
    if not data:
        return None, 1.0, "empty input"
    size = image_size_from_header(data)
    flag, factor = cv2.IMREAD_COLOR, 1.0
    if size is not None:
        width, height = size
        if width <= 0 or height <= 0:
            return None, 1.0, "image header has zero size"
        if width * height > max_pixels:
            return None, 1.0, f"image too large: {width}x{height}"
        long_side = max(width, height)
        for div, reduced in reversed(_REDUCED):
            if long_side > max_side and long_side / div <= max_side:
                flag, factor = reduced, float(div)
                break
        else:
            if long_side > max_side:
                flag, factor = cv2.IMREAD_REDUCED_COLOR_8, 8.0
    buffer = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(buffer, flag)
    if image is None or image.size == 0:
        return None, 1.0, "undecodable image"
    if size is not None and factor != 1.0:
        factor = size[0] / image.shape[1]
    return image.astype(np.uint8, copy=False), factor, None


def as_bgr(frame: npt.NDArray[Any]) -> tuple[npt.NDArray[np.uint8] | None, str | None]:
    """Accept HxW grey, HxWx1, HxWx3 BGR or HxWx4 BGRA uint8; anything else is an error."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
        return None, "frame must be a uint8 numpy array"
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim not in (2, 3) or frame.shape[0] < 2 or frame.shape[1] < 2:
        return None, f"frame shape {frame.shape} is not an image"
    if frame.ndim == 2:
        return np.asarray(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR), dtype=np.uint8), None
    if frame.shape[2] == 4:
        return np.asarray(cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR), dtype=np.uint8), None
    if frame.shape[2] != 3:
        return None, f"frame has {frame.shape[2]} channels"
    return frame, None


def crop_box(
    frame: npt.NDArray[np.uint8], box: tuple[float, float, float, float], mx: float, my: float
) -> npt.NDArray[np.uint8] | None:
    """The detection box widened by mx/my of its size on each side, clipped; None if tiny."""
    x1, y1, x2, y2 = box
    bw, bh = x2 - x1, y2 - y1
    height, width = frame.shape[:2]
    cx1, cy1 = max(0, int(x1 - mx * bw)), max(0, int(y1 - my * bh))
    cx2, cy2 = min(width, int(np.ceil(x2 + mx * bw))), min(height, int(np.ceil(y2 + my * bh)))
    if cx2 - cx1 < 4 or cy2 - cy1 < 3:
        return None
    return frame[cy1:cy2, cx1:cx2]


class PipelineOptionError(ValueError):
    """A `PipelineOptions` field with a value the pipeline cannot use."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        super().__init__(f"PipelineOptions.{field}={value!r}: {reason}")
        self.field = field


def check_options(options: PipelineOptions) -> None:
    """Raise PipelineOptionError, naming the field, for a value the pipeline cannot use."""
    if options.detect_fit not in ("aspect", "square", "trim"):
        raise PipelineOptionError("detect_fit", options.detect_fit, "'aspect', 'square' or 'trim'")
    if not 0.0 <= options.score_threshold < 1.0:  # also refuses nan
        raise PipelineOptionError(
            "score_threshold", options.score_threshold, "want 0 (the sidecar's) to < 1"
        )
    if options.refine_batch < 1:
        raise PipelineOptionError(
            "refine_batch", options.refine_batch, "want at least 1 window a call"
        )
    for name in ("second_precision", "reader_precision"):
        if getattr(options, name) not in ("f32", "auto"):
            raise PipelineOptionError(name, getattr(options, name), "'f32' or 'auto'")
    low, sure = options.second_low_detector, options.second_min_detector
    if not (low == 0 or 0 < low < sure):  # also refuses nan
        raise PipelineOptionError(
            "second_low_detector", low, f"want 0 (off) or above 0 and under {sure}"
        )


# ----------------------------------------------------------------------------- recogniser
class PlateRecognizer:
    """Detect and read plates in one frame at a time (not thread-safe: one per thread)."""

    def __init__(
        self,
        detector_model: InferenceModel,
        detector_spec: det.DetectorSpec,
        reader_model: InferenceModel | None,
        reader_spec: rdr.ReaderSpec | None,
        options: PipelineOptions | None = None,
        clock: Callable[[], float] = time.perf_counter,
        refine_model: InferenceModel | None = None,
        second_model: InferenceModel | None = None,
        second_spec: sr.SecondReaderSpec | None = None,
        detector_at: Callable[[int, int], InferenceModel] | None = None,
        refine_at: Callable[[int], InferenceModel] | None = None,
        detector_u8: bool = False,
    ) -> None:
        self.options = options or PipelineOptions()
        check_options(self.options)
        if self.options.score_threshold > 0:
            detector_spec = dataclasses.replace(
                detector_spec, score_threshold=self.options.score_threshold
            )
        self._det_model = detector_model
        self._det_spec = detector_spec
        # detector_at(width, height): the detector compiled for that input (None: square only)
        self._detector_at = detector_at
        # aspect-fitted detectors by input (width, height), least recently used first
        self._detectors: OrderedDict[tuple[int, int], tuple[det.DetectorSpec, InferenceModel]]
        self._detectors = OrderedDict()
        # the detector's threshold as its float32 scores compare to it (0.35 -> 0.34999999)
        self._threshold = float(np.float32(detector_spec.score_threshold))
        self._refine_model = refine_model
        # the detector models take the uint8 image and convert it in their graph (from_dir)
        self._det_u8 = detector_u8
        # the zoomed detector for 2..refine_batch windows a call (a call holds at most
        # max_plates), compiled now rather than in the middle of a frame (~0.1 s each) by
        # refine_at(batch); a size missing here (no refine_at, or it failed) takes one call a
        # window
        self._refine_batches: dict[int, InferenceModel] = {}
        if refine_model is not None and refine_at is not None:
            for batch in range(2, min(self.options.refine_batch, self.options.max_plates) + 1):
                try:
                    self._refine_batches[batch] = refine_at(batch)
                except ModelLoadError as exc:
                    log.error(
                        "zoomed detector not compiled for a batch; one call a window",
                        extra={"batch": batch, "error": str(exc)},
                    )
        size = self.options.refine_input
        self._refine_spec = dataclasses.replace(
            detector_spec,
            input_width=size,
            input_height=size,
            score_threshold=self.options.refine_min_score,
        )
        self._reader_model = reader_model
        self._reader_spec = reader_spec
        self._second_model = second_model if second_spec is not None else None
        self._second_spec = second_spec
        self._second_rule = sr.SecondReadRule(
            min_confidence=self.options.second_min_confidence,
            min_length=self.options.min_text_length,
            max_length=self.options.second_max_length,
        )
        self._clock = clock

    @classmethod
    def from_dir(
        cls,
        models_dir: Path = MODELS_DIR,
        runtime: RuntimeOptions | None = None,
        options: PipelineOptions | None = None,
        detector_name: str = DEFAULT_DETECTOR,
        reader_name: str | None = DEFAULT_READER,
        detector_spec_name: str | None = None,
        reader_spec_name: str | None = None,
        second_reader_name: str | None = "second_reader",
    ) -> PlateRecognizer:
        """Load `<detector_name>.xml` and `<reader_name>.xml` from `models_dir`, with their
        sidecars `<name>.json` (or `<*_spec_name>.json`, e.g. an INT8 IR sharing the FP32 one),
        and `<second_reader_name>.xml` when present and `options.second_read_below` > 0."""
        import openvino as ov

        core = ov.Core()
        detector_name = _int8_or_fp32(models_dir, detector_name)
        det_json = models_dir / f"{detector_spec_name or detector_name.removesuffix('_int8')}.json"
        det_spec = det.DetectorSpec.from_file(det_json)
        det_xml = models_dir / f"{detector_name}.xml"
        det_model = OpenVinoModel.load(det_xml, runtime, core, u8_image=True)
        opts = options or PipelineOptions()

        def detector_at(width: int, height: int) -> InferenceModel:
            shape = (1, 3, height, width)
            return OpenVinoModel.load(det_xml, runtime, core, input_shape=shape, u8_image=True)

        refine_model: InferenceModel | None = None
        size = opts.refine_input

        def refine_at(batch: int) -> InferenceModel:
            shape = (batch, 3, size, size)
            return OpenVinoModel.load(det_xml, runtime, core, input_shape=shape, u8_image=True)

        if opts.refine_below > 0:
            refine_model = refine_at(1)
        reader_model: InferenceModel | None = None
        reader_spec: rdr.ReaderSpec | None = None
        if reader_name is not None:
            reader_name = _int8_or_fp32(models_dir, reader_name)
            rdr_json = models_dir / f"{reader_spec_name or reader_name}.json"
            if not rdr_json.is_file() and reader_name.endswith("_int8"):
                rdr_json = models_dir / f"{reader_name.removesuffix('_int8')}.json"
            reader_spec = rdr.ReaderSpec.from_file(rdr_json)
            reader_model = OpenVinoModel.load(
                models_dir / f"{reader_name}.xml",
                _at_precision(runtime, opts.reader_precision),
                core,
            )
        second_model: InferenceModel | None = None
        second_spec: sr.SecondReaderSpec | None = None
        second_xml = models_dir / f"{second_reader_name}.xml"
        if reader_model is not None and second_reader_name and opts.second_read_below > 0:
            if second_xml.is_file():
                second_spec = sr.SecondReaderSpec.from_file(second_xml.with_suffix(".json"))
                second_runtime = _at_precision(runtime, opts.second_precision)
                second_model = OpenVinoModel.load(second_xml, second_runtime, core)
            else:
                log.warning(
                    "no second reader: unsure reads are not checked",
                    extra={"model": str(second_xml)},
                )
        return cls(
            det_model,
            det_spec,
            reader_model,
            reader_spec,
            opts,
            refine_model=refine_model,
            second_model=second_model,
            second_spec=second_spec,
            detector_at=detector_at,
            refine_at=refine_at,
            detector_u8=True,
        )

    def recognize_bytes(self, data: bytes, region: str | None = None) -> RecognitionResult:
        """Decode an encoded image (JPEG, PNG, ...) and recognise its plates."""
        start = self._clock()
        image, factor, error = decode_image(
            data, self.options.max_decode_side, self.options.max_pixels
        )
        decode_ms = (self._clock() - start) * 1000.0
        if image is None:
            log.warning("image rejected", extra={"reason": error, "bytes": len(data)})
            return RecognitionResult(plates=(), timings_ms={"decode": decode_ms}, error=error)
        result = self.recognize(image, region=region)
        plates = result.plates
        if factor != 1.0:
            plates = tuple(_scale_plate(p, factor) for p in plates)
        timings = {"decode": decode_ms, **result.timings_ms}
        timings["total"] = timings.get("total", 0.0) + decode_ms
        return RecognitionResult(
            plates=plates,
            timings_ms=timings,
            error=result.error,
            width=round(result.width * factor),
            height=round(result.height * factor),
        )

    def detect(self, frame: npt.NDArray[np.uint8]) -> list[det.Detection]:
        """Detections only, refined like `recognize` does (frame must be HxWx3 uint8 BGR)."""
        return self._detect(frame)[0]

    def _cascade_on(self) -> bool:
        opts = self.options
        return (
            0 < opts.candidate_threshold < self._threshold
            and self._refine_model is not None
            and opts.refine_below > 0
        )

    def _is_candidate(self, detection: det.Detection) -> bool:
        """Scored under the detector's threshold: a cascade candidate (only the cascade decodes
        such boxes; label boxes and crops score 1.0)."""
        return detection.score < self._threshold

    def _detect(self, image: npt.NDArray[np.uint8]) -> tuple[list[det.Detection], float]:
        """Detect, then refine small boxes and confirm or drop the cascade's candidates; also
        returns the clock when the model input was ready (the end of the resize stage)."""
        spec, model = self._detector_for(image.shape[1], image.shape[0])
        inputs, meta = det.preprocess(image, spec, self._det_u8)
        ready = self._clock()
        outputs = model.infer({spec.input_name: inputs})
        if self._cascade_on():
            spec = dataclasses.replace(spec, score_threshold=self.options.candidate_threshold)
        return self._refine(image, det.postprocess(outputs, meta, spec)), ready

    def _detector_for(self, width: int, height: int) -> tuple[det.DetectorSpec, InferenceModel]:
        """The detector (spec and compiled model) for a frame of this size: the square one, or
        with `detect_fit="aspect"` or `"trim"` one compiled for the frame's shape (kept per
        shape, at most `detect_shapes`, least recently used dropped). A shape that fails to
        compile falls back to the square detector (logged), so a frame is never refused for it."""
        base = self._det_spec
        fit = self.options.detect_fit
        if fit == "square" or self._detector_at is None:
            return base, self._det_model
        if fit == "trim":
            shape = det.trim_input(width, height, base.input_width, base.input_height)
        else:
            shape = det.fit_input(width, height, base.input_width * base.input_height)
        if shape == (base.input_width, base.input_height):
            return base, self._det_model
        found = self._detectors.get(shape)
        if found is not None:
            self._detectors.move_to_end(shape)
            return found
        try:
            model = self._detector_at(*shape)
        except ModelLoadError as exc:
            log.error(
                "detector not compiled for a frame shape; using the square input",
                extra={"input": list(shape), "error": str(exc)},
            )
            return base, self._det_model
        while self._detectors and len(self._detectors) >= max(1, self.options.detect_shapes):
            self._detectors.popitem(last=False)
        spec = dataclasses.replace(base, input_width=shape[0], input_height=shape[1])
        self._detectors[shape] = found = (spec, model)
        log.info("detector compiled for a frame shape", extra={"input": list(shape)})
        return found

    def recognize(
        self,
        frame: npt.NDArray[Any],
        region: str | None = None,
        crops: bool = False,
        boxes: Sequence[tuple[float, float, float, float]] | None = None,
    ) -> RecognitionResult:
        """Recognise plates in a decoded frame. `crops=True`: the frame is one plate crop;
        `boxes`: read these plate boxes (frame pixels) instead of running the detector."""
        clock = self._clock
        t0 = clock()
        image, error = as_bgr(frame)
        if image is None:
            log.warning("frame rejected", extra={"reason": error})
            return RecognitionResult(plates=(), timings_ms={"total": 0.0}, error=error)
        height, width = image.shape[:2]
        timings: dict[str, float] = {}
        if crops:
            detections = [det.Detection(box=(0.0, 0.0, float(width), float(height)), score=1.0)]
            timings["resize"] = timings["detect"] = 0.0
            t2 = clock()
        elif boxes is not None:
            detections = [
                det.Detection(box=(float(x1), float(y1), float(x2), float(y2)), score=1.0)
                for x1, y1, x2, y2 in boxes
            ]
            timings["resize"] = timings["detect"] = 0.0
            t2 = clock()
        else:
            detections, t1 = self._detect(image)
            t2 = clock()
            timings["resize"] = (t1 - t0) * 1000.0
            timings["detect"] = (t2 - t1) * 1000.0
        plates = self._read_all(image, detections, region, crops)
        t3 = clock()
        timings["read"] = (t3 - t2) * 1000.0
        timings["total"] = (t3 - t0) * 1000.0
        return RecognitionResult(plates=plates, timings_ms=timings, width=width, height=height)

    def _refine(
        self, image: npt.NDArray[np.uint8], detections: list[det.Detection]
    ) -> list[det.Detection]:
        """Replace the boxes of small detections by those of a zoomed second pass. A small
        detection the zoomed pass does not confirm is dropped (`refine_drops_unconfirmed`, the
        default) or keeps its coarse box; one too close to the frame's edge for a zoom window
        keeps it. The detector's own boxes are checked best first until `max_plates` are kept,
        so a dropped box does not hand its reading slot to one never checked; boxes beyond that
        follow unrefined (`detect` returns them; only `max_plates` are read). Detections scored
        below the detector's threshold are the cascade's candidates: kept only when the zoomed
        pass confirms them with `candidate_confirm`, with its box."""
        opts = self.options
        main = [d for d in detections if not self._is_candidate(d)]
        if self._refine_model is None or opts.refine_below <= 0:
            return main
        height, width = image.shape[:2]
        # `refine_below` counts pixels of the square letterbox whatever `detect_fit` is, so a
        # plate is refined the same way at either input (it was chosen at that scale).
        spec = self._det_spec
        scale = min(spec.input_width / width, spec.input_height / height)

        def small(d: det.Detection) -> bool:  # plate-shaped extent in model pixels
            x1, y1, x2, y2 = d.box
            return bool(max(x2 - x1, 2.0 * (y2 - y1)) * scale < opts.refine_below)

        def window_of(detection: det.Detection) -> tuple[int, int, int, int] | None:
            if not small(detection):  # below refine_below the window is magnified
                return None
            return det.refine_window(detection.box, width, height, opts.refine_context)

        def decide(
            detection: det.Detection,
            window: tuple[int, int, int, int] | None,
            best: det.Detection | None,
        ) -> det.Detection | None:
            """The detection with its zoomed box, as it is, or None when it is dropped."""
            candidate = self._is_candidate(detection)
            if window is None:
                return None if candidate else detection
            if candidate and (best is None or best.score < opts.candidate_confirm):
                return None
            if best is None:
                return None if opts.refine_drops_unconfirmed else detection
            return det.Detection(box=best.box, score=detection.score)

        def refine_all(chunk: list[det.Detection]) -> list[det.Detection | None]:
            windows = [window_of(d) for d in chunk]
            picks = self._zoomed_picks(image, chunk, windows)
            return [decide(*outcome) for outcome in zip(chunk, windows, picks, strict=True)]

        # only as many candidates as can still be read, after the detector's own boxes; they
        # exist only when every one of those fits in the first chunk, and share its zoom calls
        candidates = [d for d in detections if self._is_candidate(d) and small(d)]
        candidates = candidates[: min(opts.max_candidates, max(0, opts.max_plates - len(main)))]
        refined: list[det.Detection] = []
        checked = 0
        first = main[: opts.max_plates]
        outcomes = refine_all(first + candidates)
        confirmed = outcomes[len(first) :]
        while True:
            for kept in outcomes[: len(first)]:
                if len(refined) >= opts.max_plates:
                    break
                checked += 1
                if kept is not None:
                    refined.append(kept)
            if len(refined) >= opts.max_plates or checked >= len(main):
                break
            # boxes dropped by the zoom left reading slots: check as many more as could fill them
            first = main[checked : checked + opts.max_plates - len(refined)]
            outcomes = refine_all(first)
        refined.extend(kept for kept in confirmed if kept is not None)
        if opts.rezoom_context > 0:
            refined = self._rezoom(image, refined, small)
        if len(refined) > 1:  # two coarse boxes (a plate and its recess) may refine alike
            boxes = np.asarray([d.box for d in refined], np.float32)
            scores = np.asarray([d.score for d in refined], np.float32)
            keep = det.nms(boxes, scores, self._det_spec.nms_iou, len(refined))
            refined = [refined[i] for i in sorted(keep)]
        return refined + main[checked:]

    def _rezoom(
        self,
        image: npt.NDArray[np.uint8],
        detections: list[det.Detection],
        small: Callable[[det.Detection], bool],
    ) -> list[det.Detection]:
        """`rezoom_context`'s second zoomed pass over the `small` detections: each takes the
        box that pass confirms centred in it, or keeps its own."""
        height, width = image.shape[:2]
        context = self.options.rezoom_context
        windows = [
            det.refine_window(d.box, width, height, context) if small(d) else None
            for d in detections
        ]
        picks = self._zoomed_picks(image, detections, windows)
        return [
            d if best is None else det.Detection(box=best.box, score=d.score)
            for d, best in zip(detections, picks, strict=True)
        ]

    def _zoomed_picks(
        self,
        image: npt.NDArray[np.uint8],
        detections: list[det.Detection],
        windows: list[tuple[int, int, int, int] | None],
    ) -> list[det.Detection | None]:
        """For each detection with a window: the zoomed pass's detection (frame pixels) centred
        in its box (`det.pick_refined`), or None; None too where there is no window."""
        found = iter(self._zoom(image, [w for w in windows if w is not None]))
        return [
            None if w is None else det.pick_refined(d.box, next(found), (w[0], w[1]))
            for d, w in zip(detections, windows, strict=True)
        ]

    def _zoom(
        self, image: npt.NDArray[np.uint8], windows: list[tuple[int, int, int, int]]
    ) -> list[list[det.Detection]]:
        """The zoomed detector pass over each window (given in frame pixels), `refine_batch`
        windows a call; one list of detections per window, in that window's pixels (its corner
        at 0, 0)."""
        spec = self._refine_spec
        found: list[list[det.Detection]] = []
        step = self.options.refine_batch
        for start in range(0, len(windows), step):
            chunk = windows[start : start + step]
            prepared = [
                det.preprocess(image[y1:y2, x1:x2], spec, self._det_u8) for x1, y1, x2, y2 in chunk
            ]
            model = self._refine_batches.get(len(chunk))
            if model is None:  # one window, or a size not compiled: one call a window
                model, parts = self._refine_model, [[p] for p in prepared]
            else:
                parts = [prepared]
            assert model is not None
            for part in parts:
                inputs = part[0][0] if len(part) == 1 else np.concatenate([x for x, _ in part])
                outputs = model.infer({spec.input_name: inputs})
                for i, (_, meta) in enumerate(part):
                    one = {name: value[i : i + 1] for name, value in outputs.items()}
                    found.append(det.postprocess(one, meta, spec))
        return found

    def _read_box(
        self,
        image: npt.NDArray[np.uint8],
        box: tuple[float, float, float, float],
        mx: float,
        my: float,
        region: str | None,
    ) -> tuple[rdr.PlateReading, npt.NDArray[np.float32]] | None:
        """Read one crop of `box` widened by mx/my; None when the crop is degenerate."""
        crop = crop_box(image, box, mx, my)
        return None if crop is None else self._read_crop(crop, region)

    def _read_crop(
        self, crop: npt.NDArray[np.uint8], region: str | None
    ) -> tuple[rdr.PlateReading, npt.NDArray[np.float32]]:
        """Our reader on one crop: the reading and the per-step class probabilities."""
        assert self._reader_model is not None and self._reader_spec is not None
        x = rdr.preprocess(crop, self._reader_spec)
        out = self._reader_model.infer({self._reader_model.input_names[0]: x})
        probs = rdr.probabilities(out[self._reader_model.output_names[0]], self._reader_spec)
        reading = rdr.postprocess(probs, self._reader_spec, region=region, top_n=self.options.top_n)
        return reading, probs

    def _read_second(self, crop: npt.NDArray[np.uint8]) -> sr.SecondReading:
        """The second reader's reading of the crop our reader read."""
        assert self._second_model is not None and self._second_spec is not None
        x = sr.preprocess(crop, self._second_spec)
        out = self._second_model.infer({self._second_model.input_names[0]: x})
        return sr.decode(out[self._second_model.output_names[0]], self._second_spec)

    def _read_variants(
        self,
        image: npt.NDArray[np.uint8],
        box: tuple[float, float, float, float],
        region: str | None,
        first: tuple[rdr.PlateReading, npt.NDArray[np.float32]],
    ) -> rdr.PlateReading:
        assert self._reader_spec is not None
        reads = [first]
        for mx, my in self.options.read_variants:
            read = self._read_box(image, box, mx, my, region)
            if read is not None:
                reads.append(read)
        return _combine(reads, self._reader_spec, region, self.options.top_n)

    def _read_all(
        self,
        image: npt.NDArray[np.uint8],
        detections: list[det.Detection],
        region: str | None,
        crops: bool,
    ) -> tuple[RecognizedPlate, ...]:
        opts = self.options
        plates: list[RecognizedPlate] = []
        for detection in detections[: opts.max_plates]:
            if self._reader_model is None or self._reader_spec is None:
                plates.append(RecognizedPlate("", 0.0, (), (), detection.box, detection.score))
                continue
            mx, my = (0.0, 0.0) if crops else (opts.crop_margin_x, opts.crop_margin_y)
            crop = crop_box(image, detection.box, mx, my)
            if crop is None:
                continue
            read = self._read_crop(crop, region)
            reading = read[0]
            if not crops and opts.read_variants and reading.confidence < opts.variants_below:
                reading = self._read_variants(image, detection.box, region, read)
            sure_box = detection.score >= opts.second_min_detector
            unsure_box = not sure_box and 0 < opts.second_low_detector <= detection.score
            if (
                self._second_model is not None
                and reading.confidence < opts.second_read_below
                and (sure_box or unsure_box)
                and reading.lines == 1  # the second reader reads one text line
            ):
                second = self._read_second(crop)
                if sure_box or sr.looks_like_a_plate(second.text):
                    reading = sr.choose(reading, second, region, self._second_rule)
            if len(reading.text) < opts.min_text_length:
                continue
            if reading.confidence < opts.min_read_confidence and not crops:
                continue
            if self._is_candidate(detection) and reading.confidence < opts.candidate_min_read:
                continue  # a cascade candidate needs a surer reading
            plates.append(
                RecognizedPlate(
                    text=reading.text,
                    confidence=reading.confidence,
                    char_confidences=reading.char_confidences,
                    candidates=reading.candidates,
                    box=detection.box,
                    detector_score=detection.score,
                )
            )
        return tuple(_dedupe(plates))


def _int8_or_fp32(models_dir: Path, name: str) -> str:
    """`name`, or its FP32 IR's name when `name` is an absent `*_int8` IR (logged)."""
    if name.endswith("_int8") and not (models_dir / f"{name}.xml").is_file():
        log.warning(
            "no INT8 model: the FP32 one stands in", extra={"missing": str(models_dir / name)}
        )
        return name.removesuffix("_int8")
    return name


def _at_precision(runtime: RuntimeOptions | None, precision: str) -> RuntimeOptions:
    """`runtime` with a pipeline precision choice: "auto" leaves the CPU's default (BF16 where
    the CPU computes it natively, FP32 elsewhere); "f32" keeps the runtime's own hint."""
    base = runtime or RuntimeOptions()
    return dataclasses.replace(base, precision=None) if precision == "auto" else base


def _combine(
    reads: list[tuple[rdr.PlateReading, npt.NDArray[np.float32]]],
    spec: rdr.ReaderSpec,
    region: str | None,
    top_n: int,
) -> rdr.PlateReading:
    """One reading from reads of several crops of a plate: each candidate text scores its mean
    probability over the reads (0 where a read did not propose it), re-ranked by region; the
    per-character confidences come from the read that gave the chosen text most probability."""
    scores: dict[str, float] = {}
    for reading, _ in reads:
        for text, prob in reading.candidates:
            scores[text] = scores.get(text, 0.0) + prob / len(reads)
    ranked = rdr.rerank(list(scores.items()), region)
    if not ranked:
        return reads[0][0]
    text, prob = ranked[0]
    source, probs = max(reads, key=lambda r: dict(r[0].candidates).get(text, 0.0))
    labels = [rdr.class_index(c, spec) for c in text]
    chars = rdr.forced_alignment_confidences(probs, labels, spec.blank_index)
    return rdr.PlateReading(
        text=text,
        confidence=float(min(1.0, prob)),
        char_confidences=tuple(float(c) for c in chars),
        candidates=tuple(ranked[:top_n]),
        lines=source.lines,
    )


def _dedupe(plates: list[RecognizedPlate]) -> list[RecognizedPlate]:
    """Keep one plate per text (the most confident): NMS leaves rare double boxes."""
    best: dict[str, RecognizedPlate] = {}
    for plate in plates:
        if not plate.text:
            best[f"#{len(best)}"] = plate
        elif plate.text not in best or plate.confidence > best[plate.text].confidence:
            best[plate.text] = plate
    return list(best.values())


def _scale_plate(plate: RecognizedPlate, factor: float) -> RecognizedPlate:
    x1, y1, x2, y2 = plate.box
    box = (x1 * factor, y1 * factor, x2 * factor, y2 * factor)
    return RecognizedPlate(
        plate.text,
        plate.confidence,
        plate.char_confidences,
        plate.candidates,
        box,
        plate.detector_score,
    )
