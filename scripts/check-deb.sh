#!/usr/bin/env bash
# Checks a corepost .deb: the files it installs (dpkg-deb -c), its conffiles, and that the
# packaged binary accepts the packaged configuration with each packaged profile it can place
# on this machine. Usage: scripts/check-deb.sh target/debian/corepost_*.deb
set -euo pipefail
deb=$(realpath "${1:?usage: $0 PACKAGE.deb}")
cd "$(dirname "$0")/.."
fail() { echo "check-deb: $*" >&2; exit 1; }

listing=$(dpkg-deb -c "$deb")
for path in \
    ./usr/bin/corepost \
    ./lib/systemd/system/corepost.service \
    ./etc/corepost/corepost.toml \
    ./etc/corepost/env \
    ./usr/share/corepost/tuning/auto.toml \
    ./usr/share/corepost/tuning/dev.toml \
    ./usr/share/corepost/tuning/two-core.toml \
    ./usr/share/corepost/tuning/bare-metal-32.example.toml \
    ./usr/share/doc/corepost/corepost-rules.yml; do
    grep -qE " ${path//./\\.}\$" <<<"$listing" || fail "$path missing from $deb"
done
# Every shipped profile, none forgotten.
for f in tuning/*.toml; do
    grep -qE " \./usr/share/corepost/tuning/$(basename "$f")\$" <<<"$listing" \
        || fail "$f not packaged"
done
# The documentation the packaged configuration points to.
for f in docs/*.md; do
    grep -qE " \./usr/share/doc/corepost/$(basename "$f")\$" <<<"$listing" \
        || fail "$f not packaged"
done
grep -qE '^-rwxr-xr-x .* \./usr/bin/corepost$' <<<"$listing" || fail "/usr/bin/corepost is not 0755"
grep -qE '^-rw------- .* \./etc/corepost/env$' <<<"$listing" || fail "/etc/corepost/env (credentials) is not 0600"

conffiles=$(dpkg-deb -I "$deb" conffiles)
for c in /etc/corepost/corepost.toml /etc/corepost/env; do
    grep -qx "$c" <<<"$conffiles" || fail "$c is not a conffile"
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dpkg-deb -x "$deb" "$tmp"
S3_BUCKET=check AWS_ACCESS_KEY_ID=check AWS_SECRET_ACCESS_KEY=check \
    "$tmp/usr/bin/corepost" check-config --config "$tmp/etc/corepost/corepost.toml" \
    --profile "$tmp/usr/share/corepost/tuning/auto.toml" >/dev/null \
    || fail "the packaged binary refuses the packaged configuration"
echo "check-deb: $deb: $(wc -l <<<"$listing") entries, files, modes and conffiles as expected"
