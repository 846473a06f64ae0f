#!/usr/bin/env bash
# Runs the images deploy/build-image.sh built, with buildah (chroot isolation,
# the host's network), against the simulated Joulo API on loopback
# (examples/mock_joulo.rs: verified TLS with a throwaway CA):
#
#   deploy/test-image.sh            # amd64, the images tagged VERSION-amd64
#
# The image: answers /chargers with the token from /run/secrets/joulo_token,
# runs as uid 65532, its HEALTHCHECK command succeeds (and fails once the
# gateway is stopped). The add-on's image: started with a test
# /data/options.json it answers /healthz as uid 65532, keeps the token in a
# 0600 file of its own, never logs it, and an empty token stops it with a
# clear message. Loopback only. Used by .ci/run; needs root (buildah's chroot).
set -euo pipefail
cd "$(dirname "$0")/.."

arch=${1:-amd64}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
image=localhost/joulo-gateway:$version-$arch
addon=localhost/joulo-gateway-addon:$version-$arch
export STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot
b=(buildah --storage-driver vfs)

fail() {
  echo "test-image: FAILED: $*" >&2
  exit 1
}

work=$(mktemp -d)
pids=()
containers=()
cleanup() {
  local pid ctr
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for ctr in "${containers[@]}"; do "${b[@]}" rm "$ctr" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# The process running the image's binary among the descendants of $1.
gateway_pid() {
  local pid child
  # /proc's children lists, not pgrep: procps may not be installed.
  for pid in $(cat /proc/"$1"/task/*/children 2>/dev/null || true); do
    if [ "$(readlink "/proc/$pid/exe" 2>/dev/null || true)" != "" ] &&
      tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q '^/usr/local/bin/joulo-gateway '; then
      echo "$pid"
      return
    fi
    child=$(gateway_pid "$pid")
    [ -n "$child" ] && echo "$child" && return
  done
}

wait_for() { # URL LOG PID
  for _ in $(seq 1 200); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$1" || true)" = 200 ] && return 0
    kill -0 "$3" 2>/dev/null || { cat "$2" >&2; fail "the container stopped"; }
    sleep 0.1
  done
  cat "$2" >&2
  fail "$1 did not answer 200"
}

# A JSON field of an image or container's Docker config, as lines.
config_field() { # TYPE NAME FIELD
  "${b[@]}" inspect --type "$1" "$2" |
    python3 -c 'import json,sys; v=json.load(sys.stdin)["Docker"]["config"].get(sys.argv[1]) or []; print("\n".join(v))' "$3"
}

uid_of() {
  awk '/^Uid:/ {print $2, $3, $4, $5}' "/proc/$1/status"
}

# The kernel gives a process's /proc entries to root while it is not dumpable
# (no core file, no ptrace by its own user): what the gateway sets at start
# and again after dropping root.
not_dumpable() {
  [ "$(stat -c %u "/proc/$1/environ")" = 0 ] || fail "process $1 is dumpable"
}

canary() {
  printf 'joulo_%s' "$(head -c 4096 /dev/urandom | tr -dc 'A-Za-z0-9' | head -c 32)"
}

# --- the simulated Joulo API ---
cargo build --locked --quiet --example mock_joulo
token=$(canary)
printf '%s\n' "$token" >"$work/mock_token"
target/debug/examples/mock_joulo "$work/mock_token" "$work/ca.pem" >"$work/mock.out" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  upstream=$(sed -n 's/^listening on //p' "$work/mock.out")
  [ -n "$upstream" ] && break
  sleep 0.1
done
[ -n "$upstream" ] || fail "mock_joulo did not start: $(cat "$work/mock.out")"

# --- the image ---
port=$(free_port)
mkdir -m 755 "$work/etc" "$work/secrets"
sed "s|^listen = .*|listen = \"127.0.0.1:$port\"|" deploy/docker/gateway.toml >"$work/etc/gateway.toml"
grep -q "^listen = \"127.0.0.1:$port\"" "$work/etc/gateway.toml" || fail "no listen line to point at a free port"
printf '\n[upstream]\nbase_url = "%s"\nca_file = "/etc/joulo-gateway/ca.pem"\n' "$upstream" >>"$work/etc/gateway.toml"
install -m 644 "$work/ca.pem" "$work/etc/ca.pem"
chmod 644 "$work/etc/gateway.toml"
# As compose's instructions write it: private to the container's user.
install -m 600 -o 65532 -g 65532 "$work/mock_token" "$work/secrets/joulo_token"

ctr=$("${b[@]}" from --quiet "$image")
containers+=("$ctr")
mapfile -t entrypoint < <(config_field container "$ctr" Entrypoint)
[ "${entrypoint[0]:-}" = /usr/local/bin/joulo-gateway ] || fail "entrypoint is ${entrypoint[*]}"
mounts=(-v "$work/etc:/etc/joulo-gateway:ro" -v "$work/secrets/joulo_token:/run/secrets/joulo_token:ro")
"${b[@]}" run --isolation chroot "${mounts[@]}" "$ctr" -- "${entrypoint[@]}" >"$work/gateway.log" 2>&1 &
run_pid=$!
pids+=("$run_pid")
wait_for "http://127.0.0.1:$port/healthz" "$work/gateway.log" "$run_pid"

status=$(curl -s -o "$work/chargers" -w '%{http_code}' "http://127.0.0.1:$port/chargers?token=joulo_stripped")
if [ "$status" != 200 ] || ! grep -q '"chargers"' "$work/chargers"; then
  fail "GET /chargers gave $status: $(cat "$work/chargers")"
fi
echo "test-image: $image answers /chargers with the token from /run/secrets/joulo_token"

gw=$(gateway_pid "$run_pid")
[ -n "$gw" ] || fail "cannot find the gateway's process"
[ "$(uid_of "$gw")" = "65532 65532 65532 65532" ] || fail "the gateway runs as uid $(uid_of "$gw")"
not_dumpable "$gw"
echo "test-image: the gateway runs as uid 65532, not dumpable"

health=$("${b[@]}" inspect --type container "$ctr" |
  python3 -c 'import json,sys; t=json.load(sys.stdin)["Docker"]["config"]["Healthcheck"]["Test"]; assert t[0]=="CMD", t; print("\n".join(t[1:]))')
mapfile -t health <<<"$health"
[ "${health[0]}" = /usr/local/bin/joulo-gateway ] || fail "HEALTHCHECK is ${health[*]}"
"${b[@]}" run --isolation chroot "${mounts[@]}" "$ctr" -- "${health[@]}" ||
  fail "the HEALTHCHECK command failed against the running gateway"
echo "test-image: the HEALTHCHECK command (${health[*]}) succeeds"

grep -qF "$token" "$work/gateway.log" && fail "the token is in the gateway's log"
kill -TERM "$gw"
wait "$run_pid" || true
if "${b[@]}" run --isolation chroot "${mounts[@]}" "$ctr" -- "${health[@]}" 2>/dev/null; then
  fail "the HEALTHCHECK command succeeds with the gateway stopped"
fi
echo "test-image: and fails once the gateway is stopped"

# --- the add-on's image ---
ctr=$("${b[@]}" from --quiet "$addon")
containers+=("$ctr")
mapfile -t entrypoint < <(config_field container "$ctr" Entrypoint)
[ "${entrypoint[*]}" = "/usr/local/bin/joulo-gateway addon" ] || fail "add-on entrypoint is ${entrypoint[*]}"
mkdir -m 755 "$work/data"
printf '{"joulo_token": "%s", "log_level": "trace"}\n' "$token" >"$work/data/options.json"
chmod 600 "$work/data/options.json"
port=$(free_port)
"${b[@]}" run --isolation chroot -v "$work/data:/data" "$ctr" -- "${entrypoint[@]}" --listen "127.0.0.1:$port" >"$work/addon.log" 2>&1 &
run_pid=$!
pids+=("$run_pid")
wait_for "http://127.0.0.1:$port/healthz" "$work/addon.log" "$run_pid"
gw=$(gateway_pid "$run_pid")
[ -n "$gw" ] || fail "cannot find the add-on's process"
[ "$(uid_of "$gw")" = "65532 65532 65532 65532" ] || fail "the add-on runs as uid $(uid_of "$gw")"
not_dumpable "$gw"
[ "$(stat -c '%a %u' "$work/data/joulo_token")" = "600 65532" ] ||
  fail "/data/joulo_token is $(stat -c '%a %u' "$work/data/joulo_token")"
# A request that reaches the token's path: the real api.joulo.nl is not
# called (no route is asked for), the log is at trace level.
curl -s -o /dev/null "http://127.0.0.1:$port/readyz" || true
kill -TERM "$gw"
wait "$run_pid" || true
grep -q . "$work/addon.log" || fail "the add-on logged nothing"
grep -qF "$token" "$work/addon.log" && fail "the token is in the add-on's log"
echo "test-image: $addon answers /healthz as uid 65532 (not dumpable), token in a 0600 file, not in its trace-level log"

printf '{"joulo_token": "", "log_level": "info"}\n' >"$work/data/options.json"
set +e
"${b[@]}" run --isolation chroot -v "$work/data:/data" "$ctr" -- "${entrypoint[@]}" --listen "127.0.0.1:$port" >"$work/addon.log" 2>&1
code=$?
set -e
if [ "$code" != 64 ] || ! grep -q 'joulo_token is empty' "$work/addon.log"; then
  fail "an empty token gave exit $code: $(cat "$work/addon.log")"
fi
echo "test-image: an empty joulo_token stops the add-on (exit 64): $(cat "$work/addon.log")"
