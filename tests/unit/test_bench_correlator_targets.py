"""The correlator bench's verdicts on the issue's targets (pure: rows in, verdicts out)."""

from __future__ import annotations

from typing import Any

from services.correlator.bench import table, targets


def run(processes: int, per_process: float | None) -> dict[str, Any]:
    return {"processes": processes, "per_process_events_per_s": per_process}


def lat(rate: float, p99: float | None, kept_up: bool = True) -> dict[str, Any]:
    return {"rate": rate, "p99_ms": p99, "kept_up": kept_up}


def test_events_per_process_are_judged_on_the_run_with_fewest_processes() -> None:
    t = targets([run(2, 7_665), run(1, 10_219)], [lat(200, 6.1), lat(1000, 11.4)])
    assert t["throughput_judged_on_processes"] == 1
    assert t["throughput_met"] is True
    assert t["latency_met"] is True
    assert targets([run(1, 9_999)], [])["throughput_met"] is False


def test_latency_is_missed_when_the_run_did_not_keep_up_or_is_too_slow() -> None:
    assert targets([run(1, 12_000)], [lat(1000, 150.0)])["latency_met"] is False
    assert targets([run(1, 12_000)], [lat(1000, 20.0, kept_up=False)])["latency_met"] is False


def test_what_was_not_run_is_not_measured_rather_than_missed() -> None:
    t = targets([run(1, None)], [lat(200, 5.0)])
    assert t["throughput_met"] is None and t["throughput_judged_on_processes"] is None
    assert t["latency_met"] is None  # no run at the target rate
    result = {
        "machine": {"cpu_model": "cpu", "cores": 2},
        "watchlist": {"entries": 10},
        "git_sha": "abc",
        "throughput": [],
        "latency": [],
        "targets": targets([], []),
    }
    assert "per process (judged on - process(es)): not measured" in table(result)
    assert "at 1000/s: not measured" in table(result)
