#!/usr/bin/env bash
# Installs Brain3D into ./.venv on a fresh machine (idempotent; re-runs only when pyproject.toml changes).
#   ./setup.sh          library, DVC, MLflow, test tools
#   ./setup.sh --test   the same, plus Debian's Chromium for the MLflow UI screenshot test (needs root + apt)
# Both fetch vega, vega-lite and vega-embed from npm into .cache/vega/ (gitignored) and inline them in the
# HTML template that .dvc/config names (plots.html_template), so `dvc plots show` needs no network.
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

# Offline `dvc plots show`: the three JS bundles DVC's HTML would load from a CDN, inlined in a template.
# VERSIONS is written last, so an interrupted fetch is redone on the next run.
vega_pkgs="vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0"
vega=.cache/vega
if [ "$(cat "$vega/VERSIONS" 2>/dev/null)" != "$vega_pkgs" ]; then
  if ! command -v npm >/dev/null && [ "${1:-}" = "--test" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null) || true
  fi
  mkdir -p "$vega"
  tmp=$(mktemp -d)
  # shellcheck disable=SC2086  # word splitting of the package list is intended
  if command -v npm >/dev/null && (cd "$tmp" && npm pack --silent $vega_pkgs >/dev/null 2>&1); then
    for pkg in vega vega-lite vega-embed; do
      tar -xzOf "$tmp"/"$pkg"-[0-9]*.tgz "package/build/$pkg.min.js" | grep -v '^//# sourceMappingURL=' > "$vega/$pkg.min.js"
    done
    {
      printf '<!DOCTYPE html>\n<html>\n<head>\n    {refresh_tag}\n    <meta charset="utf-8">\n    <title>DVC Plot</title>\n'
      printf '    <!-- %s inlined by setup.sh: this page loads nothing from the network -->\n' "$vega_pkgs"
      for pkg in vega vega-lite vega-embed; do
        printf '    <script type="text/javascript">\n'
        cat "$vega/$pkg.min.js"
        printf '\n    </script>\n'
      done
      printf '    <style>\n        table { border-spacing: 15px; }\n    </style>\n</head>\n<body>\n    {plot_divs}\n</body>\n</html>\n'
    } > "$vega/template.html.tmp"
    mv "$vega/template.html.tmp" "$vega/template.html"
    echo "$vega_pkgs" > "$vega/VERSIONS"
  else
    echo "setup.sh: could not fetch $vega_pkgs with npm; \`dvc plots show\` will load them from a CDN" >&2
    [ -f "$vega/template.html" ] || printf '<!DOCTYPE html>\n<html>\n<head>\n{refresh_tag}\n<title>DVC Plot</title>\n{scripts}\n</head>\n<body>\n{plot_divs}\n</body>\n</html>\n' > "$vega/template.html"
  fi
  rm -rf "$tmp"
fi
