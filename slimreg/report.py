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
import math
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import cv2
import numpy as np

import slimreg.layout as layout
from slimreg.atomic import write_text_atomic
from slimreg.errors import InputError, ParameterError
from slimreg.plan_model import Plan, Task
from slimreg.qc import LANDMARK_LEGEND, LEGEND, QcThresholds
from slimreg.resources import parse_size
from slimreg.versions import software_versions

COLUMNS = ("edge_correlation_before", "edge_correlation_after", "significance_after", "tissue_shared_after",
           "ncc_before", "ncc_after", "mi_before", "mi_after", "coverage", "landmark_median_before_px",
           "landmark_median_after_px", "landmark_p90_after_px", "landmark_max_after_px", "landmark_median_after_um",
           "landmark_rtre_after")
# appended after the metrics in metrics.csv (readers that take columns by name or position keep working)
NAME_COLUMNS = ("reference", "images")
MB = 1024**2
SIGNIFICANT_DIGITS = 4
SHOWN_ONLY = "shown, not judged"


def metric_legend(t: QcThresholds) -> dict[str, tuple[str, str]]:
    """What each column means and the rule that makes an image pass, worded from ``t``: the thresholds QC judged
    by (slimreg.qc.verdict), so the report never states a number of its own that could drift from them."""
    landmark_rule = (f"must be lower than before and at most {t.max_landmark_error_px:g} px"
                     if t.max_landmark_error_px is not None else
                     f"must be lower than before, and at most {t.max_landmark_rtre:.1%} of the reference's diagonal "
                     "(landmark rtre after)")
    moved = "after must be higher than before (when the image moved)"
    return {
        "edge_correlation_before": ("correlation of the two images' edge maps (smoothed gradient magnitude, blind to "
                                    "which stain made the edge) over both tissues, the image left where it was; 1 = "
                                    "identical edges", moved),
        "edge_correlation_after": ("the same, for the registered image",
                                   f"{moved}; judged through significance after"),
        "significance_after": ("how many noise standard deviations edge correlation after stands above the same "
                               "image placed at a ring of far offsets (real structure aligned, not only outlines)",
                               f"at least {t.min_significance:g}"),
        "tissue_shared_after": ("share of the smaller of the two tissues that lies on the other's tissue",
                                f"more than {t.min_shared_tissue:.0%}"),
        "ncc_before": ("normalised cross-correlation of intensities over the reference tissue, before "
                       "(-1 to 1; low between different stains even when aligned)", SHOWN_ONLY),
        "ncc_after": ("the same, after registration; higher is better", SHOWN_ONLY),
        "mi_before": ("mutual information of intensities over the reference tissue, bits, before", SHOWN_ONLY),
        "mi_after": ("the same, after registration; higher is better", SHOWN_ONLY),
        "coverage": ("share of the reference's tissue that the registered image covers",
                     f"at least {t.min_coverage:.0%}"),
        "landmark_median_before_px": ("median distance between each landmark of the image and its reference "
                                      "landmark, the image left where it was, level-0 px", SHOWN_ONLY),
        "landmark_median_after_px": ("the same, after registration", landmark_rule),
        "landmark_p90_after_px": ("90th percentile of the landmark distances after, px", SHOWN_ONLY),
        "landmark_max_after_px": ("largest landmark distance after, px", SHOWN_ONLY),
        "landmark_median_after_um": ("median landmark distance after, in micrometres (the reference's pixel size)",
                                     SHOWN_ONLY),
        "landmark_rtre_after": ("median landmark distance after divided by the reference's diagonal (rTRE, as in "
                                "the ANHIR challenge)", f"at most {t.max_landmark_rtre:.1%}"
                                if t.max_landmark_error_px is None else
                                f"not judged: --max-landmark-error {t.max_landmark_error_px:g} px applies instead"),
    }


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


