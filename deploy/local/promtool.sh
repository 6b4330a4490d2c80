#!/bin/sh
# promtool without installing (or starting) Prometheus.
#
#   deploy/local/promtool.sh check rules deploy/prometheus/alerts.yml
#   deploy/local/promtool.sh test rules deploy/prometheus/alerts_test.yml
#   deploy/local/promtool.sh check config deploy/prometheus/prometheus.yml
#   deploy/local/promtool.sh --path          # print the binary's path (fetching it if needed)
#
# Order: $PROMTOOL if set; `promtool` on PATH; the cached copy in
# ${XDG_CACHE_HOME:-~/.cache}/herald/promtool/; otherwise Debian 12's `prometheus` package is
# fetched with `apt-get download` (no install, no maintainer scripts, no server started) and
# unpacked there with `dpkg-deb -x`. Needs apt access; runs `apt-get update` once if the
# package lists are missing. Exits non-zero with a message on stderr when it cannot.
set -eu

CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/herald/promtool"
BIN="$CACHE/usr/bin/promtool"

die() { echo "promtool.sh: $*" >&2; exit 1; }

find_promtool() {
    if [ -n "${PROMTOOL:-}" ]; then
        [ -x "$PROMTOOL" ] || die "PROMTOOL=$PROMTOOL is not executable"
        echo "$PROMTOOL"; return
    fi
    if command -v promtool >/dev/null 2>&1; then command -v promtool; return; fi
    if [ -x "$BIN" ]; then echo "$BIN"; return; fi
    fetch
    echo "$BIN"
}

fetch() {
    command -v apt-get >/dev/null 2>&1 || die "promtool not found and apt-get is unavailable: install Prometheus' promtool or set PROMTOOL"
    command -v dpkg-deb >/dev/null 2>&1 || die "promtool not found and dpkg-deb is unavailable: install promtool or set PROMTOOL"
    mkdir -p "$CACHE"
    work=$(mktemp -d "$CACHE/.fetch.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    # As root, apt drops privileges to _apt, which cannot write to a private temp dir.
    sandbox=""
    [ "$(id -u)" = 0 ] && sandbox="-o APT::Sandbox::User=root"
    echo "promtool.sh: fetching Debian's prometheus package into $CACHE" >&2
    # shellcheck disable=SC2086
    if ! (cd "$work" && timeout 60 apt-get download $sandbox -q prometheus >"$work/apt.log" 2>&1); then
        if [ "$(id -u)" = 0 ]; then
            echo "promtool.sh: apt-get download failed; running apt-get update once" >&2
            timeout 90 apt-get update -q >"$work/update.log" 2>&1 \
                || die "apt-get update failed: $(tail -n 3 "$work/update.log")"
            # shellcheck disable=SC2086
            (cd "$work" && timeout 60 apt-get download $sandbox -q prometheus >"$work/apt.log" 2>&1) \
                || die "apt-get download prometheus failed: $(tail -n 3 "$work/apt.log")"
        else
            die "apt-get download prometheus failed (not root, so no apt-get update): $(tail -n 3 "$work/apt.log")"
        fi
    fi
    deb=$(ls "$work"/prometheus_*.deb 2>/dev/null | head -n 1)
    [ -n "$deb" ] || die "apt-get download left no prometheus_*.deb"
    dpkg-deb -x "$deb" "$work/root" || die "dpkg-deb -x $deb failed"
    [ -x "$work/root/usr/bin/promtool" ] || die "$deb has no usr/bin/promtool"
    mkdir -p "$CACHE/usr/bin"
    # Keep only promtool (the package also holds the server and its web assets).
    mv "$work/root/usr/bin/promtool" "$BIN.tmp" && mv "$BIN.tmp" "$BIN"
    basename "$deb" >"$CACHE/SOURCE"
    "$BIN" --version >/dev/null 2>&1 || die "$BIN does not run"
}

if [ "${1:-}" = "--path" ]; then
    find_promtool
    exit 0
fi
PROMTOOL_BIN=$(find_promtool)
exec "$PROMTOOL_BIN" "$@"
