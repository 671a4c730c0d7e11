#!/usr/bin/env bash
# Build guaita_<version>_<arch>.deb with plain dpkg-deb: a self-contained virtualenv at
# /opt/guaita (edge dependencies only), the default model, /etc/guaita.toml (conffile), the
# systemd unit and the maintainer scripts. Why dpkg-deb and not dh-virtualenv: docs/install.md.
#
#   deploy/build_deb.sh [--arch amd64|arm64] [--version V] [--out DIR] [--model DIR]
#                       [--allow-no-model] [--wheelhouse DIR] [--offline] [--compress TYPE]
#
# Wheels are platform-specific, so the arch is the build machine's: build the arm64 package on
# an arm64 machine (a Pi 4/5 with 64-bit Raspberry Pi OS) or in an arm64 chroot.
# Build prerequisites (Debian packages): python3 python3-venv dpkg-dev binutils (every dependency
# is a wheel; gcc python3-dev only for an sdist without one). Not root: files are root:root via
# dpkg-deb --root-owner-group. Needs PyPI unless --wheelhouse already holds every wheel
# (--offline: never go online). --compress: xz (default, smallest), zstd (fast), gzip.
# The whole script is one block: bash parses it before running, so editing this file during a
# build cannot change the build halfway.
{
set -Eeuo pipefail
trap 'echo "build_deb: failed (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR

export PATH="$PATH:/usr/sbin:/sbin"  # ldconfig, for a non-root build
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
prefix=/opt/guaita

die() { echo "build_deb: $*" >&2; exit 1; }
say() { echo "build_deb: $*" >&2; }

arch=""
version=""
out="$repo/dist"
model="$repo/models/guaita-r18-sim"
allow_no_model=0
wheelhouse=""
offline=0
compress="xz"

while [ $# -gt 0 ]; do
    case "$1" in
        --arch) arch=${2:?}; shift 2 ;;
        --version) version=${2:?}; shift 2 ;;
        --out) out=${2:?}; shift 2 ;;
        --model) model=${2:?}; shift 2 ;;
        --allow-no-model) allow_no_model=1; shift ;;
        --wheelhouse) wheelhouse=${2:?}; shift 2 ;;
        --offline) offline=1; shift ;;
        --compress) compress=${2:?}; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

# ------------------------------------------------------------------ checks
for tool in dpkg-deb dpkg readelf; do
    command -v "$tool" >/dev/null || die "$tool not found: apt-get install dpkg-dev binutils"
done
host_arch=$(dpkg --print-architecture)
arch=${arch:-$host_arch}
case "$arch" in amd64|arm64) ;; *) die "--arch must be amd64 or arm64, got '$arch'" ;; esac
if [ "$arch" != "$host_arch" ]; then
    die "cannot build $arch on this $host_arch machine: the venv holds $host_arch wheels and" \
        "compiled extensions. Run this script on an $arch machine (e.g. the Pi) or in an" \
        "$arch chroot (see docs/install.md)."
fi

# Debian's interpreter, by its versioned name: the venv's bin/python then links to
# /usr/bin/python3.X, which stays put even if python3 later points at a newer minor version.
[ -x /usr/bin/python3 ] || die "/usr/bin/python3 missing: apt-get install python3 python3-venv"
py=$(readlink -f /usr/bin/python3)
pyver=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
case "$pyver" in 3.1[1-9]) ;; *) die "guaita needs Python >= 3.11; /usr/bin/python3 is $pyver" ;; esac
"$py" -c 'import ensurepip, venv' 2>/dev/null \
    || die "$py cannot create venvs: apt-get install python$pyver-venv"

