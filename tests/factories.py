"""Builders of valid events for tests (one place, so tests only state what they vary)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from shared.events import PlateRead

T0 = datetime(2026, 11, 25, 8, 0, 0, tzinfo=UTC)


def plate_read(**overrides: Any) -> PlateRead:
    seen = overrides.pop("seen_at", T0)
    fields: dict[str, Any] = {
        "site": "north-gate",
        "camera": "cam-1",
        "node": "edge-1",
        "track_id": "t-1",
        "plate": "ABC1234",
        "raw_text": "ABC 1234",
        "region": "us",
        "confidence": 0.93,
        "char_confidences": [0.9, 0.95, 0.97, 0.9, 0.99, 0.92, 0.94],
        "candidates": [
            {"text": "ABC1234", "confidence": 0.93},
            {"text": "A8C1234", "confidence": 0.04},
        ],
        "first_seen": seen - timedelta(seconds=2),
        "last_seen": seen,
        "captured_at": seen - timedelta(seconds=1),
        "frames": 9,
        "box": {"x1": 100, "y1": 200, "x2": 220, "y2": 240},
    }
    fields.update(overrides)
    return PlateRead.model_validate(fields)
