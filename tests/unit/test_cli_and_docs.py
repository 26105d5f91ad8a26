from pathlib import Path

import pytest

from services import cli
from shared.contract_docs import render_mqtt_md, render_schema_files

pytestmark = pytest.mark.shared
DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_help_lists_every_required_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in ("edge", "correlator", "api", "demo", "eval", "bench", "db"):
        assert f"\n    {name}" in out


@pytest.mark.parametrize("name", [c.name for c in cli.COMMANDS])
def test_every_subcommand_has_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = cli.main([name, "--help"])
    except SystemExit as exc:
        code = exc.code  # argparse exits after printing help
    assert code == 0
    assert capsys.readouterr().out.strip()


def test_unbuilt_subcommand_says_so_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    unbuilt = [c for c in cli.COMMANDS if c.target is None]
    assert unbuilt, "no unbuilt command left: delete this test"
    assert cli.main([unbuilt[0].name]) == cli.NOT_BUILT_EXIT
    assert "not built yet" in capsys.readouterr().err


def test_mqtt_doc_matches_the_code() -> None:
    assert (DOCS / "mqtt.md").read_text() == render_mqtt_md(), "run `platewatch docs`"


def test_configuration_doc_matches_the_settings() -> None:
    from services.docs import render_configuration_md

    assert (DOCS / "configuration.md").read_text() == render_configuration_md(), (
        "run `platewatch docs`"
    )


def test_schema_files_match_the_code() -> None:
    for filename, text in render_schema_files().items():
        assert (DOCS / "schemas" / filename).read_text() == text, (
            f"{filename}: run `platewatch docs`"
        )
