# The commands of the README's Quick start, the end-to-end target and benchmarks. All are idempotent.
.PHONY: setup demo test test-e2e bench

setup:
	@scripts/setup.sh

demo: setup
	@.venv/bin/python -m testbed.rundemo

test: setup
	.venv/bin/pytest -m "not e2e"

# End to end against a real Prefect server, worker and headless Chromium, and `make demo` itself (slow).
test-e2e: setup
	.venv/bin/pytest -m e2e

bench: setup
	.venv/bin/python benchmarks/bench_registry.py
	.venv/bin/python benchmarks/bench_latency.py
	.venv/bin/python benchmarks/bench_cluster.py
	.venv/bin/python benchmarks/bench_git.py
	.venv/bin/python benchmarks/bench_plan.py
	.venv/bin/python benchmarks/bench_history.py
	.venv/bin/python benchmarks/bench_seen.py
	.venv/bin/python benchmarks/bench_sweep.py
	.venv/bin/python benchmarks/bench_cli.py
	.venv/bin/python benchmarks/bench_memory.py
