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
    assert len(closures) >= 2, closures  # SPLIT/PROJECT files, REGISTER files


@pytest.mark.skipif(groovy() is None, reason="groovy is not installed (.ci/system-packages installs Debian's)")
def test_output_closures_flatten_every_shape_into_whole_paths() -> None:
    closures = output_closures(SUBWORKFLOW.read_text())
    for row in run_closures(closures):
        shapes = row["shapes"]
        where = f"closure {closures[row['closure']]} with {shapes}"
        assert row["key"] == "t", where  # keyed by task id: tasks wait for the tasks they depend on
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


WAIT = ROOT / "subworkflows" / "local" / "wait_for_dependencies" / "main.nf"
# Nextflow's operators on lists, as much of them as the subworkflow uses: combine(by: 0) pairs items that share the
# first element; groupTuple releases a groupKey's items once it holds `size` of them (more would be an error)
OPERATORS = """
import java.nio.file.*
import groovy.json.JsonOutput
class GroupKey { def target; int size; String toString() { target.toString() } }
def groupKey(target, int size) { new GroupKey(target: target, size: size) }
def combineBy0(left, right) {
    left.collectMany { l -> right.findAll { r -> r[0] == l[0] }.collect { r -> l + r[1..-1] } }
}
def groupTuple(items) {
    items.groupBy { it[0].toString() }.collect { key, group ->
        assert group.size() == group[0][0].size : "groupKey ${key}: ${group.size()} items, size ${group[0][0].size}"
        [group[0][0], group.collect { it[1] }]
    }
}
"""


@pytest.mark.skipif(groovy() is None, reason="groovy is not installed (.ci/system-packages installs Debian's)")
def test_each_task_gets_the_files_of_exactly_the_tasks_it_depends_on() -> None:
    """WAIT_FOR_DEPENDENCIES' own closures, on the test profile's plan: a task is released with the files of its
    dependencies (plan.csv's depends_on) and no others, once each has delivered; no stage-wide barrier."""
    import csv

    text = WAIT.read_text()
    needs = re.search(r"ch_tasks\.flatMap (\{.*?\})\n", text).group(1)
    keyed = re.search(r"\.combine\(ch_done, by: 0\)\s*\.map (\{.*?\})\n", text).group(1)
    released = re.search(r"\.groupTuple\(\)\s*\.map (\{.*?\})\n", text).group(1)
    rows = list(csv.DictReader((ROOT / "assets" / "stub" / "plan.csv").open()))
    tasks = [[{"id": r["id"], "depends_on": [d for d in r["depends_on"].split(";") if d]}, "{}", []] for r in rows]
    done = [[r["id"], [f"/w/{r['id']}/a.ome.tif", f"/w/{r['id']}/b.json"]] for r in rows if r["kind"] != "report"]
    script = OPERATORS + "\n".join([
        f"def tasks = {_groovy(tasks)}",
        f"def done = {_groovy(done)}.collect {{ [it[0], it[1].collect {{ Paths.get(it) }}] }}",
        f"def needs = tasks.collectMany({needs})",
        f"def keyed = combineBy0(needs, done).collect({keyed})",
        f"def released = groupTuple(keyed).collect({released})",
        "println JsonOutput.toJson(released.collectEntries { [(it[0]): it[1].collect { it.toString() }] })"])
    result = subprocess.run([*groovy(), "-e", script], capture_output=True, text=True, env=_java_env(), timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    released_files = json.loads(result.stdout.strip().splitlines()[-1])
    waiting = {r["id"]: [d for d in r["depends_on"].split(";") if d] for r in rows if r["depends_on"]}
    assert set(released_files) == set(waiting)
    for task_id, dependencies in waiting.items():
        expected = sorted(f"/w/{d}/{name}" for d in dependencies for name in ("a.ome.tif", "b.json"))
        assert sorted(released_files[task_id]) == expected, task_id


def _groovy(value: object) -> str:
    """A Python value as a Groovy literal (JSON lists and maps, with Groovy's [:] map syntax)."""
    if isinstance(value, dict):
        return "[" + ", ".join(f"{json.dumps(k)}: {_groovy(v)}" for k, v in value.items()) + "]" if value else "[:]"
    if isinstance(value, list):
        return "[" + ", ".join(_groovy(v) for v in value) + "]"
    return json.dumps(value)


@pytest.mark.skipif(groovy() is None, reason="groovy is not installed (.ci/system-packages installs Debian's)")
def test_sources_are_mapped_back_to_files_and_an_unknown_one_stops_the_run() -> None:
    """The subworkflow's own closure: each source the plan names (the sheet's text) becomes its staged file, in
    the plan's order; a source the samplesheet does not name stops the run with a message, not a null path."""
    text = SUBWORKFLOW.read_text()
    closure = re.search(r"\.map (\{ id, meta, sources, spec, located ->.*?\n        \})", text, re.S).group(1)
    script = "\n".join([
        "import java.nio.file.*", "import groovy.json.JsonOutput",
        "def error(String message) { throw new IllegalStateException(message) }",
        f"def toTask = {closure}",
        "def located = ['b.tif': Paths.get('/bucket/b.tif'), 's3://x/a.tif': Paths.get('/stage/a.tif')]",
        "def task = toTask('t1', [id: 't1'], ['s3://x/a.tif', 'b.tif'], '{}', located)",
        "def message = ''",
        "try { toTask('t2', [id: 't2'], ['c.tif'], '{}', located) }",
        "catch (IllegalStateException e) { message = e.message }",
        "println JsonOutput.toJson([files: task[2].collect { it.toString() }, message: message])"])
    result = subprocess.run([*groovy(), "-e", script], capture_output=True, text=True, env=_java_env(), timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["files"] == ["/stage/a.tif", "/bucket/b.tif"]
    assert "Task t2 reads c.tif, which the samplesheet does not name" in out["message"]
