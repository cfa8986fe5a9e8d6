"""The Nextflow layer, checked without a Nextflow runtime (none can be installed here).

Everything is read from the .nf/.config files themselves: reftrace parses them with a real Nextflow grammar;
each process's ``script:`` block is run, with test values substituted, against demo data with ``bin/`` on
PATH, in the order the pipeline runs them and with inputs staged as the pipeline stages them; the files its
``output:`` block declares must appear. Flags, params, stubs and retry/memory directives are cross-checked.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import reftrace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from check_nextflow_syntax import nextflow_files, parse_error  # noqa: E402

from slimreg.kinds import KINDS  # noqa: E402

# the kinds run from a spec by their own process (the report reads the whole plan: REPORT runs `slimreg report`)
KIND_TO_PROCESS = {name: kind.process for name, kind in KINDS.items() if name != "report"}
TEST_PLAN_ARGS = "--engine feature --preset low --max-frames 5 --merge-chunks --tile-size 256"


def _block(text: str, name: str, following: tuple[str, ...]) -> str:
    match = re.search(rf"^\s*{name}:\s*$(.*?)(?=^\s*(?:{'|'.join(following)}):\s*$|\Z)", text, re.S | re.M)
    return match.group(1) if match else ""


def processes() -> dict[str, dict[str, str]]:
    """Name -> {file, script (the shell text), outputs, stub} for every module, read from its main.nf."""
    found = {}
    for path in sorted((ROOT / "modules" / "local").glob("*/main.nf")):
        module = reftrace.Module.from_file(str(path))
        assert not isinstance(module, reftrace.ParseError), module.error
        text = path.read_text()
        for process in module.processes:
            body = text[text.index(f"process {process.name}"):]
            script = _block(body, "script", ("stub",))
            shell = re.search(r'"""(.*?)"""', script, re.S)
            found[process.name] = {"file": str(path), "script": shell.group(1) if shell else "",
                                   "defs": script[: script.find('"""')],
                                   "outputs": _block(body, "output", ("when", "script")),
                                   "stub": _block(body, "stub", ("__never__",))}
    return found


PROCESSES = processes()


def test_every_nextflow_file_parses() -> None:
    files = nextflow_files(ROOT)
    assert len(files) >= 15
    assert {p.name for p in files} >= {"main.nf", "nextflow.config", "base.config", "modules.config", "test.config",
                                       "slurm.config"}
    errors = {str(p): parse_error(p) for p in files}
    assert not {p: e for p, e in errors.items() if e}


def test_the_expected_processes_exist_with_stubs_and_meta() -> None:
    assert set(PROCESSES) >= {"PROBE", "PLAN", "SPLIT_STACK", "PROJECT_SESSION", "REGISTER", "MERGE_CHUNKS",
                              "GENERATE_REGISTRATION_QC", "REPORT", "DEMO_DATA"}
    heavy = {"SPLIT_STACK", "PROJECT_SESSION", "REGISTER", "MERGE_CHUNKS", "GENERATE_REGISTRATION_QC"}
    for name, process in PROCESSES.items():
        if name in heavy:  # every tool that runs threads is told the task's CPUs
            assert "VIPS_CONCURRENCY=${task.cpus}" in process["script"], name
        assert process["stub"].strip(), f"{name} has no stub block"
        assert "versions.yml" in process["stub"] and "versions.yml" in process["outputs"], name
        assert (Path(process["file"]).parent / "meta.yml").is_file(), name
        bin_calls = _commands(process["script"])
        assert len(bin_calls) == 2 and bin_calls[1].strip().startswith("slimreg versions"), name
        assert all(call.strip().startswith("slimreg ") for call in bin_calls), f"{name}: one entry point, `slimreg`"


def test_the_subworkflow_routes_each_kind_of_the_registry_to_its_process() -> None:
    """One registry of kinds (slimreg.kinds): the subworkflow branches on exactly those kinds, and each branch goes
    to the kind's process, which runs the task from its spec."""
    text = (ROOT / "subworkflows" / "local" / "registration" / "main.nf").read_text()
    branches = dict(re.findall(r"^\s*(\w+): meta\.kind == '(\w+)'\s*$", text, re.M))
    assert branches == {kind: kind for kind in KIND_TO_PROCESS}
    for kind, process in KIND_TO_PROCESS.items():
        assert re.search(rf"{process}\((?:\w+\.out\.ready|ch_tasks\.{kind}\b)", text) or \
            re.search(rf"WAIT_FOR_\w+\(ch_tasks\.{kind},", text), f"{kind}: not wired to {process}"
        assert "--spec task.json" in PROCESSES[process]["script"], process
    assert "REPORT" in PROCESSES and KINDS["report"].process == "REPORT"


