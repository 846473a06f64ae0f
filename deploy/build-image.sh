#!/usr/bin/env bash
# Builds the container image (deploy/docker/Dockerfile) and the Home Assistant
# add-on's image (deploy/homeassistant/addon/joulo_gateway/Dockerfile) from the
# prebuilt static binaries, with Debian's buildah: no Docker engine, no
# registry (both are FROM scratch), no compiler inside the image.
#
#   deploy/build-image.sh                    # amd64: both images, tagged localhost/joulo-gateway:VERSION-amd64
#   deploy/build-image.sh amd64 arm64        # both architectures
#   deploy/build-image.sh --context-only DIR # only stage the build context (the release workflow's docker buildx)
#
# The binaries are deploy/build-static.sh's stripped ones
# (target/<triple>/release/joulo-gateway.stripped), built by it when missing.
# Needs buildah (installed when missing and running as root). Prints each
# image's size. Storage is vfs with chroot isolation, which work unprivileged
# inside a container too (CI).
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
context_only=
arches=()
while (($#)); do
  case "$1" in
    --context-only)
      context_only=${2:?--context-only needs a folder}
      shift 2
      ;;
    amd64 | arm64)
      arches+=("$1")
      shift
      ;;
    *)
      echo "build-image: unknown argument $1 (amd64, arm64, --context-only DIR)" >&2
      exit 64
      ;;
  esac
done
((${#arches[@]})) || arches=(amd64)

triple() {
  case "$1" in
    amd64) echo x86_64-unknown-linux-musl ;;
    arm64) echo aarch64-unknown-linux-musl ;;
  esac
}

# The context: the binaries by Docker's architecture name, the rootfs files
# and the image's default config. Nothing else, so no secret or build output
# can reach a layer.
stage() {
  local dir=$1 arch bin
  rm -rf "$dir"
  mkdir -p "$dir/rootfs/etc"
  cp deploy/docker/rootfs/etc/passwd deploy/docker/rootfs/etc/group "$dir/rootfs/etc/"
  install -m 644 deploy/docker/gateway.toml "$dir/gateway.toml"
  for arch in "${arches[@]}"; do
    bin="target/$(triple "$arch")/release/joulo-gateway.stripped"
    if [ ! -f "$bin" ]; then
      bash deploy/build-static.sh "$(triple "$arch")"
    fi
    install -D -m 755 "$bin" "$dir/bin/$arch/joulo-gateway"
  done
}

if [ -n "$context_only" ]; then
  stage "$context_only"
  echo "build-image: context staged in $context_only for ${arches[*]}"
  exit 0
fi

if ! command -v buildah >/dev/null; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "build-image: install buildah first (apt-get install buildah)" >&2
    exit 69
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah >/dev/null
fi
export STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot

context=target/image/context
stage "$context"
for arch in "${arches[@]}"; do
  addon_arch=$arch
  [ "$arch" = arm64 ] && addon_arch=aarch64
  # --format docker keeps HEALTHCHECK (the OCI format has no field for it).
  buildah bud --isolation chroot --storage-driver vfs --format docker --quiet \
    --platform "linux/$arch" --build-arg "TARGETARCH=$arch" \
    -f deploy/docker/Dockerfile -t "localhost/joulo-gateway:$version-$arch" "$context" >/dev/null
  buildah bud --isolation chroot --storage-driver vfs --format docker --quiet \
    --platform "linux/$arch" --build-arg "TARGETARCH=$arch" \
    --build-arg "BUILD_ARCH=$addon_arch" --build-arg "BUILD_VERSION=$version" \
    -f deploy/homeassistant/addon/joulo_gateway/Dockerfile \
    -t "localhost/joulo-gateway-addon:$version-$arch" "$context" >/dev/null
  # Sizes in bytes: the layer as unpacked on disk, and as pulled
  # (compressed), from the image pushed to an OCI layout folder.
  for image in joulo-gateway joulo-gateway-addon; do
    layout=$(mktemp -d)
    buildah push --storage-driver vfs --quiet "localhost/$image:$version-$arch" "oci:$layout/oci" >/dev/null
    read -r unpacked pulled < <(python3 - "$layout/oci" <<'PY'
import gzip, json, os, sys
root = sys.argv[1]
blob = lambda d: os.path.join(root, "blobs", *d.split(":"))
index = json.load(open(os.path.join(root, "index.json")))
manifest = json.load(open(blob(index["manifests"][0]["digest"])))
unpacked = pulled = 0
for layer in manifest["layers"]:
    pulled += layer["size"]
    with open(blob(layer["digest"]), "rb") as f:
        data = f.read()
    unpacked += len(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)
print(unpacked, pulled)
PY
    )
    rm -rf "$layout"
    echo "built localhost/$image:$version-$arch: $unpacked bytes unpacked, $pulled bytes pulled (compressed)"
  done
done

# The container image as one multi-arch name, as the release publishes it
# (the add-on's images stay one per architecture: Home Assistant names them so).
if ((${#arches[@]} > 1)); then
  list=localhost/joulo-gateway:$version
  buildah manifest rm --storage-driver vfs "$list" >/dev/null 2>&1 || true
  buildah manifest create --storage-driver vfs "$list" >/dev/null
  for arch in "${arches[@]}"; do
    buildah manifest add --storage-driver vfs "$list" "localhost/joulo-gateway:$version-$arch" >/dev/null
  done
  echo "built $list for $(buildah manifest inspect --storage-driver vfs "$list" |
    python3 -c 'import json,sys; print(" ".join(m["platform"]["os"] + "/" + m["platform"]["architecture"] for m in json.load(sys.stdin)["manifests"]))')"
fi
