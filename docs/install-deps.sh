#!/usr/bin/env bash
# Installs the Debian packages Parallax Lab needs, if any is missing.
set -euo pipefail
pkgs="build-essential libgsl-dev libopenblas-dev libyaml-dev libsqlite3-dev sqlite3 libcmocka-dev gnuplot-nox"
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
    echo "installing:$missing"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
fi
