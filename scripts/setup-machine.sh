#!/usr/bin/env bash
# Installs what building and testing need on a fresh Debian 12 machine, and
# nothing that is already there: the Rust components (rustfmt, clippy) and
# the Debian packages the test servers use.
set -euo pipefail

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is not installed: install a Rust toolchain (rustup) first" >&2
  exit 1
fi
if command -v rustup >/dev/null 2>&1; then
  for component in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$component" ||
      rustup component add "$component" >/dev/null
  done
fi

missing=()
command -v patchelf >/dev/null 2>&1 || true # the test servers bring their own
command -v dpkg-deb >/dev/null 2>&1 || missing+=(dpkg)
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || missing+=(debian-archive-keyring)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)             # the TLS test server's certificates
[ -x /usr/bin/python3 ] || missing+=(python3)
/usr/bin/python3 -c 'import prometheus_client' >/dev/null 2>&1 ||
  missing+=(python3-prometheus-client) # Prometheus's own parser checks /metrics
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)      # the unit file's checks and test
command -v pgrep >/dev/null 2>&1 || missing+=(procps)                # scripts/systemd-ns.sh finds its systemd
[ -x /usr/lib/chromium/chromium ] || missing+=(chromium)         # the page on the gateway, in a real browser
dpkg -s fonts-dejavu-core >/dev/null 2>&1 ||
  missing+=(fonts-dejavu-core)                                       # text in chromium's screenshots
dpkg -s libfaketime >/dev/null 2>&1 ||
  missing+=(libfaketime)                                             # the clock tests run the daemon on a wrong clock
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
