"""The run report: one self-contained HTML page, metrics.csv and a MultiQC custom-content table.

Everything is read from the run's output folder: QC JSON files, the plan's estimates, the per-task memory
logs (and a Nextflow trace, when present), so the same report serves `slimreg run` and the pipeline.
Thumbnails are embedded as data URIs and the chart is inline SVG: the page loads nothing from the network.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import fnmatch
import html
import io
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import cv2
import numpy as np

from slimreg import layout
from slimreg.atomic import write_text_atomic
from slimreg.errors import InputError
from slimreg.plan_model import Plan
from slimreg.versions import software_versions

COLUMNS = ("edge_correlation_before", "edge_correlation_after", "significance_after", "ncc_before", "ncc_after",
           "mi_before", "mi_after", "coverage", "landmark_median_before_px",
           "landmark_median_after_px", "landmark_p90_after_px", "landmark_max_after_px", "landmark_median_after_um",
           "landmark_rtre_after")
MB = 1024**2


def _find(results: Path, pattern: str) -> list[Path]:
    """Files under ``results`` whose name matches ``pattern``, through linked folders too: the pipeline stages each
    task's folder for the report as a link, which ``Path.glob("**")`` does not enter before Python 3.13."""
    found = []
    for folder, _, names in os.walk(results, followlinks=True):
        found += [Path(folder) / name for name in fnmatch.filter(names, pattern)]
    return sorted(found)


