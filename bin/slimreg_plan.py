#!/usr/bin/env python3
"""PLAN: validate the samplesheet, run the pre-flight and write plan.json / plan.csv.

A thin front end for Nextflow: all logic lives in the slimreg package (`slimreg plan --help`).
"""

import sys
from pathlib import Path

try:
    from slimreg.cli import main
except ImportError:  # run from a checkout without `pip install` (conda profile): use the package beside bin/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from slimreg.cli import main

if __name__ == "__main__":
    sys.exit(main(["plan", *sys.argv[1:]]))
