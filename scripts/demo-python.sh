#!/usr/bin/env bash
# `make demo`, Python part: examples/python/pipeline.py on a fresh two-node cluster of this host.
# Starts a master and a worker node (each with `--ports auto` and its own folder under a temporary
# session folder), runs the pipeline as a driver on the master node with the Python environment's
# interpreter (the package's function processes run with that same interpreter), and stops both
# nodes whatever happens (an EXIT trap), then removes the folder.
#   YR_BIN    the yr binary (default: target/release/yr)
#   YR_PYENV  the virtual environment holding the package (default: ~/.cache/yr/py, the one
#             scripts/python-env.sh builds for `make demo` and `make test`)
# Extra arguments go to pipeline.py (e.g. --size-mib 64 --rounds 2).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
yr=${YR_BIN:-$here/target/release/yr}
env=${YR_PYENV:-$HOME/.cache/yr/py}
py=$env/bin/python
[ -x "$yr" ] || { echo "demo-python: no yr binary at $yr (cargo build --release)" >&2; exit 1; }
[ -x "$py" ] || { echo "demo-python: no Python environment at $env (scripts/python-env.sh)" >&2; exit 1; }

dir=$(mktemp -d "${TMPDIR:-/tmp}/yr-pydemo-XXXXXX")
stop() {
  local rc=$?
  trap - EXIT INT TERM
  echo "== stopping the cluster (worker, then master)"
  "$yr" stop --force --session-dir "$dir/worker" >/dev/null 2>&1 || true
  "$yr" stop --force --session-dir "$dir/master" >/dev/null 2>&1 || true
  rm -rf "$dir"
  exit "$rc"
}
trap stop EXIT INT TERM

node_opts=(--ports auto --shm-size 1024MiB --prefault-shm --cpu 2000)
echo "== Python: a pipeline of numpy arrays over two nodes (examples/python/pipeline.py)"
echo "   \$ yr start --master ${node_opts[*]}"
"$yr" start --master "${node_opts[@]}" --session-dir "$dir/master" >"$dir/master.out" 2>&1 \
  || { cat "$dir/master.out" >&2; exit 1; }
master=$("$py" -c 'import json, sys; print(json.load(open(sys.argv[1]))["master_address"])' \
  "$dir/master/session.json")
token=$("$yr" token --join --session-dir "$dir/master")
echo "   \$ yr start --worker --master-address $master --join-token \$(yr token --join) ${node_opts[*]}"
"$yr" start --worker --master-address "$master" --join-token "$token" "${node_opts[@]}" \
  --session-dir "$dir/worker" \
  >"$dir/worker.out" 2>&1 || { cat "$dir/worker.out" >&2; exit 1; }
echo "   \$ YR_SESSION=<master session> $py examples/python/pipeline.py $*"
YR_SESSION="$dir/master" "$py" "$here/examples/python/pipeline.py" "$@" | sed 's/^/     /'
