#!/usr/bin/env bash
# Debian packages the build and the tests need; installs only what is missing.
set -euo pipefail
need=()
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v dpkg-deb >/dev/null || need+=(dpkg-dev)
command -v fakeroot >/dev/null || need+=(fakeroot)
command -v systemd-analyze >/dev/null || need+=(systemd)
# deploy/build_deb.sh: Debian's python3 + venv, readelf; tests/test_deb.py: strace, setpriv.
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null \
    || need+=(python3 python3-venv)
command -v readelf >/dev/null || need+=(binutils)
command -v gcc >/dev/null || need+=(gcc python3-dev)  # any sdist without a wheel
command -v strace >/dev/null || need+=(strace)
command -v setpriv >/dev/null || need+=(util-linux)
[ -x /usr/bin/chromium ] || need+=(chromium)  # renders the daily page in a test
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
echo "installing Debian packages: ${need[*]}"
sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo_cmd apt-get update -qq || true
$sudo_cmd apt-get install -y -qq --no-install-recommends "${need[@]}"
