"""Parameters given on the command line, as Nextflow's strict parser passes them: every value a string.

Under the strict parser (the default since Nextflow 26.04) `--batch_size 2` arrives as '2' and `--non_rigid false`
as 'false'. nf-schema casts them to the schema's types before it validates, but only from 2.7.2 on, and only the
copy it validates: `params` keeps the strings. So three things must hold, and each is checked here:
1. the plugin is nf-schema 2.7.2 or later (and the Nextflow floor is the one it needs, 25.10);
2. every numeric and boolean parameter, given as a string and cast as nf-schema casts it, passes the schema
   (and, uncast, fails it: the check is not vacuous);
3. the pipeline's own code never trusts the type: booleans are read with `"${params.x}".toBoolean()` (the string
   'false' is true in Groovy), numbers are cast where Groovy computes with them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "nextflow_schema.json").read_text())
PARAMS = {name: spec for group in SCHEMA["$defs"].values() for name, spec in group["properties"].items()}
TYPED = {name: spec["type"] for name, spec in PARAMS.items() if spec.get("type") in ("boolean", "integer", "number")}
SAMPLE_STRINGS = {"boolean": ["true", "false"], "integer": None, "number": None}


def pipeline_files() -> list[Path]:
    files = [*ROOT.glob("*.nf"), *ROOT.glob("*.config"), *ROOT.glob("conf/*.config"),
             *ROOT.glob("modules/**/*.nf"), *ROOT.glob("subworkflows/**/*.nf"), *ROOT.glob("workflows/**/*.nf")]
    assert files
    return files


def cast_like_nf_schema(value: str, kind: str) -> object:
    """nf-schema 2.7.2's cast of a command-line string to the schema's type."""
    if kind == "boolean":
        return {"true": True, "false": False}[value.lower()]
    return int(value) if kind == "integer" else float(value)


def valid_string_for(name: str, kind: str) -> list[str]:
    if kind == "boolean":
        return ["true", "false"]
    spec = PARAMS[name]
    low = spec.get("minimum", spec.get("exclusiveMinimum", 0) + 1)
    value = spec.get("default") or (low if kind == "integer" else low + 0.5)
    if "multipleOf" in spec:
        value = spec["multipleOf"] * max(1, round(value / spec["multipleOf"]))
    return [str(value)]


def validate(params: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    return [error.message for error in validator.iter_errors(params)]


def test_the_plugin_casts_command_line_strings() -> None:
    config = (ROOT / "nextflow.config").read_text()
    version = re.search(r"id 'nf-schema@(\d+)\.(\d+)\.(\d+)'", config)
    assert version and tuple(map(int, version.groups())) >= (2, 7, 2), "nf-schema 2.7.2+ casts CLI strings"
    floor = re.search(r"nextflowVersion\s*=\s*'!?>=(\d+)\.(\d+)", config)
    assert floor and tuple(map(int, floor.groups())) >= (25, 10), "nf-schema 2.7.2 needs Nextflow 25.10"


def test_channel_and_account_may_be_given_as_numbers() -> None:
    """`--registration_channel 2` and `--slurm_account 1234` arrive as strings that nf-schema casts to integers:
    the schema takes both types, and channel 0 is passed on (not dropped by Groovy truth, where 0 is false)."""
    for name in ("registration_channel", "slurm_account"):
        assert validate({"outdir": "results", name: cast_like_nf_schema("2", "integer")}) == [], name
        assert validate({"outdir": "results", name: "DAPI"}) == [], name
    modules = (ROOT / "conf" / "modules.config").read_text()
    line = next(line for line in modules.splitlines() if "--channel" in line)
    assert line.strip().startswith("params.registration_channel != null"), line


def test_there_are_typed_parameters_to_check() -> None:
    assert {"boolean", "integer", "number"} <= set(TYPED.values()), TYPED


@pytest.mark.parametrize("name", sorted(TYPED))
def test_each_typed_parameter_given_as_a_string_validates_once_cast(name: str) -> None:
    kind = TYPED[name]
    for text in valid_string_for(name, kind):
        assert validate({"outdir": "results", name: cast_like_nf_schema(text, kind)}) == [], f"--{name} {text}"
        assert validate({"outdir": "results", name: text}), f"--{name} {text!r} uncast should fail the schema"


def _uses(name: str) -> list[tuple[Path, str]]:
    found = []
    for path in pipeline_files():
        for line in path.read_text().splitlines():
            if re.search(rf"\bparams\.{name}\b", line) and not re.match(rf"\s*{name}\s*=", line):
                found.append((path, line.strip()))
    return found


@pytest.mark.parametrize("name", sorted(n for n, k in TYPED.items() if k == "boolean"))
def test_booleans_are_read_as_words_not_by_groovy_truth(name: str) -> None:
    for path, line in _uses(name):
        safe = line.count(f'"${{params.{name}}}".toBoolean()')
        assert safe == len(re.findall(rf"\bparams\.{name}\b", line)), \
            f"{path.relative_to(ROOT)}: {line!r} reads params.{name} by Groovy truth ('false' is true)"


@pytest.mark.parametrize("name", sorted(n for n, k in TYPED.items() if k != "boolean"))
def test_numbers_are_passed_as_text_or_cast(name: str) -> None:
    for path, line in _uses(name):
        for match in re.finditer(rf"\bparams\.{name}\b", line):
            before, after = line[: match.start()], line[match.end():]
            interpolated = before.endswith("${") and after.startswith("}")
            cast = re.match(r"\s+as\s+(int|Integer|long|Long|double|Double|float|BigDecimal)\b", after)
            truth_test = re.match(r"\s*\?", after)  # `params.x ? ... : ''`: a set value, string or not, is true
            assert interpolated or cast or truth_test, \
                f"{path.relative_to(ROOT)}: {line!r} computes with params.{name}, which may be a string"


def test_the_checks_catch_the_defects_they_are_for() -> None:
    """The old forms fail these checks: Groovy truth on a boolean, an uncast number in resourceLimits."""
    old_boolean = "params.non_rigid ? '' : '--no-non-rigid'"
    assert old_boolean.count('"${params.non_rigid}".toBoolean()') != len(re.findall(r"\bparams\.non_rigid\b",
                                                                                     old_boolean))
    old_number = "resourceLimits = [cpus: params.max_cpus, memory: params.max_memory]"
    after = old_number.split("params.max_cpus", 1)[1]
    assert not re.match(r"\s+as\s+int\b", after) and not after.startswith("}")
