#!/bin/sh
# Installs Debian's packages for a command that a test runs (idempotent):
#   scripts/install-test-tool.sh chromium   headless Chromium, for the browser test of the report
#   scripts/install-test-tool.sh pdflatex   pdfLaTeX with the standalone class and booktabs, for the
#                                           test that the printed tables compile
# Prints the command's path on success; exits 1 with the reason when it cannot install (not root,
# no apt-get, no package repository), and 2 for a tool it does not know.
set -eu

case "${1:-}" in
    # Ubuntu names its snap wrapper chromium-browser.
    chromium) names="chromium chromium-browser" packages="chromium fonts-dejavu-core" ;;
    # standalone and varwidth are in latex-extra, which brings latex-base and booktabs' latex-recommended.
    pdflatex) names="pdflatex" packages="texlive-latex-extra" ;;
    *)
        echo "usage: $0 chromium|pdflatex (got '${1:-}')" >&2
        exit 2
        ;;
esac

for name in $names; do
    if command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
        exit 0
    fi
done

if [ "$(id -u)" -ne 0 ]; then
    echo "$1 is not installed and installing it needs root (apt-get install $packages)" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "$1 is not installed and this system has no apt-get to install it (Debian packages: $packages)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# $packages is one of the fixed lists above: split into words on purpose.
# shellcheck disable=SC2086
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends $packages; } >&2; then
    echo "apt-get could not install $packages (no package repository reachable?)" >&2
    exit 1
fi
command -v "${names%% *}"
