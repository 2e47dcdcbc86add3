"""Greenroom workers: arq jobs, the green rollout, runtimes and the reconciler."""
