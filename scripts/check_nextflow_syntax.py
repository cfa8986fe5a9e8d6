#!/usr/bin/env python3
"""Parse every tracked .nf and .config file with reftrace (a real Nextflow grammar); exit 1 on a ParseError.

No Nextflow runtime can be installed on the project's machines, so this is the syntax gate for CI.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import reftrace


def nextflow_files(root: Path) -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "*.nf", "*.config"], cwd=root, capture_output=True, text=True,
                            check=False).stdout.split()
    found = {root / p for p in listed} | set(root.glob("**/*.nf")) | set(root.glob("**/*.config"))
    skip = {".venv", "work", ".nextflow", "results"}
    return sorted(p for p in found if p.is_file() and not skip & set(p.relative_to(root).parts))


def parse_error(path: Path) -> str | None:
    """reftrace's parse error for a .nf (as a module) or .config (as a config file), or None."""
    if path.suffix == ".config":
        result = reftrace.ConfigFile.from_file(str(path))
        return result.error or None
    module = reftrace.Module.from_file(str(path))
    return module.error if isinstance(module, reftrace.ParseError) else None


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    files = nextflow_files(root)
    failures = 0
    for path in files:
        error = parse_error(path)
        if error:
            failures += 1
            print(f"{path.relative_to(root)}: ParseError: {error}", file=sys.stderr)
    print(f"reftrace: parsed {len(files)} Nextflow file(s), {failures} with errors")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
