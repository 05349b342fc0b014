"""The driver-side writer (one Parquet file per night and run) and the read-stage plan."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest

from catalogue_testing import fake_rows
from survey_estimator.catalogue.inventory import catalogue_files, open_catalogue
from survey_estimator.models.resolve import ModelRef
from survey_estimator.catalogue.pipeline import CatalogueConfig, read_plan
from survey_estimator.catalogue.predict import Estimates, build_table
from survey_estimator.catalogue.schema import DATA_SCHEMA, SCHEMA
from survey_estimator.catalogue.write import NightWriter
from survey_estimator.storage import resolve


def _table(uris, nights):
    """A model-stage output block (SCHEMA) for these files."""
    n = len(uris)
    ok = np.ones(n, bool)
    est = Estimates.network(np.full((n, 4), 5000.0), np.full((n, 4), 0.1), np.zeros((n, 16)), np.zeros(n, np.int64))
    return build_table(fake_rows(uris, nights), ok, est, ModelRef("spec", "m", "1"))


def test_one_file_per_night_with_the_catalogue_schema(tmp_path):
    root = resolve(str(tmp_path / "cat"))
    writer = NightWriter(root, "R1")
    # blocks as the model stage yields them: small, nights mixed
    for k in range(6):
        uris = [f"a/{k}-{i}.fits" for i in range(4)]
        writer.add(_table(uris, ["2016-01-10", "2016-01-11", "2016-01-10", "2016-01-12"]))
    files = writer.close()
    assert len(files) == 3 and writer.rows_written == 24
    on_disk = catalogue_files(str(tmp_path / "cat"))
    assert sorted(p.split("/")[-2] for p in on_disk) == ["night=2016-01-10", "night=2016-01-11", "night=2016-01-12"]
    assert all(p.rsplit("/", 1)[-1].startswith("run-R1-") for p in on_disk)
    # the partition column lives in the path only; column descriptions travel with the file
    schema = pq.read_schema(on_disk[0])
    assert schema.names == DATA_SCHEMA.names
    assert schema.field("teff").metadata[b"description"] == SCHEMA.field("teff").metadata[b"description"]
    table = open_catalogue(str(tmp_path / "cat"), name_prefix="run-R1-").to_table()
    assert Counter(table["night"].to_pylist()) == {"2016-01-10": 12, "2016-01-11": 6, "2016-01-12": 6}
    assert not list((tmp_path / "cat").rglob("*.tmp-*")), "no temp files left behind"


def test_big_nights_are_split_and_nothing_is_rewritten(tmp_path):
    root = resolve(str(tmp_path / "cat"))
    writer = NightWriter(root, "R2", rows_per_file=10)
    for k in range(5):
        writer.add(_table([f"b/{k}-{i}.fits" for i in range(4)], ["2016-01-10"] * 4))
    first = list(writer.files)
    assert len(first) == 1  # 12 rows reached 10: written during the run, not only at the end
    writer.close()
    assert len(writer.files) == 2 and writer.files[0] == first[0] and writer.rows_written == 20
    with pytest.raises(ValueError):
        NightWriter(root, "R3", rows_per_file=0)


def test_read_plan_lets_one_read_task_per_cpu_run_beside_the_actors():
    cfg = CatalogueConfig(archive="a", out="o", model_stage="actors")  # 1 actor x 0.5 CPU
    files, cpus = read_plan(500, 2, cfg)
    assert files == 16 and 2 * cpus + cfg.actor_cpus <= 2 and 3 * cpus + cfg.actor_cpus > 2
    assert read_plan(10, 2, cfg)[0] == 4  # never a task per file or two
    files, cpus = read_plan(10000, 64, CatalogueConfig(archive="a", out="o", actors=4, num_gpus=1))  # auto: GPU actors
    assert files == 16 and 64 * cpus + 4 * 0.5 <= 64
    assert read_plan(500, 2, CatalogueConfig(archive="a", out="o", read_batch_size=4, read_cpus=1.0)) == (4, 1.0)
    # the model inside the read tasks (the CPU default) reserves nothing beside them: a whole CPU each
    assert read_plan(500, 2, CatalogueConfig(archive="a", out="o")) == (16, 1.0)
