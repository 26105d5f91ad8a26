"""Import the generic PP-OCRv4 text recogniser from the PyPI package rapidocr-openvino
(Apache-2.0 weights) as a second reader, converted to OpenVINO IR.

    python -m services.edge.training.second_reader_import --out work-data/generic-second-reader

Sessions 5-6 ran this generic model as the second-opinion reader (built by `make models`).
Since session 7 the runtime's second reader is this model fine-tuned for plates
(`second_reader_train`, committed IR); this import remains for comparisons (copy its output
over `models/second_reader.*` in a scratch models folder) and supplies the pinned source file,
its SHA-256 and its class table to the fine-tuning.

Writes second_reader.xml/.bin (weights stored as FP16, computed in f32 at run time; INT8
weight compression measured 3 of 81 held-out plates worse, docs/models.md) and the sidecar
second_reader.json (input geometry, the class -> character table of A-Z0-9, the source file's
SHA-256 and licence). The IR's outputs are checked against the ONNX file before saving.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import sys
import unicodedata
from pathlib import Path
from typing import Any

SOURCE_PACKAGE = "rapidocr-openvino"
SOURCE_VERSION = "1.4.4"
ONNX_NAME = "models/ch_PP-OCRv4_rec_infer.onnx"
ONNX_SHA256 = "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b"
KEYS_NAME = "ch_ppocr_rec/ppocr_keys_v1.txt"
SEPARATORS = frozenset(" -.·•:")  # read between plate characters, left out of the text
MAX_CONF_DIFF = 0.02  # FP16-stored weights against the ONNX file: reading confidence


def package_dir() -> Path:
    """The installed rapidocr_openvino folder, found without importing it (its __init__ needs
    the old openvino.runtime alias)."""
    spec = importlib.util.find_spec("rapidocr_openvino")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"rapidocr_openvino: package not installed (pip install --no-deps "
            f"{SOURCE_PACKAGE}=={SOURCE_VERSION})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def spec_dict(pkg: Path) -> dict[str, Any]:
    """The sidecar: rapidocr's CTC table is blank, the keys file's lines, then a space."""
    keys = (pkg / KEYS_NAME).read_text(encoding="utf-8").splitlines()
    table = ["", *keys, " "]
    plain = [unicodedata.normalize("NFKC", c) for c in table]  # full-width forms to ASCII
    chars = {
        str(i): c.upper()
        for i, c in enumerate(plain)
        if len(c) == 1 and c.isascii() and c.isalnum()
    }
    separators = [i for i, c in enumerate(table) if c in SEPARATORS]
    onnx = pkg / ONNX_NAME
    return {
        "schema_version": 1,
        "name": "PP-OCRv4 text recogniser (ch)",
        "role": "second-opinion reader of unsure plates (recognition/second_reader.py)",
        "source": {
            "package": f"{SOURCE_PACKAGE}=={SOURCE_VERSION}",
            "file": ONNX_NAME,
            "sha256": hashlib.sha256(onnx.read_bytes()).hexdigest(),
            "upstream": "PaddleOCR PP-OCRv4 (ch_PP-OCRv4_rec)",
            "licence": "Apache-2.0",
        },
        "input": {
            "height": 48,
            "min_width": 320,
            "max_width": 1280,
            "mean": 0.5,
            "std": 0.5,
            "layout": "NCHW",
            "colour": "BGR",
        },
        "num_classes": len(table),
        "blank_index": 0,
        "chars": chars,
        "separators": separators,
    }


def main(argv: list[str] | None = None) -> int:
    import openvino as ov

    from services.edge.recognition.runtime import RuntimeOptions
    from services.edge.recognition.second_reader import SecondReaderSpec, preprocess

    ap = argparse.ArgumentParser(prog="python -m services.edge.training.second_reader_import")
    # never the models folder by default: that holds the fine-tuned second reader
    ap.add_argument("--out", type=Path, default=Path("work-data/generic-second-reader"))
    args = ap.parse_args(argv)
    try:
        pkg = package_dir()
    except FileNotFoundError as exc:
        print(f"second_reader_import: {exc}", file=sys.stderr)
        return 2
    data = spec_dict(pkg)
    source = data["source"]
    if source["sha256"] != ONNX_SHA256:
        print(
            f"second_reader_import: {pkg / ONNX_NAME}: SHA-256 {source['sha256']}, "
            f"expected {ONNX_SHA256} ({SOURCE_PACKAGE}=={SOURCE_VERSION})",
            file=sys.stderr,
        )
        return 1
    spec = SecondReaderSpec.from_dict(data)
    core = ov.Core()
    model = core.read_model(str(pkg / ONNX_NAME))
    if model.outputs[0].get_partial_shape()[-1].get_length() != spec.num_classes:
        print("second_reader_import: class count disagrees with the keys file", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    xml = args.out / "second_reader.xml"
    ov.save_model(model, str(xml), compress_to_fp16=True)
    # check the saved IR against the ONNX file on synthetic plates: same texts, close scores
    from services.edge.recognition.second_reader import decode
    from services.edge.training.synth import PlateSynth

    config = RuntimeOptions(threads=1).config()
    ref = core.compile_model(str(pkg / ONNX_NAME), "CPU", config)
    got = core.compile_model(str(xml), "CPU", config)
    synth = PlateSynth(seed=7)
    worst, same = 0.0, True
    for i in range(8):
        x = preprocess(synth.sample(i).image, spec)
        a, b = decode(ref(x)[0], spec), decode(got(x)[0], spec)
        worst = max(worst, abs(a.confidence - b.confidence))
        same &= a.text == b.text
    if worst > MAX_CONF_DIFF or not same:
        xml.unlink()
        xml.with_suffix(".bin").unlink()
        print(
            f"second_reader_import: IR differs from ONNX (max {worst:.3g}, same texts: {same})",
            file=sys.stderr,
        )
        return 1
    (args.out / "second_reader.json").write_text(json.dumps(data, indent=1) + "\n")
    print(json.dumps({"saved": str(xml), "max_confidence_difference": worst}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
