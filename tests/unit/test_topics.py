import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared import topics
from shared.errors import TopicError

pytestmark = pytest.mark.shared
slugs = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True).filter(
    lambda s: s not in topics.RESERVED_SLUGS
)


@given(site=slugs, camera=slugs)
def test_plate_topic_round_trips(site: str, camera: str) -> None:
    parsed = topics.parse_plate_topic(topics.plate_topic(site, camera))
    assert (parsed.site, parsed.camera) == (site, camera)


@given(site=slugs, node=slugs)
def test_status_topic_round_trips(site: str, node: str) -> None:
    parsed = topics.parse_status_topic(topics.status_topic(site, node, root="r"), root="r")
    assert (parsed.site, parsed.node) == (site, node)


def test_alert_topic_round_trips_every_severity() -> None:
    for severity in topics.SEVERITIES:
        t = topics.alert_topic("depot-3", severity)
        assert t == f"platewatch/v1/alerts/depot-3/{severity}"
        assert topics.parse_alert_topic(t) == topics.AlertTopic("depot-3", severity)


def test_decision_and_command_topics_round_trip() -> None:
    assert topics.parse_decision_topic(topics.decision_topic("s1", "gate-a")).gate == "gate-a"
    assert topics.parse_command_topic(topics.command_topic("s1", "n1")).node == "n1"
    assert topics.parse_deadletter_topic(topics.deadletter_topic("correlator")) == "correlator"


def test_plate_topic_matches_documented_scheme() -> None:
    assert topics.plate_topic("north", "cam-1") == "platewatch/v1/north/cam-1/plate"
    assert topics.status_topic("north", "edge-1") == "platewatch/v1/north/edge-1/status"


@pytest.mark.parametrize(
    "topic",
    [
        "platewatch/v1/north/cam-1/status",
        "platewatch/v2/north/cam-1/plate",
        "other/v1/north/cam-1/plate",
        "platewatch/v1/north/plate",
        "platewatch/v1/alerts/cam-1/plate",
        "platewatch/v1/North/cam-1/plate",
        "platewatch/v1/north/cam-1/plate/extra",
    ],
)
def test_parse_plate_topic_rejects_other_shapes(topic: str) -> None:
    with pytest.raises(TopicError):
        topics.parse_plate_topic(topic)


@pytest.mark.parametrize("bad", ["", "Upper", "has space", "a/b", "+", "#", "alerts", "x" * 64])
def test_plate_topic_refuses_bad_or_reserved_slug(bad: str) -> None:
    with pytest.raises(TopicError, match="site"):
        topics.plate_topic(bad, "cam")


def test_alert_topic_refuses_unknown_severity() -> None:
    with pytest.raises(TopicError, match="severity"):
        topics.alert_topic("north", "urgent")


def test_shared_subscription_wraps_and_parses_filter() -> None:
    sub = topics.shared_subscription("correlator", topics.plate_filter("r"))
    assert sub == "$share/correlator/r/v1/+/+/plate"
    assert topics.parse_shared_subscription(sub) == ("correlator", "r/v1/+/+/plate")
    with pytest.raises(TopicError):
        topics.parse_shared_subscription("r/v1/+/+/plate")
    with pytest.raises(TopicError):
        topics.shared_subscription("bad/group", "x")
