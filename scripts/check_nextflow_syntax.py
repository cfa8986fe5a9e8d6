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
    return sorted(p for p in found if ".venv" not in p.parts and "work" not in p.parts and p.is_file())


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    files = nextflow_files(root)
    failures = 0
    for path in files:
        result = reftrace.Module.from_file(str(path))
        if isinstance(result, reftrace.ParseError):
            failures += 1
            print(f"{path.relative_to(root)}: ParseError: {result.error}", file=sys.stderr)
    print(f"reftrace: parsed {len(files)} Nextflow file(s), {failures} with errors")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
