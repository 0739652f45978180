"""retention marker and queue depth samples

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('spool_purged_at', sa.DateTime(timezone=True), nullable=True))
    op.create_table('queue_samples',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('queue', sa.String(length=32), nullable=False),
    sa.Column('queued', sa.Integer(), nullable=False),
    sa.Column('running', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('queue_samples', schema=None) as batch_op:
        batch_op.create_index('ix_queue_samples_at', ['at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('queue_samples', schema=None) as batch_op:
        batch_op.drop_index('ix_queue_samples_at')
    op.drop_table('queue_samples')
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_column('spool_purged_at')
