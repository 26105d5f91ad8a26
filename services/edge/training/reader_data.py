"""Reader training/evaluation data: real plate crops from /work/shared/data plus synthetic plates.

Real items keep some context around the plate (scene sets) so that training can jitter the box
like an imperfect detector. Splits come from `splits.split_of`; `openalpr-endtoend-dev` is never
used for training, and any training plate whose text equals (or is one edit away from) an
`openalpr-endtoend-dev` plate is dropped.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from services.edge.dataset import LabelledImage, LabelledPlate, load_labels
from services.edge.recognition.reader import ReaderSpec, preprocess
from services.edge.training.splits import SCENE_SETS, held_out

log = logging.getLogger(__name__)

DATA_ROOT = Path("/work/shared/data")
CROP_SETS = (
    "us_openalpr_benchmarks_seg_ocr",
    "br_openalpr_train_detector",
    "eu_openalpr_train_detector",
    "cn_lprnet_sirius_test",
)
EVAL_SET = "openalpr-endtoend-dev"
UNLABELLED_SETS = (*SCENE_SETS, "eu_openalpr_train_detector")  # sets with text-null boxes
CONTEXT = 0.3  # context kept around scene boxes, as a fraction of box width/height


@dataclass
class RealItem:
    dataset: str
    split: str
    text: str
    lines: int
    region: str
    image: np.ndarray  # BGR crop with context
    box: tuple[float, float, float, float]  # plate box inside `image`


def _within_one_edit(a: str, b: str) -> bool:
    if a == b:
        return True
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b, strict=True)) == 1
    if len(a) > len(b):
        a, b = b, a
    return any(a == b[:i] + b[i + 1 :] for i in range(len(b)))


def eval_texts(root: Path = DATA_ROOT) -> set[str]:
    return {p.text for img in load_labels(root / EVAL_SET) for p in img.plates if p.text}


def load_real(root: Path = DATA_ROOT) -> list[RealItem]:
    """All real plates with text, with their split ('train' or 'test')."""
    banned = eval_texts(root)
    items: list[RealItem] = []
    dropped_eval = 0
    for ds in CROP_SETS + SCENE_SETS:
        for img in load_labels(root / ds):
            split = _split(ds, img)
            frame = None
            for plate in img.plates:
                text = plate.text
                if ds == "cn_lprnet_sirius_test":
                    text = plate.extra.get("text_latin")
                if not text or plate.extra.get("synthetic") or plate.extra.get("non_latin"):
                    continue
                text = "".join(c for c in text.upper() if c.isascii() and c.isalnum())
                if not text:
                    continue
                if split == "train" and any(_within_one_edit(text, b) for b in banned):
                    dropped_eval += 1
                    continue
                if frame is None:
                    frame = cv2.imread(str(img.file), cv2.IMREAD_COLOR)
                    if frame is None:
                        raise FileNotFoundError(f"{img.file}: cannot decode image")
                item = _context_item(ds, split, text, img, plate, frame)
                if item is not None:
                    items.append(item)
    log.info("real plates loaded", extra={"items": len(items), "dropped_eval": dropped_eval})
    return items


def _split(ds: str, img: LabelledImage) -> str:
    return "test" if held_out(ds, img.split_label) else "train"


def _context_item(
    ds: str, split: str, text: str, img: LabelledImage, plate: LabelledPlate, frame: np.ndarray
) -> RealItem | None:
    """`plate` cut from `frame` with CONTEXT kept around its box (None: box too small)."""
    x1, y1, x2, y2 = plate.box
    bw, bh = x2 - x1, y2 - y1
    if bw < 4 or bh < 3:
        return None
    cx1 = int(max(0, x1 - CONTEXT * bw))
    cy1 = int(max(0, y1 - CONTEXT * bh))
    cx2 = int(min(frame.shape[1], x2 + CONTEXT * bw + 1))
    cy2 = int(min(frame.shape[0], y2 + CONTEXT * bh + 1))
    crop = frame[cy1:cy2, cx1:cx2].copy()
    region = img.region
    country = plate.extra.get("country")
    if region == "unknown" and isinstance(country, str):
        region = country.lower()
    return RealItem(
        dataset=ds,
        split=split,
        text=text,
        lines=plate.lines,
        region=region,
        image=crop,
        box=(x1 - cx1, y1 - cy1, x2 - cx1, y2 - cy1),
    )


def unlabelled_key(ds: str, img: LabelledImage, index: int) -> str:
    """Stable name of plate `index` of `img` in dataset `ds` (pseudo-label files use it)."""
    return f"{ds}/{img.relative_file or img.file.name}#{index}"


def load_unlabelled(
    root: Path = DATA_ROOT, datasets: tuple[str, ...] = UNLABELLED_SETS
) -> dict[str, RealItem]:
    """Train-split one-line plates whose text is null (no human reading), by `unlabelled_key`,
    with `text` empty: the candidates for teacher pseudo-labels."""
    out: dict[str, RealItem] = {}
    for ds in datasets:
        for img in load_labels(root / ds):
            split = _split(ds, img)
            if split != "train":
                continue
            frame = None
            for index, plate in enumerate(img.plates):
                if plate.text or plate.lines != 1 or plate.extra.get("synthetic"):
                    continue
                if frame is None:
                    frame = cv2.imread(str(img.file), cv2.IMREAD_COLOR)
                    if frame is None:
                        raise FileNotFoundError(f"{img.file}: cannot decode image")
                item = _context_item(ds, split, "", img, plate, frame)
                if item is not None:
                    out[unlabelled_key(ds, img, index)] = item
    log.info("unlabelled plates loaded", extra={"items": len(out)})
    return out


def load_pseudo(path: Path, root: Path = DATA_ROOT) -> list[RealItem]:
    """The train-split plates named in a pseudo-label file (JSON lines with `key` and `text`,
    see reader_pseudo), with the teacher's text. Texts within one edit of an
    `openalpr-endtoend-dev` plate are dropped, as for human labels."""
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    datasets = tuple(sorted({str(r["key"]).split("/", 1)[0] for r in records}))
    pool = load_unlabelled(root, datasets)
    banned = eval_texts(root)
    items = []
    for r in records:
        item = pool.get(str(r["key"]))
        text = str(r["text"])
        if item is None or any(_within_one_edit(text, b) for b in banned):
            continue
        items.append(replace(item, text=text))
    log.info("pseudo-labelled plates loaded", extra={"items": len(items), "file": str(path)})
    return items


#: a crop pack: the real crops JPEG-encoded, to carry them where ../shared is not (a GPU machine
#: takes 64 MiB with the repo; the decoded cache is about 170 MB, the pack about 30)
PACK_SUFFIX = ".jpgpack"


def save_pack(items: list[RealItem], path: Path, quality: int = 95) -> int:
    """Write `items` as a crop pack (each crop JPEG-encoded at `quality`); returns its bytes."""
    rows = []
    for item in items:
        ok, jpeg = cv2.imencode(".jpg", item.image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise ValueError(f"{item.dataset}: a crop of {item.text!r} could not be encoded")
        rows.append((item.dataset, item.split, item.text, item.lines, item.region, item.box,
                     jpeg.tobytes()))  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump({"format": "platewatch-crops-1", "quality": quality, "items": rows}, f)
    return path.stat().st_size


def load_pack(path: Path) -> list[RealItem]:
    """The crops of a pack written by `save_pack` (decoded; JPEG-lossy against the cache)."""
    with path.open("rb") as f:
        doc = pickle.load(f)  # our own pack file
    if not isinstance(doc, dict) or doc.get("format") != "platewatch-crops-1":
        raise ValueError(f"{path}: not a crop pack (format platewatch-crops-1)")
    items = []
    for dataset, split, text, lines, region, box, jpeg in doc["items"]:
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"{path}: a crop of {text!r} ({dataset}) does not decode")
        items.append(RealItem(dataset, split, text, lines, region, image, tuple(box)))
    return items


def load_real_cached(cache: Path) -> list[RealItem]:
    """The real crops: from a crop pack (`*.jpgpack`), else from the decoded cache, which is
    built from ../shared/data when missing."""
    if cache.suffix == PACK_SUFFIX:
        return load_pack(cache)
    if cache.is_file():
        with cache.open("rb") as f:
            return pickle.load(f)  # our own cache file
    items = load_real()
    cache.parent.mkdir(parents=True, exist_ok=True)
    with cache.open("wb") as f:
        pickle.dump(items, f)
    return items


def exact_crop(item: RealItem) -> np.ndarray:
    """The labelled box itself (what a perfect detector would give)."""
    x1, y1, x2, y2 = item.box
    return item.image[int(y1) : int(np.ceil(y2)), int(x1) : int(np.ceil(x2))]


# ----------------------------------------------------------------------------- augmentation
#: plate widths (pixels) `tiny_p` shrinks a crop to: those the HD proxy's plates are read
#: worst at (docs/models.md, session 10)
TINY_WIDTHS = (35.0, 75.0)


#: plate widths (pixels) `far_p` shrinks a crop to before degrading it at that size
FAR_WIDTHS = (35.0, 90.0)


def augment_real(
    item: RealItem,
    rng: np.random.Generator,
    loose_p: float = 0.0,
    tiny_p: float = 0.0,
    far_p: float = 0.0,
) -> np.ndarray:
    """A jittered, rotated, photometrically changed crop of `item` (BGR uint8).

    With probability `loose_p` the box is loose, as a detector box around a plate and its frame
    or recess: each side out by 5-30% (x) and 0-25% (y) of the box (beyond the context kept
    around the plate, the warp's border fill shows). With probability `tiny_p` the result is
    area-shrunk until the plate is `TINY_WIDTHS` pixels wide (when it is wider) and stretched
    back: a plate far from a 1280 px camera. With probability `far_p` it is shrunk until the
    plate is `FAR_WIDTHS` wide and blurred, noised and JPEG-compressed *at that size*
    (`degrade_small`) before it is stretched back: the tiny shrink, coming after the blur and
    JPEG of the full-size crop, averages them away and leaves a clean small plate, where a far
    camera's plate is blurred and blocky at its own few pixels (session 13)."""
    x1, y1, x2, y2 = item.box
    bw, bh = x2 - x1, y2 - y1
    if loose_p > 0 and rng.random() < loose_p:  # no draw at 0: earlier runs replay
        dl, dr = rng.uniform(0.05, 0.3, 2) * bw
        dt, db = rng.uniform(0.0, 0.25, 2) * bh
    else:
        # imperfect detector box: sides move by -3%..+15% (x) and -5%..+20% (y) of the box size
        dl, dr = rng.uniform(-0.03, 0.15, 2) * bw
        dt, db = rng.uniform(-0.05, 0.2, 2) * bh
    nx1, ny1, nx2, ny2 = x1 - dl, y1 - dt, x2 + dr, y2 + db
    out_w = max(8, round(nx2 - nx1))
    out_h = max(8, round(ny2 - ny1))
    scale = rng.uniform(0.5, 1.3) if out_h > 30 else rng.uniform(0.9, 1.5)
    ow, oh = max(8, int(out_w * scale)), max(8, int(out_h * scale))
    src = np.array([[nx1, ny1], [nx2, ny1], [nx2, ny2], [nx1, ny2]], np.float32)
    src += rng.normal(0, 0.02, (4, 2)).astype(np.float32) * np.array([bw, bh], np.float32)
    angle = np.deg2rad(rng.normal(0, 2.5))
    c = src.mean(axis=0)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], np.float32)
    src = (src - c) @ rot.T + c
    dst = np.array([[0, 0], [ow, 0], [ow, oh], [0, oh]], np.float32)
    m = cv2.getPerspectiveTransform(src.astype(np.float32), dst)
    border = cv2.BORDER_REPLICATE if rng.random() < 0.7 else cv2.BORDER_CONSTANT
    img = cv2.warpPerspective(
        item.image,
        m,
        (ow, oh),
        flags=cv2.INTER_LINEAR,
        borderMode=border,
        borderValue=tuple(int(v) for v in rng.integers(0, 256, 3)),
    )
    f = img.astype(np.float32)
    f = (f - 128) * rng.uniform(0.6, 1.3) + 128 + rng.uniform(-40, 40)
    f *= rng.uniform(0.85, 1.15, 3).astype(np.float32)
    if rng.random() < 0.2:
        f += rng.normal(0, rng.uniform(2, 12), f.shape).astype(np.float32)
    img = np.clip(f, 0, 255).astype(np.uint8)
    if rng.random() < 0.1:
        img = 255 - img  # some plates are light-on-dark
    if rng.random() < 0.3:
        k = int(rng.choice([3, 5]))
        img = cv2.GaussianBlur(img, (k, k), rng.uniform(0.3, 1.2))
    if rng.random() < 0.3:
        fct = rng.uniform(0.4, 0.8)
        # bilinear down: until session 10 this line passed INTER_AREA as cv2.resize's third
        # positional argument, which is `dst`, so the shipped readers trained with bilinear
        img = _down_and_up(img, max(4, int(ow * fct)), max(4, int(oh * fct)), cv2.INTER_LINEAR)
    if rng.random() < 0.4:
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(25, 90))])
        if ok:
            img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if tiny_p > 0 and rng.random() < tiny_p:  # no draw at 0: earlier runs replay
        img = shrink_to_width(img, bw * ow / max(1.0, out_w), float(rng.uniform(*TINY_WIDTHS)))
    if far_p > 0 and rng.random() < far_p:  # no draw at 0: earlier runs replay
        img = degrade_small(img, bw * ow / max(1.0, out_w), float(rng.uniform(*FAR_WIDTHS)), rng)
    return img


