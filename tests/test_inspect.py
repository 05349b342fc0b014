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


# -- overrides of what was read or assumed (issue 10, point 4) -------------------------------------
PROCYON = "HARPS.GBOG_Procyon.5095-5255.fits"  # 1D, air by CTYPE1, no instrument, frame and R assumed
HD122563 = "hd122563.5095-5255.fits"


def _inspect_json(capsys, *argv) -> dict:
    assert run_command("inspect", [*map(str, argv), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_every_assumption_is_shown_with_its_source(data_dir, capsys):
    s = _inspect_json(capsys, data_dir / HD122563)
    assert (s["instrument"], s["instrument_source"]) == ("unknown", "assumed")
    assert (s["resolution_source"], s["medium_source"], s["frame_source"], s["normalised_source"]) == ("assumed", "assumed", "assumed", "data")
    assert s["assumed"] == ["instrument", "resolution", "medium", "frame"]
    run_command("inspect", [str(data_dir / HD122563)])
    out = capsys.readouterr().out
    assert "instrument    unknown (assumed" in out and "medium        air (assumed)" in out and "(judged from the flux)" in out


def test_instrument_override_brings_its_record(data_dir, tmp_path, capsys):
    s = _inspect_json(capsys, data_dir / HD122563, "--instrument", "HARPS")
    assert (s["instrument"], s["instrument_source"], s["resolution"], s["resolution_source"]) == ("HARPS", "user", 115000.0, "instrument")
    assert "RESOLUTION_ASSUMED" not in s["flag_names"] and "instrument" not in s["assumed"]
    from astropy.io import fits

    with fits.open(data_dir / HD122563) as hdul:  # the same spectrum as plain text
        h = hdul[0].header
        flux = hdul[0].data.astype(float)
        wave = h["CRVAL1"] + (np.arange(flux.size) + 1 - h.get("CRPIX1", 1)) * h["CDELT1"]
    text = tmp_path / "hd122563.txt"
    np.savetxt(text, np.c_[wave, flux])
    t = _inspect_json(capsys, text, "--instrument", "espresso")
    assert (t["instrument"], t["instrument_source"], t["resolution"], t["resolution_source"]) == ("ESPRESSO", "user", 140000.0, "instrument")
    assert "DEGRADED_RESOLUTION" in t["flag_names"]
    other = _inspect_json(capsys, text, "--instrument", "UVES")  # no record: the name is kept, R still assumed
    assert (other["instrument"], other["instrument_source"], other["resolution_source"]) == ("UVES", "user", "assumed")


def test_medium_override_converts_vacuum(data_dir, capsys):
    air = _inspect_json(capsys, data_dir / PROCYON)
    vac = _inspect_json(capsys, data_dir / PROCYON, "--medium", "vacuum")
    assert (air["medium"], air["medium_source"], vac["medium"], vac["medium_source"]) == ("air", "header", "vacuum", "user")
    assert "VACUUM_CONVERTED" in vac["flag_names"] and "VACUUM_CONVERTED" not in air["flag_names"]
    # vacuum -> air moves the lines by ~ -84 km/s, which the measured RV then takes out
    assert vac["rv_kms"] - air["rv_kms"] == pytest.approx(-83.5, abs=1.5)


def test_frame_and_rv_overrides(data_dir, capsys):
    rest = _inspect_json(capsys, data_dir / PROCYON, "--frame", "rest")
    assert (rest["frame"], rest["frame_source"], rest["rv_kms"], rest["rv_source"]) == ("rest", "user", None, "none")
    assert "RV_MEASURED" not in rest["flag_names"]
    given = _inspect_json(capsys, data_dir / PROCYON, "--rv", "20")
    assert (given["rv_kms"], given["rv_source"]) == (20.0, "user") and "RV_MEASURED" not in given["flag_names"]
    measured = _inspect_json(capsys, data_dir / PROCYON)["rv_kms"]
    shift = -(20.0 - measured) / 299792.458 * 5172.68  # the lines move by the RV error made
    assert np.median(given["mgb_offsets_A"]) == pytest.approx(shift, abs=0.02) and shift < -0.3
    e2ds = _inspect_json(capsys, data_dir / E2DS, "--frame", "barycentric")  # an observatory-frame e2ds: BERV not applied
    assert e2ds["frame_source"] == "user" and e2ds["berv_applied_kms"] is None and "BERV_APPLIED" not in e2ds["flag_names"]
    assert run_command("inspect", [str(data_dir / PROCYON), "--frame", "rest", "--rv", "3"]) == 2
    assert "rest frame" in capsys.readouterr().err


def test_normalisation_override(data_dir, capsys):
    judged = _inspect_json(capsys, data_dir / PROCYON)
    said = _inspect_json(capsys, data_dir / PROCYON, "--not-normalised")
    assert (judged["normalised"], judged["normalised_source"]) == (True, "data")
    assert (said["normalised"], said["normalised_source"]) == (False, "user")
    assert _inspect_json(capsys, data_dir / E2DS, "--normalised")["normalised"] is True
