"""PostgreSQL COPY text formatting of sighting rows (pure)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from shared.store.repository import copy_text_row, copy_text_value


def _unescape(field: str) -> str:
    """What PostgreSQL's COPY text reader makes of one field (the escapes we write)."""
    out, i = [], 0
    table = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}
    while i < len(field):
        if field[i] == "\\":
            out.append(table[field[i + 1]])
            i += 2
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def test_scalars_take_postgresql_text_forms() -> None:
    at = datetime(2026, 11, 25, 9, 30, 1, 250000, tzinfo=UTC)
    eid = uuid.UUID("0193b5c4-8e6a-7abc-9def-0123456789ab")
    assert copy_text_value(None) == "\\N"
    assert copy_text_value(True) == "t"
    assert copy_text_value(False) == "f"
    assert copy_text_value(3) == "3"
    assert copy_text_value(0.25) == "0.25"
    assert copy_text_value(at) == "2026-11-25T09:30:01.250000+00:00"
    assert copy_text_value(eid) == str(eid)


def test_json_values_are_compact_and_escaped() -> None:
    assert copy_text_value([0.9, 0.8]) == "[0.9,0.8]"
    assert copy_text_value({"text": 'a\\b"c'}) == '{"text":"a\\\\\\\\b\\\\"c"}'


@given(st.text(max_size=40))
def test_any_string_survives_the_escapes(text: str) -> None:
    field = copy_text_value(text)
    assert "\t" not in field and "\n" not in field and "\r" not in field
    assert _unescape(field) == text


def test_a_row_is_tab_separated_and_newline_terminated() -> None:
    row = {"a": "x\ty", "b": None, "c": 1}
    assert copy_text_row(row, ("a", "b", "c")) == "x\\ty\t\\N\t1\n"
