"""The kinds of task, one module each (params type, Nextflow process, estimate, run), and their one registry.

The plan, the estimate, the executor and the Nextflow contract tests all look kinds up here; the order is the
order a sample's tasks run in.
"""

from __future__ import annotations

from slimreg.errors import InputError
from slimreg.kinds import channels, merge, motion, project, publish, qc, register, report, split, template
from slimreg.kinds.base import EstimateContext, Kind, NoParams, Params, RunContext

KINDS: dict[str, Kind] = {k.name: k for k in (split.KIND, template.KIND, motion.KIND, project.KIND, register.KIND,
                                               merge.KIND, channels.KIND, publish.KIND, qc.KIND, report.KIND)}


def kind_named(name: str, task_id: str = "") -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise InputError(f"task {task_id} has an unknown kind {name!r} (known: {', '.join(KINDS)}).",
                         fix="plan again with this version of slimreg.") from None


__all__ = ["KINDS", "EstimateContext", "Kind", "NoParams", "Params", "RunContext", "kind_named"]
