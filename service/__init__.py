"""The Greenroom API process: the control plane (tasks), the registry, accounts, the console."""
