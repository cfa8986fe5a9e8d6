"""QC numbers against known truth, a wrong registration flagged, the report rendered in a real browser."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from slimreg.cli import main
from slimreg.errors import InputError
from slimreg.qc import run_qc
from slimreg.register.batch import register_images
from slimreg.register.settings import RegistrationSettings
from slimreg.report import build_report
from slimreg.transform import Transform, similarity_matrix

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def registered(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("qc-registered")
    settings = RegistrationSettings.from_preset("medium", engine="feature")
    batch = register_images(demo_dir / "mif_round0.ome.tif", [demo_dir / "mif_round3.ome.tif"], folder, settings)
    assert not batch.failed
    return folder


def test_numbers_improve_and_landmarks_match_truth(demo_dir: Path, registered: Path, tmp_path: Path) -> None:
    result = run_qc(demo_dir / "mif_round0.ome.tif", registered / "mif_round3.ome.tif", tmp_path,
                    original_path=demo_dir / "mif_round3.ome.tif",
                    transform_path=registered / "mif_round3.transform.json",
                    landmarks_reference=demo_dir / "mif_round0.landmarks.csv",
                    landmarks_moving=demo_dir / "mif_round3.landmarks.csv", max_dim=512)
    m = result.metrics
    assert result.status == "pass" and not result.reasons
    assert m["ncc_after"] > 0.95 > m["ncc_before"] and m["mi_after"] > m["mi_before"]
    assert m["coverage"] > 0.99
    truth = np.loadtxt(demo_dir / "mif_round3.landmarks.csv", delimiter=",", skiprows=1) - \
        np.loadtxt(demo_dir / "mif_round0.landmarks.csv", delimiter=",", skiprows=1)
    assert m["landmark_median_before_px"] == pytest.approx(np.median(np.hypot(*truth.T)))
    assert m["landmark_median_after_px"] < 0.5 and m["landmark_median_after_um"] == pytest.approx(
        m["landmark_median_after_px"] * 0.5)
    written = json.loads((tmp_path / "mif_round3_qc.json").read_text())
    assert written["status"] == "pass" and (tmp_path / "mif_round3_qc.png").stat().st_size > 1000


def test_a_shifted_registration_is_flagged(demo_dir: Path, registered: Path, tmp_path: Path) -> None:
    good = Transform.load(registered / "mif_round3.transform.json")
    shifted = Transform(good.affine @ similarity_matrix(1.0, 0.0, 12.0, -9.0), good.displacement,
                        good.reference_shape, good.moving_shape)
    shifted.save(tmp_path / "shifted.transform.json")
    from slimreg.io.read import TiffImage
    from slimreg.warp import warp_file

    warp_file(TiffImage(demo_dir / "mif_round3.ome.tif"), shifted, tmp_path / "shifted.ome.tif",
              reference_shape=good.reference_shape, pixel_size_um=(0.5, 0.5))
    status = main(["qc", "--reference", str(demo_dir / "mif_round0.ome.tif"), "--registered",
                   str(tmp_path / "shifted.ome.tif"), "--original", str(demo_dir / "mif_round3.ome.tif"),
                   "--transform", str(tmp_path / "shifted.transform.json"), "--landmarks-reference",
                   str(demo_dir / "mif_round0.landmarks.csv"), "--landmarks-moving",
                   str(demo_dir / "mif_round3.landmarks.csv"), "--outdir", str(tmp_path / "qc"), "--strict"])
    assert status == 1
    data = json.loads((tmp_path / "qc" / "shifted_qc.json").read_text())
    assert data["status"] == "fail"
    assert any("landmark error" in reason for reason in data["reasons"])


def test_missing_input_is_a_clear_error_with_no_output(demo_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        run_qc(demo_dir / "mif_round0.ome.tif", tmp_path / "nope.ome.tif", tmp_path / "qc")
    assert not (tmp_path / "qc").exists() or not any((tmp_path / "qc").iterdir())


def _results_folder(demo_dir: Path, registered: Path, root: Path) -> Path:
    qc_dir = root / "qc" / "mif"
    run_qc(demo_dir / "mif_round0.ome.tif", registered / "mif_round3.ome.tif", qc_dir,
           original_path=demo_dir / "mif_round3.ome.tif", max_dim=384)
    run_qc(demo_dir / "mif_round0.ome.tif", demo_dir / "mif_round1.ome.tif", qc_dir,
           original_path=demo_dir / "mif_round1.ome.tif", max_dim=384, stem="unregistered")
    return root


def test_report_files(demo_dir: Path, registered: Path, tmp_path: Path) -> None:
    results = _results_folder(demo_dir, registered, tmp_path / "results")
    page = build_report(results, results / "report")
    text = page.read_text()
    assert "<table" in text and "mif_round3" in text and "http" not in text.replace("http://www.w3.org", "")
    assert text.index("unregistered") < text.index("mif_round3")  # failed first
    metrics = (results / "report" / "metrics.csv").read_text().splitlines()
    assert metrics[0].startswith("sample,image,status") and len(metrics) == 3
    assert (results / "report" / "slimreg_mqc.tsv").read_text().startswith("# id: 'slimreg'")


def test_report_renders_in_headless_chromium(demo_dir: Path, registered: Path, tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    results = _results_folder(demo_dir, registered, tmp_path / "results")
    page = build_report(results, results / "report")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0"]
    screenshot = tmp_path / "report.png"
    shot = subprocess.run([browser, *flags, "--window-size=1280,1600", f"--screenshot={screenshot}",
                           page.as_uri()], capture_output=True, text=True, timeout=120, check=False)
    assert screenshot.is_file() and screenshot.stat().st_size > 20_000, shot.stderr[-2000:]
    dom = subprocess.run([browser, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120,
                         check=False)
    assert 'data-ready="1"' in dom.stdout  # the page's script ran without an error
    assert "<table" in dom.stdout and "1 failed QC" in dom.stdout
    assert "Uncaught" not in dom.stderr
