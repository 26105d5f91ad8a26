from __future__ import annotations

import pytest

from services.edge.eval import (
    ImageScore,
    Prediction,
    build_parser,
    edit_distance,
    normalise_text,
    overlap,
    recall_by_width,
    score_arg,
    score_image,
    summarise,
)

pytestmark = pytest.mark.edge

BOX = (100.0, 100.0, 200.0, 140.0)


def test_exact_text_on_overlapping_box_counts_as_read() -> None:
    score = score_image([("ABC123", BOX)], [Prediction("ABC123", 0.9, (105, 102, 198, 138))])
    assert (score.read, score.extra, score.wrong) == (1, 0, 0)
    assert score.char_correct == 1.0


def test_right_text_far_from_box_is_not_read_and_is_extra() -> None:
    score = score_image([("ABC123", BOX)], [Prediction("ABC123", 0.9, (400, 400, 500, 440))])
    assert (score.read, score.extra) == (0, 1)


def test_wrong_text_on_box_is_wrong_read_with_partial_char_credit() -> None:
    score = score_image([("ABC123", BOX)], [Prediction("ABC128", 0.9, BOX)])
    assert (score.read, score.wrong, score.extra) == (0, 1, 0)
    assert score.char_correct == pytest.approx(5 / 6)


def test_unreadable_label_is_not_counted_but_its_box_is_not_extra() -> None:
    score = score_image([(None, BOX)], [Prediction("XYZ", 0.5, BOX)])
    assert (score.labelled, score.extra, score.wrong) == (0, 0, 1)


def test_one_prediction_reads_at_most_one_label() -> None:
    score = score_image([("AAA", BOX), ("AAA", BOX)], [Prediction("AAA", 0.9, BOX)])
    assert score.read == 1


def test_overlap_uses_smaller_area() -> None:
    assert overlap((0, 0, 10, 10), (0, 0, 100, 100)) == 1.0
    assert overlap((0, 0, 10, 10), (5, 0, 15, 10)) == 0.5
    assert overlap((0, 0, 0, 0), (0, 0, 1, 1)) == 0.0


def test_edit_distance_counts_substitutions_insertions_deletions() -> None:
    assert edit_distance("ABC", "ABC") == 0
    assert edit_distance("ABC", "ABD") == 1
    assert edit_distance("ABC", "AB") == 1
    assert edit_distance("", "AB") == 2


def test_summarise_reports_recall_extra_reads_and_latency() -> None:
    scores = [ImageScore(1, 1, 0, 0, 1.0), ImageScore(1, 0, 2, 0, 0.5)]
    summary = summarise(scores, [4.0, 6.0])
    assert summary["exact_plate_recall"] == 0.5
    assert summary["extra_reads_per_image"] == 1.0
    assert summary["char_accuracy"] == 0.75
    assert summary["median_ms"] == 5.0


def test_normalise_text_keeps_upper_ascii_alnum() -> None:
    assert normalise_text("ab-12 ç3") == "AB123"


def test_variant_margins_parse_and_bad_ones_name_the_problem() -> None:
    assert build_parser().parse_args(
        ["d", "--out", "o", "--variants", "0.03,0.05;0.06,-0.1"]
    ).read_variants == ((0.03, 0.05), (0.06, -0.1))
    for bad in ("0.1", "a,b", "0.1,2.0"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["d", "--out", "o", "--variants", bad])


@pytest.mark.parametrize("text", ["nan", "1", "1.5", "-0.1", "inf", "half"])
def test_score_flags_refuse_what_is_not_in_the_unit_interval(text: str) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["data", "--out", "p.jsonl", "--candidate-threshold", text])


def test_score_flags_take_a_number_in_the_unit_interval() -> None:
    assert score_arg("0") == 0.0 and score_arg("0.2") == pytest.approx(0.2)
    args = build_parser().parse_args(["data", "--out", "p.jsonl", "--candidate-threshold", "0.2"])
    assert args.candidate_threshold == pytest.approx(0.2)


