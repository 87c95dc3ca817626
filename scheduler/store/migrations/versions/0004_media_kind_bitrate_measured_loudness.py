"""media: kind, bitrate, measured loudness (loudness normalisation); nullable, rows stored before keep NULL

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 10:50:30.110159
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('media', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('bitrate_kbps', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('loudness_lufs', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('true_peak_dbtp', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('media', schema=None) as batch_op:
        batch_op.drop_column('true_peak_dbtp')
        batch_op.drop_column('loudness_lufs')
        batch_op.drop_column('bitrate_kbps')
        batch_op.drop_column('kind')
