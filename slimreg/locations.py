"""Where a task finds each file it names: its samplesheet files as Nextflow staged them (or in place, for
`slimreg run`), the products of other tasks under the run's folder or, staged flat by Nextflow, by name.

Low in the package: the kinds receive a :class:`Locations` to run; the executor (slimreg.tasks) makes it.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import slimreg.layout as layout
from slimreg.plan_model import Task


def resolve(path: str, root: Path, must_exist: bool = False) -> Path:
    candidate = Path(path)
    if candidate.is_absolute():
        return candidate
    full = root / candidate
    if must_exist and not full.exists() and (root / candidate.name).exists():
        return root / candidate.name
    return full


def staged_source(task: Task, source: str, root: Path) -> Path:
    """Where Nextflow staged one of the task's samplesheet files: ``sources/<its position>/<its name>``.

    Nextflow numbers the folders of a list of files; a list of one may be staged without the number, so a file
    is also found by its name alone when no other staged source has that name (names of one sample's images are
    unique: the samplesheet check sees to it).
    """
    name = PurePosixPath(source).name
    staged = root / layout.STAGED_SOURCES
    numbered = staged / str(task.sources.index(source) + 1) / name
    if numbered.exists():
        return numbered
    same_name = sorted(staged.rglob(name)) if staged.is_dir() else []
    return same_name[0] if len(same_name) == 1 else numbered


class Locations:
    """Where a task finds each path it names: its sources as staged (or in place), other paths under ``root``."""

    def __init__(self, task: Task, root: Path, staged: bool = False):
        self.task, self.root, self.staged = task, root, staged

    def input(self, path: str) -> Path:
        if self.staged and path in self.task.sources:
            return staged_source(self.task, path, self.root)
        return resolve(path, self.root, must_exist=True)

    def output(self, path: str) -> Path:
        return resolve(path, self.root)


__all__ = ["Locations", "resolve", "staged_source"]
