#!/usr/bin/env bash
#
# scripts/test-package.sh — build the Debian package (scripts/package.sh) and install it
# into fresh, empty roots with the real dpkg (`dpkg --root DIR --force-script-chrootless`:
# dpkg's own database in DIR, the package's postinst run with DPKG_ROOT=DIR), then check
# what was installed:
#   - dpkg records it as installed, with /etc/pg_groupdump/groups.toml as a conffile;
#   - the installed binary runs (--version, man), the gzipped man page and the
#     bash/zsh/fish completions are where those tools look;
#   - `systemd-analyze verify --root DIR` accepts the installed units (ExecStart in /usr/bin);
#   - the postinst made /var/backups/postgresql (0700) owned by the root's postgres user,
#     and, in a root without one, owned by root with a message saying so;
#   - removing the package keeps the backup directory.
# Run by scripts/test.sh. As root (dpkg installs files owned by root).
#   PACKAGE_BINARY=PATH  package this binary instead of building the release one.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"

fail() {
    printf 'test-package.sh: FAIL: %s\n' "$*" >&2
    exit 1
}
[[ "$(id -u)" -eq 0 ]] || fail "run as root (dpkg --root installs files owned by root)"
command -v systemd-analyze >/dev/null 2>&1 || fail "systemd-analyze not found (apt-get install systemd)"

work=$(mktemp -d "${TMPDIR:-/tmp}/pg_groupdump-pkgtest.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$SECONDS

deb=$(scripts/package.sh "$work/out" | tail -n 1)
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
[[ "$(basename "$deb")" == "pg_groupdump_${version}_amd64.deb" ]] || fail "package named $deb"
echo "test-package.sh: built $deb ($(du -h "$deb" | cut -f1), ${SECONDS}s)"

# A root with nothing but an empty dpkg database (and, when asked, a postgres user).
new_root() {
    local dir=$1 with_postgres=$2
    mkdir -p "$dir/var/lib/dpkg/info" "$dir/var/lib/dpkg/updates" "$dir/etc"
    : >"$dir/var/lib/dpkg/status"
    : >"$dir/var/lib/dpkg/available"
    if [[ "$with_postgres" == yes ]]; then
        echo 'postgres:x:4711:4712:PostgreSQL administrator:/var/lib/postgresql:/bin/bash' >"$dir/etc/passwd"
    else
        echo 'root:x:0:0:root:/root:/bin/bash' >"$dir/etc/passwd"
    fi
}

install_into() {
    dpkg --root="$1" --force-script-chrootless --force-depends --log=/dev/null -i "$deb" 2>&1
}

# --- a root with a postgres user ---------------------------------------------
r=$work/root
new_root "$r" yes
out=$(install_into "$r") || fail "dpkg -i failed:
$out"
status=$(dpkg --root="$r" -s pg-groupdump)
grep -qx 'Status: install ok installed' <<<"$status" || fail "not installed:
$status"
grep -q '^ /etc/pg_groupdump/groups.toml [0-9a-f]\{32\}$' <<<"$status" ||
    fail "groups.toml is not a conffile:
$status"

for f in usr/bin/pg_groupdump usr/share/man/man1/pg_groupdump.1.gz \
    usr/share/bash-completion/completions/pg_groupdump \
    usr/share/zsh/vendor-completions/_pg_groupdump \
    usr/share/fish/vendor_completions.d/pg_groupdump.fish \
    lib/systemd/system/pg_groupdump.service lib/systemd/system/pg_groupdump.timer \
    lib/systemd/system/pg_groupdump@.service lib/systemd/system/pg_groupdump@.timer \
    etc/pg_groupdump/groups.toml usr/share/doc/pg_groupdump/README.md; do
    [[ -s "$r/$f" ]] || fail "$f missing or empty"
done

echo "test-package.sh: installed into $r, ${SECONDS}s"
bin=$r/usr/bin/pg_groupdump
"$bin" --version | grep -qx "pg_groupdump $version" || fail "--version: $("$bin" --version 2>&1)"
"$bin" man | grep -q '^\.TH pg_groupdump 1' || fail "pg_groupdump man prints no manual page"
gzip -dc "$r/usr/share/man/man1/pg_groupdump.1.gz" | grep -q '^\.SH SUBCOMMANDS' ||
    fail "the installed man page has no subcommands"
grep -q 'complete -F _pg_groupdump' "$r/usr/share/bash-completion/completions/pg_groupdump" ||
    fail "bash completion"
bash -n "$r/usr/share/bash-completion/completions/pg_groupdump" || fail "bash completion does not parse"
grep -q '^#compdef pg_groupdump' "$r/usr/share/zsh/vendor-completions/_pg_groupdump" || fail "zsh completion"
grep -q '^complete -c pg_groupdump' "$r/usr/share/fish/vendor_completions.d/pg_groupdump.fish" ||
    fail "fish completion"
grep -q '^ExecStart=/usr/bin/pg_groupdump ' "$r/lib/systemd/system/pg_groupdump.service" ||
    fail "the service does not run /usr/bin/pg_groupdump"

# systemd checks the units inside the root (ExecStart= resolved there), next to systemd's own
# units (sysinit.target, …), taken from the host's systemd as a root with systemd installed
# would have them. `man` pages named in Documentation= are looked up with the host's man,
# which does not see the root: that line only is left out.
units=$(dirname "$(readlink -f "$(command -v systemd-analyze)")")/../lib/systemd/system
[[ -f "$units/sysinit.target" ]] || units=/lib/systemd/system
[[ -f "$units/sysinit.target" ]] || fail "no sysinit.target of the host's systemd to verify against"
cp -an "$units/." "$r/lib/systemd/system/"
verify=$(cd "$r/lib/systemd/system" && SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --root="$r" \
    pg_groupdump.service pg_groupdump.timer pg_groupdump@main.service pg_groupdump@main.timer 2>&1 |
    grep -v "Command 'man " | grep -v '^[[:space:]]*$' || true)
[[ -z "$verify" ]] || fail "systemd-analyze verify:
$verify"

echo "test-package.sh: units verified, ${SECONDS}s"
backup=$r/var/backups/postgresql
[[ -d "$backup" ]] || fail "the postinst made no $backup"
[[ "$(stat -c '%u:%g %a' "$backup")" == "4711:4712 700" ]] ||
    fail "$backup is $(stat -c '%u:%g %a' "$backup"), not the postgres user's, 700"
grep -q "created .*/var/backups/postgresql for the postgres user" <<<"$out" || fail "postinst said: $out"

# Removing it keeps the backups (and the edited configuration until purge).
touch "$backup/keep-me"
dpkg --root="$r" --force-script-chrootless --log=/dev/null -r pg-groupdump >/dev/null 2>&1 ||
    fail "dpkg -r failed"
[[ ! -e "$bin" && -e "$backup/keep-me" ]] || fail "removal: binary left or backups gone"

# --- a root without a postgres user ------------------------------------------
r2=$work/root-nopg
new_root "$r2" no
out=$(install_into "$r2") || fail "dpkg -i (no postgres user) failed:
$out"
[[ "$(stat -c '%u %a' "$r2/var/backups/postgresql")" == "0 700" ]] ||
    fail "without a postgres user: $(stat -c '%u %a' "$r2/var/backups/postgresql")"
grep -q 'no postgres user: created .*/var/backups/postgresql owned by root' <<<"$out" ||
    fail "the postinst did not say there is no postgres user: $out"

echo "test-package.sh: ok ($(du -h "$deb" | cut -f1), $((SECONDS - start))s)"