def degrade_small(
    img: np.ndarray, plate_width: float, target: float, rng: np.random.Generator
) -> np.ndarray:
    """`img` area-shrunk so that its plate is `target` px wide, then, at that size, blurred
    (70%: sigma 0.4-1.2 px), noised (50%: 2-6 grey levels) and JPEG-compressed (70%: quality
    30-80), and stretched back (bilinear) to its own size. A plate already that small is
    degraded at its own size."""
    h, w = img.shape[:2]
    factor = min(1.0, target / max(1.0, plate_width))

    def wear(small: np.ndarray) -> np.ndarray:
        if rng.random() < 0.7:
            small = cv2.GaussianBlur(small, (0, 0), float(rng.uniform(0.4, 1.2)))
        if rng.random() < 0.5:
            noisy = small.astype(np.float32) + rng.normal(0, rng.uniform(2, 6), small.shape)
            small = np.clip(noisy, 0, 255).astype(np.uint8)
        if rng.random() < 0.7:
            quality = int(rng.integers(30, 81))
            ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if ok:
                small = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        return small

    return _down_and_up(img, max(4, round(w * factor)), max(4, round(h * factor)), at_size=wear)


def shrink_to_width(img: np.ndarray, plate_width: float, target: float) -> np.ndarray:
    """`img` area-shrunk so that a plate `plate_width` pixels wide in it becomes `target` wide,
    then stretched back to its size (no change when the plate is already that small)."""
    factor = target / max(1.0, plate_width)
    if factor >= 1.0:
        return img
    h, w = img.shape[:2]
    return _down_and_up(img, max(4, round(w * factor)), max(4, round(h * factor)))