if [ -z "$version" ]; then
    version=$("$py" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$repo/pyproject.toml")
fi
[[ "$version" =~ ^[0-9][A-Za-z0-9.+~-]*$ ]] || die "not a Debian version: '$version'"

if [ -f "$model/manifest.json" ]; then
    have_model=1
elif [ "$allow_no_model" = 1 ]; then
    have_model=0
    say "WARNING: no model at $model: the package ships none (--allow-no-model);" \
        "set paths.model in /etc/guaita.toml before starting the service"
else
    die "no model bundle at $model (expected model.onnx + manifest.json). Train/export it" \
        "first (make model), pass --model DIR, or --allow-no-model for a package without one."
fi

config_src="$repo/edge/default_config.toml"
[ -f "$config_src" ] || die "missing $config_src"

mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/guaita-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
root="$work/root"
venv="$root$prefix"
wheelhouse=${wheelhouse:-$work/wheels}
mkdir -p "$wheelhouse"
wheelhouse=$(cd "$wheelhouse" && pwd)

# Reproducible timestamps: the last commit, unless the caller set one.
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH

# ------------------------------------------------------------------ the virtualenv
# Built in a staging dir, then its few absolute paths are rewritten to /opt/guaita (below).
# That needs no root and leaves nothing in /opt on the build machine; the final grep proves
# no staging path survived.
say "venv with $py ($pyver) for $arch, version $version"
"$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check --no-input --quiet)

# Every pip step first tries the wheelhouse alone (offline, fast, reproducible), then PyPI.
pipw() {
    if PIP_FIND_LINKS="$wheelhouse" "${pip[@]}" "$@" --no-index 2>/dev/null; then
        return 0
    fi
    [ "$offline" = 0 ] || die "--offline: the wheelhouse $wheelhouse lacks what '$*' needs"
    PIP_FIND_LINKS="$wheelhouse" "${pip[@]}" "$@"
}

# guaita itself from a clean copy of the source: the project files and the top-level Python
# packages (no build/ or egg-info left in the tree, no data directories copied).
src="$work/src"
mkdir -p "$src"
for entry in "$repo"/*; do
    name=$(basename "$entry")
    case "$name" in
        pyproject.toml|setup.cfg|MANIFEST.in|README*|LICENSE*|COPYING*) cp -a "$entry" "$src/" ;;
        *) if [ -f "$entry/__init__.py" ] && [ "$name" != tests ]; then cp -a "$entry" "$src/"; fi ;;
    esac
done
find "$src" -name __pycache__ -prune -exec rm -rf {} +
pipw wheel --wheel-dir "$wheelhouse" "setuptools>=68" wheel
pipw wheel --no-deps --wheel-dir "$work/project" "$src"
whl=$(ls "$work"/project/guaita-*.whl)
# The edge's dependencies at the versions the tests ran with (constraints.txt), where pinned.
constraints=()
[ -f "$repo/constraints.txt" ] && constraints=(-c "$repo/constraints.txt")
# PEP 517 builds for any sdist without a wheel: isolated, with setuptools + wheel from above.
pipw wheel --use-pep517 --wheel-dir "$wheelhouse" "${constraints[@]}" "guaita[edge] @ file://$whl"
# Install from the wheelhouse only; the project wheel by path so a cached older build of the
# same version cannot win.
PIP_FIND_LINKS="$wheelhouse" "${pip[@]}" install --no-index --no-compile "${constraints[@]}" \
    "guaita[edge] @ file://$whl"

# The Pi side must never carry the training stack.
forbidden=$("$venv/bin/python" - <<'EOF'
from importlib.metadata import distributions
bad = {"torch", "torchvision", "fastai", "matplotlib", "fastcore", "onnx"}
print(" ".join(sorted({d.metadata["Name"].lower() for d in distributions()} & bad)))
EOF
)
[ -z "$forbidden" ] || die "the edge venv pulled in training packages: $forbidden"

# No pip/setuptools at runtime: nothing is installed on the Pi after the package.
"${pip[@]}" uninstall --yes pip setuptools
rm -f "$venv"/lib/python*/site-packages/guaita-*.dist-info/direct_url.json
find "$venv" -depth -name __pycache__ -type d -exec rm -rf {} +

# Relocate: the staging path appears only in bin/ scripts (shebangs, activate) and pyvenv.cfg.
# Symlinks (bin/python → /usr/bin/python3.X) are absolute and already right.
while IFS= read -r -d '' f; do
    sed -i "s|$venv|$prefix|g" "$f"
done < <(grep -rlIZ --fixed-strings "$venv" "$venv/bin" "$venv/pyvenv.cfg" || true)

# Clamp mtimes first, then compile: .pyc files record their source's mtime, and dpkg restores
# exactly these mtimes, so the shipped bytecode stays valid (the read-only /opt of the hardened
# unit could not hold a recompiled one).
find "$root" -newermt "@$SOURCE_DATE_EPOCH" -exec touch --no-dereference --date="@$SOURCE_DATE_EPOCH" {} +
"$venv/bin/python" -m compileall -q -j 0 --invalidation-mode timestamp \
    -s "$venv" -p "$prefix" "$venv/lib"

if leftovers=$(grep -rl --fixed-strings "$venv" "$root"); then
    die "staging path left in: $leftovers"
fi

# ------------------------------------------------------------------ files around it
install -d "$root/usr/bin" "$root/etc/guaita" "$root/lib/systemd/system" \
    "$root/usr/share/doc/guaita" "$root/usr/share/guaita/models"
ln -s "$prefix/bin/guaita" "$root/usr/bin/guaita"
install -d -m 0750 "$root/etc/guaita/certs"
install -m 0644 "$config_src" "$root/etc/guaita.toml"
install -m 0644 "$here/guaita.service" "$root/lib/systemd/system/guaita.service"
[ ! -f "$repo/docs/install.md" ] || install -m 0644 "$repo/docs/install.md" "$root/usr/share/doc/guaita/"
cat > "$root/usr/share/doc/guaita/copyright" <<'EOF'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: guaita
Comment: /opt/guaita bundles Python packages from PyPI under their own licenses; see
 /opt/guaita/lib/python3*/site-packages/*.dist-info/.

Files: *
License: MIT
EOF
if [ "$have_model" = 1 ]; then
    cp -r "$model" "$root/usr/share/guaita/models/default"
    find "$root/usr/share/guaita/models/default" -name __pycache__ -prune -exec rm -rf {} +
fi

# The shipped config and model must load with the shipped code (-I: the venv's copy, not the
# source tree in the current directory).
"$venv/bin/python" -I -m edge.cli check-config --config "$root/etc/guaita.toml" >/dev/null \
    || die "edge/default_config.toml fails check-config"
if [ "$have_model" = 1 ]; then
    "$venv/bin/python" -I -c 'import sys; from edge.bundle import load_bundle; load_bundle(sys.argv[1])' \
        "$root/usr/share/guaita/models/default" || die "the model bundle at $model does not load"
fi
# The checks above ran Python; any bytecode they wrote recorded the already clamped source mtimes.
find "$root" -newermt "@$SOURCE_DATE_EPOCH" -exec touch --no-dereference --date="@$SOURCE_DATE_EPOCH" {} +
chmod -R u+rwX,go+rX,go-w "$root"
chmod 0750 "$root/etc/guaita/certs"

# ------------------------------------------------------------------ DEBIAN/
install -d -m 0755 "$root/DEBIAN"
for script in postinst prerm postrm; do
    install -m 0755 "$here/debian/$script" "$root/DEBIAN/$script"
done
install -m 0644 "$here/debian/conffiles" "$root/DEBIAN/conffiles"

# Depends: the interpreter the venv links to, plus the system libraries that compiled modules
# load and their wheels do not bundle (NEEDED entries → ldconfig → the owning package).
owner_of() {  # a library path → its Debian package; tries both sides of merged /usr
    local p cand found
    for p in "$1" "$(readlink -f "$1")"; do
        for cand in "$p" "${p#/usr}" "/usr$p"; do
            if found=$(dpkg -S "$cand" 2>/dev/null); then
                echo "${found%%:*}"
                return 0
            fi
        done
    done
    return 1
}
bundled=$(find "$venv" -name '*.so*' -printf '%f\n' | sort -u)
libcache=$(ldconfig -p)
depends="python$pyver, adduser"
for soname in $(find "$venv" -type f -name '*.so*' -print0 | xargs -0 -r readelf -d 2>/dev/null \
                | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | sort -u); do
    grep -qxF "$soname" <<<"$bundled" && continue
    path=$(awk -v s="$soname" '$1 == s {print $NF; exit}' <<<"$libcache")
    if [ -z "$path" ] || ! pkg=$(owner_of "$path"); then
        say "WARNING: no package found for $soname (needed by the venv); not in Depends"
        continue
    fi
    case "$pkg" in python3*|libpython3*) continue ;; esac
    case ", $depends, " in *", $pkg, "*) ;; *) depends="$depends, $pkg" ;; esac
done
installed_kb=$(du -sk --apparent-size --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<EOF
Package: guaita
Version: $version
Architecture: $arch
Maintainer: guaita maintainers <guaita@users.noreply.github.com>
Installed-Size: $installed_kb
Depends: $depends
Recommends: systemd
Section: science
Priority: optional
Description: meteor detection for AllSky cameras
 guaita watches the frames an AllSky camera writes, scores each pair of consecutive frames
 with a small neural network (onnxruntime), and publishes meteor detections over MQTT with
 mutual TLS (AWS IoT Core or a local Mosquitto). Runs as a hardened systemd service next to
 AllSky on a Raspberry Pi; a self-contained Python environment lives in /opt/guaita.
EOF

deb="$out/guaita_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Z"$compress" --build "$root" "$deb" >/dev/null
say "built $deb ($(du -h "$deb" | cut -f1), installed $((installed_kb / 1024)) MiB)"
echo "$deb"
exit 0
}
