"""Writes every `run:` script of the GitHub workflows given as arguments to
OUT_DIR as a shell file shellcheck can read, one per step, named
workflow.job.step.sh, with the shell GitHub would use (bash unless the step or
its job or workflow says otherwise) as its shebang.

    python workflow-scripts.py OUT_DIR .github/workflows/*.yml

`${{ ... }}` expressions are replaced by a placeholder word (GitHub substitutes
them before the shell runs), so shellcheck sees what the shell would; a step
with a non-POSIX shell (pwsh, python) is skipped. Run with check-jsonschema's
virtualenv, which has ruamel.yaml.
"""

import re
import sys
from pathlib import Path

from ruamel.yaml import YAML

EXPRESSION = re.compile(r"\$\{\{.*?\}\}", re.DOTALL)
PLACEHOLDER = "GHA_EXPRESSION"


def shell_of(step, job, workflow):
    """The `shell` the step, else its job's or the workflow's defaults, names
    (GitHub's default on Linux runners: bash)."""
    for shell in (
        step.get("shell"),
        ((job.get("defaults") or {}).get("run") or {}).get("shell"),
        ((workflow.get("defaults") or {}).get("run") or {}).get("shell"),
    ):
        if shell:
            return str(shell).split()[0]
    return "bash"


# How GitHub starts each shell: bash with -e and pipefail, sh with -e.
PRELUDE = {"bash": "set -eo pipefail", "sh": "set -e"}


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for workflow_path in map(Path, sys.argv[2:]):
        workflow = YAML(typ="safe").load(workflow_path.read_text())
        for job_id, job in (workflow.get("jobs") or {}).items():
            for index, step in enumerate(job.get("steps") or []):
                if "run" not in step:
                    continue
                shell = shell_of(step, job, workflow)
                if shell not in PRELUDE:
                    continue
                name = re.sub(r"[^A-Za-z0-9_-]+", "-", str(step.get("id") or step.get("name") or index))
                script = EXPRESSION.sub(PLACEHOLDER, str(step["run"]))
                path = out / f"{workflow_path.stem}.{job_id}.{index:02d}-{name}.sh"
                path.write_text(f"#!/usr/bin/env {shell}\n{PRELUDE[shell]}\n{script}\n")
                written += 1
    print(written)


if __name__ == "__main__":
    main()
