"""watch entries remember the version they were retro-hunted at

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07 22:10:00

A new or changed entry waits for a retro-hunt while `hunted_at` differs from `updated_at`;
the correlators take the waiting entries from the database, so a change made while every
correlator was down, or whose announcement was lost, or whose hunt was cut short, is still
hunted. Entries that exist at the upgrade were handled by the correlators before it: they are
marked hunted.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import shared.store.types

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING = "hunted_at IS NULL OR hunted_at <> updated_at"


def upgrade() -> None:
    with op.batch_alter_table("watch_entry", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "hunted_at",
                shared.store.types.UtcDateTime(timezone=True),
                nullable=True,
                comment="The updated_at the entry was last retro-hunted at; NULL: never. The "
                "entry waits for a retro-hunt while it differs from updated_at.",
            )
        )
    op.execute("UPDATE watch_entry SET hunted_at = updated_at")
    op.create_index(
        "ix_watch_entry_hunt_pending",
        "watch_entry",
        ["id"],
        unique=False,
        postgresql_where=sa.text(PENDING),
        sqlite_where=sa.text(PENDING),
    )


def downgrade() -> None:
    op.drop_index("ix_watch_entry_hunt_pending", table_name="watch_entry")
    with op.batch_alter_table("watch_entry", schema=None) as batch_op:
        batch_op.drop_column("hunted_at")
