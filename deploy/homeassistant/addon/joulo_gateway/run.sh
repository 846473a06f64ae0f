#!/usr/bin/with-contenv bashio
# Turns the add-on options into a token file and a config, then runs the gateway.
# The token goes to a 0600 file under /data (the add-on's private storage) and is
# never printed.
set -euo pipefail

umask 077
token_file=/data/joulo_token
install -m 600 -o joulo /dev/null "${token_file}"
bashio::config 'joulo_token' > "${token_file}"
if [ ! -s "${token_file}" ]; then
  bashio::exit.nok "Set joulo_token in the add-on configuration (Settings -> API -> Activate in the Joulo dashboard)."
fi

cat > /data/gateway.toml <<TOML
[server]
listen = "0.0.0.0:8080"
[upstream]
token_file = "${token_file}"
[log]
level = "$(bashio::config 'log_level')"
[routes.chargers]
ttl = "15s"
[routes.sessions]
ttl = "60s"
[routes.energy]
ttl = "10m"
[routes.ere_position]
ttl = "10m"
[routes.me]
ttl = "1h"
TOML

# The config holds no secret; the joulo user must be able to read it.
chmod 644 /data/gateway.toml
# Unprivileged from here on: the token file is the joulo user's, mode 0600.
exec su-exec joulo /usr/local/bin/joulo-gateway --config /data/gateway.toml
