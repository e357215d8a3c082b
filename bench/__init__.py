"""The benchmark (bench/run.py) and its bench-only handlers (bench/handlers_bench.py)."""
