#!/usr/bin/env bash
# Installs what `make demo` and `make test` need and is missing, on Debian
# or Ubuntu: apt packages (with sudo when not root). The Rust toolchain is
# assumed (rustup); cargo-nextest is used when present.
set -euo pipefail

need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v make >/dev/null 2>&1 || need+=(make)
# The cluster's metadata store: yr start runs a real etcd.
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)

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
