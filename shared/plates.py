"""Plate text normalisation and per-region formats (pure, no I/O).

`normalise_plate` is the one place raw OCR or operator text becomes the canonical key that
sightings are stored, searched and matched by: upper case, Latin letters and digits only.
Each region may add a hook (`RegionFormat.fix`) and the format patterns that readers use to
re-rank candidates.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from shared.errors import PayloadError

MAX_PLATE_LENGTH = 16
_NON_ALNUM = re.compile(r"[^A-Z0-9]")


@dataclass(frozen=True)
class RegionFormat:
    """What one region's plates look like.

    `patterns` use L for a letter and N for a digit (e.g. Brazil's LLLNNNN, Mercosur LLLNLNN);
    `fix` is an optional hook applied after the generic normalisation.
    """

    region: str
    patterns: tuple[str, ...] = ()
    fix: Callable[[str], str] | None = field(default=None, compare=False)

    def matches(self, plate: str) -> str | None:
        """The first pattern the plate fits, or None."""
        for pattern in self.patterns:
            if pattern_regex(pattern).fullmatch(plate):
                return pattern
        return None


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """Compile an L/N pattern (L letter, N digit, A either, other characters literal)."""
    parts = []
    for ch in pattern:
        if ch == "L":
            parts.append("[A-Z]")
        elif ch == "N":
            parts.append("[0-9]")
        elif ch == "A":
            parts.append("[A-Z0-9]")
        else:
            parts.append(re.escape(ch))
    return re.compile("".join(parts))


DEFAULT_FORMATS: Mapping[str, RegionFormat] = MappingProxyType(
    {
        "br": RegionFormat("br", ("LLLNNNN", "LLLNLNN")),
        "us": RegionFormat("us", ("LLLNNNN", "NLLLNNN", "LLLNNN", "NNNLLL", "LLNNNNN")),
        "eu": RegionFormat("eu", ()),
        "ro": RegionFormat("ro", ("LLNNLLL", "LNNLLL", "LNNNLLL", "BNNNLLL")),
        "in": RegionFormat("in", ("LLNNLLNNNN", "LLNNLNNNN", "LLNNNNNN")),
        "gb": RegionFormat("gb", ("LLNNLLL",)),
    }
)


def clean_plate(raw: str) -> str:
    """Upper case, accents folded, everything but A-Z and 0-9 dropped."""
    folded = unicodedata.normalize("NFKD", raw).encode("ascii", "ignore").decode("ascii")
    return _NON_ALNUM.sub("", folded.upper())


def normalise_plate(
    raw: str,
    region: str | None = None,
    formats: Mapping[str, RegionFormat] = DEFAULT_FORMATS,
) -> str:
    """The canonical plate key; raises PayloadError when nothing usable is left."""
    if not isinstance(raw, str):
        raise PayloadError("plate", raw, "not a string")
    plate = clean_plate(raw)
    if region is not None:
        fmt = formats.get(region.lower())
        if fmt is not None and fmt.fix is not None:
            plate = fmt.fix(plate)
    if not plate:
        raise PayloadError("plate", raw, "empty after normalisation")
    if len(plate) > MAX_PLATE_LENGTH:
        raise PayloadError("plate", raw, f"longer than {MAX_PLATE_LENGTH} characters")
    return plate


def plate_format(
    plate: str, region: str | None, formats: Mapping[str, RegionFormat] = DEFAULT_FORMATS
) -> str | None:
    """The region pattern a normalised plate fits, or None when none (or no region) fits."""
    if region is None:
        return None
    fmt = formats.get(region.lower())
    return fmt.matches(plate) if fmt is not None else None
