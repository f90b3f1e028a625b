#!/bin/sh
# Debian's Chromium for the app's browser test (tests/test_app.py), installed only when missing;
# playwright drives it (its own browser download is never used). `make test` runs this.
# Without root or apt-get it says so and exits 0: the browser test is then skipped, with the reason.
# Under CI (CI=true) a Chromium that cannot be installed is an error, so CI never skips that test.
set -u
found() { [ -n "${LLDIFF_CHROMIUM:-}" ] || command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }
found && exit 0

give_up() {
    echo "install_chromium.sh: $1; the browser test will be skipped (or set LLDIFF_CHROMIUM to a Chromium)" >&2
    [ "${CI:-}" = "true" ] && exit 1
    exit 0
}
command -v apt-get >/dev/null 2>&1 || give_up "no apt-get to install Debian's chromium with"
[ "$(id -u)" = 0 ] || give_up "not root: run 'sudo apt-get install chromium'"

echo "install_chromium.sh: installing Debian's chromium" >&2
export DEBIAN_FRONTEND=noninteractive
# A fresh machine's package lists may be empty or stale: update once and try again.
apt-get install -y -q chromium >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; } ||
    give_up "apt-get could not install chromium"
found || give_up "chromium installed, but not on the PATH"
