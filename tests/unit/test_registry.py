"""`platewatch registry`'s pure checks: each bad value names its flag."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from services.correlator.registry_cli import (
    RegistryError,
    apply_changes,
    build_parser,
    check_public_key,
    check_timezone,
    parse_location,
    slug,
)
from shared.signing import generate_private_key, public_key_b64

pytestmark = pytest.mark.correlator


def test_location_is_lat_lon_in_degrees() -> None:
    assert parse_location("52.52,13.405") == (52.52, 13.405)
    assert parse_location("-33.9, -151.2") == (-33.9, -151.2)  # spaces are accepted


@pytest.mark.parametrize("text", ["52.52", "52.52,13.4,1", "north,east", "91,0", "0,181", "nan,0"])
def test_bad_location_names_the_flag(text: str) -> None:
    with pytest.raises(RegistryError) as err:
        parse_location(text)
    assert err.value.field == "--location"


def test_timezone_must_be_an_iana_zone() -> None:
    assert check_timezone("Europe/Berlin") == "Europe/Berlin"
    for bad in ("Mars/Olympus", "CEST+2", "../etc/passwd"):
        with pytest.raises(RegistryError) as err:
            check_timezone(bad)
        assert err.value.field == "--timezone"


def test_public_key_must_be_a_raw_ed25519_key() -> None:
    key = public_key_b64(generate_private_key())
    assert check_public_key(key) == key
    for bad in ("not base64!", "AAAA", key[:-4]):
        with pytest.raises(RegistryError) as err:
            check_public_key(bad)
        assert err.value.field == "--public-key"


def test_slugs_are_those_of_topics() -> None:
    assert slug("site", "north-gate") == "north-gate"
    for bad in ("North Gate", "a/b", "+", ""):
        with pytest.raises(RegistryError) as err:
            slug("site", bad)
        assert err.value.field == "site"


def test_apply_changes_reports_only_what_changed() -> None:
    record = SimpleNamespace(name="North", timezone="UTC", latitude=None)
    changed = apply_changes(record, {"name": "North", "timezone": "Europe/Berlin", "latitude": 1.5})
    assert changed == {"timezone": ["UTC", "Europe/Berlin"], "latitude": [None, 1.5]}
    assert (record.timezone, record.latitude) == ("Europe/Berlin", 1.5)


def test_location_and_no_location_exclude_each_other() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["site", "x", "--location", "1,2", "--no-location"])


def test_retention_is_0_for_the_default_or_1_to_a_century() -> None:
    from services.correlator.registry_cli import check_retention

    assert (check_retention(0), check_retention(30), check_retention(36_500)) == (None, 30, 36_500)
    for bad in (-1, 36_501, 10**12):
        with pytest.raises(RegistryError) as err:
            check_retention(bad)
        assert err.value.field == "--retention-days"


def test_names_fit_their_columns() -> None:
    from services.correlator.registry_cli import check_name

    assert check_name("--name", "x" * 128) == "x" * 128
    with pytest.raises(RegistryError) as err:
        check_name("--actor", "x" * 129)
    assert err.value.field == "--actor"


def test_host_zone_files_are_not_zones() -> None:
    for bad in ("localtime", "posixrules", "posix/Europe/Berlin", "right/UTC", "Factory"):
        with pytest.raises(RegistryError):
            check_timezone(bad)
    assert check_timezone("UTC") == "UTC"