def test_task_modules_differ_only_in_their_declared_outputs() -> None:
    """The modules that run a task from its spec are one module under five names: the same inputs and the same
    script; what each declares as output (and so publishes) and its resource label are what set them apart."""
    def without_outputs(name: str) -> str:
        text = Path(PROCESSES[name]["file"]).read_text()
        text = re.sub(r"^\s*output:\s*$.*?^\s*when:\s*$", "", text, flags=re.S | re.M)
        text = re.sub(r"^\s*stub:\s*$.*", "", text, flags=re.S | re.M)
        return re.sub(r"process \w+ |label '\w+'", "", text)

    bodies = {name: without_outputs(name) for name in KIND_TO_PROCESS.values()}
    assert len(set(bodies.values())) == 1, "task modules differ beyond outputs, stub and label"


def _commands(script: str) -> list[str]:
    """A script block's command lines, without the environment it exports (threads: task.cpus) and without the
    here-document that writes the task's spec."""
    text = re.sub(r"cat > task\.json <<'(\w+)'\n.*?\n\1\n", "", script, flags=re.S)
    return [line for line in text.strip().splitlines() if line.strip() and not line.strip().startswith("export ")]


def _bin_help(command: str) -> str:
    return subprocess.run([sys.executable, str(ROOT / "bin" / "slimreg"), command, "--help"], capture_output=True,
                          text=True, check=True).stdout


def test_every_flag_passed_exists_in_the_scripts_help() -> None:
    modules_config = (ROOT / "conf" / "modules.config").read_text()
    plan_flags = set(re.findall(r"(--[a-z][a-z0-9-]+)", modules_config))
    for name, process in PROCESSES.items():
        line = _commands(process["script"])[0]
        script = line.split()[1]  # `slimreg <command> ...`
        help_text = _bin_help(script)
        flags = set(re.findall(r"(--[a-z][a-z0-9-]+)", line)) | (plan_flags if name == "PLAN" else set())
        missing = [flag for flag in flags if flag not in help_text]
        assert not missing, f"{name}: {script} does not accept {missing}"


def _params_in(text: str) -> set[str]:
    return set(re.findall(r"params\.([A-Za-z_]\w*)", text))


def test_params_match_config_and_schema() -> None:
    used = set()
    for path in nextflow_files(ROOT):
        if path.name != "nextflow.config":
            used |= _params_in(path.read_text())
    config = (ROOT / "nextflow.config").read_text()
    block = re.search(r"^params\s*\{(.*?)^\}", config, re.S | re.M).group(1)
    declared = set(re.findall(r"^\s*([A-Za-z_]\w*)\s*=", block, re.M))
    test_params = set(re.findall(r"^\s*([A-Za-z_]\w*)\s*=", re.search(
        r"params\s*\{(.*?)\}", (ROOT / "conf" / "test.config").read_text(), re.S).group(1), re.M))
    schema = json.loads((ROOT / "nextflow_schema.json").read_text())
    in_schema = {name for group in schema["$defs"].values() for name in group["properties"]}
    assert used <= declared, f"used but not declared in nextflow.config: {used - declared}"
    assert test_params <= declared
    assert declared == in_schema, f"config only: {declared - in_schema}; schema only: {in_schema - declared}"
    for group in schema["$defs"].values():
        for name, spec in group["properties"].items():
            assert spec.get("description"), f"{name} has no description in nextflow_schema.json"


def test_retry_and_memory_directives() -> None:
    base = (ROOT / "conf" / "base.config").read_text()
    assert "task.exitStatus in ((130..145) + 104 + 175) ? 'retry' : 'finish'" in base
    assert re.search(r"maxRetries\s*=\s*2", base) and "resourceLimits" in base
    config = reftrace.ConfigFile.from_file(str(ROOT / "conf" / "base.config")).config_file
    scopes = {named.name: [d.name for d in named.directives]
              for scope in config.process_scopes for named in scope._value.named_scopes}
    planned = [name for name in scopes if "REGISTER" in name]
    assert planned and "memory" in scopes[planned[0]]
    for process in ("SPLIT_STACK", "PROJECT_SESSION", "REGISTER", "MERGE_CHUNKS", "GENERATE_REGISTRATION_QC"):
        assert process in planned[0]
    assert "meta.peak_memory_bytes" in base and "task.attempt" in base
    modules = (ROOT / "conf" / "modules.config").read_text()
    assert "ext.preset" in modules and "task.attempt" in modules
    test_profile = (ROOT / "conf" / "test.config").read_text()
    assert "resourceLimits = [cpus: 4, memory: '15.GB'" in test_profile
    assert "process.cache = 'lenient'" in (ROOT / "nextflow.config").read_text()


