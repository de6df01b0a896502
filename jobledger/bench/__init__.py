"""`jobledger bench`: the project's own benchmarks, one module per area."""
