#!/usr/bin/env python3
"""Run `nf-core pipelines schema lint` without a Nextflow runtime; exit with its status.

nf-core tools reads the pipeline's parameters by running `nextflow config -o json .`, and Nextflow cannot be
installed on the project's machines. This script puts a stand-in `nextflow` first on PATH that answers that one
command from the `params { }` block of nextflow.config (literal values as written; any other expression, such as
the trace timestamp, as its text) and the plugin ids, and nothing else. What the lint then checks is nf-core's
own: the schema's structure, its draft, its groups, and that the config's defaults pass the schema.

    .venv/bin/python scripts/nf_core_schema_lint.py [--nf-core PATH_TO_nf-core]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LITERALS = {"true": True, "false": False, "null": None}


def params_block(config: str) -> dict[str, object]:
    """The assignments of nextflow.config's top-level ``params { }`` block, values as Nextflow would give them."""
    match = re.search(r"^params\s*\{(.*?)^\}", config, re.S | re.M)
    if not match:
        raise SystemExit("nextflow.config has no top-level params { } block")
    params: dict[str, object] = {}
    for line in match.group(1).splitlines():
        line = re.sub(r"\s+//.*$", "", line).strip()
        assignment = re.match(r"^(\w+)\s*=\s*(.+)$", line)
        if not assignment:
            continue
        name, value = assignment.groups()
        if value in LITERALS:
            params[name] = LITERALS[value]
        elif re.fullmatch(r"'[^']*'|\"[^\"]*\"", value):
            params[name] = value[1:-1]
        elif re.fullmatch(r"-?\d+", value):
            params[name] = int(value)
        elif re.fullmatch(r"-?\d+\.\d*", value):
            params[name] = float(value)
        else:
            params[name] = value  # an expression: evaluated by Nextflow at run time, a string here
    return params


def stand_in(arguments: list[str]) -> int:
    """Answer `nextflow config -o json DIR` (the only call nf-core's schema lint makes)."""
    if len(arguments) >= 3 and arguments[:3] == ["config", "-o", "json"]:
        folder = Path(arguments[3]) if len(arguments) > 3 else Path.cwd()
        config = (folder / "nextflow.config").read_text()
        plugins = ",".join(re.findall(r"^\s*id\s+'([^']+)'", config, re.M))
        print(json.dumps({"params": params_block(config), "plugins": plugins}))
        return 0
    if arguments[:1] == ["-version"]:
        print("nextflow stand-in (scripts/nf_core_schema_lint.py): only `config -o json` is answered")
        return 0
    print(f"nextflow stand-in: `nextflow {' '.join(arguments)}` is not available here", file=sys.stderr)
    return 1


def main() -> int:
    if os.environ.get("SLIMREG_NEXTFLOW_STAND_IN") == "1":
        return stand_in(sys.argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nf-core", default=shutil.which("nf-core"), help="the nf-core command (nf-core tools)")
    args = parser.parse_args()
    if not args.nf_core:
        print("nf-core tools is not installed: pip install nf-core (in its own virtual environment)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as folder:
        shim = Path(folder) / "nextflow"
        script = Path(__file__).resolve()
        shim.write_text(f"#!/bin/sh\nSLIMREG_NEXTFLOW_STAND_IN=1 exec {sys.executable} {script} \"$@\"\n")
        shim.chmod(0o755)
        env = {**os.environ, "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}", "NXF_HOME": folder,
               "HOME": folder}  # nf-core caches `nextflow config` under NXF_HOME: keep each run fresh
        result = subprocess.run([args.nf_core, "pipelines", "schema", "lint",
                                 "nextflow_schema.json"], cwd=ROOT, env=env, check=False)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
