# The two commands of the README's Quick start, plus benchmarks. All are idempotent.
.PHONY: setup demo test bench

setup:
	@scripts/setup.sh

demo: setup
	@.venv/bin/python -m flows.demo

test: setup
	.venv/bin/pytest

bench: setup
	.venv/bin/python benchmarks/bench_registry.py
	.venv/bin/python benchmarks/bench_cluster.py
	.venv/bin/python benchmarks/bench_git.py
	.venv/bin/python benchmarks/bench_plan.py
	.venv/bin/python benchmarks/bench_sweep.py
	.venv/bin/python benchmarks/bench_cli.py
	.venv/bin/python benchmarks/bench_memory.py
