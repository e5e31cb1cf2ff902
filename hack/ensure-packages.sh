#!/usr/bin/env bash
# Installs the Debian packages named on the command line when any is missing; called by
# hack/images.py (buildah, podman, mmdebstrap, ...) and the local node (containerd, runc, CNI
# plugins) in tests/support/node.py. As root it runs apt-get; otherwise it prints the exact
# `apt-get install` line and exits 1, so nothing is installed behind the user's back.
#
# Usage: hack/ensure-packages.sh PACKAGE...
set -euo pipefail

missing=()
for package in "$@"; do
  status="$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)"
  [[ "$status" == "install ok installed" ]] || missing+=("$package")
done
((${#missing[@]} == 0)) && exit 0

if ! command -v apt-get >/dev/null; then
  echo "!! missing packages: ${missing[*]}; this machine has no apt-get: install them by hand" >&2
  exit 1
fi
line="apt-get install -y --no-install-recommends ${missing[*]}"
if ((EUID != 0)); then
  echo "!! missing Debian packages; as root run:" >&2
  echo "   apt-get update && $line" >&2
  exit 1
fi
echo ">> installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# An old package index names versions the mirror no longer has: refresh once, then retry.
for attempt in 1 2 3; do
  if apt-get update -qq && $line -qq >/dev/null; then
    exit 0
  fi
  echo ".. apt-get failed (attempt $attempt); retrying in $((attempt * 5))s" >&2
  sleep $((attempt * 5))
done
echo "!! could not install: ${missing[*]}" >&2
exit 1
