#!/usr/bin/env bash
# Installs Brain3D into ./.venv on a fresh machine (idempotent; re-runs only when pyproject.toml changes).
#   ./setup.sh          library, DVC, MLflow, test tools
#   ./setup.sh --test   the same, plus Debian's Chromium for the MLflow UI screenshot test (needs root + apt)
# PyTorch is installed first as torch==2.13.0: on the project's CPU machines that pin resolves to a local
# CPU wheel, while any looser spec would download a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")"
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.brain3d-setup
want=$(cat pyproject.toml setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
  "${pip[@]}" --upgrade pip
  "${pip[@]}" torch==2.13.0
  "${pip[@]}" -e ".[test]"
  echo "$want" > "$stamp"
fi
if [ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "setup.sh: could not install chromium; the MLflow UI screenshot test will be skipped" >&2
  else
    echo "setup.sh: chromium missing and no root/apt; the MLflow UI screenshot test will be skipped" >&2
  fi
fi
