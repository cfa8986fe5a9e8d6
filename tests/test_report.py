"""A report that explains itself (issue 39): every column's meaning and pass rule, numbers a reader can compare,
a memory chart whose every label lies inside the picture, overlays with a colour legend and the landmarks drawn,
every row and every sample named by the files the user listed. The browser checks run Debian's headless Chromium."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from slimreg.plan_model import Plan, Task
from slimreg.qc import (
    IMAGE_LANDMARK_COLOUR,
    LANDMARK_LEGEND,
    LEGEND,
    REFERENCE_LANDMARK_COLOUR,
    QcThresholds,
    run_qc,
)
from slimreg.report import COLUMNS, MB, build_report, metric_legend
from slimreg.transform import Transform

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# appended to a copy of the page: every text of every chart is measured where the browser laid it out
MEASURE = """<script>
const outside = [];
let measured = 0;
for (const svg of document.querySelectorAll("svg")) {
  const box = svg.viewBox.baseVal;
  const width = box && box.width ? box.width : svg.width.baseVal.value;
  const height = box && box.height ? box.height : svg.height.baseVal.value;
  for (const text of svg.querySelectorAll("text")) {
    const b = text.getBBox();
    measured += 1;
    if (b.x < -0.5 || b.y < -0.5 || b.x + b.width > width + 0.5 || b.y + b.height > height + 0.5) {
      outside.push(text.textContent + " @ " + Math.round(b.x + b.width) + " of " + Math.round(width));
    }
  }
}
document.body.dataset.measured = String(measured);
document.body.dataset.outside = outside.join(" | ");
</script></body>"""


def _browser() -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    return browser


def _qc_json(folder: Path, stem: str, metrics: dict[str, float], *, sample: str, reference: str = "",
             thresholds: QcThresholds | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = {"image": f"registered/{sample}/{stem}.ome.tif", "reference": reference, "metrics": metrics,
            "status": "pass", "reasons": [], "png": f"{stem}_qc.png", "sample": sample}
    if thresholds is not None:
        data["thresholds"] = thresholds.__dict__
    (folder / f"{stem}_qc.json").write_text(json.dumps(data))


def _plan(tasks: list[Task]) -> Plan:
    return Plan(samplesheet="s.csv", outdir="out", registration={}, settings={}, tasks=tasks, notes=[])


def test_every_metric_has_a_legend_with_the_pass_rule_from_the_thresholds_qc_judged_by(tmp_path: Path) -> None:
    """18 columns used to stand without a word on what they measure or what is good. The rules are worded from
    the thresholds recorded in the QC files (here not the defaults), never from numbers of the report's own."""
    judged = QcThresholds(min_significance=5.5, min_shared_tissue=0.6, min_coverage=0.73, max_landmark_rtre=0.021)
    _qc_json(tmp_path / "results" / "qc" / "a", "img1", {"coverage": 0.9}, sample="a", thresholds=judged)
    page = build_report(tmp_path / "results", tmp_path / "report").read_text()
    legend = page[page.index("How to read this report"):page.index("Sample a")]
    for column in COLUMNS:
        assert f'<td class="metric">{column.replace("_", " ")}</td>' in legend, column
    for rule in ("at least 5.5", "more than 60%", "at least 73%", "at most 2.1%"):
        assert rule in legend, rule
    for default in ("at least 80%", "at most 1.5%"):  # QcThresholds' defaults are not what these were judged by
        assert default not in legend
    # the column headers carry the same words as a tooltip
    assert f'title="{html.escape(metric_legend(judged)["coverage"][0])}. Pass rule: at least 73%"' in page


def test_numbers_have_four_significant_digits(tmp_path: Path) -> None:
    """An rTRE of 0.00027 used to print as 0.000 (three decimals)."""
    _qc_json(tmp_path / "results" / "qc" / "a", "img1", {"landmark_rtre_after": 0.000271553,
                                                         "significance_after": 84.1318389,
                                                         "edge_correlation_after": 0.97226170,
                                                         "landmark_median_before_px": 12345.67}, sample="a")
    page = build_report(tmp_path / "results", tmp_path / "report").read_text()
    cells = re.findall(r"<td>([0-9.e+-]+)</td>", page)
    assert {"0.0002716", "84.13", "0.9723", "12346"} <= set(cells), cells


