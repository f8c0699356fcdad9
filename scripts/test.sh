#!/usr/bin/env bash
# Set up everything, then lint, type-check and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The dashboard's browser tests drive Debian's chromium through chromedriver (selenium):
# install both when missing. Without them those tests skip, except under CI=true (they fail).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        chromium chromium-driver; } >/dev/null 2>&1 \
      || echo "warning: apt-get could not install chromium and chromium-driver" >&2
  else
    echo "warning: chromium/chromedriver missing and apt-get unusable (needs root)" >&2
  fi
fi
# The trial-store tests also run against the local PostgreSQL server; start it if it is down.
if command -v pg_ctlcluster >/dev/null 2>&1 && ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# One torch thread per process: the suite's models are small, and on a loaded 2-core machine
# a second thread only spins (a GP test took 3x as long with two).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
