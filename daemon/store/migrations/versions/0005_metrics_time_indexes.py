"""indexes for time-window reads (metrics advance a window at a time)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from alembic import op


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_events_at', 'events', ['at'])
    op.create_index('ix_jobs_finished_at', 'jobs', ['finished_at'])
    op.create_index('ix_deliveries_sent_at', 'deliveries', ['sent_at'])


def downgrade() -> None:
    op.drop_index('ix_deliveries_sent_at', table_name='deliveries')
    op.drop_index('ix_jobs_finished_at', table_name='jobs')
    op.drop_index('ix_events_at', table_name='events')
