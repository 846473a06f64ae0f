"""Checks MQTT discovery messages with Home Assistant's own code: the topic
against its discovery pattern, the origin block against its schema, and each
config against the platform's discovery schema (what Home Assistant runs on
a discovered config) and its strict YAML schema (which refuses an unknown
key, where discovery would drop it silently).

Input on stdin: {"prefix": "homeassistant", "messages": {topic: payload}}.
Prints one line per message; exits 1 if any is refused.
"""
import json
import sys

# Home Assistant 2024.1's websocket_api and persistent_notification import
# each other; importing this one first breaks the cycle.
import homeassistant.components.persistent_notification  # noqa: F401
from homeassistant.components.mqtt import binary_sensor, discovery, sensor

PLATFORMS = {"sensor": sensor, "binary_sensor": binary_sensor}


def check(prefix, topic, payload):
    if not topic.startswith(prefix + "/"):
        raise ValueError("not under the discovery prefix")
    match = discovery.TOPIC_MATCHER.fullmatch(topic[len(prefix) + 1 :])
    if not match:
        raise ValueError("not a discovery topic Home Assistant reads")
    component = match.group("component")
    if component not in PLATFORMS:
        raise ValueError(f"component {component} is not checked here")
    config = json.loads(payload)
    if not isinstance(config, dict):
        raise ValueError("not a JSON object")
    # Discovery expands abbreviations before validating; none are used.
    for key in config:
        if discovery.ABBREVIATIONS.get(key, key) != key:
            raise ValueError(f"abbreviated key {key}")
    origin = config.get("origin")
    if origin is not None:
        discovery.MQTT_ORIGIN_INFO_SCHEMA(origin)
    platform = PLATFORMS[component]
    platform.DISCOVERY_SCHEMA(dict(config))
    strict = {k: v for k, v in config.items() if k != "origin"}
    platform.PLATFORM_SCHEMA_MODERN(strict)


def main():
    request = json.load(sys.stdin)
    prefix = request["prefix"]
    failed = 0
    for topic, payload in sorted(request["messages"].items()):
        try:
            check(prefix, topic, payload)
            print(f"ok {topic}")
        except Exception as error:  # noqa: BLE001 - every refusal is reported
            failed += 1
            print(f"REFUSED {topic}: {type(error).__name__}: {error}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