def test_pipeline_flags_set_only_the_options_given() -> None:
    from services.edge.eval import pipeline_option_values, pipeline_overrides
    from services.edge.recognition.pipeline import PipelineOptions

    args = build_parser().parse_args(
        ["data", "--out", "p.jsonl", "--score-threshold", "0.3", "--second-precision", "auto",
         "--reader-precision", "auto"]
    )  # fmt: skip
    assert pipeline_overrides(args) == {
        "score_threshold": 0.3,
        "second_precision": "auto",
        "reader_precision": "auto",
    }
    options = PipelineOptions(second_read_below=0.0, reader_precision="f32")
    values = pipeline_option_values(options)
    assert values["second_read_below"] == 0.0 and values["second_precision"] == "auto"
    assert values["reader_precision"] == "f32"
    assert values["score_threshold"] == 0.0  # the sidecar's


def test_bench_shares_the_variant_and_cascade_cap_flags_with_eval() -> None:
    from services.edge.bench import build_parser as bench_parser
    from services.edge.eval import pipeline_overrides

    flags = ["--variants-below", "0", "--max-candidates", "2", "--variants", "0.02,0.03"]
    flags += ["--rezoom-context", "2", "--second-min-detector", "0"]
    flags += ["--second-low-detector", "0.35"]
    want = {
        "variants_below": 0.0,
        "max_candidates": 2,
        "read_variants": ((0.02, 0.03),),
        "rezoom_context": 2.0,
        "second_min_detector": 0.0,
        "second_low_detector": 0.35,
    }
    assert pipeline_overrides(build_parser().parse_args(["d", "--out", "o", *flags])) == want
    assert pipeline_overrides(bench_parser().parse_args(flags)) == want


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--second-precision", "bf16"),
        ("--reader-precision", "fp16"),
        ("--second-read-below", "1.5"),
        ("--second-min-detector", "-0.1"),
        ("--second-low-detector", "2"),
        ("--variants-below", "1"),
        ("--rezoom-context", "-1"),
        ("--rezoom-context", "0.5"),
        ("--max-candidates", "0"),
        ("--max-candidates", "1.5"),
    ],
)
def test_bad_pipeline_flags_are_refused(flag: str, value: str) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["data", "--out", "p.jsonl", flag, value])


def test_score_image_records_each_labelled_plate_width_and_whether_it_was_read() -> None:
    small, large = (0.0, 0.0, 50.0, 20.0), (200.0, 0.0, 330.0, 40.0)
    score = score_image(
        [("AB1", small), ("CD2", large), (None, (400.0, 0.0, 420.0, 10.0))],
        [Prediction("CD2", 0.9, large), Prediction("XX", 0.5, small)],
    )
    assert score.plates == ((50.0, False), (130.0, True))  # unreadable labels are not counted


def test_recall_by_width_buckets_plates_at_the_edges() -> None:
    scores = [
        ImageScore(3, 2, 0, 0, 2.0, ((69.9, False), (70.0, True), (110.0, True))),
        ImageScore(1, 1, 0, 0, 1.0, ((30.0, True),)),
    ]
    assert recall_by_width(scores) == {
        "<70": {"plates": 2, "recall": 0.5},
        "70-110": {"plates": 1, "recall": 1.0},
        ">=110": {"plates": 1, "recall": 1.0},
    }
    assert recall_by_width([]) == {}
    assert recall_by_width(scores, edges=()) == {"all": {"plates": 4, "recall": 0.75}}


@pytest.mark.parametrize("text", ["nan", "inf", "-1", "wide"])
def test_refine_below_refuses_what_is_not_a_finite_size(text: str) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["data", "--out", "p.jsonl", "--refine-below", text])


def test_refine_flags_reach_the_pipeline_options_and_can_turn_dropping_off() -> None:
    from services.edge.eval import pipeline_overrides

    args = build_parser().parse_args(
        ["data", "--out", "p.jsonl", "--refine-below", "0", "--no-refine-drops-unconfirmed"]
    )
    assert pipeline_overrides(args) == {"refine_below": 0.0, "refine_drops_unconfirmed": False}
    args = build_parser().parse_args(["data", "--out", "p.jsonl", "--refine-drops-unconfirmed"])
    assert pipeline_overrides(args) == {"refine_drops_unconfirmed": True}
    assert pipeline_overrides(build_parser().parse_args(["data", "--out", "p.jsonl"])) == {}
