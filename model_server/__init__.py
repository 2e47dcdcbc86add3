"""Greenroom model server: a TEI-compatible embedding server run inside every replica."""

__version__ = "0.1.0"
