# Shared set-up for scripts/demo and scripts/test: a virtualenv with the project installed, the
# local FHIR server's Node packages and, for the tests, the browser app's. Idempotent: each step is
# skipped when its inputs are unchanged.
# Sourced, not run: expects ROOT and EXTRAS to be set.
set -euo pipefail

say() { printf '==> %s\n' "$*" >&2; }

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  say "Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)"; exit 1
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  say "Node.js 20 or newer (with npm) is needed for the local FHIR server"; exit 1
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  say "Node.js 20 or newer is needed (found $(node --version))"; exit 1
fi

VENV="$ROOT/.venv"
if [ ! -x "$VENV/bin/python" ]; then
  say "Creating the virtualenv in .venv"
  "$PYTHON" -m venv "$VENV"
fi
# The exact versions CI tests come from the lock files (requirements/, made with pip-compile from
# pyproject.toml's ranges); the project itself is installed on top, without dependencies.
case "$EXTRAS" in
  test) LOCK="$ROOT/requirements/test.lock" ;;
  embedded) LOCK="$ROOT/requirements/demo.lock" ;;
  *) LOCK="$ROOT/requirements/runtime.lock" ;;
esac
stamp="$VENV/.installed-$EXTRAS"
want=$(cat "$ROOT/pyproject.toml" "$LOCK" | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  say "Installing the gateway and its dependencies ($EXTRAS, from ${LOCK#"$ROOT"/})"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -r "$LOCK"
  "$VENV/bin/python" -m pip install --quiet --no-deps -e "$ROOT"
  echo "$want" > "$stamp"
fi

# npm_ci DIR WHAT: `npm ci` in DIR unless its node_modules matches its lock file already.
npm_ci() {
  local lock
  lock=$(sha256sum "$1/package-lock.json" | cut -c1-16)
  if [ ! -f "$1/node_modules/.lock-$lock" ]; then
    say "Installing $2 (npm ci)"
    (cd "$1" && npm ci --no-audit --no-fund --loglevel=error)
    touch "$1/node_modules/.lock-$lock"
  fi
}
npm_ci "$ROOT/fixtures/upstream" "the local FHIR server"
if [ "$EXTRAS" = test ]; then
  npm_ci "$ROOT/fixtures/smart-js-app" "SMART's JavaScript client for the browser tests"
  npm_ci "$ROOT/fixtures/axe" "axe-core for the accessibility checks of the browser tests"
fi

# The browser tests (the consent screen, the patient's pages, the JavaScript client) drive
# Debian's Chromium with Playwright (never `playwright install`, which downloads its own browser
# build); they look for `chromium` on the PATH, else /usr/bin/chromium.
if [ "$EXTRAS" = test ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "Installing Debian's chromium for the browser tests"
    apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null
  else
    say "chromium is missing and cannot be installed without root: the browser tests will be skipped (in CI they fail)"
  fi
fi
