"""bench: workload traces, replays and benchmarks for the schedd scheduling core."""
