import io
import json
import logging
from pathlib import Path

import pytest
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.errors import ConfigError
from shared.logs import configure_logging
from shared.settings import MqttSettings, ServiceSettings, load_settings

pytestmark = pytest.mark.shared


class DemoSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PW_TESTSVC_")
    site_id: str = Field(default="main", pattern=r"^[a-z0-9-]+$", description="Site slug.")
    mqtt: MqttSettings = Field(default_factory=MqttSettings, description="Broker connection.")


def test_settings_come_from_yaml_and_env_overrides_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("site_id: depot\nmqtt:\n  host: broker.local\n  port: 8883\n")
    monkeypatch.setenv("PW_TESTSVC_MQTT__PORT", "1884")
    s = load_settings(DemoSettings, cfg)
    assert (s.site_id, s.mqtt.host, s.mqtt.port) == ("depot", "broker.local", 1884)


def test_settings_defaults_need_no_file() -> None:
    s = load_settings(DemoSettings)
    assert s.mqtt.host == "127.0.0.1" and s.mqtt.topic_root == "platewatch"


def test_unknown_key_stops_startup_naming_it(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("mqtt:\n  hots: typo\n")
    with pytest.raises(ConfigError, match=r"mqtt\.hots"):
        load_settings(DemoSettings, cfg)


def test_bad_value_names_field_and_missing_file_names_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("mqtt:\n  port: 70000\n")
    with pytest.raises(ConfigError, match=r"mqtt\.port"):
        load_settings(DemoSettings, cfg)
    with pytest.raises(ConfigError, match=r"nope\.yaml"):
        load_settings(DemoSettings, tmp_path / "nope.yaml")


def test_every_settings_field_is_described() -> None:
    from shared import settings as mod

    for cls in (
        mod.MqttSettings,
        mod.TlsSettings,
        mod.DbSettings,
        mod.RedisSettings,
        mod.LogSettings,
    ):
        for name, info in cls.model_fields.items():
            assert info.description, f"{cls.__name__}.{name} has no description"


def test_json_log_line_carries_extra_context() -> None:
    buf = io.StringIO()
    configure_logging("INFO", json_format=True, stream=buf)
    logging.getLogger("platewatch.test").info("watchlist hit", extra={"plate": "ABC123"})
    line = json.loads(buf.getvalue().strip())
    assert line["msg"] == "watchlist hit" and line["plate"] == "ABC123" and line["level"] == "INFO"


def test_every_service_settings_field_is_described() -> None:
    from pydantic import BaseModel

    from services.correlator.config import CorrelatorSettings

    def walk(model: type[BaseModel], path: str) -> None:
        for name, info in model.model_fields.items():
            assert info.description, f"{path}{name} has no description"
            ann = info.annotation
            for sub in (ann, *getattr(ann, "__args__", ())):
                if isinstance(sub, type) and issubclass(sub, BaseModel):
                    walk(sub, f"{path}{name}.")

    walk(CorrelatorSettings, "")
