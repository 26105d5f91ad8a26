"""Seeded synthetic licence-plate renderer (numpy + OpenCV + Pillow; no torch).

Used to train the reader and, later, to make demo footage. Every sample is a pure function of
`(seed, index)`, so datasets are reproducible and can be generated in any order or in parallel.

    synth = PlateSynth(seed=7)
    plate = synth.sample(0)                       # degraded crop, like a detector's output
    plate.image, plate.text                       # BGR uint8, "AB12CDE"
    clean = synth.sample(1, degrade=False).image  # flat, frontal plate (for pasting into scenes)
    plates = generate(1000, seed=7, formats=["in_2line", "br_mercosur"])

Formats cover US-like, Brazil (old grey LLL-NNNN and Mercosur LLLNLNN), EU with a blue band
(DE, FR, NL, IT, ES, PL, RO), UK (white front / yellow rear), India (one- and two-line), a
China-like blue plate (Latin characters only), and two-line motorcycle plates. `text` is the
plate's characters in reading order (top line first), A-Z0-9 only.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
DIGITS = "0123456789"

# Bold / condensed fonts from Debian packages fonts-dejavu-core, fonts-liberation,
# fonts-freefont-ttf, fonts-roboto-unhinted, fonts-open-sans. Missing ones are skipped; with none at
# all the renderer falls back to OpenCV's Hershey font.
DEFAULT_FONT_PATHS: tuple[str, ...] = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSansCondensed-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSansNarrow-Bold.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Bold.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationMono-Bold.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSansBold.ttf",
    "/usr/share/fonts/truetype/freefont/FreeMonoBold.ttf",
    "/usr/share/fonts/truetype/roboto/unhinted/RobotoCondensed-Bold.ttf",
    "/usr/share/fonts/truetype/roboto/unhinted/RobotoCondensed-Medium.ttf",
    "/usr/share/fonts/truetype/roboto/unhinted/RobotoTTF/Roboto-Bold.ttf",
    "/usr/share/fonts/truetype/open-sans/OpenSans-CondBold.ttf",
    "/usr/share/fonts/truetype/open-sans/OpenSans-Bold.ttf",
)

#: a folder holding the same font files by name, for a machine without the Debian packages
#: (a GPU machine: `reader_data pack --fonts DIR` copies them)
FONTS_ENV = "PW_SYNTH_FONTS"


def default_font_paths() -> tuple[str, ...]:
    """DEFAULT_FONT_PATHS, or the same files (by name, in the same order, so the same seed
    renders the same plates) in the folder named by $PW_SYNTH_FONTS."""
    folder = os.environ.get(FONTS_ENV)
    if not folder:
        return DEFAULT_FONT_PATHS
    return tuple(str(Path(folder) / Path(p).name) for p in DEFAULT_FONT_PATHS)


_RENDER_PX = 96  # font size used to rasterise text before it is fitted into its box

BGR = tuple[int, int, int]


@dataclass(frozen=True)
class PlateFormat:
    """A plate layout. `lines` are patterns: L letter, N digit, A either, other chars literal."""

    name: str
    region: str
    lines: tuple[str, ...]
    size_mm: tuple[int, int]  # width, height of the physical plate
    colours: tuple[tuple[BGR, BGR], ...]  # (background, text) choices
    band: str = "none"  # none | eu | mercosur | us_header | cn
    char_height: float = 0.62  # character height as a fraction of one line's height


WHITE: BGR = (245, 245, 245)
BLACK: BGR = (20, 20, 20)
YELLOW: BGR = (20, 200, 250)
GREY: BGR = (170, 170, 165)
RED: BGR = (40, 40, 190)
BLUE: BGR = (150, 60, 10)
DARK_BLUE: BGR = (110, 40, 20)
GREEN: BGR = (60, 120, 30)

FORMATS: dict[str, PlateFormat] = {
    f.name: f
    for f in (
        PlateFormat(
            "us_std",
            "us",
            ("NLLLNNN",),
            (305, 152),
            ((WHITE, DARK_BLUE), (WHITE, RED), (WHITE, BLACK), (YELLOW, BLACK)),
            band="us_header",
            char_height=0.5,
        ),
        PlateFormat(
            "us_alt",
            "us",
            ("LLL NNNN",),
            (305, 152),
            ((WHITE, DARK_BLUE), (WHITE, BLACK), (WHITE, GREEN), (YELLOW, DARK_BLUE)),
            band="us_header",
            char_height=0.5,
        ),
        PlateFormat(
            "us_short",
            "us",
            ("NNN LLL",),
            (305, 152),
            ((WHITE, BLACK), (WHITE, DARK_BLUE), (WHITE, RED)),
            band="us_header",
            char_height=0.5,
        ),
        PlateFormat(
            "us_vanity",
            "us",
            ("AAAAA",),
            (305, 152),
            ((WHITE, DARK_BLUE), (WHITE, BLACK)),
            band="us_header",
            char_height=0.5,
        ),
        PlateFormat(
            "br_old",
            "br",
            ("LLL-NNNN",),
            (400, 130),
            ((GREY, BLACK), (RED, WHITE), (WHITE, BLACK)),
            char_height=0.62,
        ),
        PlateFormat(
            "br_mercosur",
            "br",
            ("LLLNLNN",),
            (400, 130),
            ((WHITE, BLACK),),
            band="mercosur",
            char_height=0.58,
        ),
        PlateFormat("eu_de", "eu", ("LL LL NNNN",), (520, 110), ((WHITE, BLACK),), band="eu"),
        PlateFormat("eu_fr", "eu", ("LL-NNN-LL",), (520, 110), ((WHITE, BLACK),), band="eu"),
        PlateFormat("eu_nl", "eu", ("NN-LLL-N",), (520, 110), ((YELLOW, BLACK),), band="eu"),
        PlateFormat("eu_it", "eu", ("LL NNNLL",), (520, 110), ((WHITE, BLACK),), band="eu"),
        PlateFormat("eu_es", "eu", ("NNNN LLL",), (520, 110), ((WHITE, BLACK),), band="eu"),
        PlateFormat("eu_pl", "eu", ("LLL NNNNN",), (520, 110), ((WHITE, BLACK),), band="eu"),
        PlateFormat("eu_ro", "eu", ("LL NN LLL",), (520, 110), ((WHITE, BLACK),), band="eu"),
        PlateFormat(
            "uk",
            "uk",
            ("LLNN LLL",),
            (520, 111),
            ((WHITE, BLACK), (YELLOW, BLACK)),
        ),
        PlateFormat(
            "in_std",
            "in",
            ("LL NN LL NNNN",),
            (500, 120),
            ((WHITE, BLACK), (YELLOW, BLACK), (GREEN, WHITE)),
        ),
        PlateFormat(
            "cn_blue",
            "cn",
            ("L NNNNN",),
            (440, 140),
            ((BLUE, WHITE),),
            band="none",
        ),
        PlateFormat(
            "in_2line",
            "in",
            ("LL NN", "LL NNNN"),
            (340, 200),
            ((WHITE, BLACK), (YELLOW, BLACK)),
            char_height=0.72,
        ),
        PlateFormat(
            "moto_eu_2line",
            "eu",
            ("LLL", "NNNN"),
            (220, 180),
            ((WHITE, BLACK), (YELLOW, BLACK)),
            char_height=0.72,
        ),
        PlateFormat(
            "br_moto_2line",
            "br",
            ("LLL", "NLNN"),
            (200, 170),
            ((WHITE, BLACK), (GREY, BLACK)),
            char_height=0.72,
        ),
        PlateFormat(
            "us_2line",
            "us",
            ("NN", "LLNNN"),
            (180, 100),
            ((WHITE, DARK_BLUE), (WHITE, BLACK)),
            char_height=0.72,
        ),
    )
}

US_HEADERS = (
    "CALIFORNIA",
    "TEXAS",
    "NEW YORK",
    "FLORIDA",
    "OHIO",
    "ILLINOIS",
    "ARIZONA",
    "NEVADA",
    "OREGON",
    "VIRGINIA",
    "GEORGIA",
    "Michigan",
    "Colorado",
    "Sunshine State",
)
EU_COUNTRIES = ("D", "F", "NL", "I", "E", "PL", "RO", "B", "A", "SK", "CZ", "H")


@dataclass(frozen=True)
class SynthPlate:
    """One rendered plate. `quad` are the plate's corners (TL, TR, BR, BL) in `image` pixels."""

    image: np.ndarray
    text: str
    format_name: str
    region: str
    lines: int
    quad: np.ndarray = field(compare=False)


