"""Helpers for the catalogue tests: catalogue tables without running the pipeline."""
from __future__ import annotations

import uuid

import numpy as np
import pyarrow.dataset as pads

from survey_estimator.models.resolve import ModelRef
from survey_estimator.catalogue.predict import Estimates, build_table
from survey_estimator.catalogue.rows import HEADER_FIELDS, new_row, to_batch


def fake_rows(uris, nights, status="ok", snr=50.0, etag="e1", error_class="permanent"):
    """A read batch (as read_batch makes it) for the given URIs and nights; header floats 1.0."""
    rows = []
    for uri, night in zip(uris, nights):
        r = new_row(**{f.name: 1.0 for f in HEADER_FIELDS if f.dtype.kind == "f"})
        r.update(source_uri=uri, etag=etag, size_bytes=1000, night=night, object="HD 1", instrument="HARPS-N",
                 drs_version="HARPN_3.7", snr=snr, flags=0, status=status, error=None if status == "ok" else "bad file",
                 error_class=None if status == "ok" else error_class, preprocessing_version="pp-1", code_version="code-1",
                 resolution=115000.0)
        rows.append(r)
    return to_batch(rows)


def write_catalogue(root, uris, nights, teff, model=("m", "1"), status="ok", etag="e1", fs=None, error_class="permanent"):
    """Write one run's worth of rows (teff values given; other labels fixed) as a new Parquet file."""
    batch = fake_rows(uris, nights, status=status, etag=etag, error_class=error_class)
    n = len(uris)
    ok = np.array([status == "ok"] * n)
    mean = np.column_stack([teff, np.full(n, 4.4), np.full(n, 0.0), np.full(n, 3.0)])
    sigma = np.full((n, 4), 0.1)
    cov = np.tile(np.diag([0.01] * 4).ravel(), (n, 1))
    table = build_table(batch, ok, Estimates.network(mean, sigma, cov, np.zeros(n, np.int64)), ModelRef("x", *model))
    pads.write_dataset(table, root, format="parquet", partitioning=["night"], partitioning_flavor="hive",
                       basename_template=f"run-{uuid.uuid4().hex}-{{i}}.parquet", existing_data_behavior="overwrite_or_ignore",
                       filesystem=fs)
    return table


def save_tiny_bundle(path, name="tiny-test", seed=0, label_range=None, architecture="resnet"):
    """An untrained tiny bundle (``architecture``: resnet or attention) saved with ModelBundle
    (real safetensors + manifest); ``label_range``: the {label: [lo, hi]} it claims to have been trained on."""
    import torch

    from survey_estimator.models.bundle import ModelBundle
    from survey_estimator.models.registry import build_model

    try:
        from survey_estimator.preprocess import PREPROCESSING_VERSION
    except ImportError:
        PREPROCESSING_VERSION = "unset"
    torch.manual_seed(seed)
    bundle = ModelBundle.create(build_model(architecture, preset="tiny"), name=name,
                                preprocessing_version=PREPROCESSING_VERSION, grid_id="test-grid", commit="test",
                                label_range=label_range)
    return bundle.save(path)
