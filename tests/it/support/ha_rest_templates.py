"""Renders the shipped configuration.yaml's `rest:` templates the way Home
Assistant does for a resource's answer: `availability` first (false means
unavailable), then `value_template`, both with the answer as `value_json`.
Jinja2 (Home Assistant's template engine) with `now()`; the templates use
nothing else of Home Assistant's.

Input on stdin: {"config": path, "answers": {resource path: JSON answer}}.
Prints {unique_id: {"available": bool, "value": text or null}}.
"""
import datetime
import json
import sys

import jinja2
import yaml


class Loader(yaml.SafeLoader):
    """Reads `!secret NAME` as the text NAME."""


Loader.add_constructor("!secret", lambda loader, node: loader.construct_scalar(node))


def main():
    request = json.load(sys.stdin)
    with open(request["config"], encoding="utf-8") as file:
        config = yaml.load(file, Loader=Loader)
    env = jinja2.Environment(undefined=jinja2.Undefined)
    env.globals["now"] = datetime.datetime.now
    out = {}
    for resource in config["rest"]:
        path = resource["resource"].split(":8080", 1)[1].split("?", 1)[0]
        if path not in request["answers"]:
            continue
        value_json = request["answers"][path]
        for kind in ("sensor", "binary_sensor"):
            for sensor in resource.get(kind, []):
                variables = {"value_json": value_json}
                available = (
                    env.from_string(sensor["availability"]).render(variables).strip()
                    == "True"
                )
                value = None
                if available:
                    value = env.from_string(sensor["value_template"]).render(variables).strip()
                out[sensor["unique_id"]] = {"available": available, "value": value}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
