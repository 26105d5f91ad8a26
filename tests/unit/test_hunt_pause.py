"""The retro-hunt's pause between slices of work (pure arithmetic)."""

from __future__ import annotations

import pytest

from services.correlator.service import hunt_pause_s


def test_the_pause_leaves_the_hunt_its_share_of_the_time() -> None:
    assert hunt_pause_s(0.1, 0.25) == pytest.approx(0.3)  # 0.1 s of work in every 0.4 s
    assert hunt_pause_s(0.2, 0.5) == pytest.approx(0.2)
    assert hunt_pause_s(0.1, 1.0) == 0.0  # share 1: no pauses


def test_the_pause_is_capped_and_never_negative() -> None:
    assert hunt_pause_s(10.0, 0.25) == 1.0
    assert hunt_pause_s(10.0, 0.25, longest_s=2.5) == 2.5
    assert hunt_pause_s(-1.0, 0.25) == 0.0  # a clock that went back


@pytest.mark.parametrize("share", [0.0, -0.5, 1.5])
def test_a_share_outside_0_to_1_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="share"):
        hunt_pause_s(0.1, share)
