# shellcheck shell=bash
#
# scripts/lib/s3server.sh — the S3 server of the [storage] tests (tests/it/s3.rs): s3s-fs,
# which serves S3 (signature checks, multipart uploads, aborts, object metadata, deletes) on a
# directory.  Source it after lib/pgversions.sh, then:
#
#     s3_ensure_installed     # exports PG_GROUPDUMP_S3S_FS
#
# Built once with `cargo install s3s-fs@$S3S_FS_VERSION --features binary --locked` (later
# versions need a newer rustc) into $PG_GROUPDUMP_CACHE/s3s-fs (default
# /var/cache/pg_groupdump as root); a cached binary is used when `s3s-fs --version` names
# that version.  The tests start one server per test on a free loopback port.

if [[ -n "${_S3SERVER_SH_LOADED:-}" ]]; then
    return 0
fi
_S3SERVER_SH_LOADED=1

S3S_FS_VERSION=0.14.1

s3_ensure_installed() {
    local root bin
    root="$(_pgv_cache_root)/s3s-fs"
    bin="$root/bin/s3s-fs"
    if [[ "$("$bin" --version 2>/dev/null)" != "s3s-fs $S3S_FS_VERSION" ]]; then
        printf '[s3server] building s3s-fs %s into %s (once)\n' "$S3S_FS_VERSION" "$root" >&2
        mkdir -p "$root" || return 1
        cargo install "s3s-fs@$S3S_FS_VERSION" --features binary --locked --root "$root" \
            || { printf '[s3server] error: cargo install s3s-fs failed\n' >&2; return 1; }
    fi
    PG_GROUPDUMP_S3S_FS=$bin
    export PG_GROUPDUMP_S3S_FS
}
