#!/usr/bin/env bash
# Installs everything the tests need on a fresh machine (Debian packages, the project and its
# test dependencies, the JupyterLab extension build), then runs the linters and the whole suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || need_apt+=(postgresql)
command -v chromium >/dev/null || need_apt+=(chromium)
command -v git >/dev/null || need_apt+=(git)
# Spark (pyspark) needs Java 17 or newer
command -v java >/dev/null || need_apt+=(default-jre-headless)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
# Debian starts a cluster on install; the tests run their own servers.
if command -v pg_lsclusters >/dev/null && [ "$(id -u)" -eq 0 ]; then
  pg_lsclusters -h | while read -r ver name _; do pg_ctlcluster "$ver" "$name" stop 2>/dev/null || true; done
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'
# The JupyterLab extension's unit tests (jest): the pip install's build step ran `npm install`.
[ -d extensions/node_modules/jest ] || (cd extensions && npm ci --no-audit --no-fund)
(cd extensions && npm test --silent)
# This machine sets PYTHONDONTWRITEBYTECODE: compile once, or every import recompiles.
python3 -m compileall -q -j 2 "$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null 2>&1 || true

ruff check .
ruff format --check .
python3 -m pytest -q -p no:cacheprovider "$@"
