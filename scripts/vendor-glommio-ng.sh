#!/usr/bin/env bash
# Rebuilds vendor/glommio-ng/ from the glommio-ng crate as published on crates.io plus
# corepost's patch (vendor/patches/glommio-ng-$VERSION.patch). Cargo.toml's
# `[patch.crates-io] glommio-ng = { path = "vendor/glommio-ng" }` builds corepost against it.
#
# usage: scripts/vendor-glommio-ng.sh [--check] [--unpatched DIR]
#   (none)           rewrite vendor/glommio-ng/ (commit the result)
#   --check          rebuild into a temporary directory and fail if it differs from
#                    vendor/glommio-ng/ (the committed copy is exactly crate + patch)
#   --unpatched DIR  write the published crate, trimmed the same way but without the patch,
#                    to DIR (benches/e2e/glommio-ng-ab.sh builds it as "ng unpatched")
#
# Deterministic: the same .crate (its checksum is pinned below) and the same patch give the
# same tree. What is kept of the crate: Cargo.toml (without its test, bench and example
# targets and its dev-dependencies, whose files are left out), build.rs, src/ and the READMEs.
# Needs only crates.io: the .crate comes from cargo's cache, fetched through a throw-away
# manifest when it is not there yet.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VERSION=0.12.0
# sha256 of glommio-ng-0.12.0.crate as crates.io serves it (the `checksum` cargo records).
SHA256=b8da8ae85d40efc71361e1d6b889c859c8f404a629bdfb26035f309bd059de8b
PATCH=$ROOT/vendor/patches/glommio-ng-$VERSION.patch
DEST=$ROOT/vendor/glommio-ng
MODE=write
while (($#)); do
    case $1 in
        --check) MODE=check; shift ;;
        --unpatched) MODE=unpatched; DEST=$(realpath -m "$2"); shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
find_crate() { ls "$CARGO_HOME"/registry/cache/*/glommio-ng-$VERSION.crate 2>/dev/null | head -1 || true; }
CRATE=$(find_crate)
if [[ -z $CRATE ]]; then
    # corepost's own `cargo fetch` does not download it (the [patch] replaces it), so fetch it
    # through a manifest that depends on exactly this version.
    TMP_FETCH=$(mktemp -d)
    trap 'rm -rf "$TMP_FETCH"' EXIT
    mkdir -p "$TMP_FETCH/src"
    printf '[package]\nname = "fetch-glommio-ng"\nversion = "0.0.0"\nedition = "2021"\n\n[dependencies]\nglommio-ng = "=%s"\n' \
        "$VERSION" >"$TMP_FETCH/Cargo.toml"
    : >"$TMP_FETCH/src/lib.rs"
    cargo fetch --quiet --manifest-path "$TMP_FETCH/Cargo.toml"
    CRATE=$(find_crate)
    [[ -n $CRATE ]] || { echo "glommio-ng $VERSION.crate not in $CARGO_HOME/registry/cache after cargo fetch" >&2; exit 1; }
fi
if [[ -n $SHA256 ]]; then
    echo "$SHA256  $CRATE" | sha256sum -c --quiet - || { echo "$CRATE: checksum mismatch" >&2; exit 1; }
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK" ${TMP_FETCH:+"$TMP_FETCH"}' EXIT
OUT=$WORK/glommio-ng
mkdir -p "$OUT"
tar -xzf "$CRATE" -C "$OUT" --strip-components=1 \
    "glommio-ng-$VERSION/Cargo.toml" "glommio-ng-$VERSION/build.rs" "glommio-ng-$VERSION/src" \
    "glommio-ng-$VERSION/README.md" "glommio-ng-$VERSION/README.uring_sys_iou.md"
# Drop the targets whose files are not kept, and the dev-dependencies only they use.
python3 - "$OUT/Cargo.toml" <<'EOF'
import re, sys
path = sys.argv[1]
text = open(path).read()
# Tables are separated by blank lines in cargo's normalized manifest.
blocks = re.split(r"\n(?=\[)", text)
drop = re.compile(r"^\[\[(test|bench|example)\]\]|^\[dev-dependencies[.\]]|^\[profile\.bench\]")
kept = [b for b in blocks if not drop.match(b)]
out = "\n".join(kept)
out = re.sub(r"\n{3,}", "\n\n", out)
open(path, "w").write(out if out.endswith("\n") else out + "\n")
EOF
if [[ $MODE != unpatched ]]; then
    # git apply works outside a repository too, and git is on every machine that cloned this.
    (cd "$OUT" && git apply -p1 --whitespace=nowarn "$PATCH")
fi
# Fixed modes and no stray files, whatever the umask or the patch tool left.
find "$OUT" -name '*.orig' -delete
find "$OUT" -type d -exec chmod 755 {} +
find "$OUT" -type f -exec chmod 644 {} +

case $MODE in
    check)
        if ! diff -r "$OUT" "$DEST" >"$WORK/diff"; then
            cat "$WORK/diff" >&2
            echo "vendor/glommio-ng differs from glommio-ng $VERSION + $PATCH: run scripts/vendor-glommio-ng.sh" >&2
            exit 1
        fi
        echo "vendor/glommio-ng = glommio-ng $VERSION + $(basename "$PATCH")"
        ;;
    *)
        rm -rf "$DEST"
        mkdir -p "$(dirname "$DEST")"
        cp -r "$OUT" "$DEST"
        echo "wrote $DEST"
        ;;
esac
