#!/usr/bin/env bash
# Installs the real perf_analyzer 2.60 (Triton's load generator) into DEST (default .tools/perf_analyzer).
# Idempotent. PyPI's perf-analyzer wheel is built for glibc 2.38; on an older glibc (Debian 12 has 2.36) pip
# would silently pick a 0.1.0 placeholder, so the real wheel is fetched explicitly, and the binary runs
# through Debian trixie's loader, libc, libstdc++ and libgcc, unpacked beside it. The system's apt sources
# are never touched: trixie's package list lives in a private state directory.
set -euo pipefail
DEST=${1:-.tools/perf_analyzer}
VERSION=2.60.0
# perf_analyzer prints its version on stderr
if [ -x "$DEST/perf_analyzer" ] && "$DEST/perf_analyzer" --version 2>&1 | grep -q "Perf Analyzer"; then
  exit 0
fi
PYTHON=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "installing perf_analyzer $VERSION into $DEST" >&2
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_38_x86_64 \
  --python-version 3.11 -d "$work" "perf-analyzer==$VERSION"
"$PYTHON" -m zipfile -e "$work"/perf_analyzer-"$VERSION"-*.whl "$work/whl"
mkdir -p "$DEST/bin"
install -m 0755 "$work/whl/perf_analyzer/bin/perf_analyzer" "$DEST/bin/perf_analyzer"

glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')  # "glibc 2.36" -> 2.36
glibc=${glibc:-0.0}
if [ "$(printf '%s\n2.38\n' "$glibc" | sort -V | head -1)" = "2.38" ]; then
  ln -sf bin/perf_analyzer "$DEST/perf_analyzer"   # glibc >= 2.38: runs as it is
else
  echo "glibc $glibc < 2.38: adding Debian trixie's loader and C/C++ runtime" >&2
  state="$work/apt"
  mkdir -p "$state/lists/partial" "$state/cache/archives/partial" "$work/debs" "$DEST/glibc"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
    > "$state/sources.list"
  opts=(-o "Dir::Etc::SourceList=$state/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$state/lists" -o "Dir::Cache=$state/cache" -o Debug::NoLocking=1
        -o APT::Sandbox::User=root)
  apt-get "${opts[@]}" -qq update
  (cd "$work/debs" && apt-get "${opts[@]}" -qq download libc6 libstdc++6 libgcc-s1)
  for deb in "$work"/debs/*.deb; do dpkg -x "$deb" "$DEST/glibc"; done
  cat > "$DEST/perf_analyzer" <<'WRAP'
#!/bin/sh
# perf_analyzer through Debian trixie's loader (this host's glibc is older than 2.38).
D=$(dirname "$(readlink -f "$0")")
L="$D/glibc/usr/lib/x86_64-linux-gnu"
exec "$L/ld-linux-x86-64.so.2" --library-path "$L:/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu" \
  "$D/bin/perf_analyzer" "$@"
WRAP
  chmod 0755 "$DEST/perf_analyzer"
fi
"$DEST/perf_analyzer" --version
