"""The Greenroom API process: control plane, registry and gateway (DESIGN.md §1)."""
