"""Definitions shared by the API and the workers: settings, request and response models, enums.

Imports nothing from the other Greenroom packages.
"""
