"""Quick look at one archive file: what was read and the model input it becomes.

Prints instrument, DRS, target, resolution, medium, frame, normalisation (each with where it came
from: header, format, instrument record, user, or assumed), orders used, masked fraction, RV and
BERV applied, S/N and the offsets of the Mg b lines from rest (``--json`` for a machine-readable
line). ``--instrument``, ``--resolution``, ``--medium``, ``--frame``, ``--rv`` and
``--normalised``/``--not-normalised`` override what the file says or what would be assumed
(shown with the source "user"). ``--dump OUT.npz`` writes arrays ``wave`` (8x4096, air,
rest frame, A), ``flux`` (8x4096, normalised) and ``mask`` (8x4096 bool, True = usable);
``--plot OUT.png`` draws the 8 orders. An unreadable file prints its reason and exits with 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

import numpy as np

from ..instruments import read_observation
from ..observation import ReadError
from ..preprocess import ModelInput, preprocess
from ..rv import MGB_AIR, line_offsets
from .overrides import add_override_arguments, overrides_from_args

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="spectrum (plain or gzip): e2ds, S2D, echelle image, 1D FITS image, FITS table or text")
    parser.add_argument("--blaze", help="blaze file for an old-DRS e2ds (default: DRS BLAZE FILE next to it or one night folder away)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--dump", metavar="OUT.npz", help="write wave, flux, mask (8x4096) to this file")
    parser.add_argument("--plot", metavar="OUT.png", help="plot the 8 canonical orders to this file")
    add_override_arguments(parser)


def mgb_offsets(result: ModelInput) -> list[float | None]:
    """Offsets (A) of the three Mg b lines (:data:`~survey_estimator.rv.MGB_AIR`) from rest in the
    model input; None where no order covers a line."""
    return [None if not np.isfinite(v) else round(float(v), 4) for v in line_offsets(result.wave, result.flux, result.mask)]


def format_text(result: ModelInput) -> str:
    """Human-readable summary of a preprocessed observation."""
    s = result.summary()
    mgb = mgb_offsets(result)
    finite = [v for v in mgb if v is not None]
    mgb_text = ", ".join("-" if v is None else f"{v:+.3f}" for v in mgb)
    mgb_text += f" A (median {np.median(finite):+.3f} A)" if finite else " (lines not covered)"

    def num(v, fmt="{:.3f}"):
        return "-" if v is None else fmt.format(v)

    rv = f"{num(s['rv_kms'])} km/s ({s['rv_source']})"
    if s["rv_ccf_contrast"] is not None:
        rv += f", CCF contrast {s['rv_ccf_contrast']:.1f}"
    lines = [
        f"file          {s['source']}",
        f"instrument    {s['instrument']} ({s['instrument_source']}; {s['kind']}, DRS {s['drs_version']})",
        f"target        {s['object'] or '-'}  RA {num(s['ra_deg'], '{:.5f}')}  Dec {num(s['dec_deg'], '{:.5f}')}",
        f"observed      {s['date_obs'] or '-'}  MJD {num(s['mjd_obs'], '{:.5f}')}  BJD {num(s['bjd'], '{:.5f}')}  exptime {num(s['exptime_s'], '{:.1f}')} s",
        f"resolution    R = {s['resolution']:,.0f} ({s['resolution_source']})" + (f", model input at R = {result.resolution:,.0f}" if result.resolution else ""),
        f"medium        {s['medium']} ({s['medium_source']})",
        f"frame         {s['frame']} ({s['frame_source']}) -> rest (air)",
        f"normalised    {'yes' if s['normalised'] else 'no'} ({'judged from the flux' if s['normalised_source'] == 'data' else s['normalised_source']}); coverage {100 * (s['coverage'] or 0):.0f}% of 5050-5350 A",
        f"assumed       {', '.join(s['assumed']) or 'nothing'}",
        f"orders used   {', '.join(map(str, s['orders_used'])) if s['orders_used'] else '1D spectrum'}; usable canonical orders {s['usable_orders']}/8",
        f"BERV applied  {num(s['berv_applied_kms'])} km/s (header BERV {num(s['berv_kms'])})",
        f"RV applied    {rv}",
        f"S/N           {s['snr']:.1f} (median over orders; per order: {', '.join('-' if v is None else f'{v:.0f}' for v in s['snr_orders'])})",
        f"masked        {100 * s['masked_fraction']:.1f}% of 8x4096 pixels",
        f"Mg b offset   {mgb_text}",
        f"flags         {s['flags']} = {' | '.join(s['flag_names'])}",
        f"version       {s['preprocessing_version']}",
    ]
    lines += [f"note          {n}" for n in s["notes"] + result.notes]
    return "\n".join(lines)


def plot(result: ModelInput, path: str) -> None:
    """Draw the 8 normalised orders (masked pixels omitted) to ``path`` (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(8, 1, figsize=(11, 14), sharey=True)
    for o, ax in enumerate(axes):
        f = np.where(result.mask[o], result.flux[o], np.nan)
        ax.plot(result.wave[o], f, lw=0.5, color="k")
        ax.set_xlim(result.wave[o, 0], result.wave[o, -1])
        ax.set_ylabel(f"order {o}")
    axes[0].set_ylim(-0.05, 1.3)
    axes[0].set_title(f"{result.observation['object']} ({result.observation['instrument']}) rest frame, air")
    axes[-1].set_xlabel("wavelength (A, air)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    overrides = overrides_from_args(args)
    if overrides is None:
        return 2
    try:
        result = preprocess(read_observation(args.file, blaze=args.blaze, overrides=overrides))
    except ReadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({**result.summary(), "mgb_offsets_A": mgb_offsets(result), "mgb_lines_A": list(MGB_AIR)}, default=float))
    else:
        print(format_text(result))
    if args.dump:
        np.savez_compressed(args.dump, wave=result.wave, flux=result.flux, mask=result.mask)
        log.info("wrote %s", args.dump)
    if args.plot:
        plot(result, args.plot)
        log.info("wrote %s", args.plot)
    return 0
