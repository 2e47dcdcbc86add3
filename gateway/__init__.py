"""The data plane: `greenroom gateway`, routing table, upstream pool, access cache."""