def _motion_records(results: Path) -> list[dict[str, Any]]:
    """Each recording (or piece) corrected for motion: its QC numbers and shift plot (slimreg.recording)."""
    records = []
    for path in _find(results, f"*{layout.MOTION_JSON_SUFFIX}"):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        # the per-frame list of records written before the summary held the largest shift
        shifts = [(s["dy"], s["dx"]) for s in data.get("shifts", []) if s.get("status") == "ok"]
        largest = data.get("largest_shift_px", max((math.hypot(dy, dx) for dy, dx in shifts), default=0.0))
        records.append({"sample": path.parent.name, "name": path.name.removesuffix(layout.MOTION_JSON_SUFFIX),
                        "mode": data.get("mode", ""), "dtype": data.get("dtype", ""), "frames": data.get("frames", 0),
                        "first_frame": data.get("first_frame", 0), "qc": data.get("qc", {}),
                        "flagged": len(data.get("blank_frames", [])) + len(data.get("nan_frames", [])),
                        "largest_shift": largest,
                        "png_path": path.with_name(path.name.replace(layout.MOTION_JSON_SUFFIX,
                                                                      layout.MOTION_PNG_SUFFIX))})
    return sorted(records, key=lambda r: (r["sample"], r["name"]))


def _motion_section(records: list[dict[str, Any]]) -> str:
    """A table per run: correlation of each frame with the mean and crispness of the mean, before and after
    (CaImAn's metrics: both should rise), frames left alone, the largest shift, and the shifts over time."""
    if not records:
        return ""
    rows = []
    for r in records:
        qc = r["qc"]
        link = "/".join(quote(part) for part in ("..", layout.QC, r["png_path"].parent.name, r["png_path"].name))
        plot = (f'<a href="{html.escape(link)}"><img src="{_thumbnail(r["png_path"], 400)}" '
                f'alt="shifts of {html.escape(r["name"])}" width="400"></a>') if r["png_path"].is_file() else "no plot"
        last = r["first_frame"] + r["frames"] - 1
        correlation = f"{_fmt(qc.get('mean_correlation_before'))} &rarr; {_fmt(qc.get('mean_correlation_after'))}"
        sharpness = f"{_fmt(qc.get('crispness_before'))} &rarr; {_fmt(qc.get('crispness_after'))}"
        rows.append(f"<tr><td>{html.escape(r['sample'])}</td><td>{html.escape(r['name'])}</td>"
                    f"<td>{html.escape(str(r['mode']))}</td><td>{html.escape(str(r['dtype']))}</td>"
                    f"<td>{r['first_frame']}-{last}</td><td>{r['flagged']}</td>"
                    f"<td>{correlation}</td><td>{sharpness}</td><td>{_fmt(r['largest_shift'])}</td><td>{plot}</td></tr>")
    return ('<h2 id="motion">Motion correction</h2><p class="legend">Each frame aligned to its session\'s template '
            "before sessions are registered. Correlation: each frame with the recording's mean (mean over frames); "
            "crispness: sharpness of the mean image (norm of its gradient). Both rise when motion was removed. "
            "Blank or NaN frames are left as recorded. The QC is of the frames as written: an integer type clips "
            "what subpixel moves overshoot, which lowers crispness (float32 keeps it; --motion-dtype). Per-frame "
            "shifts: transforms/&lt;sample&gt;/&lt;recording&gt;"
            '.shifts.csv.</p><div class="wide"><table class="motion"><thead><tr><th>sample</th><th>recording</th>'
            "<th>mode</th><th>written as</th><th>frames</th><th>blank/NaN frames</th><th>correlation with mean</th>"
            "<th>crispness</th>"
            f"<th>largest shift px</th><th>shifts (dy blue, dx red)</th></tr></thead><tbody>{''.join(rows)}"
            "</tbody></table></div>")


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
    """Bytes of a trace's memory column (``1.2 GB``); 0 where it holds none (``-``)."""
    try:
        return float(parse_size(text))
    except ParameterError:
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


ESTIMATED_COLOUR, MEASURED_COLOUR = "#9ecae1", "#3182bd"
# The chart's text is monospace, whose every character is this many ems wide or less (DejaVu Sans Mono, Liberation
# Mono, Courier, Menlo: 0.60-0.61): the picture is sized from its longest texts, so none is cut off.
CHAR_EM = 0.62
LABEL_FONT, NUMBER_FONT, BAR_AREA = 11, 10, 520


def _text_width(text: str, font_px: int) -> float:
    return len(text) * font_px * CHAR_EM


