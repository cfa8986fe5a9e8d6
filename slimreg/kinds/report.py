"""``report``: one HTML page (and metrics.csv, a MultiQC table) from every QC verdict and task record."""

from __future__ import annotations

from typing import TYPE_CHECKING

import slimreg.layout as layout
from slimreg.estimate import ANALYSIS_IMPORTS, MB, PROCESS_BASE, SAFETY
from slimreg.kinds.base import EstimateContext, NoParams, RunContext

if TYPE_CHECKING:
    from slimreg.plan_model import Task


class ReportKind:
    name = "report"
    process = "REPORT"
    params = NoParams

    def estimate(self, task: Task, ctx: EstimateContext) -> tuple[int, int]:
        return int(SAFETY * (PROCESS_BASE + ANALYSIS_IMPORTS + 64 * MB)), 16 * MB

    def run(self, task: Task, ctx: RunContext) -> None:
        from slimreg.report import build_report

        root = ctx.where.root
        with ctx.tracker.step(task.id):
            build_report(root, layout.report_page(root).parent, plan=ctx.plan)


KIND = ReportKind()
