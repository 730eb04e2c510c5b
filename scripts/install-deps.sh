#!/usr/bin/env bash
# Installs what `make demo` and `make test` need and is missing, on Debian
# or Ubuntu: apt packages (with sudo when not root). The Rust toolchain is
# assumed (rustup); cargo-nextest is used when present.
#
# With --test, also what only the tests need: schemathesis (from PyPI, in a
# virtual environment under $YR_TOOLS, default ~/.cache/yr), which the REST
# schema test runs against the live services, and Chromium with its
# WebDriver (apt), which the dashboard's browser test drives headless.
set -euo pipefail

for_tests=0
[ "${1:-}" = "--test" ] && for_tests=1
tools="${YR_TOOLS:-$HOME/.cache/yr}"
schemathesis_version=4.32.5

need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v make >/dev/null 2>&1 || need+=(make)
# The cluster's metadata store: yr start runs a real etcd.
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
# The demo runs the README's REST examples with curl.
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ $for_tests -eq 1 ]; then
  # The dashboard test (tests/tests/dashboard.rs) drives a headless Chromium
  # through chromedriver.
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
fi
if [ $for_tests -eq 1 ] && [ ! -x "$tools/venv/bin/st" ]; then
  command -v python3 >/dev/null 2>&1 || need+=(python3)
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
fi

if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: missing ${need[*]} and no apt-get to install them; install them by hand" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq || echo "warning: apt-get update failed; trying the existing package lists" >&2
  $sudo apt-get install -y -qq "${need[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found: install Rust with rustup (https://rustup.rs) and retry" >&2
  exit 1
fi

if [ $for_tests -eq 1 ] && [ ! -x "$tools/venv/bin/st" ]; then
  echo "installing schemathesis $schemathesis_version into $tools/venv"
  mkdir -p "$tools"
  rm -rf "$tools/venv"
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$schemathesis_version"
fi
