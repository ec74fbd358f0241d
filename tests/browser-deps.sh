#!/usr/bin/env bash
# The browser test's system packages (tests/test_ui.py): Debian's chromium and chromium-driver.
# A no-op when both are installed; otherwise installs them with apt (as root, or through sudo).
#   tests/browser-deps.sh        # `make test` runs it first
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "tests/browser-deps.sh: no apt-get here; install chromium and its chromedriver (/usr/bin/chromium, /usr/bin/chromedriver) for tests/test_ui.py" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver
