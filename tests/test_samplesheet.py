"""Samplesheet validation reports every problem at once, with row numbers."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from slimreg.errors import InputError
from slimreg.samplesheet import read_samplesheet


def test_demo_samplesheet_groups(demo_sheet: Path) -> None:
    sheet = read_samplesheet(demo_sheet)
    samples = {s.name: s for s in sheet.samples()}
    assert list(samples) == ["mif", "he", "calcium"]
    assert samples["mif"].reference.image.name == "mif_round0.ome.tif"
    assert [r.image.name for r in samples["mif"].moving] == [f"mif_round{i}.ome.tif" for i in (1, 2, 3)]
    assert {r.session for r in samples["calcium"].moving} == {"s2"}
    assert all(r.image.is_absolute() for r in sheet.rows)


def test_every_problem_is_listed_with_its_row(tmp_path: Path, demo_dir: Path) -> None:
    shutil.copy(demo_dir / "mif_round0.ome.tif", tmp_path / "a.ome.tif")
    (tmp_path / "text.tif").write_text("hello")
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(
        "sample,image,reference,session\n"
        "s1,a.ome.tif,true,x\n"
        "s1,a.ome.tif,true,\n"          # duplicate image, second reference
        "s1,missing.tif,false,\n"       # missing file
        "s2,text.tif,maybe,x\n"         # not a TIFF, bad boolean, no reference
    )
    with pytest.raises(InputError) as caught:
        read_samplesheet(sheet)
    message = str(caught.value)
    for expected in ("row 3: image a.ome.tif already listed in row 2", "row 4: image file not found",
                     "row 5: 'reference' must be true or false", "row 5:", "not a readable TIFF",
                     "sample s1: needs exactly one reference=true row, found 2", "sample s2: needs exactly one"):
        assert expected in message
    assert str(sheet) in message


@pytest.mark.parametrize(("content", "expected"), [
    ("", "samplesheet is empty"),
    ("sample,image,reference\n", "header but no images"),
    ("sample,image\nA,x.tif\n", "missing column(s) reference"),
    ("sample,image,reference,colour\n", "unknown column(s) colour"),
])
def test_structural_errors(tmp_path: Path, content: str, expected: str) -> None:
    sheet = tmp_path / "s.csv"
    sheet.write_text(content)
    with pytest.raises(InputError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        read_samplesheet(sheet)


@pytest.mark.parametrize(("separator", "words"), [("\t", "tabs"), (";", "semicolons")])
def test_a_sheet_separated_by_tabs_or_semicolons_is_told_to_use_commas(tmp_path: Path, separator: str,
                                                                       words: str) -> None:
    """Read with commas, such a header is one field that used to be reported as an unknown column named
    'sample\\timage\\treference': the fix is the separator."""
    sheet = tmp_path / "s.csv"
    sheet.write_text(separator.join(["sample", "image", "reference"]) + "\n" +
                     separator.join(["A", "a.ome.tif", "true"]) + "\n")
    with pytest.raises(InputError) as caught:
        read_samplesheet(sheet, probe_images=False)
    message = str(caught.value)
    assert f"separated by {words}, not commas: use commas" in message
    assert "unknown column" not in message


def test_missing_samplesheet(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="samplesheet not found"):
        read_samplesheet(tmp_path / "nope.csv")
