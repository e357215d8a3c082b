"""The benchmark: bench/run.py, bench/hub.py, bench/neighbours.py and bench/dasklane.py (entry points),
bench/systems.py (what is measured), bench/clients.py (the client side), bench/noisy.py (the noisy
neighbour's victim and neighbour clients), bench/servers.py (echo servers, the Python reactor),
bench/processes.py (starting and stopping them all), bench/report.py (tables, JSON, plot),
bench/common.py (shared pieces) and bench/handlers_bench.py (bench-only handlers)."""
