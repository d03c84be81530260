#!/usr/bin/env bash
# Idempotent set-up from a fresh Debian machine: system packages, uv, and the project's .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: the registry the tests and demo run, skopeo (benchmark peer; copies images
# between formats in tests/test_real_images.py), buildah and umoci (build the images that test scans),
# htpasswd (Basic-auth tests), git (shallow-clone tests, benchmarks), and chromium with a font
# for the end-to-end tests of the Prefect UI (Playwright drives it; it never downloads a browser).
need=()
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v skopeo >/dev/null || need+=(skopeo)
command -v buildah >/dev/null || need+=(buildah)
command -v umoci >/dev/null || need+=(umoci)
command -v htpasswd >/dev/null || need+=(apache2-utils)
command -v git >/dev/null || need+=(git)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -d /usr/share/fonts/truetype/dejavu ] || need+=(fonts-dejavu-core)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing Debian packages: ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# uv manages the virtual environment from the committed lock file.
if ! command -v uv >/dev/null; then
  if [ -x "$HOME/.local/bin/uv" ]; then
    export PATH="$HOME/.local/bin:$PATH"
  else
    echo "installing uv" >&2
    python3 -m pip install --quiet --user uv 2>/dev/null \
      || python3 -m pip install --quiet --user --break-system-packages uv 2>/dev/null \
      || python3 -m pip install --quiet uv
    export PATH="$HOME/.local/bin:$PATH"
  fi
fi
# Bytecode compiled at install time: imports stay fast even where PYTHONDONTWRITEBYTECODE is set.
uv sync --frozen --quiet --compile-bytecode
