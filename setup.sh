#!/usr/bin/env bash
# Installs Brain3D into ./.venv on a fresh machine (idempotent; re-installs only when pyproject.toml,
# requirements.lock or this script change).
#   ./setup.sh          library, DVC, MLflow, test tools
#   ./setup.sh --test   the same, plus Debian's Chromium for the browser tests (needs root + apt; fails without it)
#   ./setup.sh --relock refresh requirements.lock on purpose (below), then install from it (--test may follow)
# All of them fetch vega, vega-lite and vega-embed from npm into .cache/vega/ (gitignored) and inline them in
# the HTML template that .dvc/config names (plots.html_template), so `dvc plots show` needs no network.
#
# Every package comes from requirements.lock: the exact versions, with sha256 hashes, that the committed
# results and tests were made with (pip installs it with --require-hashes and --no-deps, then checks that the
# set is consistent). pyproject.toml keeps only ranges, for people who install the library elsewhere.
# PyTorch alone is not in the lock: it is installed first as torch==2.13.0, because that pin resolves to a
# local CPU wheel on the project's machines (its wheel differs by platform, so no one hash can be locked),
# while any looser spec would download a multi-GB CUDA build. Its own dependencies (sympy, networkx, ...)
# are in the lock.
#
# Refreshing the lock: `./setup.sh --relock` re-resolves pyproject.toml's ranges (with the test extra) to
# the newest releases of the day with pip-tools (in a throwaway venv; torch==2.13.0's CPU metadata is used,
# so no CUDA package enters the lock), prints the versions that changed and installs them. Then run the whole
# test suite (`. .venv/bin/activate && pytest`), re-run the DVC stages whose outputs may move (`dvc repro`),
# and commit requirements.lock with a note of what changed (the printed lines) and what the tests said.
# Packages dropped from the lock stay in an existing .venv: `rm -rf .venv && ./setup.sh` for a clean check.
set -euo pipefail
cd "$(dirname "$0")"
python=${PYTHON:-python3}
torch_pin=torch==2.13.0
with_test=0 relock=0
for arg in "$@"; do
  case $arg in
    --test) with_test=1 ;;
    --relock) relock=1 ;;
    *) echo "usage: ./setup.sh [--test] [--relock]" >&2; exit 2 ;;
  esac
done

lock_pins() {  # name==version, one a line
  grep -oE '^[A-Za-z0-9][A-Za-z0-9._-]*==[^ ;\\]+' requirements.lock 2>/dev/null | sort || true
}

if [ "$relock" = 1 ]; then
  tools=$(mktemp -d)
  trap 'rm -rf "$tools"' EXIT
  "$python" -m venv "$tools/venv"
  "$tools/venv/bin/python" -m pip install -q --disable-pip-version-check pip==26.3 pip-tools==7.6.2
  echo "$torch_pin" > "$tools/torch.txt"
  lock_pins > "$tools/old"
  # --unsafe-package torch: resolved (so its dependencies are locked) but left out of the file
  if ! CUSTOM_COMPILE_COMMAND="./setup.sh --relock" "$tools/venv/bin/pip-compile" --quiet --upgrade \
      --extra test --strip-extras --generate-hashes --unsafe-package torch --constraint "$tools/torch.txt" \
      --no-emit-index-url --no-emit-find-links --output-file requirements.lock pyproject.toml \
      2> "$tools/log"; then
    cat "$tools/log" >&2
    echo "setup.sh: pip-compile failed; requirements.lock is unchanged" >&2
    exit 1
  fi
  # pip-compile closes with a warning that torch is unpinned: say why instead
  sed -i '/^# WARNING: The following packages were not pinned/,$d' requirements.lock
  printf '%s\n' "# Not in this file: torch. setup.sh installs it first as $torch_pin, a wheel that differs by" \
    "# platform (the CPU build on the project's machines); its dependencies are pinned above." >> requirements.lock
  lock_pins > "$tools/new"
  changes=$(awk -F'==' 'FNR == 1 { f++ } f == 1 { old[$1] = $2; next } { new[$1] = $2 }
    END {
      for (p in new) if (!(p in old)) print "  " p " " new[p] " (new)"; else if (old[p] != new[p]) print "  " p " " old[p] " -> " new[p]
      for (p in old) if (!(p in new)) print "  " p " " old[p] " (removed)"
    }' <(echo; cat "$tools/old") <(echo; cat "$tools/new") | sort)
fi

[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.brain3d-setup
want=$(cat pyproject.toml requirements.lock setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
  "${pip[@]}" --upgrade pip
  "${pip[@]}" --no-deps "$torch_pin"
  "${pip[@]}" --no-deps --require-hashes -r requirements.lock
  # the locked setuptools builds the project itself; its build chatter is shown only if the build fails
  if ! build=$("${pip[@]}" --no-deps --no-build-isolation -e . 2>&1); then
    echo "$build" >&2
    exit 1
  fi
  if ! check=$(.venv/bin/python -m pip check 2>&1); then
    echo "$check" >&2
    echo "setup.sh: the installed packages are inconsistent (pip check); requirements.lock needs a relock" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
if [ "$with_test" = 1 ] && ! command -v chromium >/dev/null; then
  # the browser tests (MLflow UI, dvc plots) need it: without it the test suite fails, so setup fails first
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    if ! (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null); then
      echo "setup.sh: could not install Debian's chromium, which the browser tests need" >&2
      exit 1
    fi
  else
    echo "setup.sh: chromium is missing and cannot be installed here (needs root + apt-get); the browser tests need it" >&2
    exit 1
  fi
fi

# Offline `dvc plots show`: the three JS bundles DVC's HTML would load from a CDN, inlined in a template.
# VERSIONS is written last, so an interrupted fetch is redone on the next run.
vega_pkgs="vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0"
vega=.cache/vega
if [ "$(cat "$vega/VERSIONS" 2>/dev/null)" != "$vega_pkgs" ]; then
  if ! command -v npm >/dev/null && [ "$with_test" = 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
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
if [ "$relock" = 1 ]; then
  echo "setup.sh: requirements.lock refreshed; changed versions:"
  echo "${changes:-  (none)}"
  echo "Next: . .venv/bin/activate && pytest, then commit requirements.lock with a note of these changes."
fi
