"""Scaling: the autoscaler's lease and loop, the KPA decision, the scale task."""
