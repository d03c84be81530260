"""What every command shares: fast help, no heavy imports before they are needed."""

from __future__ import annotations

import subprocess
import sys


def test_help_does_not_import_heavy_modules():
    code = ("import sys\nfrom flows.cli import app\n"
            "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('prefect', 'pandas', 'pyarrow', 'kubernetes', 'pygit2', 'httpx') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "HEAVY []" in r.stdout
    for cmd in ("snapshot", "plan", "sweep", "explain", "history"):
        assert cmd in r.stdout


def test_unknown_source_is_a_usage_error(tmp_path, run_cli):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("registry: {url: http://127.0.0.1:1}\n")
    r = run_cli("snapshot", "--config", cfg, "--sources", "registry,cloud")
    assert r.returncode == 2
    assert r.stderr.strip() == "regsweep: error: --sources: unknown source 'cloud' (choose from registry, kubernetes, helm, git, keeplist)"
