"""Postgres access: the pool, migrations and one repository module per aggregate.

SQL lives only in this package.
"""
