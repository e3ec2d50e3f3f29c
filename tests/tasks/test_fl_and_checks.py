"""Every kind's side of the federation (its label table in the job, the count phase, pooled target statistics)
and of the site-data checks (detect, check), exercised through the generic code that uses them: `JobConfig`,
the server's checks of what a site sends (`fl.aggregate`) and `data.check`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedtune.data import check_folder, check_site, kinds_present
from fedtune.fl.aggregate import check_counts, check_moments
from fedtune.fl.config import JobConfig
from fedtune.tasks import UnknownKind, get, kinds


def test_a_job_of_an_unknown_kind_is_refused_naming_the_kinds():
    with pytest.raises(UnknownKind, match=", ".join(kinds())):
        JobConfig(kind="stability")


@pytest.mark.parametrize("kind", kinds())
def test_a_job_carries_its_kinds_defaults_and_label_table_as_json(kind):
    task = get(kind)
    table = task.assays_from(None)                      # the synthetic data's label table ([] for none)
    assert bool(table) == task.needs_label_table
    if task.needs_label_table:
        with pytest.raises(ValueError, match=f"a {kind} job needs its {task.label_table_noun}"):
            JobConfig(kind=kind)
    job = JobConfig.create(kind, assays=table)
    assert job.trunk == {"source": task.default_trunk, "mode": task.default_mode}
    assert job.train == task.train_config(task.default_mode, progress=False).to_dict()
    again = JobConfig.from_dict(json.loads(json.dumps(job.to_dict())))     # what the server sends every site
    assert again.assays == job.assays == task.table_to_dicts(task.table_from_dicts(table))
    assert task.table_to_dicts(again.assay_list()) == job.assays
    assert job.task() is task


@pytest.mark.parametrize("kind", [k for k in kinds() if not get(k).needs_label_table])
def test_a_kind_without_a_label_table_refuses_one(kind):
    with pytest.raises(ValueError, match="has no"):
        JobConfig(kind=kind, assays=[{"task": "binding", "assay": "kd"}])


@pytest.mark.parametrize("kind", kinds())
def test_count_phase_and_pooled_statistics_match_statistics_of_the_pooled_rows(kind):
    """What two sites send in the count phase passes the server's checks, and the statistics pooled from their
    moments are the ones fitted on all their rows together."""
    task = get(kind)
    data = task.synthetic(80, 5)
    sites = [data.subset(range(0, 30)), data.subset(range(30, 80))]
    for part in sites:
        counts = task.count_rows(part)
        assert counts["n_train"] == len(part)
        bound = check_counts(counts, None, list(counts.get("task_rows", {})))
        assert check_counts(counts, bound, list(bound["task_rows"])) == bound    # within its own bound
    if not task.needs_stats:
        assert task.fit_stats(data) is None
        return
    table = task.label_table(data)
    keys = task.stat_keys(table)
    shared = [check_moments(np.asarray(task.label_moments(p)).tolist(), len(keys), len(p), 1) for p in sites]
    pooled, whole = task.pool_stats(table, shared).to_dict(), task.fit_stats(data).to_dict()
    assert list(pooled) == list(whole) == keys
    for key in keys:
        assert pooled[key] == pytest.approx(whole[key], rel=1e-9, abs=1e-12)
    assert task.stats_from_dict(pooled).to_dict() == pooled


@pytest.mark.parametrize("kind", kinds())
def test_each_kind_detects_and_checks_its_own_site_data(kind, tmp_path):
    task = get(kind)
    folder = tmp_path / "site"
    task.write(task.synthetic(60, 0), folder)
    assert kinds_present(folder) == [kind]
    [report] = check_folder(folder)
    data = task.read(folder)
    assert report.kind == kind and report.ok, report.format()
    assert report.samples == len(data) and report.rows == task.site_rows(data)
    with pytest.raises(ValueError):
        check_site("stability", folder)


def test_a_folder_without_site_data_names_what_each_kind_expects(tmp_path):
    (tmp_path / "empty").mkdir()
    [report] = check_folder(tmp_path / "empty")
    reason = report.errors[0].reason
    assert reason.startswith("no site data: neither ")
    for kind in kinds():
        assert f"{get(kind).site_files} ({kind})" in reason