def _qc_records(results: Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted(_find(results, f"*{layout.QC_JSON_SUFFIX}")):
        data = json.loads(path.read_text())
        data["sample"] = data.get("sample") or path.parent.name
        data["name"] = path.name.removesuffix(layout.QC_JSON_SUFFIX)
        # the picture beside its JSON, never one of the same name elsewhere: two samples may share a session name
        # (the pipeline stages each QC task's qc/ folder whole, so the pair stays together)
        data["png_path"] = path.with_name(data.get("png", path.name.replace(".json", ".png")))
        records.append(data)
    return records


def _registration_failures(results: Path) -> list[dict[str, Any]]:
    """Images that REGISTER could not register (from its logs), as report rows: they have no QC of their own."""
    records = []
    for path in sorted(_find(results, f"*{layout.REGISTER_LOG_SUFFIX}")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        for image in data.get("images", []):
            if image.get("status") == "ok":
                continue
            records.append({"sample": path.parent.name, "name": image.get("stem") or Path(image["image"]).name,
                            "status": "failed", "reasons": [image.get("error") or "registration failed"],
                            "metrics": {}, "png_path": None})
    return records


def _thumbnail(png: Path, width: int = 320) -> str:
    image = cv2.imread(str(png))
    if image is None:
        return ""
    scale = width / image.shape[1]
    small = cv2.resize(image, (width, max(1, int(image.shape[0] * scale))), interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return "data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode() if ok else ""


def _trace_rows(results: Path) -> list[dict[str, str]]:
    """Every row of every Nextflow execution trace under ``results``, in file order (later attempts later)."""
    return [row for trace in sorted(_find(results, "execution_trace*.txt"))
            for row in csv.DictReader(trace.read_text().splitlines(), delimiter="\t")]


def _task_memory(results: Path, plan: Plan | None) -> list[dict[str, Any]]:
    """Estimated (plan) vs measured (memory logs or Nextflow trace) peak memory and wall time per task."""
    measured: dict[str, dict[str, float]] = {}
    for path in sorted(_find(results, f"*{layout.MEMORY_LOG_SUFFIX}")):
        data = json.loads(path.read_text())
        task_id = data.get("task") or path.name.removesuffix(layout.MEMORY_LOG_SUFFIX)
        steps = data.get("steps", data.get("tasks", []))  # "tasks": logs written before 0.1.1
        peak = data.get("process_peak_bytes") or max((t["peak_bytes"] for t in steps), default=0)
        seconds = sum(t["wall_seconds"] for t in steps)
        measured[task_id] = {"peak": peak, "seconds": seconds, "measured_in": data.get("measured_in", "")}
    for row in _trace_rows(results):
        tag = (row.get("tag") or "").strip()
        if tag and row.get("peak_rss", "-") not in ("-", ""):
            measured.setdefault(tag, {"peak": _parse_size(row["peak_rss"]), "measured_in": "own process",
                                      "seconds": _parse_seconds(row.get("realtime", "0"))})
    rows = []
    for task in plan.tasks if plan else []:
        found = measured.get(task.id, {})
        rows.append({"id": task.id, "kind": task.kind, "estimated": task.peak_memory_bytes,
                     "measured": found.get("peak"), "seconds": found.get("seconds"),
                     "measured_in": found.get("measured_in", "")})
    return rows


def _task_outcomes(results: Path) -> list[dict[str, Any]]:
    """Tasks that were retried, stopped or did not finish: from a local run's outcomes file, or from the attempts
    in a Nextflow trace (the last attempt of each task counts)."""
    rows: dict[str, dict[str, Any]] = {}
    for path in sorted(_find(results, f"{layout.RUN_OUTCOMES}")):
        for outcome in json.loads(path.read_text()).get("outcomes", []):
            if outcome["attempts"] > 1 or outcome["status"] not in ("done", "skipped"):
                rows[outcome["id"]] = {"id": outcome["id"], "status": outcome["status"],
                                       "attempts": outcome["attempts"],
                                       "presets": ", ".join(p or "as planned" for p in outcome["presets"]),
                                       "message": outcome["message"]}
    for row in _trace_rows(results):
        tag, status = (row.get("tag") or "").strip(), (row.get("status") or "").strip()
        attempt = int(row["attempt"]) if (row.get("attempt") or "").isdigit() else 1
        if tag and (attempt > 1 or status not in ("COMPLETED", "CACHED")):
            rows[tag] = {"id": tag, "status": status.lower(), "attempts": attempt, "presets": "",
                         "message": f"exit status {row.get('exit', '-')}"}
    order = {"failed": 0, "killed": 1, "timeout": 2, "blocked": 3}
    return sorted(rows.values(), key=lambda r: (order.get(r["status"], 4), r["id"]))


def _outcomes_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    body = "".join(f'<tr class="{"failed" if r["status"] not in ("done", "completed") else "pass"}">'
                   f'<td>{html.escape(r["id"])}</td><td class="status">{html.escape(r["status"])}</td>'
                   f'<td>{r["attempts"]}</td><td>{html.escape(r["presets"])}</td><td>{html.escape(r["message"])}</td>'
                   "</tr>" for r in rows)
    return ('<h2>Tasks retried, stopped or not finished</h2><table class="outcomes"><thead><tr><th>task</th>'
            "<th>status</th><th>attempts</th><th>presets</th><th>message</th></tr></thead><tbody>"
            f"{body}</tbody></table>")


def _parse_size(text: str) -> float:
    units = {"B": 1, "KB": 1024, "MB": MB, "GB": 1024**3, "TB": 1024**4}
    number, _, unit = text.strip().partition(" ")
    try:
        return float(number) * units.get(unit.upper(), 1)
    except ValueError:
        return 0.0


def _parse_seconds(text: str) -> float:
    total = 0.0
    for part in text.split():
        for suffix, factor in (("ms", 0.001), ("h", 3600), ("m", 60), ("s", 1)):
            if part.endswith(suffix):
                with contextlib.suppress(ValueError):
                    total += float(part[: -len(suffix)]) * factor
                break
    return total


def _memory_svg(rows: list[dict[str, Any]]) -> str:
    rows = [r for r in rows if r["kind"] != "report"]
    if not rows:
        return "<p>No task memory recorded.</p>"
    top = max(max(r["estimated"], r["measured"] or 0) for r in rows) or 1
    bar, gap, label = 9, 8, 230
    height = len(rows) * (2 * bar + gap) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="900" height="{height}" role="img" '
             'aria-label="estimated and measured peak memory per task">']
    for i, row in enumerate(rows):
        y = 20 + i * (2 * bar + gap)
        est = 600 * row["estimated"] / top
        parts.append(f'<text x="0" y="{y + bar + 3}" font-size="11">{html.escape(row["id"][:36])}</text>')
        parts.append(f'<rect x="{label}" y="{y}" width="{est:.1f}" height="{bar}" fill="#9ecae1"/>')
        if row["measured"]:
            meas = 600 * row["measured"] / top
            parts.append(f'<rect x="{label}" y="{y + bar}" width="{meas:.1f}" height="{bar}" fill="#3182bd"/>')
            seconds = f', {row["seconds"]:.1f} s' if row.get("seconds") is not None else ""
            shared = " (shared process)" if row.get("measured_in") == "shared process" else ""
            parts.append(f'<text x="{label + max(est, meas) + 4}" y="{y + bar + 3}" font-size="10">'
                         f'{row["estimated"] / MB:.0f} / {row["measured"] / MB:.0f} MB{seconds}{shared}</text>')
    parts.append('<text x="230" y="12" font-size="11">light: estimated peak, dark: measured peak of the task\'s own '
                 'process ("shared process": serial mode, includes earlier tasks); estimated / measured, wall time'
                 '</text></svg>')
    return "".join(parts)


def _tsv_field(value: Any) -> str:
    """One field of the MultiQC table: a tab or line break inside it would shift every column after it (or start a
    new row), so every character that is not printable is written as its escape (a tab as \\t, NUL as \\x00).
    Validation refuses such names already; this keeps a table written from older results whole."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(value))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "" if not np.isfinite(value) else f"{value:.3f}"
    return "" if value is None else html.escape(str(value))


def build_report(results: str | Path, outdir: str | Path, plan: Plan | None = None) -> Path:
    """Write ``report.html``, ``metrics.csv`` and ``slimreg_mqc.tsv`` into ``outdir``; return the HTML path."""
    results, outdir = Path(results), Path(outdir)
    if not results.is_dir():
        raise InputError("results folder not found.", results, "give the --outdir of a slimreg run.")
    if plan is None:
        found = sorted(_find(results, "plan.json"))
        plan = Plan.load(found[0]) if found else None
    records = _registration_failures(results) + _qc_records(results)
    records.sort(key=lambda r: ({"failed": 0, "fail": 1}.get(r["status"], 2), r["sample"], r["name"]))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["sample", "image", "status", "reasons", *COLUMNS])
    for r in records:
        writer.writerow([r["sample"], r["name"], r["status"], " | ".join(r["reasons"]),
                         *[r["metrics"].get(c, "") for c in COLUMNS]])
    write_text_atomic(outdir / "metrics.csv", buffer.getvalue())
    mqc = ["# id: 'slimreg'", "# section_name: 'slimreg registration QC'",
           "# description: 'Normalised cross-correlation, mutual information, coverage and landmark error "
           "before and after registration.'", "# plot_type: 'table'", "\t".join(["Sample", "status", *COLUMNS])]
    mqc += ["\t".join(_tsv_field(v) for v in [f"{r['sample']}_{r['name']}", r["status"],
                                              *[r["metrics"].get(c, "") for c in COLUMNS]])
            for r in records]
    write_text_atomic(outdir / "slimreg_mqc.tsv", "\n".join(mqc) + "\n")

    failed = sum(r["status"] == "fail" for r in records)
    unregistered = sum(r["status"] == "failed" for r in records)
    sections = []
    for sample in dict.fromkeys(r["sample"] for r in records):
        rows = []
        for r in (x for x in records if x["sample"] == sample):
            cells = "".join(f"<td>{_fmt(r['metrics'].get(c))}</td>" for c in COLUMNS)
            reasons = "<br>".join(html.escape(x) for x in r["reasons"])
            if r["png_path"] is None:
                picture = "<td>no registered image</td>"
            elif not r["png_path"].is_file():
                picture = "<td>no QC picture</td>"
            else:
                # where the picture is published beside the report (slimreg run and the pipeline alike), not
                # where this task read it: report/report.html -> ../qc/<sample>/<name>_qc.png
                link = "/".join(quote(part) for part in ("..", layout.QC, r["png_path"].parent.name,
                                                          r["png_path"].name))
                picture = (f'<td><a href="{html.escape(link)}"><img src="{_thumbnail(r["png_path"])}" '
                           f'alt="QC overlay of {html.escape(r["name"])}" width="160"></a></td>')
            rows.append(f'<tr class="{r["status"]}">{picture}'
                        f'<td>{html.escape(r["name"])}</td><td class="status">{r["status"]}</td><td>{reasons}</td>'
                        f"{cells}</tr>")
        header = "".join(f"<th>{c.replace('_', ' ')}</th>" for c in COLUMNS)
        sections.append(f'<h2>Sample {html.escape(sample)}</h2><table class="qc"><thead><tr><th>overlay</th>'
                        f"<th>image</th><th>status</th><th>reasons</th>{header}</tr></thead><tbody>"
                        f"{''.join(rows)}</tbody></table>")
    memory_rows = _task_memory(results, plan)
    settings = {"registration": plan.registration, "plan": plan.settings} if plan else {}
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in (plan.notes if plan else []))
    versions = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
                       for k, v in software_versions().items())
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>slimreg report</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: middle; }}
tr.fail td.status, tr.failed td.status {{ background: #f8d0d0; font-weight: bold; }}
tr.pass td.status {{ background: #d5f0d5; }}
.summary {{ font-size: 15px; }}
</style></head>
<body data-ready="0">
<h1>slimreg registration report</h1>
<p class="summary" id="summary">{len(records) - unregistered} registered image(s), {failed} failed QC,
{unregistered} could not be registered (listed first, with the reason and the fix).</p>
{_outcomes_table(_task_outcomes(results))}
{''.join(sections) or '<p>No QC results found.</p>'}
{'<h2>Notes</h2><ul>' + notes + '</ul>' if notes else ''}
<h2>Memory and time per task: estimated vs measured</h2>
{_memory_svg(memory_rows)}
<h2>Settings</h2><pre>{html.escape(json.dumps(settings, indent=2))}</pre>
<h2>Software versions</h2><table>{versions}</table>
<script>document.body.dataset.ready = "1";</script>
</body></html>
"""
    return write_text_atomic(outdir / "report.html", page)
