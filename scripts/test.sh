#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need (Garage for the S3
# tests, nginx as the load balancer of the scale-out test, Go for the baseline's build check,
# Python's requests and zstandard for the compressed-body tests, pyarrow and DuckDB for the key
# templates' and Parquet objects' Hive tests), then runs formatting and
# lint checks, every unit and integration test (the S3 ones against a real Garage that the tests start themselves),
# checks that the benchmarks, the Go baseline and the tokio peer build, tests the Prometheus alerting rules
# (promtool, installed when missing), and builds and checks the Debian package
# (cargo-deb, installed when missing) and the systemd unit. No timed comparison runs here:
# speed is measured by benches/e2e/run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

step() { printf '\n==> %s\n' "$*"; }

step "Garage (real S3-compatible store for the S3 tests)"
bash scripts/garage.sh ensure

step "system tools the tests use (curl, openssl for tests/tls.rs certificates, mkfs.ext4 and mount for loop disks, prlimit, nginx, python3, systemd-analyze)"
missing=()
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v mkfs.ext4 >/dev/null 2>&1 || missing+=(e2fsprogs)
command -v prlimit >/dev/null 2>&1 || missing+=(util-linux)
command -v losetup >/dev/null 2>&1 || missing+=(mount)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
# systemd-analyze verifies the packaged unit (scripts/verify-unit.sh): never skipped.
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
# nginx is the load balancer of tests/scale_out.rs (which runs it from a temp dir; the
# package's own service is not needed). Debian's smallest build is nginx-light (bookworm);
# releases without it ship only nginx.
nginx_missing=0
[[ -x /usr/sbin/nginx ]] || command -v nginx >/dev/null 2>&1 || nginx_missing=1
if ((${#missing[@]})) || ((nginx_missing)); then
    sudo=""
    [[ $(id -u) -eq 0 ]] || sudo=sudo
    $sudo apt-get update
    if ((nginx_missing)); then
        if apt-cache show nginx-light >/dev/null 2>&1; then
            missing+=(nginx-light)
        else
            missing+=(nginx)
        fi
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "${missing[@]}"
fi

step "Prometheus alerting rules: promtool check rules and test rules (scripts/check-alerts.sh)"
# promtool comes with Debian's prometheus package (without its recommended node exporter);
# never skipped. On a machine with systemd the package also enables and starts a
# Prometheus server on :9090.
if ! command -v promtool >/dev/null 2>&1; then
    sudo=""
    [[ $(id -u) -eq 0 ]] || sudo=sudo
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends prometheus
fi
bash scripts/check-alerts.sh

step "vendor/glommio-ng is glommio-ng from crates.io plus vendor/patches (scripts/vendor-glommio-ng.sh --check)"
bash scripts/vendor-glommio-ng.sh --check

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --all-targets --locked -- -D warnings

step "cargo clippy with the crash points (failpoints feature)"
cargo clippy --all-targets --locked --features failpoints -- -D warnings

step "Python requests and zstandard (real clients of tests/edge_bodies.rs)"
# pip first (a pyenv or venv python); a Debian system python refuses pip installs
# (EXTERNALLY-MANAGED) or has no pip, so then Debian's own packages.
if ! python3 -c 'import requests, zstandard' 2>/dev/null; then
    python3 -m pip install --quiet requests zstandard 2>/dev/null || {
        sudo=""
        [[ $(id -u) -eq 0 ]] || sudo=sudo
        $sudo apt-get update
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y python3-requests python3-zstandard
    }
    python3 -c 'import requests, zstandard'
fi

step "Python pyarrow and DuckDB (read tests/keys.rs's and tests/parquet.rs's objects as Hive-partitioned datasets)"
# From PyPI only: Debian has neither package. A Debian system python refuses a plain pip
# install (EXTERNALLY-MANAGED), or has no pip: then pip from Debian, and the two beside the
# system's packages.
if ! python3 -c 'import pyarrow.dataset, duckdb' 2>/dev/null; then
    python3 -m pip install --quiet pyarrow duckdb 2>/dev/null || {
        sudo=""
        [[ $(id -u) -eq 0 ]] || sudo=sudo
        if ! python3 -m pip --version >/dev/null 2>&1; then
            $sudo apt-get update
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y python3-pip
        fi
        $sudo python3 -m pip install --quiet --break-system-packages pyarrow duckdb
    }
    python3 -c 'import pyarrow.dataset, duckdb'
fi

step "cargo test (unit + integration + criterion benches run once as tests)"
cargo test --locked --all-targets

step "crash matrix: the durable spool killed at every crash point (failpoints feature)"
cargo test --locked --features failpoints --test crash

step "disk errors other than a full disk: EIO injected into spool writes (failpoints feature)"
cargo test --locked --features failpoints --test disk_errors

step "benchmarks build (cargo bench --no-run)"
cargo bench --locked --no-run

step "Go baseline builds"
bash benches/go-baseline/build.sh

# Its own package and lock file (not in corepost's workspace), so nothing above builds it;
# a debug build is enough to keep it from rotting (bench.py builds it with --release).
step "tokio peer builds (benches/tokio-peer, the conventional server of benches/e2e scenario a)"
cargo build --locked --manifest-path benches/tokio-peer/Cargo.toml
step "http floor builds (benches/http-floor, corepost's network path under httparse: a measurement)"
cargo build --locked --manifest-path benches/http-floor/Cargo.toml

# Installed once per machine (cargo install compiles it: about 4 minutes on 2 busy cores).
step "cargo-deb (installed when missing)"
if ! cargo deb --version >/dev/null 2>&1; then
    time cargo install cargo-deb --locked
fi
cargo deb --version

# A release build (LTO): about 12 minutes on 2 busy cores, most of this step.
step "Debian package: cargo deb, then its files, modes and conffiles (scripts/check-deb.sh)"
time deb=$(cargo deb --locked | tail -n 1)
bash scripts/check-deb.sh "$deb"

step "systemd unit: systemd-analyze verify"
bash scripts/verify-unit.sh packaging/systemd/corepost.service target/release/corepost

step "all tests passed"