def _memory_results(results: Path, count: int) -> Plan:
    """``count`` tasks with long ids; the last one the biggest and the slowest (its numbers end the longest bar)."""
    tasks = []
    for index in range(count):
        task_id = f"register-a-sample-with-a-rather-long-name-b{index}"
        estimated = (100 + 10 * index) * MB
        tasks.append(Task(task_id, "register", "a", inputs=[], outputs=[], peak_memory_bytes=estimated))
        log = results / "pipeline_info" / "tasks" / f"{task_id}.memory.json"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(json.dumps({"task": task_id, "measured_in": "own process",
                                   "steps": [{"peak_bytes": estimated * 1.3, "wall_seconds": 10.0 + index * 100}]}))
    return _plan(tasks)


@pytest.mark.parametrize("count", [1, 40])
def test_the_memory_chart_keeps_every_label_inside_the_picture(tmp_path: Path, count: int) -> None:
    """The chart was 900 px wide whatever it held: the numbers after the longest bars (the biggest, slowest tasks)
    and the legend ran past its edge and were cut off. Measured where Chromium lays the text out."""
    browser = _browser()
    results = tmp_path / "results"
    plan = _memory_results(results, count)
    page = build_report(results, tmp_path / "report", plan=plan)
    probe = page.with_name("measure.html")
    probe.write_text(page.read_text().replace("</body>", MEASURE))
    dom = subprocess.run([browser, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120, check=False).stdout
    measured, outside = re.search(r'data-measured="(\d+)"', dom), re.search(r'data-outside="([^"]*)"', dom)
    assert measured is not None and outside is not None, dom[-2000:]
    assert outside.group(1) == "", html.unescape(outside.group(1))
    assert int(measured.group(1)) >= 2 * count  # every task's id and numbers were measured
    slowest = f"{(100 + 10 * (count - 1)) * 1.3:.0f} MB, {10.0 + (count - 1) * 100:.1f} s"
    assert slowest in dom


def test_a_session_row_names_its_files_and_each_sample_its_reference(tmp_path: Path) -> None:
    """A calcium row was named 's2' only, and no sample said what it was registered onto: both are named by the
    files of the samplesheet, through the plan's projections (the reference of a session is a projection)."""
    results = tmp_path / "results"
    _qc_json(results / "qc" / "calcium", "s2", {"coverage": 1.0}, sample="calcium",
             reference="work/calcium/s1.projection.ome.tif")
    _qc_json(results / "qc" / "he", "he_section1", {"coverage": 1.0}, sample="he",
             reference="/data/slides/he_section0.ome.tif")  # no plan task: named from its QC file
    plan = _plan([
        Task("project-calcium-s1", "project", "calcium", inputs=["/data/calcium_s1.ome.tif"],
             outputs=["work/calcium/s1.projection.ome.tif"]),
        Task("project-calcium-s2", "project", "calcium",
             inputs=["/data/calcium_s2_part1.ome.tif", "/data/calcium_s2_part2.ome.tif"],
             outputs=["work/calcium/s2.projection.ome.tif"]),
        Task("register-calcium-b1", "register", "calcium", inputs=[], outputs=[],
             params={"reference": "work/calcium/s1.projection.ome.tif"}),
        Task("qc-calcium-s2", "qc", "calcium", inputs=[], outputs=["qc/calcium/s2_qc.png", "qc/calcium/s2_qc.json"],
             params={"reference": "work/calcium/s1.projection.ome.tif",
                     "original": "work/calcium/s2.projection.ome.tif"}),
    ])
    page = build_report(results, tmp_path / "report", plan=plan).read_text()
    calcium = page[page.index("Sample calcium"):page.index("Sample he")]
    assert "<b>calcium_s1.ome.tif</b>" in calcium and "projection" not in calcium
    assert "calcium_s2_part1.ome.tif<br>calcium_s2_part2.ome.tif" in calcium
    assert "<b>he_section0.ome.tif</b>" in page[page.index("Sample he"):]
    rows = (tmp_path / "report" / "metrics.csv").read_text().splitlines()
    assert rows[0].endswith(",reference,images")
    assert rows[1].startswith("calcium,s2,") and rows[1].endswith(
        ",calcium_s1.ome.tif,calcium_s2_part1.ome.tif + calcium_s2_part2.ome.tif")


def _colour_pixels(picture: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """Pixels within a few levels of ``colour`` (RGB), as a mask (anti-aliasing blends the edges)."""
    return (np.abs(picture.astype(int) - np.array(colour)).max(axis=2) <= 12)


def _bluer(picture: np.ndarray) -> np.ndarray:
    return picture[..., 2].astype(int) - picture[..., 0] > 60


def _redder(picture: np.ndarray) -> np.ndarray:
    return picture[..., 0].astype(int) - picture[..., 2] > 60


def test_the_overlay_draws_the_landmarks_and_says_what_its_colours_mean(demo_dir: Path, tmp_path: Path) -> None:
    """The QC picture had no legend and no landmarks, though their errors are QC's most direct numbers: each pair
    is drawn (a ring at the reference's landmark, a cross at the image's, before and after), and a strip below
    the overlays shows a swatch of every colour."""
    reference, moving = demo_dir / "mif_round0.ome.tif", demo_dir / "mif_round1.ome.tif"
    Transform(np.eye(3), reference_shape=(768, 768), moving_shape=(768, 768)).save(tmp_path / "t.transform.json")
    common = {"original_path": moving, "transform_path": tmp_path / "t.transform.json", "max_dim": 384}
    run_qc(reference, moving, tmp_path / "plain", stem="x", **common)
    run_qc(reference, moving, tmp_path / "marked", stem="x", landmarks_reference=demo_dir / "mif_round0.landmarks.csv",
           landmarks_moving=demo_dir / "mif_round1.landmarks.csv", **common)
    plain = cv2.cvtColor(cv2.imread(str(tmp_path / "plain" / "x_qc.png")), cv2.COLOR_BGR2RGB)
    marked = cv2.cvtColor(cv2.imread(str(tmp_path / "marked" / "x_qc.png")), cv2.COLOR_BGR2RGB)
    points = np.loadtxt(demo_dir / "mif_round0.landmarks.csv", delimiter=",", skiprows=1)
    # the overlay is (magenta, green, magenta): red equals blue there, so only a landmark's ring (blue above red)
    # or cross (red above blue) tips the balance, anti-aliased edges included
    for colour, drawn in ((REFERENCE_LANDMARK_COLOUR, _bluer), (IMAGE_LANDMARK_COLOUR, _redder)):
        assert drawn(plain).sum() == 0
        assert drawn(marked).sum() > 15 * len(points), colour
    # the rings sit on the reference's landmarks in the "before" overlay (the first 384 px, below its title)
    ring = np.argwhere(_bluer(marked[:384, :384]))[:, ::-1].astype(float)
    scaled = (points + 0.5) / 2 - 0.5  # 768 px -> 384 px
    title = ring[:, 1].mean() - scaled[:, 1].mean()
    assert 5 < title < 80
    ring[:, 1] -= title
    nearest = np.hypot(*(ring[:, None, :] - scaled[None, :, :]).transpose(2, 0, 1)).min(axis=1)
    assert np.median(nearest) < 8
    # below the overlays: a swatch of every colour of the overlay and of the landmarks
    legend = marked[round(title) + 384:]
    for _, colour, _ in (*LEGEND, *LANDMARK_LEGEND):
        assert _colour_pixels(legend, colour).sum() > 50, colour


def test_the_report_reads_in_headless_chromium(demo_dir: Path, tmp_path: Path) -> None:
    """The whole page as a reader sees it: a screenshot (kept under the test's folder to be looked at), the legend,
    a sample's reference, the chart with every label inside it."""
    browser = _browser()
    results = tmp_path / "results"
    plan = _memory_results(results, 12)
    run_qc(demo_dir / "mif_round0.ome.tif", demo_dir / "mif_round1.ome.tif", results / "qc" / "mif",
           original_path=demo_dir / "mif_round1.ome.tif", max_dim=384,
           landmarks_reference=demo_dir / "mif_round0.landmarks.csv",
           landmarks_moving=demo_dir / "mif_round1.landmarks.csv", sample="mif")
    page = build_report(results, tmp_path / "report", plan=plan)
    probe = page.with_name("measure.html")
    probe.write_text(page.read_text().replace("</body>", MEASURE))
    profile = f"--user-data-dir={tmp_path / 'profile'}"
    screenshot = tmp_path / "report.png"
    subprocess.run([browser, *FLAGS, profile, "--window-size=1400,2400", f"--screenshot={screenshot}",
                    probe.as_uri()], capture_output=True, text=True, timeout=120, check=False)
    assert screenshot.is_file() and screenshot.stat().st_size > 20_000
    dom = subprocess.run([browser, *FLAGS, profile, "--dump-dom", probe.as_uri()], capture_output=True, text=True,
                         timeout=120, check=False).stdout
    assert 'data-ready="1"' in dom and "How to read this report" in dom
    assert "Reference (every image of this sample is registered onto it): <b>mif_round0.ome.tif</b>" in dom
    assert 'data-measured="24"' in dom and 'data-outside=""' in dom
