#!/bin/sh
# Installs Debian's headless-capable Chromium for the browser test of the report (idempotent).
# Prints the browser's path on success; exits non-zero with the reason when it cannot install.
set -eu

for name in chromium chromium-browser; do
    if command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
        exit 0
    fi
done

if [ "$(id -u)" -ne 0 ]; then
    echo "chromium is not installed and installing it needs root (apt-get install chromium)" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium is not installed and this system has no apt-get to install it" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core; } >&2; then
    echo "apt-get could not install chromium (no package repository reachable?)" >&2
    exit 1
fi
command -v chromium