def _down_and_up(
    img: np.ndarray,
    width: int,
    height: int,
    down: int = cv2.INTER_AREA,
    at_size: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """`img` resized to width x height (`down`: area by default), passed through `at_size`
    there when given, and stretched back (bilinear) to its own size: the detail a camera would
    have lost at that size."""
    small = cv2.resize(img, (width, height), interpolation=down)
    if at_size is not None:
        small = at_size(small)
    return np.asarray(
        cv2.resize(small, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR),
        dtype=np.uint8,
    )


def encode_text(text: str, spec: ReaderSpec) -> list[int]:
    out = []
    for ch in text:
        i = spec.charset.index(ch)
        out.append(i if i < spec.blank_index else i + 1)
    return out


def _render_part(
    spec: ReaderSpec, seed: int, start: int, stop: int
) -> tuple[np.ndarray, list[str]]:
    """Plates `start`..`stop` of the seed's stream, preprocessed (each is drawn from
    (seed, index) alone, so parts rendered apart join into the same bank)."""
    from services.edge.training.synth import PlateSynth

    synth = PlateSynth(seed=seed)
    x = np.empty((stop - start, spec.channels, spec.input_height, spec.input_width), np.float16)
    texts = []
    for j, i in enumerate(range(start, stop)):
        s = synth.sample(i)
        x[j] = preprocess(s.image, spec)[0]
        texts.append(s.text)
    return x, texts


def synth_bank(
    spec: ReaderSpec, n: int, seed: int, cache: Path, workers: int = 1, part: int = 1_000
) -> tuple[np.ndarray, list[str]]:
    """`n` preprocessed synthetic plates (float16 (n, C, 48, 128)) and their texts, cached;
    rendered by `workers` processes (the same bank for any number)."""
    if cache.is_file():
        with cache.open("rb") as f:
            x, texts = pickle.load(f)  # our own cache file
        if len(texts) == n:
            return x, texts
    # rendered at 48 x 128 (the first reader's input); `resize_bank` fits it to other sizes
    spec = replace(spec, input_height=48, input_width=128)
    parts = [(spec, seed, a, min(a + part, n)) for a in range(0, n, part)]
    if workers > 1 and len(parts) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            done = list(pool.map(_render_part, *zip(*parts, strict=True)))
    else:
        done = []
        for part in parts:
            done.append(_render_part(*part))
            log.info("synthetic plates", extra={"done": part[3], "of": n})
    x = (
        np.concatenate([d[0] for d in done])
        if done
        else np.empty((0, spec.channels, spec.input_height, spec.input_width), np.float16)
    )
    texts = [t for d in done for t in d[1]]
    cache.parent.mkdir(parents=True, exist_ok=True)
    with cache.open("wb") as f:
        pickle.dump((x, texts), f, protocol=4)
    return x, texts


def resize_bank(x: np.ndarray, spec: ReaderSpec) -> np.ndarray:
    """Area-resize a preprocessed bank (n, C, h, w) to the spec's input size (normalisation is
    linear, so resizing normalised values equals normalising resized pixels)."""
    n, c = x.shape[:2]
    out = np.empty((n, c, spec.input_height, spec.input_width), np.float16)
    size = (spec.input_width, spec.input_height)
    for i in range(n):
        for j in range(c):
            out[i, j] = cv2.resize(x[i, j].astype(np.float32), size, interpolation=cv2.INTER_AREA)
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m services.edge.training.reader_data pack --work W --out F.jpgpack`."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m services.edge.training.reader_data")
    sub = ap.add_subparsers(dest="command", required=True)
    pack = sub.add_parser("pack", help="write the real crops as a JPEG crop pack")
    pack.add_argument("--work", type=Path, default=Path("work-data/reader"), help="crop cache")
    pack.add_argument("--out", type=Path, required=True, help=f"the pack (*{PACK_SUFFIX})")
    pack.add_argument("--quality", type=int, default=95, help="JPEG quality 50-100")
    pack.add_argument(
        "--splits", default="train", help="comma list of splits to keep (never 'test' for training)"
    )
    pack.add_argument(
        "--fonts",
        type=Path,
        help="also copy the synthetic plates' fonts here (set PW_SYNTH_FONTS to it there)",
    )
    args = ap.parse_args(argv)
    if args.out.suffix != PACK_SUFFIX:
        ap.error(f"--out: want a *{PACK_SUFFIX} file, got {args.out}")
    if not 50 <= args.quality <= 100:
        ap.error(f"--quality: want 50-100, got {args.quality}")
    splits = set(args.splits.split(","))
    items = [r for r in load_real_cached(args.work / "real.pkl") if r.split in splits]
    size = save_pack(items, args.out, args.quality)
    print(f"wrote {args.out}: {len(items)} crops ({sorted(splits)}), {size / 1e6:.1f} MB")
    if args.fonts is not None:
        import shutil

        from services.edge.training.synth import DEFAULT_FONT_PATHS

        args.fonts.mkdir(parents=True, exist_ok=True)
        found = [Path(p) for p in DEFAULT_FONT_PATHS if Path(p).is_file()]
        for font in found:
            shutil.copyfile(font, args.fonts / font.name)
        print(f"copied {len(found)} of {len(DEFAULT_FONT_PATHS)} fonts to {args.fonts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
