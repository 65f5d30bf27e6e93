"""Privacy: client-level DP (clipping, noise, accounting) and secure aggregation."""
