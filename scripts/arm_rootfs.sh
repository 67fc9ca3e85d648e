#!/usr/bin/env bash
# An aarch64 Debian userland under user-mode emulation, for `python -m bench.arm` and tests/deploy/test_arm.py:
# qemu-user-static + binfmt_misc, `debootstrap --arch arm64` (bookworm, python3 + python3-venv) and the aarch64
# wheels of the edge install (same versions as .venv, so ARM-vs-x86 parity compares kernels, not releases).
# Cached under build/arm64/ (gitignored); a second call is a no-op. First build: about 4 minutes on 2 cores,
# 300 MB rootfs + 60 MB wheels. Needs root (apt-get, chroot) and the Debian and PyPI registries.
# Exit 0: ready. Exit 3: the emulator cannot be installed or registered here (the reason is on stderr; the
# test skips on it). Any other non-zero exit is a real failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT_DIR=${ARM_DIR:-build/arm64}
ROOTFS=$ROOT_DIR/rootfs
WHEELS=$ROOT_DIR/wheels
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES=python3,python3-venv
STAMP=$ROOTFS/.lineside-rootfs  # written last: a rootfs without it is an interrupted build and is redone

unavailable() { echo "arm_rootfs: emulator unavailable: $*" >&2; exit 3; }

[ "$(id -u)" = "0" ] || unavailable "needs root (apt-get install qemu-user-static, chroot), running as uid $(id -u)"
mkdir -p "$ROOT_DIR"
exec 9>"$ROOT_DIR/.lock"
flock 9  # one build at a time; a second caller waits and then finds the stamp

if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null \
   || ! command -v update-binfmts >/dev/null; then
  command -v apt-get >/dev/null || unavailable "no apt-get to install qemu-user-static/binfmt-support/debootstrap"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
         qemu-user-static binfmt-support debootstrap >/dev/null; }; then
    unavailable "apt-get install qemu-user-static binfmt-support debootstrap failed"
  fi
fi

# chroot runs aarch64 ELF files only through binfmt_misc; 'F' (fix binary) makes it work without copying qemu
# into the rootfs. Containers often lack the mount; registering needs CAP_SYS_ADMIN.
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null \
      || unavailable "cannot mount binfmt_misc (container without CAP_SYS_ADMIN?)"
  fi
  update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || unavailable "cannot register qemu-aarch64 with binfmt_misc"
fi
grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 || unavailable "binfmt qemu-aarch64 entry is disabled"

if [ ! -f "$STAMP" ]; then
  rm -rf "$ROOTFS"
  t0=$(date +%s)
  echo "arm_rootfs: debootstrap --arch arm64 $SUITE into $ROOTFS (first stage native, second under qemu)" >&2
  debootstrap --arch arm64 --foreign --variant=minbase --include=$PACKAGES $SUITE "$ROOTFS" "$MIRROR" >"$ROOT_DIR/debootstrap.log" 2>&1 \
    || { tail -20 "$ROOT_DIR/debootstrap.log" >&2; echo "arm_rootfs: debootstrap first stage failed" >&2; exit 1; }
  chroot "$ROOTFS" /bin/true 2>/dev/null || unavailable "binfmt is registered but chroot cannot run an aarch64 binary"
  chroot "$ROOTFS" /debootstrap/debootstrap --second-stage >>"$ROOT_DIR/debootstrap.log" 2>&1 \
    || { tail -20 "$ROOT_DIR/debootstrap.log" >&2; echo "arm_rootfs: debootstrap second stage failed" >&2; exit 1; }
  echo "$SUITE $PACKAGES $(date -u +%FT%TZ)" >"$STAMP"
  echo "arm_rootfs: rootfs built in $(( $(date +%s) - t0 )) s" >&2
fi

# aarch64 wheels of lineside[ort]'s dependencies, pinned to the versions in .venv; re-fetched when they change
PY=.venv/bin/python
[ -x "$PY" ] || { echo "arm_rootfs: $PY missing: run scripts/setup.sh first" >&2; exit 1; }
PINS=$("$PY" - <<'EOF'
from importlib.metadata import version
# numerics and decoding must match the x86 side; the rest resolves from lineside's own requirements
print(" ".join(f"{n}=={version(n)}" for n in ("numpy", "onnxruntime", "pillow")))
EOF
)
KEY="$PINS $(sha256sum pyproject.toml | cut -c1-16)"
if [ "$(cat "$WHEELS/.key" 2>/dev/null)" != "$KEY" ]; then
  rm -rf "$WHEELS" && mkdir -p "$WHEELS/self"
  "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WHEELS/self" . >/dev/null 2>&1
  PLAT=()
  # pip does not widen an explicit manylinux_2_N tag to older glibcs, so list them (bookworm has glibc 2.36)
  for v in $(seq 36 -1 17); do PLAT+=(--platform "manylinux_2_${v}_aarch64"); done
  PLAT+=(--platform manylinux2014_aarch64)
  # shellcheck disable=SC2086
  "$PY" -m pip download -q --only-binary=:all: "${PLAT[@]}" --python-version 3.11 --implementation cp --abi cp311 \
    -d "$WHEELS" "$(ls "$WHEELS"/self/lineside-*.whl)[ort]" $PINS 2> >(grep -v "is ignored" >&2) \
    || { echo "arm_rootfs: pip download of the aarch64 wheels failed (see above)" >&2; exit 1; }
  rm -rf "$WHEELS/self" "$WHEELS"/lineside-*.whl  # bench.arm installs the working tree's own wheel each run
  echo "$KEY" >"$WHEELS/.key"
fi
echo "arm_rootfs: ready: $ROOTFS ($(cat "$STAMP")), wheels: $(ls "$WHEELS"/*.whl | wc -l) ($PINS)" >&2
