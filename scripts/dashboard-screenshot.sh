#!/usr/bin/env bash
# A PNG of a running cluster's dashboard, for the README: headless Chromium opens the one-time
# login URL of `yr dashboard --print` (which logs it in: a session cookie, kept in a throwaway
# profile), then opens the page asked for in that profile, lets it refresh a few times, checks
# that it shows the app (not the login form) and saves the window.
#
#   scripts/dashboard-screenshot.sh [SESSION_DIR] [OUT]
#
#   SESSION_DIR  the master node's session folder (default: the latest session of this user)
#   OUT          where the PNG goes (default: docs/dashboard.png)
#   PAGE         which page: overview, nodes, functions, instances, objects, masters (default:
#                nodes, every node's state and usage plots)
#   YR_BIN       the yr binary (default: target/release/yr, else target/debug/yr)
#   YR_CHROMIUM  the browser (default: chromium on PATH; `make test-deps` installs it)
#   SETTLE_MS    how long (virtual time) the page runs before the shot (default: 8000)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
session=${1:-}
out=${2:-$here/docs/dashboard.png}
settle=${SETTLE_MS:-8000}
page=${PAGE:-nodes}
case "$page" in
  overview|nodes|functions|instances|objects|masters) ;;
  *) echo "dashboard-screenshot: unknown PAGE $page (overview, nodes, functions, instances, objects, masters)" >&2; exit 1 ;;
esac

yr=${YR_BIN:-}
if [ -z "$yr" ]; then
  for b in "$here/target/release/yr" "$here/target/debug/yr"; do
    if [ -x "$b" ]; then yr=$b; break; fi
  done
fi
[ -n "$yr" ] && [ -x "$yr" ] || { echo "dashboard-screenshot: no yr binary (cargo build --bin yr, or set YR_BIN)" >&2; exit 1; }

chromium=${YR_CHROMIUM:-$(command -v chromium || true)}
[ -n "$chromium" ] || { echo "dashboard-screenshot: chromium not found; \`make test-deps\` installs it" >&2; exit 1; }

session_args=()
[ -n "$session" ] && session_args=(--session-dir "$session")
url=$("$yr" dashboard --print "${session_args[@]}") \
  || { echo "dashboard-screenshot: yr dashboard --print failed (is a master node running?)" >&2; exit 1; }
url=$(printf '%s\n' "$url" | grep -m1 -o 'https\?://[^[:space:]]*' || true)
[ -n "$url" ] || { echo "dashboard-screenshot: yr dashboard --print printed no URL" >&2; exit 1; }

base=${url%%/login*}

# A throwaway profile, so that nothing of the user's browser is read or changed; it holds the
# session cookie between the runs below.
profile=$(mktemp -d "${TMPDIR:-/tmp}/yr-shot-XXXXXX")
trap 'rm -rf "$profile"' EXIT
run() {
  "$chromium" --headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage \
    --hide-scrollbars --user-data-dir="$profile" --window-size=1400,900 "$@" \
    2>>"$profile/chromium.log" \
    || { cat "$profile/chromium.log" >&2; echo "dashboard-screenshot: chromium failed" >&2; exit 1; }
}
# 1. Log in (the code is accepted once; the reply sets the cookie and lands on #/overview).
run --virtual-time-budget=2000 --dump-dom "$url" >"$profile/login.html"
# 2. The page, logged in: #app shown (the page removes its `hidden`), not the login form.
# --virtual-time-budget runs the page's timers (its ~2 s refresh) in virtual time, waiting for
# its requests, before the DOM is read or the shot is taken.
run --virtual-time-budget="$settle" --dump-dom "$base/#/$page" >"$profile/page.html"
if ! grep -q '<div id="app"' "$profile/page.html" || grep -q '<div id="app"[^>]*hidden' "$profile/page.html"; then
  echo "dashboard-screenshot: the dashboard did not log in (the login URL was refused or expired?)" >&2
  grep -o '<p>[^<]*</p>' "$profile/login.html" >&2 || true
  exit 1
fi
mkdir -p "$(dirname "$out")"
rm -f "$out"
run --virtual-time-budget="$settle" --screenshot="$out" "$base/#/$page" >/dev/null
if [ ! -s "$out" ] || [ "$(head -c 4 "$out" | tail -c 3)" != "PNG" ]; then
  cat "$profile/chromium.log" >&2
  echo "dashboard-screenshot: chromium wrote no PNG to $out" >&2
  exit 1
fi
echo "$out"
