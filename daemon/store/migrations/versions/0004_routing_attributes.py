"""routing attributes

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('body_part_examined', sa.String(length=64), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('series_description', sa.String(length=64), nullable=False, server_default=''))

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('destinations', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('route', sa.String(length=64), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('route')
        batch_op.drop_column('destinations')

    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_column('series_description')
        batch_op.drop_column('body_part_examined')

