import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import PayloadError
from shared.plates import DEFAULT_FORMATS, RegionFormat, clean_plate, normalise_plate, plate_format

pytestmark = pytest.mark.shared


def test_normalise_plate_drops_spaces_and_uppercases() -> None:
    assert normalise_plate(" ab-c 12·3 ") == "ABC123"


def test_normalise_plate_folds_accents() -> None:
    assert normalise_plate("äbç 1") == "ABC1"


@pytest.mark.parametrize("raw", ["", "  ", "-·-", "ДЖ"])
def test_normalise_plate_rejects_text_with_nothing_left(raw: str) -> None:
    with pytest.raises(PayloadError, match="empty after normalisation") as info:
        normalise_plate(raw)
    assert info.value.field == "plate"


def test_normalise_plate_rejects_overlong_text() -> None:
    with pytest.raises(PayloadError, match="longer than 16"):
        normalise_plate("A" * 17)


def test_normalise_plate_applies_region_hook() -> None:
    formats = {"xx": RegionFormat("xx", (), fix=lambda p: p.removeprefix("XX"))}
    assert normalise_plate("xx-123", region="XX", formats=formats) == "123"
    assert normalise_plate("xx-123", region="us", formats=formats) == "XX123"


def test_plate_format_knows_brazil_old_and_mercosur() -> None:
    assert plate_format("ABC1234", "br") == "LLLNNNN"
    assert plate_format("ABC1D23", "br") == "LLLNLNN"
    assert plate_format("AB12345", "br") is None
    assert plate_format("ABC1234", None) is None
    assert "br" in DEFAULT_FORMATS


@given(st.text(max_size=30))
def test_normalised_plate_is_idempotent_and_alnum(raw: str) -> None:
    cleaned = clean_plate(raw)
    if not cleaned or len(cleaned) > 16:
        return
    plate = normalise_plate(raw)
    assert plate == normalise_plate(plate)
    assert plate.isascii() and plate.isalnum() and plate == plate.upper()
