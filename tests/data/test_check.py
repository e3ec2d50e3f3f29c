"""`check_site` / `check_folder`: every problem of a site folder, and agreement with the loaders (a folder
without errors loads; one with errors does not)."""

import csv
import shutil

import numpy as np
import pytest

from fedtune.data import (Assay, DataError, SENTIMENT_LABELS, check_folder, check_site, kinds_present, load_flab,
                          synthetic_fitness, synthetic_sentiment)
from fedtune.tasks import get

ASSAY = "binding/synthetic_kd.csv"   # one assay file of the synthetic site


@pytest.fixture(scope="module")
def good_site(tmp_path_factory):
    """A site folder holding both kinds, as `fedtune prepare-data` writes it (synthetic data)."""
    site = tmp_path_factory.mktemp("good") / "site"
    get("fitness").write(synthetic_fitness(80, seed=2), site)
    get("sentiment").write(synthetic_sentiment(90, seed=2), site)
    return site


@pytest.fixture
def site(good_site, tmp_path):
    """A private copy of the good site, to break."""
    return shutil.copytree(good_site, tmp_path / "site")


def read_rows(path):
    with path.open(newline="") as f:
        return list(csv.reader(f))


def write_rows(path, rows):
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)


def edit(path, row, col, value):
    rows = read_rows(path)
    rows[row - 1][col] = value
    write_rows(path, rows)


def problems(report, severity):
    return [p for p in report.problems if p.severity == severity]


def test_good_site_passes_and_counts_agree_with_the_loaders(good_site):
    assert kinds_present(good_site) == ["fitness", "sentiment"]
    fit, sent = check_folder(good_site)
    assert fit.ok and sent.ok, fit.format() + sent.format()
    data = load_flab(good_site)
    assert fit.samples == len(data) and fit.rows == data.rows_per_assay()
    texts = get("sentiment").read(good_site)
    assert sent.samples == len(texts)
    assert sent.rows == {lab: int((texts.labels == i).sum()) for i, lab in enumerate(SENTIMENT_LABELS)}
    assert f"  binding/synthetic_kd: {fit.rows['binding/synthetic_kd']} rows" in fit.format()
    assert f"  negative: {sent.rows['negative']} sentences" in sent.format()


def test_real_data_and_sites_prepared_from_it_pass(flab_dir, fpb_dir, tmp_path):
    get("fitness").prepare_sites(tmp_path, 3, flab_dir, seed=0)
    get("sentiment").prepare_sites(tmp_path, 3, fpb_dir, seed=0)
    rows = {}
    for name in ("site-1", "site-2", "site-3"):
        reports = check_folder(tmp_path / name)
        assert [r.kind for r in reports] == ["fitness", "sentiment"]
        assert all(r.ok for r in reports), "\n".join(r.format() for r in reports)
        for key, n in reports[0].rows.items():
            rows[key] = rows.get(key, 0) + n
    assert rows == load_flab(flab_dir).rows_per_assay()     # every real row checked at exactly one site

    real = check_site("fitness", flab_dir)
    assert real.ok

    def warned(file):
        return [p.reason for p in real.warnings if p.file == file]
    # HIC "25 = no elution" is documented in assays.csv: flagged although only 2 of 119 rows sit there
    assert any("documented in assays.csv as '25 = no elution" in r
               for r in warned("aggregation/jain2017biophyscial_HICRT.csv"))
    # SGAC-SINS is capped at both ends of its range (0 and 1000 mM)
    sgac = warned("aggregation/jain2017biophysical_SGACSINS.csv")
    assert any("minimum 0" in r for r in sgac) and any("maximum 1000" in r for r in sgac)
    # Marks lists a few antibodies twice with different %ADA values
    assert any(r.startswith("the same antibody has different labels")
               for r in warned("immunogenicity/marks2021humanization_immunogenicity.csv"))
    fpb = check_site("sentiment", fpb_dir)      # the original FPB folder: its 50Agree file
    assert fpb.ok and fpb.samples == len(get("sentiment").read(fpb_dir))
    assert any("different label" in p.reason for p in fpb.warnings)


