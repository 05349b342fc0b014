"""The ``survey-estimator inspect`` contract: printed fields, --json, --dump arrays, --plot, errors."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from survey_estimator.cli import run_command
from survey_estimator.layout import canonical_wave

E2DS = "HARPS.2003-12-13T06-19-48.371_e2ds_A.fits"
BLAZE = "HARPS.2003-12-12T21-42-45.093_blaze_A.fits"
S2D = "HD41248_1_1_S2D_A.rows80-95.fits.gz"


def test_text_output_names_what_was_read(data_dir, capsys):
    assert run_command("inspect", [str(data_dir / E2DS)]) == 0
    out = capsys.readouterr().out
    for field in ("instrument    HARPS", "e2ds", "HARPS_3.5", "Gl273", "frame         observatory", "orders used", "masked", "BERV applied  15.258", "RV applied", "measured", "S/N", "GAP_MASKED"):
        assert field in out, field


def test_json_dump_and_plot(tmp_path, data_dir, capsys):
    dump, png = tmp_path / "x.npz", tmp_path / "x.png"
    rc = run_command("inspect", [str(data_dir / E2DS), "--blaze", str(data_dir / BLAZE), "--json", "--dump", str(dump), "--plot", str(png)])
    assert rc == 0
    s = json.loads(capsys.readouterr().out)
    assert s["instrument"] == "HARPS" and s["object"] == "Gl273" and s["frame"] == "observatory"
    assert s["berv_applied_kms"] == pytest.approx(15.2577, abs=1e-3) and s["rv_source"] == "measured"
    assert 0 < s["masked_fraction"] < 0.2 and s["snr"] > 10 and "GAP_MASKED" in s["flag_names"]
    d = np.load(dump)
    assert set(d.files) == {"wave", "flux", "mask"}
    assert d["wave"].shape == d["flux"].shape == d["mask"].shape == (8, 4096)
    assert d["mask"].dtype == bool
    np.testing.assert_array_equal(d["wave"], canonical_wave())
    assert s["masked_fraction"] == pytest.approx(1 - d["mask"].mean())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_bad_file_prints_reason_and_exits_nonzero(tmp_path):
    """A real console process: message on stderr, exit status 2, no traceback."""
    content, reason = b"hello, not fits" * 300, "not a FITS file"
    bad = tmp_path / "bad_e2ds_A.fits"
    bad.write_bytes(content)
    proc = subprocess.run([sys.executable, "-m", "survey_estimator.cli", "inspect", str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert f"error: {bad}: {reason}" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_empty_file_via_cli(tmp_path, capsys):
    bad = tmp_path / "empty.fits"
    bad.write_bytes(b"")
    assert run_command("inspect", [str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: empty file" in err and "Traceback" not in err


def test_calibration_frame_via_cli(data_dir, capsys):
    assert run_command("inspect", [str(data_dir / BLAZE)]) == 2
    assert "calibration frame" in capsys.readouterr().err


def test_gzip_s2d_text(data_dir, capsys):
    assert run_command("inspect", [str(data_dir / S2D)]) == 0
    out = capsys.readouterr().out
    assert "ESPRESSO" in out and "espdr/1.0.9a2" in out and "HD41248" in out and "(header)" in out and "DEGRADED_RESOLUTION" in out
