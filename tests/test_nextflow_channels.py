"""The subworkflow's own closures that combine process outputs, run in Groovy with the shapes Nextflow gives them.

A `path` output that matches one file arrives as a bare Path, several as a list, none as an empty list. Groovy's
`Path + List` iterates the path's name components, so a closure that adds outputs works for a batch of three and
breaks for a batch of one (the demo's `he` sample). This test reads every `X.out.Y.map { ... }` closure from the
subworkflow, evaluates it with Debian's Groovy for every combination of shapes, and checks that the files come out
as a flat list of whole paths, none lost and none split. (No Nextflow runtime can be installed here.)
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBWORKFLOW = ROOT / "subworkflows" / "local" / "registration" / "main.nf"
CLOSURE = re.compile(r"\b[A-Z_]+\.out\.\w+(?:\.mix\([^)]*\))?\.map (\{ meta, [^}]*\})")
SHAPES = {"one": "Paths.get('/w/one.ome.tif')", "many": "[Paths.get('/w/a.ome.tif'), Paths.get('/w/b.json')]",
          "none": "[]"}
COUNTS = {"one": 1, "many": 2, "none": 0}


def groovy() -> list[str] | None:
    path = shutil.which("groovy")
    return [path] if path else None


def output_closures(text: str) -> list[str]:
    return CLOSURE.findall(text)


def _java_env() -> dict[str, str]:
    env = dict(os.environ)
    java = shutil.which("java")
    if java and "JAVA_HOME" not in env:
        env["JAVA_HOME"] = str(Path(os.path.realpath(java)).parents[1])
    return env


def run_closures(closures: list[str]) -> list[dict]:
    """Evaluate each closure for every combination of shapes; return what came out, per call."""
    lines = ["import java.nio.file.*", "import groovy.json.JsonOutput", "def results = []"]
    for index, closure in enumerate(closures):
        arity = closure.split("->")[0].count(",")  # arguments after meta
        for combo in itertools.product(SHAPES, repeat=arity):
            args = ", ".join(SHAPES[shape] for shape in combo)
            lines.append(f"def c{index}_{'_'.join(combo)} = {closure}")
            lines.append(f"def r = c{index}_{'_'.join(combo)}([sample: 's', id: 't'], {args})")
            lines.append(f"results << [closure: {index}, shapes: {json.dumps(list(combo))}, key: r[0], "
                         "isList: r[1] instanceof List, "
                         "allPaths: (r[1] instanceof List) && r[1].every { it instanceof Path }, "
                         "names: (r[1] instanceof List ? r[1] : [r[1]]).collect { it.toString() }]")
    lines.append("println JsonOutput.toJson(results)")
    script = "\n".join(lines).replace("def r = ", "r = ").replace("def results = []", "def results = []\ndef r")
    result = subprocess.run([*groovy(), "-e", script], capture_output=True, text=True, env=_java_env(), timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_subworkflow_has_output_closures_to_check() -> None:
    closures = output_closures(SUBWORKFLOW.read_text())
    assert len(closures) >= 4, closures  # SPLIT/PROJECT files, PROJECT files, REGISTER results and projections


@pytest.mark.skipif(groovy() is None, reason="groovy is not installed (.ci/system-packages installs Debian's)")
def test_output_closures_flatten_every_shape_into_whole_paths() -> None:
    closures = output_closures(SUBWORKFLOW.read_text())
    for row in run_closures(closures):
        shapes = row["shapes"]
        where = f"closure {closures[row['closure']]} with {shapes}"
        assert row["key"] == "s", where
        assert row["isList"] and row["allPaths"], where
        assert len(row["names"]) == sum(COUNTS[s] for s in shapes), f"{where}: {row['names']}"


@pytest.mark.skipif(groovy() is None, reason="groovy is not installed (.ci/system-packages installs Debian's)")
def test_the_harness_catches_the_single_path_defect() -> None:
    """The closure as it was (images + transforms) fails this harness: a bare Path is split into name parts."""
    rows = run_closures(["{ meta, images, transforms -> [meta.sample, images + transforms] }"])
    broken = [r for r in rows if r["shapes"][0] == "one" and r["shapes"][1] == "many"]
    assert broken and broken[0]["names"] != ["/w/one.ome.tif", "/w/a.ome.tif", "/w/b.json"]
    assert "w" in broken[0]["names"]  # the path's components, one by one


INITIALISATION = ROOT / "subworkflows" / "local" / "utils_slimreg_pipeline" / "main.nf"


@pytest.mark.skipif(groovy() is None, reason="groovy is not installed (.ci/system-packages installs Debian's)")
def test_samplesheet_paths_resolve_as_slimreg_resolves_them(tmp_path: Path) -> None:
    """One rule for relative paths: the pipeline's own closure (run in Groovy) and slimreg's samplesheet reader
    both resolve against the samplesheet's folder, not the launch folder; URLs and absolute paths pass unchanged."""
    from slimreg.samplesheet import _resolve

    closure = re.search(r"def located = (\{ String given ->.*?\n        \})", INITIALISATION.read_text(), re.S)
    assert closure, "the samplesheet path closure was not found"
    sheet = tmp_path / "sheets" / "samplesheet.csv"
    given = ["img/a.ome.tif", "../other/b.tif", "c.tif", str(tmp_path / "abs" / "d.tif"), "s3://bucket/run/e.tif",
             "gs://bucket/f.ome.tif", "az://container/g.tif"]
    script = "\n".join([
        "import java.nio.file.*", "import groovy.json.JsonOutput",
        "def file(Map options, String path) { path }",
        f"def sheet = Paths.get('{sheet}')",
        f"def located = {closure.group(1)}",
        f"println JsonOutput.toJson({json.dumps(given)}.collect {{ located(it) }})"])
    result = subprocess.run([*groovy(), "-e", script], capture_output=True, text=True, env=_java_env(), timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    pipeline = json.loads(result.stdout.strip().splitlines()[-1])
    sheet.parent.mkdir(parents=True)
    sheet.write_text("sample,image,reference\n")
    for text, resolved in zip(given, pipeline, strict=True):
        if "://" in text:
            assert resolved == text
        else:
            assert os.path.normpath(resolved) == str(_resolve(sheet, text)), text
