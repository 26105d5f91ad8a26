"""Retention: delete old sightings (and their images) per site, keep those tied to alerts;
privacy mode: plates of sightings without a hit are kept only as a keyed hash."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from services.correlator.config import RetentionSettings
from shared.store import repository as repo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetentionReport:
    deleted: int
    images_deleted: int
    pseudonymised: int


def _delete_image(root: Path, ref: str) -> bool:
    path = (root / ref).resolve()
    if not path.is_relative_to(root.resolve()) or not path.is_file():
        return False  # absolute URLs, paths outside the root, already gone
    path.unlink()
    return True


def run_retention(
    sessions: sessionmaker[Session], settings: RetentionSettings, now: datetime
) -> RetentionReport:
    deleted = images = hashed = 0
    key = settings.privacy_key.get_secret_value().encode() if settings.privacy_key else None
    with sessions() as session:
        sites = [(s.id, s.retention_days, s.privacy_mode) for s in repo.sites(session)]
    for site_id, days, privacy in sites:
        before = now - timedelta(days=days or settings.default_days)
        while True:
            with sessions.begin() as session:
                refs = repo.delete_expired_sightings(session, site_id, before)
            deleted += len(refs)
            if settings.image_root is not None:
                images += sum(_delete_image(settings.image_root, r) for r in refs if r)
            if not refs:
                break
        if privacy and key is not None:
            cutoff = now - timedelta(hours=settings.privacy_after_hours)
            while True:
                with sessions.begin() as session:
                    n = repo.pseudonymise_unmatched(session, site_id, cutoff, key)
                hashed += n
                if not n:
                    break
    report = RetentionReport(deleted, images, hashed)
    log.info(
        "retention done",
        extra={"deleted": deleted, "images_deleted": images, "pseudonymised": hashed},
    )
    return report