def _memory_svg(rows: list[dict[str, Any]]) -> str:
    """Estimated and measured peak memory per task as bars, each task's id at its left and its numbers after its
    bars. The picture's width is computed from its longest id and longest numbers (the old fixed 900 px cut off the
    numbers of the biggest, slowest tasks, whose bars are longest), and its height grows with the task count."""
    rows = [r for r in rows if r["kind"] != "report"]
    if not rows:
        return "<p>No task memory recorded.</p>"
    top = max(max(r["estimated"], r["measured"] or 0) for r in rows) or 1
    bar, gap = 9, 8
    numbers = []
    for row in rows:
        if row["measured"]:
            seconds = f', {row["seconds"]:.1f} s' if row.get("seconds") is not None else ""
            shared = " (shared process)" if row.get("measured_in") == "shared process" else ""
            numbers.append(f'{row["estimated"] / MB:.0f} / {row["measured"] / MB:.0f} MB{seconds}{shared}')
        else:
            numbers.append(f'{row["estimated"] / MB:.0f} MB estimated, not measured')
    label = int(max(_text_width(r["id"], LABEL_FONT) for r in rows)) + 12
    width = label + BAR_AREA + 4 + int(max(_text_width(n, NUMBER_FONT) for n in numbers)) + 8
    height = len(rows) * (2 * bar + gap) + 12
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="memory" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans Mono, Liberation Mono, Menlo, monospace" '
             'role="img" aria-label="estimated and measured peak memory per task">']
    for i, (row, text) in enumerate(zip(rows, numbers, strict=True)):
        y = 6 + i * (2 * bar + gap)
        est = BAR_AREA * row["estimated"] / top
        meas = BAR_AREA * (row["measured"] or 0) / top
        parts.append(f'<text x="0" y="{y + bar + 3}" font-size="{LABEL_FONT}">{html.escape(row["id"])}</text>')
        parts.append(f'<rect x="{label}" y="{y}" width="{est:.1f}" height="{bar}" fill="{ESTIMATED_COLOUR}"/>')
        if row["measured"]:
            parts.append(f'<rect x="{label}" y="{y + bar}" width="{meas:.1f}" height="{bar}" '
                         f'fill="{MEASURED_COLOUR}"/>')
        parts.append(f'<text x="{label + max(est, meas) + 4:.1f}" y="{y + bar + 3}" font-size="{NUMBER_FONT}">'
                     f"{html.escape(text)}</text>")
    parts.append("</svg>")
    legend = (f'<p class="legend"><span class="swatch" style="background:{ESTIMATED_COLOUR}"></span> estimated peak '
              f'(the plan) <span class="swatch" style="background:{MEASURED_COLOUR}"></span> measured peak of the '
              'task\'s own process ("shared process": serial mode, includes earlier tasks); after the bars: '
              "estimated / measured MB, wall time</p>")
    return legend + '<div class="chart">' + "".join(parts) + "</div>"


