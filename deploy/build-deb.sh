#!/usr/bin/env bash
# Builds the Debian package for a target from its static (musl) binary:
#
#   deploy/build-deb.sh                              # amd64 (x86_64-unknown-linux-musl)
#   deploy/build-deb.sh aarch64-unknown-linux-musl   # arm64: Raspberry Pi OS 64-bit, ARM NAS
#
# The binary is built and smoke-tested by deploy/build-static.sh. The man pages
# and completions come from the command line's definition (examples/generate.rs),
# so they match its --help; the unit is deploy/systemd's with the packaged binary's path. The
# package lands in target/debian/. Installs cargo-deb (pinned) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

target=${1:-x86_64-unknown-linux-musl}
deb_env=()
case "$target" in
  x86_64-unknown-linux-musl) arch=amd64 ;;
  aarch64-unknown-linux-musl)
    arch=arm64
    # cargo-deb strips with these (it looks for STRIP_<target>/OBJCOPY_<target>,
    # names with dashes, so set by env rather than export).
    deb_env=("STRIP_${target}=aarch64-linux-gnu-strip" "OBJCOPY_${target}=aarch64-linux-gnu-objcopy")
    ;;
  *)
    echo "build-deb: unsupported target $target" >&2
    exit 64
    ;;
esac

cargo_deb_version=3.8.0
if ! cargo deb --version 2>/dev/null | grep -qF "$cargo_deb_version"; then
  cargo install cargo-deb --locked --version "$cargo_deb_version"
fi

bash deploy/build-static.sh "$target"
bin="target/$target/release/joulo-gateway"

assets=target/deb-assets
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions" "$assets/systemd"
# On the build machine: the pages and scripts do not depend on the target.
cargo build --locked --example generate
generate=target/debug/examples/generate
"$generate" man --out "$assets/man"
"$generate" bash --out "$assets/completions/joulo-gateway.bash"
"$generate" zsh --out "$assets/completions/_joulo-gateway"
"$generate" fish --out "$assets/completions/joulo-gateway.fish"

# The unit: deploy/systemd's, with the package's binary path, and its
# hand-install header replaced by what applies to the package.
unit="$assets/systemd/joulo-gateway.service"
{
  cat <<'HEADER'
# joulo-gateway as a hardened systemd service, installed by the Debian package.
#
# First start: write the token (root's, mode 600) and start the service:
#   sudo bash -c 'umask 077; read -rs -p "Joulo token: " t; printf "%s\n" "$t" > /etc/joulo-gateway/joulo_token'
#   sudo systemctl enable --now joulo-gateway
#
# The token reaches the service as a systemd credential: a root-only file
# copied into a private, read-only directory at start. After rotating it in
# /etc/joulo-gateway/joulo_token, run `systemctl restart joulo-gateway`.
# `systemctl reload joulo-gateway` re-reads /etc/joulo-gateway/gateway.toml:
# device keys, access, limits, cache and routes apply at once. Change this
# unit with `systemctl edit joulo-gateway` (a drop-in survives upgrades).
HEADER
  sed -e '1,/^$/d' -e 's|/usr/local/bin/joulo-gateway|/usr/bin/joulo-gateway|g' deploy/systemd/joulo-gateway.service
} > "$unit"
if grep -q /usr/local "$unit"; then
  echo "build-deb: $unit still names /usr/local" >&2
  exit 1
fi

mkdir -p target/debian
env "${deb_env[@]}" cargo deb --target "$target" --no-build --output target/debian/ >"$assets/cargo-deb.out"
deb=$(tail -n 1 "$assets/cargo-deb.out")
case "$deb" in
  *_"$arch".deb) ;;
  *)
    echo "build-deb: cargo deb made ${deb:-nothing}, not an $arch package" >&2
    exit 1
    ;;
esac
dpkg-deb --info "$deb"
dpkg-deb --contents "$deb"
echo "built $deb ($(stat -c %s "$deb") bytes)"
