#!/usr/bin/env bash
# `systemd-analyze verify` of the packaged unit. verify needs ExecStart's binary to exist,
# so the unit is checked as a copy that runs BINARY instead of /usr/bin/corepost; and verify
# exits 0 on unknown keys and bad values (it only prints them), so any message fails here.
# Usage: scripts/verify-unit.sh packaging/systemd/corepost.service target/release/corepost
set -euo pipefail
unit=${1:?usage: $0 UNIT BINARY}
binary=$(realpath "${2:?usage: $0 UNIT BINARY}")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s#/usr/bin/corepost#$binary#g" "$unit" >"$tmp/$(basename "$unit")"
out=$(systemd-analyze verify "$tmp/$(basename "$unit")" 2>&1) || { echo "$out" >&2; exit 1; }
if [ -n "$out" ]; then
    echo "verify-unit: systemd-analyze verify $unit:" >&2
    echo "$out" >&2
    exit 1
fi
echo "verify-unit: $unit verified"
