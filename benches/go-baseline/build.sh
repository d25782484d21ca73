#!/bin/sh
# Build the Go baseline with Debian's Go toolchain and Debian's aws-sdk-go (v1), in GOPATH mode:
# no go.mod, no module downloads; the SDK comes from /usr/share/gocode.
# Output: benches/go-baseline/go-baseline (git-ignored).
set -eu

here="$(dirname "$0")"
sdk=/usr/share/gocode/src/github.com/aws/aws-sdk-go

if ! command -v go >/dev/null 2>&1 || [ ! -d "$sdk" ]; then
    echo "installing golang-go and golang-github-aws-aws-sdk-go-dev" >&2
    if [ "$(id -u)" -eq 0 ]; then sudo=; else sudo=sudo; fi
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y golang-go golang-github-aws-aws-sdk-go-dev
fi

# GOCACHE must be writable; keep Go's default unless HOME is unusable.
if [ -z "${GOCACHE:-}" ] && [ ! -w "${HOME:-/nonexistent}" ]; then
    export GOCACHE="${TMPDIR:-/tmp}/go-baseline-gocache"
fi

GO111MODULE=off GOPATH=/usr/share/gocode go build -o "$here/go-baseline" "$here/main.go"
echo "built $here/go-baseline" >&2
