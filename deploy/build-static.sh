#!/usr/bin/env bash
# Builds the static (musl) joulo-gateway binary for a target and smoke-tests it:
# --version, `check` on a generated config, and a real request through `demo`.
# The images (deploy/build-image.sh) and the release's tarballs and .debs carry
# this binary; the aarch64 build is the one for a Raspberry Pi (3/4/5, 64-bit
# OS) or an ARM NAS, and is run under qemu-user here.
#
#   deploy/build-static.sh                              # x86_64-unknown-linux-musl
#   deploy/build-static.sh aarch64-unknown-linux-musl   # Raspberry Pi
#
# Needs (installed here when missing and running as root): the rustup target,
# musl-tools (x86_64) or gcc-aarch64-linux-gnu and qemu-user (aarch64).
set -euo pipefail
cd "$(dirname "$0")/.."

target=${1:-x86_64-unknown-linux-musl}
run=()
packages=()
case "$target" in
  x86_64-unknown-linux-musl)
    command -v musl-gcc >/dev/null || packages+=(musl-tools)
    ;;
  aarch64-unknown-linux-musl)
    command -v aarch64-linux-gnu-gcc >/dev/null || packages+=(gcc-aarch64-linux-gnu)
    command -v qemu-aarch64 >/dev/null || packages+=(qemu-user)
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc
    export CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
    run=(qemu-aarch64)
    ;;
  *)
    echo "build-static: unsupported target $target" >&2
    exit 64
    ;;
esac

if ((${#packages[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "build-static: install ${packages[*]} first" >&2
    exit 69
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
fi
rustup target list --installed | grep -qx "$target" || rustup target add "$target"

cargo build --release --locked --target "$target" --bin joulo-gateway
bin="target/$target/release/joulo-gateway"
stripped="target/$target/release/joulo-gateway.stripped"
if [ "$target" = aarch64-unknown-linux-musl ]; then
  aarch64-linux-gnu-strip -o "$stripped" "$bin"
else
  strip -o "$stripped" "$bin"
fi

# Static: no program interpreter, no shared libraries.
if readelf -l "$bin" | grep -q 'INTERP'; then
  echo "build-static: $bin is dynamically linked" >&2
  exit 1
fi
# mimalloc, not musl's own allocator, which held this binary to 0.95x nginx's
# pass-through rate (bench/RESULTS.md, 2026-11-30).
nm_tool=nm
[ "$target" = aarch64-unknown-linux-musl ] && nm_tool=aarch64-linux-gnu-nm
# grep reads all of nm's output: with -q it would stop early and nm's SIGPIPE
# would fail the pipeline under pipefail.
if ! "$nm_tool" "$bin" | grep ' T mi_free$' >/dev/null; then
  echo "build-static: $bin does not allocate through mimalloc" >&2
  exit 1
fi
echo "built $bin ($(stat -c %s "$stripped") bytes stripped), static, mimalloc"

work=$(mktemp -d)
demo_pid=
cleanup() {
  [ -n "$demo_pid" ] && kill "$demo_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"${run[@]}" "$bin" --version

printf 'joulo_%s\n' "$(head -c 4096 /dev/urandom | tr -dc 'A-Za-z0-9' | head -c 32)" > "$work/joulo_token"
chmod 600 "$work/joulo_token"
printf '[server]\nlisten = "127.0.0.1:0"\n[upstream]\ntoken_file = "joulo_token"\n' > "$work/gateway.toml"
"${run[@]}" "$bin" check --config "$work/gateway.toml"

"${run[@]}" "$bin" demo --listen 127.0.0.1:0 > "$work/demo.out" 2> "$work/demo.err" &
demo_pid=$!
gateway=
for _ in $(seq 1 300); do
  gateway=$(sed -n 's|^  gateway *\(http://[0-9.:]*\)$|\1|p' "$work/demo.out")
  [ -n "$gateway" ] && grep -q 'Try it' "$work/demo.out" && break
  sleep 0.1
done
if [ -z "$gateway" ]; then
  echo "build-static: demo did not start" >&2
  cat "$work/demo.err" >&2
  exit 1
fi
# The demo's device key, as its printed curls carry it.
key=$(grep -o 'jgw_[A-Za-z0-9]\{32\}' "$work/demo.out" | head -n 1)
status=$(curl -s -o "$work/body" -w '%{http_code}' -H "X-Gateway-Key: $key" "$gateway/chargers?token=joulo_smoketest")
if [ "$status" != 200 ] || ! grep -q '"chargers"' "$work/body"; then
  echo "build-static: GET /chargers through the demo gave $status" >&2
  exit 1
fi
kill -TERM "$demo_pid"
wait "$demo_pid" || true
demo_pid=
echo "smoke test passed for $target: --version, check, GET /chargers through demo -> 200"
