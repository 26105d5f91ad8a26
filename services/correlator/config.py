"""Correlator settings (env prefix PW_CORRELATOR_, YAML via --config). See docs/configuration.md."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from shared.settings import (
    DbSettings,
    LogSettings,
    MqttSettings,
    RedisSettings,
    ServiceSettings,
    SettingsBlock,
)


class IngestSettings(SettingsBlock):
    share_group: str = Field(
        default="correlator",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="MQTT 5 shared-subscription group; all correlator processes use the same.",
    )
    batch_max_rows: int = Field(
        default=500, ge=1, le=10_000, description="Flush at this many events."
    )
    batch_max_ms: int = Field(default=10, ge=1, le=10_000, description="Flush after this many ms.")
    batch_linger_ms: int = Field(
        default=0,
        ge=0,
        le=10_000,
        description="Flush early once no message is waiting and the batch is this old (0: at "
        "once). Batches then grow only under load; batch_max_ms/rows still cap them.",
    )
    max_inflight: int = Field(
        default=1000,
        ge=1,
        le=65_535,
        description="Unacknowledged messages the broker may send us (MQTT 5 receive maximum).",
    )
    db_retry_max_s: float = Field(
        default=10.0, gt=0, description="Longest wait between retries while the database is down."
    )
    accept_unknown_cameras: bool = Field(
        default=True,
        description="Register unseen sites/cameras on first event; false: dead-letter them.",
    )
    require_signatures: bool = Field(
        default=False,
        description="Dead-letter unsigned events from every node, not only those "
        "registered with require_signature.",
    )


class MatchSettings(SettingsBlock):
    fuzzy_max_cost: float = Field(
        default=1.0, ge=0, le=2.0, description="Default fuzzy threshold (lists may override)."
    )
    reload_interval_s: float = Field(
        default=3600.0,
        gt=0,
        description="Full reload of lists and registry even without a change message (built in "
        "the background, swapped in between batches).",
    )
    retro_hunt_days: int = Field(
        default=14,
        ge=0,
        le=365,
        description="A new or changed entry is matched against this many "
        "days of stored sightings (0: off; entries are then marked hunted unmatched).",
    )
    retro_poll_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="How often each correlator looks for entries waiting for a retro-hunt "
        "without a change message (a change message or a full reload looks at once).",
    )
    retro_hunt_share: float = Field(
        default=0.25,
        gt=0,
        le=1,
        description="Most of the time a retro-hunt may work while it has entries waiting: after "
        "each slice of work it pauses so that live ingest keeps the rest (1: no pauses). A big "
        "list import then takes longer to hunt but does not delay live alerts.",
    )


class CorrelationSettings(SettingsBlock):
    max_speed_kmh: float = Field(
        default=250.0,
        gt=0,
        description="Faster than this between two "
        "sites is impossible travel (a cloned or fake plate).",
    )
    min_distance_km: float = Field(
        default=2.0, ge=0, description="Sites closer than this never raise impossible travel."
    )
    clock_skew_s: float = Field(default=30.0, ge=0, description="Tolerated camera clock error.")
    repeat_window_s: int = Field(default=3600, ge=60, description="Window of repeated sightings.")
    repeat_min_sites: int = Field(
        default=3,
        ge=2,
        description="Distinct sites in the window that raise a repeated-sightings alert.",
    )
    repeat_min_count: int = Field(
        default=10,
        ge=2,
        description="Sightings in the window that raise a repeated-sightings alert.",
    )
    cooldown_s: int = Field(
        default=600, ge=1, description="One alert per plate, site and kind in this time."
    )
    incident_window_s: int = Field(
        default=1800,
        ge=60,
        description="Hits on one plate within this time across sites join one incident.",
    )
    gate_decision_ttl_s: int = Field(
        default=30, ge=1, description="A gate ignores a decision older than this."
    )


class RetentionSettings(SettingsBlock):
    default_days: int = Field(
        default=90,
        ge=1,
        description="Keep sightings this long unless the "
        "site says otherwise; sightings tied to alerts are kept.",
    )
    interval_s: float = Field(default=3600.0, gt=0, description="How often the retention job runs.")
    image_root: Path | None = Field(
        default=None,
        description="Folder that relative image_ref paths live under; their files are deleted "
        "with their sightings.",
    )
    privacy_key: SecretStr | None = Field(
        default=None, description="Key of the plate hash used by sites in privacy mode."
    )
    privacy_after_hours: int = Field(
        default=24,
        ge=0,
        description="Privacy mode hashes plates of sightings without a hit after this many hours.",
    )


class CorrelatorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PW_CORRELATOR_")

    instance: str = Field(
        default="correlator-1",
        pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
        description="Unique name of this process: its MQTT client id and persistent session.",
    )
    mqtt: MqttSettings = Field(default_factory=MqttSettings, description="Broker connection.")
    db: DbSettings = Field(default_factory=DbSettings, description="Database connection.")
    redis: RedisSettings = Field(default_factory=RedisSettings, description="Redis connection.")
    log: LogSettings = Field(default_factory=LogSettings, description="Logging.")
    ingest: IngestSettings = Field(
        default_factory=IngestSettings, description="Intake and batching."
    )
    matching: MatchSettings = Field(
        default_factory=MatchSettings, description="Watch-list matching."
    )
    correlation: CorrelationSettings = Field(
        default_factory=CorrelationSettings, description="Cross-site rules."
    )
    retention: RetentionSettings = Field(
        default_factory=RetentionSettings, description="Retention and privacy."
    )
