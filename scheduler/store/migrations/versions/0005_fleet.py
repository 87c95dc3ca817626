"""Fleet: alarms and their log, maintenance silences, the notification outbox (scheduler/fleet/models.py).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('fleet_alarms',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('source', sa.String(length=200), nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('gateway_id', sa.String(length=64), nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=True),
    sa.Column('severity', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('message', sa.String(length=2000), nullable=False),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.Column('first_seen', sa.BigInteger(), nullable=False),
    sa.Column('last_seen', sa.BigInteger(), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('acknowledged', sa.Boolean(), nullable=False),
    sa.Column('ack_by', sa.String(length=200), nullable=True),
    sa.Column('ack_at', sa.BigInteger(), nullable=True),
    sa.Column('ack_note', sa.String(length=2000), nullable=True),
    sa.Column('cleared_at', sa.BigInteger(), nullable=True),
    sa.Column('cleared_by', sa.String(length=200), nullable=True),
    sa.Column('clear_note', sa.String(length=2000), nullable=True),
    sa.Column('notified', sa.Boolean(), nullable=False),
    sa.Column('silenced', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('fleet_alarms', schema=None) as batch_op:
        batch_op.create_index('ix_fleet_alarms_gateway', ['gateway_id', 'status'], unique=False)
        batch_op.create_index('ix_fleet_alarms_key', ['source', 'type', 'status'], unique=False)
        batch_op.create_index('ix_fleet_alarms_status', ['status', 'last_seen'], unique=False)

    op.create_table('fleet_notifications',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('target', sa.String(length=300), nullable=False),
    sa.Column('subject', sa.String(length=300), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('alarm_ids', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('next_at', sa.BigInteger(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('last_error', sa.String(length=500), nullable=True),
    sa.Column('sent_at', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('fleet_notifications', schema=None) as batch_op:
        batch_op.create_index('ix_fleet_notifications_due', ['state', 'next_at'], unique=False)

    op.create_table('fleet_silences',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('gateway_id', sa.String(length=64), nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=True),
    sa.Column('types', sa.JSON(), nullable=True),
    sa.Column('starts_at', sa.BigInteger(), nullable=False),
    sa.Column('ends_at', sa.BigInteger(), nullable=False),
    sa.Column('reason', sa.String(length=500), nullable=True),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('ended_early_at', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('fleet_silences', schema=None) as batch_op:
        batch_op.create_index('ix_fleet_silences_end', ['ends_at'], unique=False)

    op.create_table('fleet_alarm_log',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('alarm_id', sa.Integer(), nullable=False),
    sa.Column('at', sa.BigInteger(), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=True),
    sa.Column('note', sa.String(length=2000), nullable=True),
    sa.ForeignKeyConstraint(['alarm_id'], ['fleet_alarms.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('fleet_alarm_log', schema=None) as batch_op:
        batch_op.create_index('ix_fleet_alarm_log_alarm', ['alarm_id', 'id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('fleet_alarm_log', schema=None) as batch_op:
        batch_op.drop_index('ix_fleet_alarm_log_alarm')

    op.drop_table('fleet_alarm_log')
    with op.batch_alter_table('fleet_silences', schema=None) as batch_op:
        batch_op.drop_index('ix_fleet_silences_end')

    op.drop_table('fleet_silences')
    with op.batch_alter_table('fleet_notifications', schema=None) as batch_op:
        batch_op.drop_index('ix_fleet_notifications_due')

    op.drop_table('fleet_notifications')
    with op.batch_alter_table('fleet_alarms', schema=None) as batch_op:
        batch_op.drop_index('ix_fleet_alarms_status')
        batch_op.drop_index('ix_fleet_alarms_key')
        batch_op.drop_index('ix_fleet_alarms_gateway')

    op.drop_table('fleet_alarms')
