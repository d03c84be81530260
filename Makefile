# The commands of the README's Quick start, the end-to-end target, the manual and benchmarks. All are idempotent.
.PHONY: setup demo test test-e2e docs bench

setup:
	@scripts/setup.sh

demo: setup
	@.venv/bin/python -m testbed.rundemo

# The manual is built first (a broken link or any other Sphinx warning fails the suite), then the
# import-layers contract of pyproject.toml (each pipeline stage imports only the stages below it).
test: setup docs
	.venv/bin/lint-imports --no-cache
	.venv/bin/pytest -m "not e2e"

# The manual in docs/ as a website in .build/docs/, strictly: every warning is an error.
docs: setup
	.venv/bin/sphinx-build -W --keep-going -q -b html docs .build/docs

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
	.venv/bin/python benchmarks/bench_hostile_helm.py