def test_every_bad_row_is_reported_with_file_row_and_column(site):
    edit(site / ASSAY, 3, 0, "EVQLB")          # heavy chain, row 3
    edit(site / ASSAY, 5, 1, "DIQM*")          # light chain, row 5
    edit(site / ASSAY, 5, 2, "nan")            # and the label of the same row
    edit(site / "thermostability/synthetic_tm.csv", 2, 2, "abc")
    report = check_site("fitness", site)
    assert not report.ok
    found = {(p.file, p.row, p.column) for p in report.errors}
    assert found == {(ASSAY, 3, "heavy"), (ASSAY, 5, "light"), (ASSAY, 5, "fitness"),
                     ("thermostability/synthetic_tm.csv", 2, "fitness")}
    reasons = " | ".join(p.reason for p in report.errors)
    assert "invalid residue 'B' at position 5" in reasons and "'*'" in reasons
    assert "not finite" in reasons and "not a number: 'abc'" in reasons
    text = report.format()
    assert f"{ASSAY} row 3, column heavy" in text and "4 error(s)" in text
    with pytest.raises(DataError):
        get("fitness").load_site(site)


def break_missing_column(site):
    write_rows(site / ASSAY, [["heavy", "light", "value"], *read_rows(site / ASSAY)[1:]])
    return ASSAY, "missing column(s) ['fitness']"


def break_empty_file(site):
    (site / ASSAY).write_bytes(b"")
    return ASSAY, "empty file"


def break_not_utf8(site):
    (site / ASSAY).write_bytes((site / ASSAY).read_bytes() + b"EVQL,DIQM,1.0\xff\n")
    return ASSAY, "not UTF-8"


def break_unsafe_assay_name(site):
    table = site / "assays.csv"
    table.write_text(table.read_text() + "../../outside,secret,1,,higher\n")
    return "assays.csv", "task and assay must be plain names"


def break_assay_table_column(site):
    table = site / "assays.csv"
    table.write_text(table.read_text().replace("task,assay,", "task,name,", 1))
    return "assays.csv", "missing column(s) ['assay']"


def break_assay_table_short_row(site):
    table = site / "assays.csv"
    table.write_text(table.read_text() + "binding\n")
    return "assays.csv", "empty task or assay"


def break_all_files_header_only(site):
    for path in site.glob("*/*.csv"):
        write_rows(path, read_rows(path)[:1])
    return "", "0 sample(s)"


def break_unknown_sentiment_label(site):
    lines = (site / "Sentences.txt").read_text(encoding="latin-1").splitlines()
    lines[3] = lines[3].rpartition("@")[0] + "@bullish"
    (site / "Sentences.txt").write_text("\n".join(lines) + "\n", encoding="latin-1")
    return "Sentences.txt", "label in"


def break_empty_sentiment_file(site):
    (site / "Sentences.txt").write_bytes(b"")
    return "Sentences.txt", "empty file"


@pytest.mark.parametrize("breaker", [break_missing_column, break_empty_file, break_not_utf8,
                                     break_unsafe_assay_name, break_assay_table_column,
                                     break_assay_table_short_row, break_all_files_header_only,
                                     break_unknown_sentiment_label, break_empty_sentiment_file])
def test_broken_copy_is_an_error_and_the_loader_refuses_it_too(site, breaker):
    file, needle = breaker(site)
    kind = "sentiment" if "sentiment" in breaker.__name__ else "fitness"
    report = check_site(kind, site)
    assert not report.ok
    assert any(p.file == file and needle in p.reason for p in report.errors), report.format()
    with pytest.raises(DataError):      # a DataError, not a KeyError or UnicodeDecodeError traceback
        get(kind).load_site(site)


