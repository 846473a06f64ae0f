# Shared by bench/compare and bench/profile: the packages they need, a test CA,
# and a fast TLS upstream (nginx serving a fixed /chargers JSON and checking the
# bearer token). Sourced, not run; expects `set -euo pipefail`.

# Installs from Debian's packages whatever of the given commands is missing
# (command:package pairs).
bench_install() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
  done
  if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  # Debian starts an nginx on port 80 when it installs one; it is not part of this.
  systemctl stop nginx 2>/dev/null || true
}

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for conf in "$work"/nginx-*.conf; do
    [ -f "$conf" ] && nginx -c "$conf" -s quit 2>/dev/null || true
  done
  sleep 0.3
  rm -rf "$work"
}
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || true

# --- test CA, upstream certificate, a token shaped like Joulo's ---------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=bench CA" -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/CN=localhost" -keyout "$work/up.key" -out "$work/up.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost\n' > "$work/san.ext"
openssl x509 -req -in "$work/up.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
  -CAcreateserial -days 2 -extfile "$work/san.ext" -out "$work/up.pem" 2>/dev/null
token="joulo_$(head -c 4096 /dev/urandom | tr -dc 'A-Za-z0-9' | head -c 32)"
printf '%s\n' "$token" > "$work/joulo_token"
chmod 600 "$work/joulo_token" "$work"/*.key

body='{"chargers":[{"id":"6f1c0d3e-8f43-4d8e-9f7b-2a1b3c4d5e6f","nickname":"Oprit","connection_type":"ocpp","status":"charging","mid_certified":true,"is_charging":true,"current_session":{"id":"0b9a1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d","started_at":"2026-11-28T17:04:00Z","kwh_so_far":8.62},"latest_meter_wh":4190733,"meter_updated_at":"2026-11-28T17:51:40Z"}]}'

UP=19443; NGX=19081; NGXC=19082; NGXS=19083; GW=19091; GWC=19092

common="pid PIDFILE; error_log $work/nginx-error.log warn; daemon on;
events { worker_connections 4096; }"

# --- the upstream (also candidate (e) of bench/compare) ---------------------
cat > "$work/nginx-upstream.conf" <<EOF
${common/PIDFILE/$work/up.pid}
worker_processes 1;
http {
  access_log off;
  ssl_session_cache shared:up:1m;
  server {
    listen 127.0.0.1:$UP ssl http2;
    ssl_certificate $work/up.pem;
    ssl_certificate_key $work/up.key;
    keepalive_requests 1000000;
    location = /functions/v1/api/chargers {
      default_type application/json;
      if (\$http_authorization != "Bearer $token") {
        return 401 '{"error": "Missing or invalid API token"}';
      }
      return 200 '$body';
    }
  }
}
EOF

# --- the gateway in front of it, its cache TTL given (0s: off) --------------
# UPSTREAM_HTTP2=auto|always|never sets [upstream] http2 (default: the gateway's).
gateway_conf() { # name port ttl [event loops, default 1]
  cat > "$work/$1.toml" <<EOF
[server]
listen = "127.0.0.1:$2"
max_connections = 4096
# wrk's connections all come from 127.0.0.1.
max_connections_per_ip = 4096
worker_threads = ${4:-1}
[upstream]
base_url = "https://localhost:$UP/functions/v1/api"
token_file = "joulo_token"
ca_file = "ca.pem"
${UPSTREAM_HTTP2:+http2 = \"$UPSTREAM_HTTP2\"}
[log]
level = "warn"
[limits]
upstream_per_minute = 100000000
upstream_burst = 100000
client_per_minute = 100000000
client_burst = 100000
[cache]
ttl = "$3"
EOF
}