def _tsv_field(value: Any) -> str:
    """One field of the MultiQC table: a tab or line break inside it would shift every column after it (or start a
    new row), so every character that is not printable is written as its escape (a tab as \\t, NUL as \\x00).
    Validation refuses such names already; this keeps a table written from older results whole."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(value))


def _fmt(value: Any) -> str:
    """A number with 4 significant digits (an rTRE of 0.0026 read 0.003 or 0.000 with 3 decimals), without an
    exponent up to 10^6; anything else as text."""
    if isinstance(value, bool) or not isinstance(value, float | int | np.floating | np.integer):
        return "" if value is None else html.escape(str(value))
    if not np.isfinite(value):
        return ""
    if isinstance(value, int | np.integer) or abs(value) >= 10**SIGNIFICANT_DIGITS:
        return f"{value:.0f}" if abs(value) < 1e6 else f"{value:.{SIGNIFICANT_DIGITS}g}"
    return f"{value:.{SIGNIFICANT_DIGITS}g}"


def _origins(path: str, producers: dict[str, Task]) -> list[str]:
    """The samplesheet files ``path`` was made from: through split, motion and project tasks, whose outputs are the
    same images in another form (pieces, corrected pieces, a session's projection); any other path is its own
    origin."""
    task = producers.get(path)
    if task is None or task.kind not in ("split", "template", "motion", "project"):
        return [path]
    return list(dict.fromkeys(origin for source in task.inputs for origin in _origins(source, producers)))


def _plan_names(plan: Plan | None) -> tuple[dict[tuple[str, str], list[str]], dict[str, list[str]]]:
    """File names from the samplesheet, from the plan: the images behind each QC row, keyed by (sample, stem), and
    each sample's reference. A session's row is named by its session ("s2") and a session's reference is a
    projection in work/: the user knows neither; they know the files they listed."""
    images: dict[tuple[str, str], list[str]] = {}
    references: dict[str, list[str]] = {}
    if plan is None:
        return images, references
    producers = {output: task for task in plan.tasks for output in task.outputs}
    for task in plan.tasks:
        reference = task.params.get("reference")
        if task.kind in ("qc", "register") and isinstance(reference, str):
            references.setdefault(task.sample, [Path(p).name for p in _origins(reference, producers)])
        original = task.params.get("original")
        if task.kind == "qc" and task.outputs and isinstance(original, str):
            stem = Path(task.outputs[0]).name.removesuffix(layout.QC_PNG_SUFFIX)
            images[(task.sample, stem)] = [Path(p).name for p in _origins(original, producers)]
    return images, references


def _thresholds(records: list[dict[str, Any]]) -> tuple[QcThresholds, bool]:
    """The thresholds QC judged by, as its JSON files recorded them (QcThresholds' defaults where none did), and
    whether the images were judged by more than one set."""
    known = {f for f in QcThresholds.__dataclass_fields__}
    found = [QcThresholds(**{k: v for k, v in r["thresholds"].items() if k in known})
             for r in records if isinstance(r.get("thresholds"), dict)]
    return (found[0] if found else QcThresholds()), len(set(found)) > 1


def _swatch(colour: tuple[int, int, int] | str) -> str:
    background = colour if isinstance(colour, str) else "rgb({},{},{})".format(*colour)
    return f'<span class="swatch" style="background:{background}"></span>'


def _legend_section(thresholds: QcThresholds, differ: bool) -> str:
    """How to read the tables and the overlays: every column's meaning and pass rule, every colour's meaning."""
    overlay = " ".join(f"{_swatch(colour)} {html.escape(meaning)}" for _, colour, meaning in LEGEND)
    marks = " ".join(f"{_swatch(colour)} {html.escape(meaning)}" for _, colour, meaning in LANDMARK_LEGEND)
    rows = "".join(f'<tr><td class="metric">{html.escape(column.replace("_", " "))}</td><td>{html.escape(meaning)}'
                   f'</td><td>{html.escape(rule)}</td></tr>'
                   for column, (meaning, rule) in metric_legend(thresholds).items())
    note = ("<p>The images were judged by different thresholds; the rules below are the first image's, each "
            "image's own are in its _qc.json.</p>") if differ else ""
    return ('<h2>How to read this report</h2><p class="legend">Overlays, the reference in green and the image in '
            f"magenta: {overlay}. Where landmarks were given: {marks}. Left: before registration (the image as it "
            "was), right: after. Click a picture for the full size.</p>"
            '<p class="legend"><b>status</b>: pass when every rule below holds; fail when one does not (the reasons '
            "say which); failed: the image could not be registered.</p>"
            f'{note}<table class="legend"><thead><tr><th>column</th><th>what it measures</th><th>pass rule</th>'
            f"</tr></thead><tbody>{rows}</tbody></table>")


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
    image_names, reference_names = _plan_names(plan)
    for r in records:
        r["images"] = image_names.get((r["sample"], r["name"])) or r.get("images") or []
        r["reference_names"] = reference_names.get(r["sample"]) or (
            [Path(r["reference"]).name] if isinstance(r.get("reference"), str) else [])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["sample", "image", "status", "reasons", *COLUMNS, *NAME_COLUMNS])
    for r in records:
        writer.writerow([r["sample"], r["name"], r["status"], " | ".join(r["reasons"]),
                         *[r["metrics"].get(c, "") for c in COLUMNS], " + ".join(r["reference_names"]),
                         " + ".join(r["images"])])
    write_text_atomic(outdir / "metrics.csv", buffer.getvalue())
    mqc = ["# id: 'slimreg'", "# section_name: 'slimreg registration QC'",
           "# description: 'Edge correlation and its significance, normalised cross-correlation, mutual information, "
           "coverage and landmark error before and after registration (pass rules: slimreg report.html).'",
           "# plot_type: 'table'", "\t".join(["Sample", "status", *COLUMNS])]
    mqc += ["\t".join(_tsv_field(v) for v in [f"{r['sample']}_{r['name']}", r["status"],
                                              *[r["metrics"].get(c, "") for c in COLUMNS]])
            for r in records]
    write_text_atomic(outdir / "slimreg_mqc.tsv", "\n".join(mqc) + "\n")

    failed = sum(r["status"] == "fail" for r in records)
    unregistered = sum(r["status"] == "failed" for r in records)
    legend = metric_legend(_thresholds(records)[0])
    sections = []
    for sample in dict.fromkeys(r["sample"] for r in records):
        rows = []
        sample_records = [x for x in records if x["sample"] == sample]
        for r in sample_records:
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
                sides = ("left: before, right: after registration" if "edge_correlation_before" in r["metrics"]
                         else "after registration")
                if any(k.startswith("landmark_median") for k in r["metrics"]):
                    sides += "; rings and crosses: landmarks"
                picture = (f'<td class="overlay"><a href="{html.escape(link)}"><img src="{_thumbnail(r["png_path"])}" '
                           f'alt="QC overlay of {html.escape(r["name"])}" width="320"></a>'
                           f'<div class="caption">{sides}</div></td>')
            files = r["images"]
            named = "" if not files or (len(files) == 1 and files[0].split(".")[0] == r["name"]) else (
                f'<div class="files">{"<br>".join(html.escape(f) for f in files)}</div>')
            rows.append(f'<tr class="{r["status"]}">{picture}'
                        f'<td class="image">{html.escape(r["name"])}{named}</td><td class="status">{r["status"]}</td>'
                        f"<td>{reasons}</td>{cells}</tr>")
        header = "".join(f'<th title="{html.escape(legend[c][0])}. Pass rule: {html.escape(legend[c][1])}">'
                         f"{c.replace('_', ' ')}</th>" for c in COLUMNS)
        reference = next((x["reference_names"] for x in sample_records if x["reference_names"]), [])
        named_reference = (f'<p class="reference">Reference (every image of this sample is registered onto it): '
                           f'<b>{html.escape(", ".join(reference))}</b></p>') if reference else \
            '<p class="reference">Reference: not recorded in these results.</p>'
        sections.append(f'<h2>Sample {html.escape(sample)}</h2>{named_reference}<div class="wide"><table class="qc">'
                        f"<thead><tr><th>overlay</th><th>image</th><th>status</th><th>reasons</th>{header}</tr>"
                        f"</thead><tbody>{''.join(rows)}</tbody></table></div>")
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
.swatch {{ display: inline-block; width: 0.9em; height: 0.9em; border: 1px solid #777; vertical-align: -0.1em; }}
.legend {{ font-size: 13px; max-width: 80em; }}
table.legend td.metric {{ white-space: nowrap; font-weight: bold; }}
td.overlay .caption, td.image .files, p.reference {{ font-size: 12px; color: #444; }}
p.reference {{ font-size: 14px; color: #222; }}
.chart, .wide {{ overflow-x: auto; }}
</style></head>
<body data-ready="0">
<h1>slimreg registration report</h1>
<p class="summary" id="summary">{len(records) - unregistered} registered image(s), {failed} failed QC,
{unregistered} could not be registered (listed first, with the reason and the fix).</p>
{_outcomes_table(_task_outcomes(results))}
{_legend_section(*_thresholds(records)) if records else ''}
{''.join(sections) or '<p>No QC results found.</p>'}
{_motion_section(_motion_records(results))}
{'<h2>Notes</h2><ul>' + notes + '</ul>' if notes else ''}
<h2>Memory and time per task: estimated vs measured</h2>
{_memory_svg(memory_rows)}
<h2>Settings</h2><pre>{html.escape(json.dumps(settings, indent=2))}</pre>
<h2>Software versions</h2><table>{versions}</table>
<script>document.body.dataset.ready = "1";</script>
</body></html>
"""
    return write_text_atomic(outdir / "report.html", page)
