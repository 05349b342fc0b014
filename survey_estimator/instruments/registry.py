"""One :class:`Instrument` record per spectrograph: all the code knows about it, in one place.

Detection (:mod:`.detect`), the header metadata (:mod:`.metadata`: resolving power), the blaze
lookup (:mod:`.blaze`), preprocessing (the native layout) and the catalogue (the observatory's
longitude for the night, the instrument a file name suggests) all read these records. A
spectrograph without a record is read by the generic readers as :data:`UNKNOWN`, keeping its
``INSTRUME`` name.

Adding a spectrograph is adding one record to :data:`INSTRUMENTS` (and, when its file format
is new, one reader in this package); see docs/data.md, "Adding a spectrograph".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Mapping

if TYPE_CHECKING:  # astropy.coordinates is imported only when a location is asked for
    from astropy.coordinates import EarthLocation

    from .detect import Cards

Layout = Literal["canonical", "resampled"]
"""How preprocessing maps an instrument's echelle rows into the canonical layout: "canonical" (its
rows are the canonical orders: each is taken from its one matching native row) or "resampled"
(native orders are flattened and resampled by wavelength)."""


@dataclass(frozen=True)
class Instrument:
    """What is known about one spectrograph.

    Attributes:
        name: the name observations and the catalogue's ``instrument`` column carry ("HARPS-N").
        aliases: other spellings of ``INSTRUME`` (upper case) that mean this instrument.
        prefix: hierarchical card prefix, the ``TNG`` of ``HIERARCH TNG DRS BERV`` ("ESO", "TNG").
        signature: start of a card name that identifies the instrument when ``INSTRUME`` is
            missing (``"TNG "``: any ``HIERARCH TNG`` card), or None.
        file_tag: the token archive file names start with (``HARPN`` in
            ``HARPN.2016-01-08T02-30-21.236_e2ds_A.fits``), for files that cannot be opened.
        site: observatory name; ``lon_deg`` / ``lat_deg`` / ``height_m`` its geodetic position
            (east longitude, degrees; metres), see :attr:`location`.
        resolution: resolving power lambda / dlambda of its usual setting, None if unknown.
        modes: resolving power by the value of ``mode_card`` (ESPRESSO's ``INS MODE``).
        mode_card: the card naming the instrument mode, or None.
        slit_card: the card giving the slit width in arcsec when ``resolution`` is the value for a
            1 arcsec slit (R scales as 1 / width; MIKE's ``SLITSIZE``), or None.
        radec_cards: the cards holding RA and Dec in degrees when ``RA``/``DEC`` do not (HARPS-N:
            ``RA-DEG``/``DEC-DEG``; Magellan: ``RA-D``/``DEC-D``), None for the usual ones.
        layout: native echelle layout vs the canonical one (:data:`Layout`).
        native_shape: (orders, pixels) of its extracted echelle frames, None when not echelle.
        blaze_card: the card naming the blaze file its old-DRS e2ds frames need
            (``DRS BLAZE FILE``; found by :func:`survey_estimator.instruments.blaze.find_blaze`),
            None when its products carry or need none.
        read_noise_e: read-out noise per extracted pixel (e-) of its usual setting (what old-DRS
            headers give in ``DRS CCD SIGDET``), None if unknown; the simulator and the training
            sampler draw this noise.
    """

    name: str
    aliases: tuple[str, ...] = ()
    prefix: str | None = None
    signature: str | None = None
    file_tag: str | None = None
    site: str = ""
    lon_deg: float | None = None
    lat_deg: float | None = None
    height_m: float | None = None
    resolution: float | None = None
    modes: Mapping[str, float] = field(default_factory=dict)
    mode_card: str | None = None
    slit_card: str | None = None
    radec_cards: tuple[str, str] | None = None
    layout: Layout = "resampled"
    native_shape: tuple[int, int] | None = None
    blaze_card: str | None = None
    read_noise_e: float | None = None

    @property
    def location(self) -> "EarthLocation | None":
        """The observatory as an :class:`astropy.coordinates.EarthLocation`, None when unknown."""
        if self.lon_deg is None or self.lat_deg is None:
            return None
        import astropy.units as u
        from astropy.coordinates import EarthLocation

        return EarthLocation.from_geodetic(self.lon_deg * u.deg, self.lat_deg * u.deg, (self.height_m or 0.0) * u.m)

    def resolving_power(self, cards: "Cards | None" = None) -> tuple[float | None, str]:
        """Resolving power from this record and the file's ``cards``, with its source.

        Returns:
            ``(R, "instrument")``: by ``mode_card`` (an unknown mode takes ``resolution``), or
            ``resolution`` / slit width; ``(resolution, "assumed")`` when the slit card is
            missing (the 1 arcsec value); ``(None, "assumed")`` when the record has no R.
        """
        if self.mode_card:
            mode = str(cards.get(self.mode_card, "") if cards is not None else "").upper()
            return self.modes.get(mode, self.resolution), "instrument"
        if self.resolution is None:
            return None, "assumed"
        if self.slit_card:
            slit = cards.float(self.slit_card) if cards is not None else None
            if slit and slit > 0:
                return self.resolution / slit, "instrument"
            return self.resolution, "assumed"
        return self.resolution, "instrument"


UNKNOWN = Instrument("unknown")
"""The generic record: no card prefix (guessed from the cards), no site (nights at longitude 0),
no resolving power (assumed and flagged), resampled by wavelength, no blaze lookup."""

INSTRUMENTS: tuple[Instrument, ...] = (
    Instrument(
        "HARPS-N", aliases=("HARPN", "HARPS_N"), prefix="TNG", signature="TNG ", file_tag="HARPN",
        site="TNG, Roque de los Muchachos, La Palma", lon_deg=-17.889, lat_deg=28.754, height_m=2387.2,
        resolution=115000.0, radec_cards=("RA-DEG", "DEC-DEG"), layout="canonical", native_shape=(69, 4096),
        blaze_card="DRS BLAZE FILE", read_noise_e=4.0,
    ),
    Instrument(
        "HARPS", prefix="ESO", signature="ESO DRS ", file_tag="HARPS",
        site="ESO 3.6 m, La Silla", lon_deg=-70.732, lat_deg=-29.261, height_m=2400.0,
        resolution=115000.0, native_shape=(72, 4096), blaze_card="DRS BLAZE FILE",
    ),
    Instrument(
        "ESPRESSO", prefix="ESO", file_tag="ESPRESSO",
        site="VLT, Paranal", lon_deg=-70.404, lat_deg=-24.627, height_m=2635.0,
        resolution=140000.0, modes={"SINGLEHR": 140000.0, "MULTIMR": 70000.0, "SINGLEUHR": 190000.0},
        mode_card="INS MODE", native_shape=(170, 9111),
    ),
    Instrument(
        "MIKE-Blue", site="Magellan Clay, Las Campanas", lon_deg=-70.692, lat_deg=-29.015, height_m=2380.0,
        resolution=28000.0, slit_card="SLITSIZE", radec_cards=("RA-D", "DEC-D"),
    ),
    Instrument(
        "MIKE-Red", site="Magellan Clay, Las Campanas", lon_deg=-70.692, lat_deg=-29.015, height_m=2380.0,
        resolution=22000.0, slit_card="SLITSIZE", radec_cards=("RA-D", "DEC-D"),
    ),
)
"""The known spectrographs (HARPS-N before HARPS: its file tag and cards are the more specific)."""

def lookup(name: str | None) -> Instrument:
    """The record of an instrument name or ``INSTRUME`` spelling (any case; ``_`` as ``-``),
    :data:`UNKNOWN` for any other."""
    key = (name or "").strip().upper()
    for r in INSTRUMENTS:
        spellings = {r.name.upper(), *r.aliases}
        if key in spellings or key.replace("_", "-") in spellings:
            return r
    return UNKNOWN


def names() -> list[str]:
    """Names of the known instruments (the values ``--instrument`` takes besides any other)."""
    return [r.name for r in INSTRUMENTS]


def from_signature(card_names) -> Instrument | None:
    """The instrument whose :attr:`Instrument.signature` starts one of ``card_names``, or None."""
    keys = list(card_names)
    for r in INSTRUMENTS:
        if r.signature and any(k.startswith(r.signature) for k in keys):
            return r
    return None


def from_file_name(name: str) -> Instrument:
    """The instrument an archive file name suggests by its :attr:`Instrument.file_tag`
    (``HARPN.``, ``r.HARPN.``, ``HARPS.``, ``ESPRESSO.``...), :data:`UNKNOWN` when none does.
    Only for files that cannot be opened: an open file's header decides."""
    upper = name.rsplit("/", 1)[-1].upper()
    for r in INSTRUMENTS:
        if r.file_tag and r.file_tag in upper:
            return r
    return UNKNOWN