def _run_script(process: str, workdir: Path, values: dict[str, str]) -> subprocess.CompletedProcess[str]:
    text = PROCESSES[process]["script"]
    values = {"task.cpus": "2", **values}  # what Nextflow substitutes from the process's cpus directive
    for key, value in values.items():
        text = text.replace("${" + key + "}", value).replace("$" + key, value)
    assert "${" not in text, f"unsubstituted value in {process}: {text}"
    env = {**os.environ, "PATH": f"{ROOT / 'bin'}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}"
           f"{os.environ['PATH']}"}
    return subprocess.run(["bash", "-euo", "pipefail", "-c", text], cwd=workdir, env=env, capture_output=True,
                          text=True, check=False)


def _declared_outputs(process: str) -> list[tuple[str, bool]]:
    outputs = []
    for line in PROCESSES[process]["outputs"].splitlines():
        optional = "optional: true" in line
        for pattern in re.findall(r'path[ (]"([^"]+)"', line):
            outputs.append((pattern, optional))
    return outputs


def _check_outputs(process: str, workdir: Path, values: dict[str, str]) -> list[Path]:
    produced = []
    for pattern, optional in _declared_outputs(process):
        for key, value in values.items():
            pattern = pattern.replace("${" + key + "}", value)
        glob = pattern.replace("**", "**/*") if pattern.endswith("**") else pattern
        braces = re.search(r"\{([^}]*)\}", glob)  # one {a,b} alternative, as Nextflow's glob reads it
        alternatives = [glob[:braces.start()] + option + glob[braces.end():] for option in braces.group(1).split(",")] \
            if braces else [glob]
        matches = sorted({m for option in alternatives for m in workdir.glob(option) if m.is_file()})
        assert matches or optional, f"{process}: declared output {pattern!r} was not produced in {workdir}"
        produced += matches
    return produced


def _stage(workdir: Path, sources: list[str], products: list[Path]) -> None:
    for index, source in enumerate(sources, start=1):
        target = workdir / "sources" / str(index) / Path(source).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source)
    for product in products:
        link = workdir / product.name
        assert not link.exists(), f"two staged products are named {product.name}: a task could read the wrong one"
        link.symlink_to(product)


