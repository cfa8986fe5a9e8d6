#!/usr/bin/env python3
"""Parse every tracked .nf and .config file with reftrace (a real Nextflow grammar) and check configs against the
strict parser's top-level rule; exit 1 on any problem.

No Nextflow runtime can be installed on the project's machines, so this is the syntax gate for CI.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import reftrace


def nextflow_files(root: Path) -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "*.nf", "*.config"], cwd=root, capture_output=True, text=True,
                            check=False).stdout.split()
    found = {root / p for p in listed} | set(root.glob("**/*.nf")) | set(root.glob("**/*.config"))
    skip = {"work", ".nextflow", "results"}  # and every virtual environment (.venv, .venv-nfcore: nf-core's
    # own pipeline template holds .nf files that are Jinja templates, not Nextflow)
    return sorted(p for p in found if p.is_file() and not skip & set(p.relative_to(root).parts)
                  and not any(part.startswith(".venv") for part in p.relative_to(root).parts))


def parse_error(path: Path) -> str | None:
    """reftrace's parse error for a .nf (as a module) or .config (as a config file), or None."""
    if path.suffix == ".config":
        result = reftrace.ConfigFile.from_file(str(path))
        return result.error or None
    module = reftrace.Module.from_file(str(path))
    return module.error if isinstance(module, reftrace.ParseError) else None


TOP_LEVEL_STATEMENT = re.compile(r"^\s*(def|if|for|while|switch|try|return)\b")


def strict_config_problems(path: Path) -> list[str]:
    """Top-level statements Nextflow's strict config parser (the default since 26.04) rejects: a config file may
    hold only assignments, blocks and includes, so ``def x = ...`` or ``if (...)`` at depth 0 stops the run."""
    problems, depth, in_comment = [], 0, False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        code = line
        if in_comment:
            if "*/" not in code:
                continue
            code, in_comment = code.split("*/", 1)[1], False
        if "/*" in code and "*/" not in code.split("/*", 1)[1]:
            code, in_comment = code.split("/*", 1)[0], True
        code = re.sub(r"//(?!.*['\"]).*$", "", code)  # drop line comments that are not inside a string
        if depth == 0 and TOP_LEVEL_STATEMENT.match(code):
            problems.append(f"{path}:{number}: `{code.strip()[:80]}`: only assignments, blocks and includes are "
                            "allowed at the top of a config under the strict parser (move it into params)")
        depth += code.count("{") - code.count("}")
    return problems


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    files = nextflow_files(root)
    failures = 0
    for path in files:
        error = parse_error(path)
        if error:
            failures += 1
            print(f"{path.relative_to(root)}: ParseError: {error}", file=sys.stderr)
        if path.suffix == ".config":
            for problem in strict_config_problems(path):
                failures += 1
                print(problem, file=sys.stderr)
    print(f"reftrace: parsed {len(files)} Nextflow file(s), {failures} with errors")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