def plate_text_for(fmt: PlateFormat, rng: np.random.Generator) -> tuple[str, ...]:
    """Random line strings (with separators) for `fmt`."""
    out = []
    for pattern in fmt.lines:
        chars = []
        for p in pattern:
            if p == "L":
                chars.append(LETTERS[rng.integers(26)])
            elif p == "N":
                chars.append(DIGITS[rng.integers(10)])
            elif p == "A":
                pool = LETTERS + DIGITS
                chars.append(pool[rng.integers(len(pool))])
            else:
                chars.append(p)
        if "A" in pattern and rng.random() < 0.5:  # vanity length varies (2..8)
            n = int(rng.integers(2, 9))
            pool = LETTERS + DIGITS
            chars = [pool[rng.integers(len(pool))] for _ in range(n)]
        out.append("".join(chars))
    return tuple(out)


def label_of(lines: Sequence[str]) -> str:
    """The reader label for line strings: A-Z0-9 only, top line first."""
    return "".join(c for line in lines for c in line if c.isascii() and c.isalnum()).upper()


class PlateSynth:
    """Seeded renderer; holds only immutable config and a font cache."""

    def __init__(
        self,
        seed: int = 0,
        formats: Sequence[str] | None = None,
        font_paths: Sequence[str] | None = None,
        format_weights: Sequence[float] | None = None,
    ) -> None:
        names = list(formats) if formats is not None else list(FORMATS)
        unknown = [n for n in names if n not in FORMATS]
        if unknown:
            raise ValueError(f"formats: unknown plate format(s) {unknown}; known: {list(FORMATS)}")
        self.seed = seed
        self.formats = tuple(FORMATS[n] for n in names)
        if format_weights is not None:
            w = np.asarray(format_weights, dtype=np.float64)
            if w.shape != (len(names),) or (w < 0).any() or w.sum() <= 0:
                raise ValueError("format_weights: need one non-negative weight per format")
            self.weights = w / w.sum()
        else:
            self.weights = np.full(len(names), 1.0 / len(names))
        paths = default_font_paths() if font_paths is None else tuple(font_paths)
        self.fonts: tuple[ImageFont.FreeTypeFont, ...] = tuple(
            ImageFont.truetype(p, _RENDER_PX) for p in paths if Path(p).is_file()
        )

    # ----------------------------------------------------------------- public API
    def sample(
        self,
        index: int,
        *,
        degrade: bool = True,
        format_name: str | None = None,
        text_lines: Sequence[str] | None = None,
    ) -> SynthPlate:
        """Sample `index` of this seed's stream (deterministic)."""
        rng = np.random.default_rng([self.seed, index])
        if format_name is not None:
            if format_name not in FORMATS:
                raise ValueError(f"format_name: unknown plate format {format_name!r}")
            fmt = FORMATS[format_name]
        else:
            fmt = self._pick_format(rng)
        lines = tuple(text_lines) if text_lines is not None else plate_text_for(fmt, rng)
        if len(lines) != len(fmt.lines):
            raise ValueError(f"text_lines: format {fmt.name} has {len(fmt.lines)} line(s)")
        clean = self.render_clean(fmt, lines, rng)
        h, w = clean.shape[:2]
        quad = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32)
        image = clean
        if degrade:
            image, quad = degrade_plate(clean, rng)
        return SynthPlate(
            image=image,
            text=label_of(lines),
            format_name=fmt.name,
            region=fmt.region,
            lines=len(fmt.lines),
            quad=quad,
        )

    def format_of(self, index: int) -> PlateFormat:
        """The format `sample(index)` draws (without rendering it)."""
        return self._pick_format(np.random.default_rng([self.seed, index]))

    def _pick_format(self, rng: np.random.Generator) -> PlateFormat:
        return self.formats[int(rng.choice(len(self.formats), p=self.weights))]

    # ----------------------------------------------------------------- rendering
    def render_clean(
        self, fmt: PlateFormat, lines: Sequence[str], rng: np.random.Generator
    ) -> np.ndarray:
        """A flat, frontal plate image (BGR uint8) at roughly 1 px per mm."""
        scale = rng.uniform(0.8, 1.3)
        w, h = round(fmt.size_mm[0] * scale), round(fmt.size_mm[1] * scale)
        bg, fg = fmt.colours[int(rng.integers(len(fmt.colours)))]
        bg_arr = np.clip(np.array(bg) + rng.integers(-20, 21, 3), 0, 255)
        fg_arr = np.clip(np.array(fg) + rng.integers(-15, 16, 3), 0, 255)
        img = np.empty((h, w, 3), np.uint8)
        img[:] = bg_arr.astype(np.uint8)
        # subtle background texture / gradient
        grad = np.linspace(rng.uniform(-18, 0), rng.uniform(0, 18), w, dtype=np.float32)
        img = np.clip(img.astype(np.float32) + grad[None, :, None], 0, 255).astype(np.uint8)

        left, top, right, bottom = (
            int(0.04 * w),
            int(0.06 * h),
            w - int(0.04 * w),
            h - int(0.06 * h),
        )
        if fmt.band == "eu":
            band_w = int(0.09 * w)
            cv2.rectangle(img, (0, 0), (band_w, h), (150, 60, 0), -1)
            for k in range(12):  # ring of stars
                a = 2 * np.pi * k / 12
                cx = int(band_w / 2 + 0.22 * band_w * np.cos(a))
                cy = int(0.3 * h + 0.22 * band_w * np.sin(a))
                cv2.circle(img, (cx, cy), max(1, h // 60), (0, 210, 255), -1)
            code = EU_COUNTRIES[int(rng.integers(len(EU_COUNTRIES)))]
            self._draw_text(img, code, (0, int(0.55 * h), band_w, int(0.9 * h)), WHITE, rng)
            left = band_w + int(0.03 * w)
        elif fmt.band == "mercosur":
            band_h = int(0.2 * h)
            cv2.rectangle(img, (0, 0), (w, band_h), (160, 70, 0), -1)
            self._draw_text(
                img, "BRASIL", (int(0.35 * w), int(0.02 * h), int(0.65 * w), band_h - 2), WHITE, rng
            )
            top = band_h + int(0.05 * h)
        elif fmt.band == "us_header":
            header = US_HEADERS[int(rng.integers(len(US_HEADERS)))]
            self._draw_text(
                img, header, (int(0.2 * w), int(0.04 * h), int(0.8 * w), int(0.2 * h)), fg_arr, rng
            )
            if rng.random() < 0.5:  # bottom slogan
                slogan = US_HEADERS[int(rng.integers(len(US_HEADERS)))]
                self._draw_text(
                    img,
                    slogan.lower(),
                    (int(0.3 * w), int(0.84 * h), int(0.7 * w), int(0.95 * h)),
                    fg_arr,
                    rng,
                )
            top, bottom = int(0.22 * h), int(0.82 * h)
        if rng.random() < 0.7:  # border
            t = max(1, int(rng.uniform(0.01, 0.03) * h))
            cv2.rectangle(img, (t, t), (w - t - 1, h - t - 1), fg_arr.tolist(), t)

        n = len(lines)
        line_h = (bottom - top) / n
        for i, line in enumerate(lines):
            y0 = top + i * line_h
            if n > 1:
                box_h = line_h * fmt.char_height
            elif fmt.band in ("us_header", "mercosur"):
                box_h = line_h * 0.9
            else:
                box_h = min(line_h * 0.95, h * fmt.char_height * rng.uniform(0.9, 1.1))
            cy = y0 + line_h / 2
            self._draw_text(
                img,
                line,
                (left, int(cy - box_h / 2), right, int(cy + box_h / 2)),
                fg_arr,
                rng,
                stretch=True,
            )
        return img

    def _draw_text(
        self,
        img: np.ndarray,
        text: str,
        box: tuple[int, int, int, int],
        colour: object,
        rng: np.random.Generator,
        stretch: bool = False,
    ) -> None:
        """Rasterise `text` and fit it into `box` (x1, y1, x2, y2), centred, keeping most of its
        aspect (condensing when it is too wide)."""
        x1, y1, x2, y2 = box
        bw, bh = max(1, x2 - x1), max(1, y2 - y1)
        mask = self._text_mask(text, rng)
        if mask is None:
            return
        mh, mw = mask.shape
        scale = bh / mh
        tw = mw * scale * (rng.uniform(0.85, 1.2) if stretch else 1.0)
        tw = min(tw, bw * (0.98 if stretch else 1.0))
        if stretch and rng.random() < 0.3:
            tw = bw * rng.uniform(0.85, 0.98)
        tw_i, th_i = max(1, int(tw)), bh
        m = cv2.resize(mask, (tw_i, th_i), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
        ox = x1 + (bw - tw_i) // 2
        region = img[y1 : y1 + th_i, ox : ox + tw_i].astype(np.float32)
        m = m[: region.shape[0], : region.shape[1], None]
        col = np.asarray(colour, dtype=np.float32).reshape(1, 1, 3)
        img[y1 : y1 + th_i, ox : ox + tw_i] = (region * (1 - m) + col * m).astype(np.uint8)

    def _text_mask(self, text: str, rng: np.random.Generator) -> np.ndarray | None:
        """Tight uint8 mask of `text` in a random font."""
        if not text.strip():
            return None
        if self.fonts:
            font = self.fonts[int(rng.integers(len(self.fonts)))]
            x0, y0, x1, y1 = font.getbbox(text)
            canvas = Image.new("L", (int(x1 - x0) + 4, int(y1 - y0) + 4), 0)
            ImageDraw.Draw(canvas).text((2 - x0, 2 - y0), text, fill=255, font=font)
            mask = np.asarray(canvas)
        else:  # no TrueType font installed: OpenCV Hershey fallback
            (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_DUPLEX, 3.0, 6)
            mask = np.zeros((th + base + 8, tw + 8), np.uint8)
            cv2.putText(mask, text, (4, th + 4), cv2.FONT_HERSHEY_DUPLEX, 3.0, 255, 6)
        ys, xs = np.nonzero(mask > 40)
        if len(ys) == 0:
            return None
        return mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


# --------------------------------------------------------------------- degradation
def degrade_plate(clean: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Put `clean` in a loose, perspective-warped crop with camera effects.

    Returns (crop BGR uint8, plate corners in crop pixels)."""
    h, w = clean.shape[:2]
    out_h = int(rng.uniform(18, 90) * (h / w * 4 if h / w > 0.4 else 1.0))
    out_h = int(np.clip(out_h, 16, 140))
    # plate size inside the crop and margins (detector boxes are loose or slightly tight)
    ml, mr = rng.uniform(-0.02, 0.15, 2)
    mt, mb = rng.uniform(-0.03, 0.25, 2)
    plate_h = out_h / (1 + mt + mb)
    plate_w = plate_h * (w / h) * rng.uniform(0.85, 1.15)
    out_w = int(max(8, plate_w * (1 + ml + mr)))
    x0, y0 = plate_w * ml, plate_h * mt
    quad = np.array(
        [[x0, y0], [x0 + plate_w, y0], [x0 + plate_w, y0 + plate_h], [x0, y0 + plate_h]],
        dtype=np.float32,
    )
    jitter = rng.normal(0, 0.025, (4, 2)) * np.array([plate_w, plate_h])
    quad = (quad + jitter).astype(np.float32)
    angle = np.deg2rad(rng.normal(0, 3.0))
    c = quad.mean(axis=0)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    quad = ((quad - c) @ rot.T + c).astype(np.float32)

    # background: car-body colour with noise
    bg_col = rng.integers(0, 256, 3).astype(np.float32)
    bg = np.empty((out_h, out_w, 3), np.float32)
    bg[:] = bg_col
    bg += rng.normal(0, rng.uniform(2, 20), (out_h, out_w, 1)).astype(np.float32)
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32)
    m = cv2.getPerspectiveTransform(src, quad)
    warped = cv2.warpPerspective(clean, m, (out_w, out_h), flags=cv2.INTER_AREA)
    mask = cv2.warpPerspective(np.full((h, w), 255, np.uint8), m, (out_w, out_h))
    a = (mask.astype(np.float32) / 255)[..., None]
    img = warped.astype(np.float32) * a + bg * (1 - a)

    img = _photometric(img, rng)
    img = np.clip(img, 0, 255).astype(np.uint8)
    img = _blur_and_compress(img, rng)
    return img, quad


def _photometric(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    look = rng.random()
    oh, ow = img.shape[:2]
    if look < 0.15:  # night: dark, noisy, warm or blue
        img = img * rng.uniform(0.2, 0.5) + rng.uniform(0, 20)
        img[..., int(rng.integers(3))] *= rng.uniform(0.8, 1.2)
        img += rng.normal(0, rng.uniform(4, 14), img.shape)
    elif look < 0.27:  # IR: grey, retro-reflective background glows, characters stay dark
        g = img.mean(axis=2, keepdims=True)
        g = (g - g.mean()) * rng.uniform(1.2, 2.2) + rng.uniform(110, 170)
        img = np.repeat(g, 3, axis=2) + rng.normal(0, rng.uniform(2, 10), (oh, ow, 1))
    else:  # day: contrast, brightness, colour cast
        img = (img - 128) * rng.uniform(0.5, 1.3) + 128 + rng.uniform(-50, 50)
        img *= rng.uniform(0.85, 1.15, 3)
    if rng.random() < 0.25:  # glare
        cx, cy = rng.uniform(0, ow), rng.uniform(0, oh)
        yy, xx = np.mgrid[0:oh, 0:ow].astype(np.float32)
        r = rng.uniform(0.2, 0.8) * ow
        glare = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)) * rng.uniform(40, 160)
        img = img + glare[..., None]
    if rng.random() < 0.3:  # shadow edge
        x = rng.uniform(0, ow)
        shade = np.where(np.arange(ow) < x, rng.uniform(0.5, 0.9), 1.0).astype(np.float32)
        img = img * shade[None, :, None]
    return img


def _blur_and_compress(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    oh, ow = img.shape[:2]
    if rng.random() < 0.4:
        k = int(rng.choice([3, 5]))
        img = cv2.GaussianBlur(img, (k, k), rng.uniform(0.3, 1.5))
    if rng.random() < 0.2:  # motion blur
        k = int(rng.integers(3, 8))
        kern = np.zeros((k, k), np.float32)
        kern[k // 2, :] = 1.0 / k
        img = cv2.filter2D(img, -1, kern)
    if rng.random() < 0.4:  # low-res camera: down then up
        f = rng.uniform(0.35, 0.8)
        small = cv2.resize(img, (max(4, int(ow * f)), max(4, int(oh * f))), cv2.INTER_AREA)
        img = cv2.resize(small, (ow, oh), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.7:
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(20, 90))])
        if ok:
            img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return img


def generate(
    n: int,
    seed: int = 0,
    *,
    formats: Sequence[str] | None = None,
    degrade: bool = True,
    start: int = 0,
) -> list[SynthPlate]:
    """`n` samples `start..start+n-1` of the stream for `seed`."""
    synth = PlateSynth(seed=seed, formats=formats)
    return [synth.sample(i, degrade=degrade) for i in range(start, start + n)]


def to_png_bytes(image: np.ndarray) -> bytes:
    """PNG bytes of a BGR image (for writing previews)."""
    buf = io.BytesIO()
    Image.fromarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB)).save(buf, format="PNG")
    return buf.getvalue()
