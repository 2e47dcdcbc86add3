"""Admission at the worker: quotas and host capacity."""
