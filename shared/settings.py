"""Typed settings shared by the services, from the environment and a YAML file.

Each service defines its own settings class on `ServiceSettings` and nests these blocks.
Precedence, highest first: explicit arguments, environment (``PW_<SERVICE>_...``, nested with
``__``), the YAML file given with ``--config``, then the defaults (the embedded defaults run a
single-machine set-up: local broker, SQLite, local Redis).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from shared.errors import ConfigError


class SettingsBlock(BaseModel):
    """A nested block of settings: frozen, unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class TlsSettings(SettingsBlock):
    ca_file: Path | None = Field(default=None, description="CA bundle to verify the broker.")
    cert_file: Path | None = Field(default=None, description="Client certificate (mutual TLS).")
    key_file: Path | None = Field(default=None, description="Client private key (mutual TLS).")
    insecure: bool = Field(
        default=False, description="Skip hostname verification (testing only, never production)."
    )

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}: no such file: {path}")
        return self


class MqttSettings(SettingsBlock):
    host: str = Field(default="127.0.0.1", description="Broker host name or address.")
    port: int = Field(default=1883, ge=1, le=65535, description="Broker port (8883 for TLS).")
    protocol: Literal["5", "3.1.1"] = Field(
        default="5",
        description="MQTT version. 3.1.1 only for the demo's in-process fallback broker: "
        "no shared subscriptions, no message properties.",
    )
    client_id: str = Field(
        default="", max_length=128, description="MQTT client id; empty: derived from service."
    )
    username: str | None = Field(default=None, description="Broker user name.")
    password: SecretStr | None = Field(default=None, description="Broker password.")
    tls: TlsSettings | None = Field(default=None, description="TLS options; none: plain TCP.")
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keep-alive, seconds.")
    topic_root: str = Field(
        default="platewatch", description="First topic level; tests and tenants use their own."
    )
    reconnect_min_s: float = Field(default=0.5, gt=0, description="First reconnect delay.")
    reconnect_max_s: float = Field(default=30.0, gt=0, description="Largest reconnect delay.")
    session_expiry_s: int = Field(
        default=3600,
        ge=0,
        description="How long the broker keeps a consumer's session and queued messages offline.",
    )

    @model_validator(mode="after")
    def _delays(self) -> Self:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        return self


class DbSettings(SettingsBlock):
    url: str = Field(
        default="sqlite:///var/platewatch.db",
        description="SQLAlchemy URL: sqlite:///path or postgresql+psycopg://user@host/db.",
    )
    pool_size: int = Field(default=5, ge=1, le=100, description="Connections kept open.")
    echo: bool = Field(default=False, description="Log every SQL statement (debugging).")


class RedisSettings(SettingsBlock):
    url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Redis URL; empty: no Redis (one process only, no cross-site rules).",
    )
    key_prefix: str = Field(
        default="pw:", max_length=64, description="Prefix of every key (tests use their own)."
    )


class LogSettings(SettingsBlock):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Lowest level logged."
    )
    json_format: bool = Field(default=True, description="One JSON object per line on stderr.")


class ServiceSettings(BaseSettings):
    """Base of every service's settings; subclasses set env_prefix."""

    model_config = SettingsConfigDict(
        env_nested_delimiter="__", extra="forbid", frozen=True, yaml_file=None
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            YamlConfigSettingsSource(settings_cls),
            file_secret_settings,
        )


S = TypeVar("S", bound=ServiceSettings)


def load_settings(cls: type[S], yaml_file: Path | None = None, **overrides: Any) -> S:
    """Build settings from overrides, environment and YAML; ConfigError names the bad field."""
    if yaml_file is not None and not yaml_file.is_file():
        raise ConfigError(f"config file {yaml_file}: no such file")
    target: type[S] = cls
    if yaml_file is not None:
        config = SettingsConfigDict(**{**cls.model_config, "yaml_file": yaml_file})
        target = type(cls.__name__, (cls,), {"model_config": config, "__module__": cls.__module__})
    try:
        return target(**overrides)
    except ValidationError as exc:
        source = f" (from {yaml_file} or the environment)" if yaml_file else ""
        lines = [
            f"  {'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        ]
        raise ConfigError(f"bad {cls.__name__} settings{source}:\n" + "\n".join(lines)) from exc
    except (OSError, ValueError) as exc:  # unreadable or malformed YAML
        raise ConfigError(f"config file {yaml_file}: {exc}") from exc