@pytest.mark.slow
def test_script_blocks_run_the_pipeline_on_demo_data(tmp_path: Path) -> None:
    demo_work = tmp_path / "DEMO_DATA"
    demo_work.mkdir()
    result = _run_script("DEMO_DATA", demo_work, {"size": "256", "task.process": "DEMO_DATA"})
    assert result.returncode == 0, result.stderr
    _check_outputs("DEMO_DATA", demo_work, {})

    # PROBE: one task per samplesheet file, each staged alone; the header names the file by the sheet's text
    from slimreg.samplesheet import read_samplesheet

    sheet_rows = read_samplesheet(demo_work / "demo" / "samplesheet.csv", probe_images=False).rows
    given = sorted({r.image.name for r in sheet_rows} | {r.landmarks.name for r in sheet_rows if r.landmarks})
    headers = []
    for index, name in enumerate(given, start=1):
        probe_work = tmp_path / f"PROBE-{index}"
        (probe_work / "input").mkdir(parents=True)
        (probe_work / "input" / name).symlink_to(demo_work / "demo" / name)
        result = _run_script("PROBE", probe_work, {"given": name, "file": f"input/{name}", "task.process": "PROBE"})
        assert result.returncode == 0, result.stderr
        headers += _check_outputs("PROBE", probe_work, {})

    # the demo folder moves away: no task may open a samplesheet file by its path, only as Nextflow staged it
    bucket = tmp_path / "bucket-elsewhere"
    (demo_work / "demo").rename(bucket)
    located = {name: bucket / name for name in given}

    plan_work = tmp_path / "PLAN"
    plan_work.mkdir()
    # PLAN stages the sheet alone (a copy without its images beside it) and the headers
    (plan_work / "samplesheet.csv").write_text((bucket / "samplesheet.csv").read_text())
    _stage(plan_work / "headers", [str(h) for h in headers if h.name == "header.json"], [])
    result = _run_script("PLAN", plan_work, {"samplesheet": "samplesheet.csv", "args": TEST_PLAN_ARGS,
                                             "task.process": "PLAN"})
    assert result.returncode == 0, result.stderr
    _check_outputs("PLAN", plan_work, {})
    plan_file = plan_work / "plan" / "plan.json"
    plan = json.loads(plan_file.read_text())
    rows = {row["id"]: row for row in csv.DictReader((plan_work / "plan" / "plan.csv").open())}

    products: dict[str, list[Path]] = {}  # what each task made, as its process declares its outputs
    report_inputs: list[Path] = []
    merged_checks: list[tuple[Path, dict]] = []
    kinds_seen = set()
    for task in plan["tasks"]:
        if task["kind"] == "report":
            continue
        process = KIND_TO_PROCESS[task["kind"]]
        kinds_seen.add(task["kind"])
        workdir = tmp_path / task["id"]
        workdir.mkdir()
        row = rows[task["id"]]
        # as the subworkflow wires it: the task's sources (by the sheet's text), and the products of exactly the
        # tasks it depends on (plan.csv's depends_on), every one of which has run before it in plan order
        depends_on = [d for d in row["depends_on"].split(";") if d]
        assert all(d in products for d in depends_on), f"{task['id']} runs before a task it depends on"
        staged = [p for d in depends_on for p in products[d]]
        _stage(workdir, [str(located[s]) for s in row["sources"].split(";") if s], staged)
        spec = (plan_work / "plan" / "task_specs" / f"{task['id']}.json").read_text()
        values = {"spec": spec, "meta.id": task["id"], "meta.sample": task["sample"], "preset": "low",
                  "task.process": process}
        result = _run_script(process, workdir, values)
        assert result.returncode == 0, f"{process} {task['id']}: {result.stderr[-2000:]}"
        produced = _check_outputs(process, workdir, values)
        products[task["id"]] = [p for p in produced if not p.name.endswith(".memory.json") and p.name != "versions.yml"]
        if task["kind"] == "merge":
            merged_checks.append((workdir, task))
        report_inputs += [p for p in produced if p.name.endswith(("_qc.json", "_qc.png", ".memory.json"))]
    assert kinds_seen == set(KIND_TO_PROCESS)
    later = {sample: [p for t in plan["tasks"] if t["sample"] == sample and t["id"] in products
                      for p in products[t["id"]]] for sample in {t["sample"] for t in plan["tasks"]}}
    from slimreg.io import probe, read_region

    for workdir, task in merged_checks:  # the merged stack holds the *registered* pieces, frame for frame
        merged = workdir / task["outputs"][0]
        pieces = [next(p for p in later[task["sample"]] if p.name == Path(i).name and "registered" in p.parts)
                  for i in task["inputs"]]
        assert probe(merged).frames == sum(probe(p).frames for p in pieces)
        side = probe(merged).width
        assert (read_region(merged, 0, 0, side, side, frame=0) == read_region(pieces[0], 0, 0, side, side)).all()

    report_work = tmp_path / "REPORT"
    for index, item in enumerate(report_inputs, start=1):  # stageAs 'results/*/*': one numbered folder each
        (report_work / "results" / str(index)).mkdir(parents=True)
        (report_work / "results" / str(index) / item.name).symlink_to(item)
    (report_work / "plan.json").symlink_to(plan_file)
    result = _run_script("REPORT", report_work, {"plan": "plan.json", "task.process": "REPORT"})
    assert result.returncode == 0, result.stderr
    _check_outputs("REPORT", report_work, {})
    page = (report_work / "report" / "report.html").read_text()
    assert "failed QC" in page and "mif_round3" in page
    qc_count = len([t for t in plan["tasks"] if t["kind"] == "qc"])
    # every QC row shows its overlay, although Nextflow staged each PNG in another folder than its JSON
    assert page.count('src="data:image/jpeg;base64,') == qc_count
    metrics = (report_work / "report" / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 1 + len([t for t in plan["tasks"] if t["kind"] == "qc"])
    assert all(",pass," in row for row in metrics[1:])


def test_samplesheet_schema_accepts_every_reference_word_slimreg_reads() -> None:
    """nf-schema validates rows before slimreg sees them: it must not reject what slimreg accepts (yes, 1, T)."""
    from slimreg.samplesheet import FALSE_WORDS, TRUE_WORDS

    schema = json.loads((ROOT / "assets" / "schema_input.json").read_text())
    reference = schema["items"]["properties"]["reference"]
    assert "string" in reference["type"] and "boolean" in reference["type"]
    pattern = re.compile(reference["pattern"])
    for word in (TRUE_WORDS | FALSE_WORDS) - {""}:
        for variant in (word, word.upper(), word.capitalize()):
            assert pattern.match(variant), variant
    for wrong in ("maybe", "2", "truth", "nope"):
        assert not pattern.match(wrong), wrong
