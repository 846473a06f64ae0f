#!/usr/bin/env bash
# Installs a joulo-gateway .deb on this machine and checks it the way an admin
# would meet it, then removes and purges it:
#
#   deploy/test-deb.sh target/debian/joulo-gateway_0.1.0-1_amd64.deb
#
# Needs root and a Debian-style system (dpkg); systemd-analyze is used when
# present. Used by .ci/run; it leaves the machine as it found it (an installed
# joulo-gateway package is refused rather than replaced).
set -euo pipefail

deb=${1:?usage: deploy/test-deb.sh PACKAGE.deb}
if [ "$(id -u)" -ne 0 ]; then
  echo "test-deb: must run as root (dpkg -i)" >&2
  exit 69
fi
if dpkg-query -W -f='${Status}' joulo-gateway 2>/dev/null | grep -q 'installed'; then
  echo "test-deb: joulo-gateway is already installed here; not touching it" >&2
  exit 69
fi

fail() {
  echo "test-deb: FAILED: $*" >&2
  exit 1
}
work=$(mktemp -d)
gateway_pid=
cleanup() {
  [ -n "$gateway_pid" ] && kill "$gateway_pid" 2>/dev/null
  dpkg -P joulo-gateway >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

dpkg -i "$deb" | tee "$work/install.out"
grep -q 'write your Joulo API token into /etc/joulo-gateway/joulo_token' "$work/install.out" ||
  fail "postinst did not say what to do next"
grep -q 'sudo joulo-gateway device add homeassistant' "$work/install.out" ||
  fail "postinst did not say how to give a device a key"

# Files where they belong.
for f in /usr/bin/joulo-gateway \
  /usr/lib/systemd/system/joulo-gateway.service \
  /etc/joulo-gateway/gateway.toml \
  /usr/share/man/man1/joulo-gateway.1.gz \
  /usr/share/man/man1/joulo-gateway-check.1.gz \
  /usr/share/bash-completion/completions/joulo-gateway \
  /usr/share/zsh/vendor-completions/_joulo-gateway \
  /usr/share/fish/vendor_completions.d/joulo-gateway.fish \
  /usr/share/doc/joulo-gateway/README.md \
  /usr/share/doc/joulo-gateway/copyright \
  /usr/share/doc/joulo-gateway/changelog.Debian.gz; do
  [ -f "$f" ] || fail "$f is missing"
done
dpkg-query -W -f='${Conffiles}\n' joulo-gateway | grep -q '^ /etc/joulo-gateway/gateway.toml ' ||
  fail "gateway.toml is not a conffile"
grep -q '^ExecStart=/usr/bin/joulo-gateway ' /usr/lib/systemd/system/joulo-gateway.service ||
  fail "the unit does not start /usr/bin/joulo-gateway"
zcat /usr/share/man/man1/joulo-gateway.1.gz | grep -q 'gateway.toml' ||
  fail "joulo-gateway(1) does not point to gateway.toml"

# The placeholder token file: root's, 0600, empty. No user was created.
[ "$(stat -c '%U:%G %a %s' /etc/joulo-gateway/joulo_token)" = "root:root 600 0" ] ||
  fail "token placeholder is $(stat -c '%U:%G %a %s' /etc/joulo-gateway/joulo_token)"
getent passwd joulo-gateway >/dev/null && fail "a joulo-gateway user was created"

# Enabled (the [Install] link exists) but not started.
[ -L /etc/systemd/system/multi-user.target.wants/joulo-gateway.service ] ||
  fail "the unit is not enabled"
# (The unit's command line exactly: other gateways may run on this machine.)
pgrep -f '^/usr/bin/joulo-gateway --config /etc/joulo-gateway/gateway.toml' >/dev/null &&
  fail "the gateway was started before a token exists"

/usr/bin/joulo-gateway --version | grep -q '^joulo-gateway ' || fail "--version"

# Guided first start: from a shell and as the unit would run it (the
# credential is a copy of the empty file), the same one-line instruction, 64.
expect_empty() {
  local code=0
  "$@" >"$work/out" 2>&1 || code=$?
  [ "$code" = 64 ] || { cat "$work/out" >&2; fail "$* exited $code, not 64"; }
  grep -q 'token file /etc/joulo-gateway/joulo_token is empty: write your Joulo API token into it' "$work/out" ||
    { cat "$work/out" >&2; fail "$* did not say which file to write"; }
  cat "$work/out"
}
expect_empty /usr/bin/joulo-gateway check --config /etc/joulo-gateway/gateway.toml
mkdir -m 700 "$work/credentials"
install -m 400 /etc/joulo-gateway/joulo_token "$work/credentials/joulo_token"
expect_empty env CREDENTIALS_DIRECTORY="$work/credentials" \
  /usr/bin/joulo-gateway --config /etc/joulo-gateway/gateway.toml

# With a token written: `check` passes and never prints it.
token="joulo_$(head -c 4096 /dev/urandom | tr -dc 'A-Za-z0-9' | head -c 32)"
(umask 077 && printf '%s\n' "$token" >/etc/joulo-gateway/joulo_token)
/usr/bin/joulo-gateway check --config /etc/joulo-gateway/gateway.toml >"$work/out" 2>&1 ||
  { cat "$work/out" >&2; fail "check with a token"; }
grep -qF "$token" "$work/out" && fail "check printed the token"
cat "$work/out"
grep -q 'no device keys yet: only this host is served' "$work/out" ||
  fail "check did not say the gateway is closed until a device is added"

# The devices file: root's and 644 (the unit's throwaway user reads it, only
# root writes it), no device yet.
[ "$(stat -c '%U:%G %a' /etc/joulo-gateway/devices.toml)" = "root:root 644" ] ||
  fail "devices file is $(stat -c '%U:%G %a' /etc/joulo-gateway/devices.toml)"

# Closed by default, on the fresh install. The installed config runs from a
# shell on a loopback port, with only 127.0.0.1 as "this host" ([access]
# local_addresses) so that 127.0.0.2 plays a LAN device, and base_url on a
# closed local port so nothing leaves the machine; all else is as installed,
# the devices file included.
port=18089
sed -e "s|^listen = .*|listen = \"127.0.0.1:$port\"|" \
  -e 's|^\[access\]$|[access]\nlocal_addresses = ["127.0.0.1"]|' \
  -e 's|^\[upstream\]$|[upstream]\nbase_url = "https://127.0.0.1:9"|' \
  /etc/joulo-gateway/gateway.toml >"$work/gateway.toml"
/usr/bin/joulo-gateway --config "$work/gateway.toml" 2>"$work/gateway.log" &
gateway_pid=$!
for _ in $(seq 50); do
  /usr/bin/joulo-gateway healthcheck --url "http://127.0.0.1:$port/healthz" 2>/dev/null && break
  sleep 0.1
done
lan() { curl -s -o "$work/body" -w '%{http_code}' --interface 127.0.0.2 "$@" "http://127.0.0.1:$port/no-such-route"; }
code=$(lan)
[ "$code" = 401 ] || fail "a LAN request without a key got $code: $(cat "$work/body")"
grep -q 'this gateway has no device keys yet: run `joulo-gateway device add NAME`' "$work/body" ||
  fail "the 401 does not say what to do: $(cat "$work/body")"
echo "LAN request without a key on the fresh install: $code $(cat "$work/body")"

# `device add` as an admin runs it (no --config: the installed one), and the
# running gateway takes the key within 2 s (404: past the key check, no route).
(cd / && /usr/bin/joulo-gateway device add homeassistant) >"$work/added" ||
  fail "device add: $(cat "$work/added")"
sed 's/jgw_[A-Za-z0-9]\{32\}/jgw_<shown once>/g' "$work/added"
key=$(grep -o 'jgw_[A-Za-z0-9]\{32\}' "$work/added" | head -n 1)
grep -q "joulo_gateway_key: $key" "$work/added" || fail "no secrets.yaml line"
grep -qF "$key" /etc/joulo-gateway/devices.toml && fail "the devices file holds the key itself"
[ "$(stat -c '%U:%G %a' /etc/joulo-gateway/devices.toml)" = "root:root 644" ] ||
  fail "after device add the devices file is $(stat -c '%U:%G %a' /etc/joulo-gateway/devices.toml)"
seen=
for _ in $(seq 20); do
  code=$(lan -H "X-Gateway-Key: $key")
  [ "$code" = 404 ] && { seen=1; break; }
  sleep 0.1
done
[ -n "$seen" ] || fail "the new key was not taken within 2 s (last: $code)"
echo "LAN request with the new key: $code (past the key check)"
[ "$(lan)" = 401 ] || fail "a keyless LAN request is served once a device exists"
(cd / && /usr/bin/joulo-gateway device list)
(cd / && /usr/bin/joulo-gateway device remove homeassistant)
seen=
for _ in $(seq 20); do
  code=$(lan -H "X-Gateway-Key: $key")
  [ "$code" = 401 ] && { seen=1; break; }
  sleep 0.1
done
[ -n "$seen" ] || fail "the removed key still worked after 2 s"
echo "LAN request with the removed key: $code"
grep -qF "$key" "$work/gateway.log" && fail "the gateway logged the key"
kill "$gateway_pid"
wait "$gateway_pid" 2>/dev/null || true
gateway_pid=

if command -v systemd-analyze >/dev/null; then
  systemd-analyze verify /usr/lib/systemd/system/joulo-gateway.service 2>&1 | tee "$work/verify" ||
    fail "systemd-analyze verify"
  [ -s "$work/verify" ] && fail "systemd-analyze verify had something to say"
  systemd-analyze security --offline=true /usr/lib/systemd/system/joulo-gateway.service |
    tail -n 1
fi

# Remove: the program goes, the configuration and token stay.
dpkg -r joulo-gateway
[ -e /usr/bin/joulo-gateway ] && fail "dpkg -r left the binary"
[ -e /usr/lib/systemd/system/joulo-gateway.service ] && fail "dpkg -r left the unit"
[ -f /etc/joulo-gateway/gateway.toml ] || fail "dpkg -r removed the conffile"
[ -f /etc/joulo-gateway/joulo_token ] || fail "dpkg -r removed the token"

# Purge: everything goes, the token included, and the copies of it a
# rotation or an editor left beside it.
for copy in joulo_token.new 'joulo_token~' .joulo_token.swp; do
  (umask 077 && printf '%s\n' "$token" >"/etc/joulo-gateway/$copy")
done
dpkg -P joulo-gateway 2>&1 | tee "$work/purge.out"
grep -q 'left in place' "$work/purge.out" && fail "purge left something: $(cat "$work/purge.out")"
[ -e /etc/joulo-gateway ] && fail "dpkg -P left /etc/joulo-gateway: $(ls -A /etc/joulo-gateway)"
[ -e /etc/systemd/system/multi-user.target.wants/joulo-gateway.service ] &&
  fail "dpkg -P left the enable link"
echo "test-deb: $deb installs, guides the first start, removes and purges cleanly"
