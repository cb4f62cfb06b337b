#!/usr/bin/env bash
#
# scripts/package.sh — build the Debian package pg_groupdump_<version>_amd64.deb
# with dpkg-deb (no debhelper, no cargo-deb). Its package name is pg-groupdump (Debian
# package names may not contain '_'):
#
#   /usr/bin/pg_groupdump                          the release binary (stripped)
#   /usr/share/man/man1/pg_groupdump.1.gz          from `pg_groupdump man`
#   /usr/share/bash-completion/completions/pg_groupdump
#   /usr/share/zsh/vendor-completions/_pg_groupdump
#   /usr/share/fish/vendor_completions.d/pg_groupdump.fish
#   /lib/systemd/system/pg_groupdump{,@}.{service,timer}   from examples/systemd, binary in /usr/bin
#   /etc/pg_groupdump/groups.toml                  groups.toml.example, a conffile
#   /usr/share/doc/pg_groupdump/                   README.md, BENCHMARKS.md, groups.toml.example
#   postinst: creates the backup directory /var/backups/postgresql (mode 0700), owned by
#             the postgres user when there is one; otherwise owned by root, and says so.
#             Honours DPKG_ROOT (dpkg --root DIR --force-script-chrootless).
#
# Usage: scripts/package.sh [OUTDIR]     (default: target/debian)
#   PACKAGE_BINARY=PATH  package this binary instead of building the release one
#                        (`cargo build --release --locked`)
# Prints the path of the .deb on its last line.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"
OUT=${1:-$ROOT/target/debian}

die() {
    printf 'package.sh: %s\n' "$*" >&2
    exit 1
}

for tool in dpkg-deb gzip objdump; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found (apt-get install dpkg binutils gzip)"
done

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
[[ -n "$version" ]] || die "no version in Cargo.toml"
arch=amd64
[[ "$(uname -m)" == x86_64 ]] || die "builds $arch packages only, on x86_64"

binary=${PACKAGE_BINARY:-}
if [[ -z "$binary" ]]; then
    if ! command -v cargo >/dev/null 2>&1 && [[ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]]; then
        PATH=${CARGO_HOME:-$HOME/.cargo}/bin:$PATH
    fi
    cargo build --release --locked >&2
    binary=$ROOT/target/release/pg_groupdump
fi
[[ -x "$binary" ]] || die "$binary is not an executable"

stage=$(mktemp -d "${TMPDIR:-/tmp}/pg_groupdump-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
pkg=$stage/pkg
umask 022

install -D -m 0755 "$binary" "$pkg/usr/bin/pg_groupdump"
if command -v strip >/dev/null 2>&1; then
    strip --strip-unneeded "$pkg/usr/bin/pg_groupdump"
fi
bin=$pkg/usr/bin/pg_groupdump

install -d "$pkg/usr/share/man/man1"
"$bin" man | gzip -9n >"$pkg/usr/share/man/man1/pg_groupdump.1.gz"
install -d "$pkg/usr/share/bash-completion/completions" \
    "$pkg/usr/share/zsh/vendor-completions" \
    "$pkg/usr/share/fish/vendor_completions.d"
"$bin" completions bash >"$pkg/usr/share/bash-completion/completions/pg_groupdump"
"$bin" completions zsh >"$pkg/usr/share/zsh/vendor-completions/_pg_groupdump"
"$bin" completions fish >"$pkg/usr/share/fish/vendor_completions.d/pg_groupdump.fish"

install -d "$pkg/lib/systemd/system"
for unit in pg_groupdump.service pg_groupdump.timer pg_groupdump@.service pg_groupdump@.timer; do
    sed 's|/usr/local/bin/pg_groupdump|/usr/bin/pg_groupdump|g' "examples/systemd/$unit" \
        >"$pkg/lib/systemd/system/$unit"
done
if grep -q /usr/local "$pkg"/lib/systemd/system/*; then
    die "a unit still names /usr/local"
fi

install -D -m 0644 groups.toml.example "$pkg/etc/pg_groupdump/groups.toml"
install -d "$pkg/usr/share/doc/pg_groupdump"
install -m 0644 README.md BENCHMARKS.md groups.toml.example "$pkg/usr/share/doc/pg_groupdump/"

# The newest glibc symbol version the binary needs.
glibc=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n 1)
[[ -n "$glibc" ]] || die "cannot tell which glibc $bin needs"
size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)

install -d "$pkg/DEBIAN"
cat >"$pkg/DEBIAN/control" <<EOF
Package: pg-groupdump
Version: $version
Architecture: $arch
Maintainer: pg_groupdump maintainers <pg_groupdump@localhost>
Installed-Size: $size
Depends: libc6 (>= $glibc), libgcc-s1
Recommends: postgresql-client
Suggests: systemd
Section: database
Priority: optional
Description: back up PostgreSQL group by group
 Each group of related tables is dumped in its own short snapshot and lock
 window, bounded by a lock-wait timeout, and written atomically as a
 custom-format archive that stock pg_restore restores. Retention, mail on
 failure, metrics, verify and restore included.
EOF
echo /etc/pg_groupdump/groups.toml >"$pkg/DEBIAN/conffiles"
cat >"$pkg/DEBIAN/postinst" <<'EOF'
#!/bin/sh
# pg_groupdump postinst: the backup directory the example configuration and the systemd
# units use, owned by the user the units run as (postgres) when there is one. Backups are
# never removed by the package (not on remove, not on purge).
set -e
root="${DPKG_ROOT:-}"
dir="$root/var/backups/postgresql"
if [ "$1" = configure ]; then
    if [ -z "$root" ]; then
        owner=$(getent passwd postgres | cut -d: -f3,4 || true)
    else
        owner=$(awk -F: '$1 == "postgres" { print $3 ":" $4 }' "$root/etc/passwd" 2>/dev/null || true)
    fi
    if [ ! -d "$dir" ]; then
        install -d -m 0700 "$dir"
        if [ -n "$owner" ]; then
            chown "$owner" "$dir"
            echo "pg_groupdump: created $dir for the postgres user"
        else
            echo "pg_groupdump: no postgres user: created $dir owned by root; give it to the user backups run as (chown USER $dir) and set User= in the systemd unit"
        fi
    fi
    if [ -z "$root" ] && [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null 2>&1 || true
    fi
fi
exit 0
EOF
chmod 0755 "$pkg/DEBIAN/postinst"

mkdir -p "$OUT"
# gzip, not dpkg-deb's default xz: a few seconds instead of minutes on a busy machine, for a
# package about a third larger.
deb=$OUT/pg_groupdump_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zgzip -z9 --build "$pkg" "$deb" >&2
echo "$deb"