def test_assay_list_cannot_point_outside_the_site_folder(tmp_path):
    """A job's assay list (sent by the server) or a site's assays.csv naming '..' must not make the loader
    read a file outside the site's folder."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.csv").write_text("heavy,light,fitness\nEVQL,DIQM,1.0\n")
    (tmp_path / "site" / "binding").mkdir(parents=True)
    (tmp_path / "site" / "binding" / "kd.csv").write_text("heavy,light,fitness\nEVQL,DIQM,2.0\n")
    for bad in (Assay("..", "outside/secret"), Assay("binding", "../../outside/secret"), Assay(".", "kd")):
        with pytest.raises(DataError, match="plain names"):
            load_flab(tmp_path / "site", [Assay("binding", "kd"), bad])


def test_sentiment_errors_name_every_line(site):
    lines = (site / "Sentences.txt").read_text(encoding="latin-1").splitlines()
    lines[0] = lines[0].rpartition("@")[0] + "@meh"
    lines[4] = "no label at all"
    lines[6] = "   @positive"
    (site / "Sentences.txt").write_text("\n".join(lines) + "\n", encoding="latin-1")
    report = check_site("sentiment", site)
    assert [(p.row, p.reason.split(" ")[0]) for p in report.errors] == [(1, "expected"), (5, "expected"),
                                                                        (7, "empty")]
    assert "Sentences.txt line 5" in report.format()


def test_duplicates_and_conflicts_are_warnings(site):
    rows = read_rows(site / ASSAY)
    conflict = [rows[2][0], rows[2][1], str(float(rows[2][2]) + 1.0)]
    write_rows(site / ASSAY, [*rows, rows[1], conflict])
    n = len(rows)
    lines = (site / "Sentences.txt").read_text(encoding="latin-1").splitlines()
    text, _, label = lines[0].rpartition("@")
    other = next(lab for lab in SENTIMENT_LABELS if lab != label)
    (site / "Sentences.txt").write_text("\n".join([*lines, lines[0], f"{text}@{other}"]) + "\n", encoding="latin-1")

    fit, sent = check_folder(site)
    assert fit.ok and sent.ok
    assert [(p.row, p.reason) for p in fit.warnings if p.file == ASSAY] == [
        (n + 1, "exact duplicate of row 2"),
        (3, f"the same antibody has different labels: {float(rows[2][2]):g} (row 3), "
            f"{float(conflict[2]):g} (row {n + 2}); each becomes a separate training sample")]
    assert [p.row for p in sent.warnings] == [len(lines) + 1, len(lines) + 2]
    assert "exact duplicate of line 1" in sent.warnings[0].reason
    assert f"different label ({other} here, {label} there)" in sent.warnings[1].reason
    get("fitness").load_site(site), get("sentiment").load_site(site)     # warnings: the loaders accept them


def test_capped_assay_is_flagged(site):
    rows = read_rows(site / ASSAY)
    values = [float(r[2]) for r in rows[1:]]
    cap = max(values)
    n_capped = int(np.ceil(0.2 * len(values)))
    for r in rows[1:1 + n_capped]:
        r[2] = repr(cap)
    write_rows(site / ASSAY, rows)
    report = check_site("fitness", site)
    assert report.ok
    capped = [p for p in report.warnings if p.file == ASSAY]
    at_cap = sum(float(r[2]) == cap for r in rows[1:])
    assert len(capped) == 1 and capped[0].column == "fitness"
    assert capped[0].reason.startswith(f"{at_cap} of {len(values)} rows") and f"maximum {cap:g}" in capped[0].reason


def test_documented_sentinel_is_flagged_even_when_rare(site):
    table = site / "assays.csv"
    rows = read_rows(table)
    for r in rows[1:]:
        if f"{r[0]}/{r[1]}.csv" == ASSAY:
            r[3] = "-log10 KD (M); 99 = no binding detected"
    write_rows(table, rows)
    edit(site / ASSAY, 4, 2, "99")
    report = check_site("fitness", site)
    assert report.ok
    [flag] = [p for p in report.warnings if p.file == ASSAY]
    assert flag.row == 4 and "documented in assays.csv as '99 = no binding detected'" in flag.reason


def test_few_rows_unlisted_files_and_missing_files_are_warnings(site):
    rows = read_rows(site / ASSAY)
    write_rows(site / ASSAY, rows[:4])                        # 3 labelled rows
    shutil.copy(site / ASSAY, site / "binding" / "extra.csv")   # on disk, not in assays.csv
    (site / "thermostability" / "synthetic_tm.csv").unlink()     # listed, absent
    report = check_site("fitness", site)
    assert report.ok
    got = {p.file: p.reason for p in report.warnings}
    assert "only 3 labelled row(s)" in got[ASSAY]
    assert "not listed in assays.csv" in got["binding/extra.csv"]
    assert "listed in assays.csv but absent" in got["thermostability/synthetic_tm.csv"]
    assert report.rows["thermostability/synthetic_tm"] == 0


def test_folder_without_data_or_missing_folder_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    for folder, needle in ((tmp_path / "empty", "no site data"), (tmp_path / "absent", "no such folder")):
        [report] = check_folder(folder)
        assert not report.ok and needle in report.errors[0].reason
    assert not check_site("fitness", tmp_path / "absent").ok
    assert "no sentiment file" in check_site("sentiment", tmp_path / "empty").errors[0].reason


def test_json_form_lists_everything(site):
    for row in range(2, 40):
        edit(site / ASSAY, row, 0, "EVQLX")
    report = check_site("fitness", site)
    d = report.to_dict()
    assert d["ok"] is False and d["errors"] == 38 and len(d["problems"]) >= 38
    assert d["problems"][0] == {"severity": "error", "file": ASSAY, "reason": d["problems"][0]["reason"],
                                "row": 2, "column": "heavy"}
    assert "... and 18 more error(s) in binding/synthetic_kd.csv" in report.format()
