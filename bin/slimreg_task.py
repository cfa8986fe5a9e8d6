#!/usr/bin/env python3
"""SPLIT_STACK, PROJECT_SESSION, REGISTER, MERGE_CHUNKS and GENERATE_REGISTRATION_QC: run one task of the plan.

A thin front end for Nextflow: all logic lives in the slimreg package (`slimreg run-task --help`).
"""

import sys
from pathlib import Path

try:
    from slimreg.cli import main
except ImportError:  # run from a checkout without `pip install` (conda profile): use the package beside bin/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from slimreg.cli import main

if __name__ == "__main__":
    sys.exit(main(["run-task", *sys.argv[1:]]))
