"""Results tables: reading reference files, metrics, crash-safe writing, merging, summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from certify.errors import UserError
from certify.fsutil import atomic_write_text, atomic_writer
from certify.results import (
    HEADER,
    Results,
    ResultWriter,
    check_writable,
    merge_results,
    read_results,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)
from certify.summary import default_radii, summary_table

HEAD = "\t".join(HEADER) + "\n"


def make(radius, correct, predict=None, time=None) -> Results:
    n = len(radius)
    return Results(
        idx=np.arange(n),
        label=np.zeros(n, dtype=np.int64),
        predict=np.asarray(predict if predict is not None else [0] * n),
        radius=np.asarray(radius, dtype=float),
        correct=np.asarray(correct),
        time=np.asarray(time if time is not None else [1.0] * n, dtype=float),
    )


# ----------------------------------------------------------------------------- reading


def test_reads_reference_style_file(tmp_path: Path) -> None:
    p = tmp_path / "ref.tsv"
    p.write_text(
        HEAD
        + "0\t3\t3\t0.378\t1\t0:02:31.238689\n"
        + "20\t8\t-1\t0.0\t0\t15.4\n"
        + "40\t1\t2\t1.23\t0\t1 day, 0:00:01\n"
    )
    r = read_results(p)
    assert len(r) == 3
    assert r.idx.tolist() == [0, 20, 40]
    assert r.label.tolist() == [3, 8, 1]
    assert r.predict.tolist() == [3, -1, 2]
    assert r.radius.tolist() == [0.378, 0.0, 1.23]
    assert r.correct.tolist() == [1, 0, 0]
    assert r.time == pytest.approx([151.238689, 15.4, 86401.0])
    assert r.path == p


def test_columns_found_by_name_extra_columns_ignored(tmp_path: Path) -> None:
    p = tmp_path / "extra.tsv"
    p.write_text("time\tidx\tnote\tcorrect\tradius\tpredict\tlabel\n1.5\t7\thi\t1\t0.5\t2\t2\n")
    r = read_results(p)
    assert (r.idx[0], r.label[0], r.predict[0], r.radius[0], r.correct[0], r.time[0]) == (
        7, 2, 2, 0.5, 1, 1.5
    )


def test_errors_name_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        read_results(tmp_path / "nope.tsv")

    p = tmp_path / "noheader.tsv"
    p.write_text("0\t3\t3\t0.378\t1\t1.0\n")
    with pytest.raises(UserError, match=r"noheader\.tsv:1: missing header"):
        read_results(p)

    p = tmp_path / "bad.tsv"
    p.write_text(HEAD + "0\t3\t3\t0.5\t1\t1.0\n1\t3\t3\tabc\t1\t1.0\n")
    with pytest.raises(UserError, match=r"bad\.tsv:3: malformed row: bad radius") as e:
        read_results(p)
    assert "\n" not in str(e.value)

    p = tmp_path / "short.tsv"
    p.write_text(HEAD + "0\t3\t3\n1\t3\t3\t0.5\t1\t1.0\n")
    with pytest.raises(UserError, match=r"short\.tsv:2: malformed row"):
        read_results(p)

    p = tmp_path / "dup.tsv"
    p.write_text(HEAD + "0\t3\t3\t0.5\t1\t1.0\n0\t3\t3\t0.5\t1\t1.0\n")
    with pytest.raises(UserError, match=r"dup\.tsv:3: idx 0 appears twice"):
        read_results(p)


def test_partial_last_line(tmp_path: Path) -> None:
    p = tmp_path / "crashed.tsv"
    p.write_text(HEAD + "0\t3\t3\t0.5\t1\t1.0\n1\t4\t4\t0.")
    with pytest.raises(UserError, match=r"crashed\.tsv:3: incomplete last row"):
        read_results(p)
    r = read_results(p, allow_partial_last=True)
    assert r.idx.tolist() == [0]
    # a complete last row without newline is a real row
    p.write_text(HEAD + "0\t3\t3\t0.5\t1\t1.0")
    assert read_results(p).idx.tolist() == [0]


def test_empty_table_is_valid(tmp_path: Path) -> None:
    p = tmp_path / "empty.tsv"
    p.write_text(HEAD)
    r = read_results(p)
    assert len(r) == 0
    assert np.isnan(r.acr())


# ----------------------------------------------------------------------------- metrics


def test_metrics_hand_computed() -> None:
    #        correct  correct  wrong  abstain  correct  wrong, radius counts 0
    r = make(
        radius=[0.5, 1.0, 0.7, 0.0, 0.0, 2.0],
        correct=[1, 1, 0, 0, 1, 0],
        predict=[1, 1, 2, -1, 1, 3],
        time=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
    )
    acc = r.certified_accuracy([0.0, 0.25, 0.5, 0.75, 1.0, 1.5])
    np.testing.assert_allclose(acc, [3 / 6, 2 / 6, 2 / 6, 1 / 6, 1 / 6, 0.0])
    assert r.certified_accuracy(0.5) == pytest.approx(2 / 6)  # radius >= r is inclusive
    assert r.acr() == pytest.approx((0.5 + 1.0) / 6)
    assert r.abstain_rate() == pytest.approx(1 / 6)
    assert r.clean_accuracy() == pytest.approx(3 / 6)
    assert r.seconds_per_example() == pytest.approx(3.5)


# ----------------------------------------------------------------------------- writing


def test_writer_resume_after_crash(tmp_path: Path) -> None:
    p = tmp_path / "run.tsv"
    with ResultWriter(p, resume=False) as w:
        w.write(0, 3, 3, 0.123456789, 1, 2.5)
        w.write(1, 4, -1, 0.0, 0, 1.0)
        w.write(2, 5, 6, 0.9, False, 0.25)
    with open(p, "a") as f:
        f.write("3\t7\t7\t0.4")  # a crash mid-row
    with ResultWriter(p, resume=True) as w:
        assert w.done == {0, 1, 2}
        assert "0.4" not in p.read_text()
        w.write(3, 7, 7, 1.5, True, 3.0)
    assert p.read_text() == (
        HEAD
        + "0\t3\t3\t0.123457\t1\t2.5000\n"
        + "1\t4\t-1\t0.0\t0\t1.0000\n"
        + "2\t5\t6\t0.9\t0\t0.2500\n"
        + "3\t7\t7\t1.5\t1\t3.0000\n"
    )
    r = read_results(p)
    assert r.idx.tolist() == [0, 1, 2, 3]
    assert r.radius.tolist() == [0.123457, 0.0, 0.9, 1.5]


def test_writer_flushes_every_row(tmp_path: Path) -> None:
    p = tmp_path / "live.tsv"
    w = ResultWriter(p, resume=False)
    w.write(5, 1, 1, 0.5, 1, 1.0)
    assert read_results(p).idx.tolist() == [5]  # visible before close
    with pytest.raises(ValueError):
        w.write(5, 1, 1, 0.5, 1, 1.0)
    w.close()
    w.close()


def test_writer_fresh_and_resume_missing(tmp_path: Path) -> None:
    p = tmp_path / "r.tsv"
    p.write_text(HEAD + "0\t1\t1\t0.5\t1\t1.0\n")
    with ResultWriter(p, resume=False) as w:  # truncates
        assert w.done == set()
    assert p.read_text() == HEAD
    q = tmp_path / "missing.tsv"
    with ResultWriter(q, resume=True) as w:
        assert w.done == set()
    assert q.read_text() == HEAD


def test_writer_resume_rejects_foreign_header(tmp_path: Path) -> None:
    p = tmp_path / "foreign.tsv"
    p.write_text("a\tb\n1\t2\n")
    with pytest.raises(UserError, match="cannot resume"):
        ResultWriter(p, resume=True)


def test_unwritable_path(tmp_path: Path) -> None:
    bad = tmp_path / "no_such_dir" / "r.tsv"
    with pytest.raises(UserError, match=r"cannot write .*does not exist"):
        check_writable(bad)
    with pytest.raises(UserError, match="cannot write"):
        ResultWriter(bad, resume=False)
    with pytest.raises(UserError, match="is a directory"):
        check_writable(tmp_path)
    assert not (tmp_path / "no_such_dir").exists()
    check_writable(tmp_path / "fine.tsv")
    assert not (tmp_path / "fine.tsv").exists()


def test_check_output_path_names_the_file_and_the_missing_directory(tmp_path: Path) -> None:
    from certify.checkpoint import save_checkpoint
    from certify.fsutil import check_output_path

    missing = tmp_path / "no_such_dir"
    with pytest.raises(UserError) as err:
        check_output_path(missing / "m.pt", "checkpoint")
    assert str(err.value) == f"cannot write checkpoint {missing / 'm.pt'}: directory {missing} does not exist"
    with pytest.raises(UserError) as err:
        check_output_path(missing / "r.tsv")
    assert str(err.value) == f"cannot write {missing / 'r.tsv'}: directory {missing} does not exist"
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match=r"file is not a directory"):
        check_output_path(tmp_path / "file" / "r.tsv")
    check_output_path(tmp_path / "fine.tsv")
    with pytest.raises(UserError, match="cannot write checkpoint .*does not exist"):
        save_checkpoint(None, missing / "m.pt")  # refused before the checkpoint is looked at
    assert list(tmp_path.iterdir()) == [tmp_path / "file"]


# ----------------------------------------------------------------------------- merging


ROWS = [
    "0\t3\t3\t0.378\t1\t0:02:31.238689",
    "1\t8\t-1\t0.0\t0\t15.4",
    "2\t1\t1\t1.23457\t1\t2.0000",
    "3\t2\t5\t0.5\t0\t2.0000",
    "4\t0\t0\t2.1e-05\t1\t2.0000",
]


def test_merge_is_byte_identical_to_unsharded(tmp_path: Path) -> None:
    full = tmp_path / "full.tsv"
    full.write_text(HEAD + "".join(r + "\n" for r in ROWS))
    a, b = tmp_path / "a.tsv", tmp_path / "b.tsv"
    a.write_text(HEAD + "".join(ROWS[i] + "\n" for i in (0, 2, 4)))
    b.write_text(HEAD + "".join(ROWS[i] + "\n" for i in (3, 1)))
    out = tmp_path / "merged.tsv"
    merged = merge_results([b, a], out)
    assert out.read_bytes() == full.read_bytes()
    assert merged.idx.tolist() == [0, 1, 2, 3, 4]
    assert merged.acr() == pytest.approx(read_results(full).acr())
    assert not sidecar_path(out).exists()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.tsv", "b.tsv", "full.tsv", "merged.tsv"]


def test_merge_duplicate_idx(tmp_path: Path) -> None:
    a, b = tmp_path / "a.tsv", tmp_path / "b.tsv"
    a.write_text(HEAD + ROWS[0] + "\n" + ROWS[1] + "\n")
    b.write_text(HEAD + ROWS[1] + "\n")
    out = tmp_path / "m.tsv"
    with pytest.raises(UserError, match=r"idx 1 appears in both .*a\.tsv and .*b\.tsv"):
        merge_results([a, b], out)
    assert not out.exists()


def test_merge_sidecars(tmp_path: Path) -> None:
    a, b = tmp_path / "a.tsv", tmp_path / "b.tsv"
    a.write_text(HEAD + ROWS[0] + "\n")
    b.write_text(HEAD + ROWS[1] + "\n")
    common = {"norm": "l2", "seed": 0, "sigma": 0.25}
    write_sidecar(a, {**common, "shard": "0/2", "wall_time": 10.0, "hostname": "x", "examples": 1,
                      "complete": True, "command": "certify run m.pt --shard 0/2"})
    write_sidecar(b, {**common, "shard": "1/2", "wall_time": 12.0, "hostname": "y", "examples": 1,
                      "complete": True, "command": "certify run m.pt --shard 1/2"})
    out = tmp_path / "m.tsv"
    merge_results([a, b], out)
    meta = read_sidecar(out)
    assert meta == {**common, "wall_time": 22.0, "hostname": "x", "merged_from": [str(a), str(b)],
                    "examples": 2, "complete": True, "command": "certify run m.pt --shard 0/2"}
    write_sidecar(b, {**common, "shard": "1/2", "examples": 1, "complete": False})
    with pytest.raises(UserError, match="interrupted run"):
        merge_results([a, b], tmp_path / "m1.tsv")
    merge_results([a, b], tmp_path / "m1.tsv", allow_incomplete=True)
    assert read_sidecar(tmp_path / "m1.tsv")["complete"] is False  # one shard did not finish

    write_sidecar(b, {**common, "seed": 1, "shard": "1/2"})
    out2 = tmp_path / "m2.tsv"
    with pytest.raises(UserError, match="sidecars disagree on 'seed'"):
        merge_results([a, b], out2)
    assert not out2.exists()

    sidecar_path(b).unlink()
    with pytest.raises(UserError, match="missing"):
        merge_results([a, b], out2)


def test_merge_refuses_output_among_inputs(tmp_path: Path) -> None:
    a = tmp_path / "a.tsv"
    a.write_text(HEAD + ROWS[0] + "\n")
    with pytest.raises(UserError, match="also one of its inputs"):
        merge_results([a], a)


# ----------------------------------------------------------------------------- sidecar, fsutil


def test_sidecar_roundtrip(tmp_path: Path) -> None:
    tsv = tmp_path / "R.tsv"
    assert sidecar_path(tsv) == tmp_path / "R.tsv.json"
    assert read_sidecar(tsv) is None
    write_sidecar(tsv, {"b": 1, "a": tmp_path, "c": np.float32(0.5)})
    text = sidecar_path(tsv).read_text()
    assert text.index('"a"') < text.index('"b"')  # sorted keys
    assert json.loads(text) == {"a": str(tmp_path), "b": 1, "c": 0.5}
    sidecar_path(tsv).write_text("{not json")
    with pytest.raises(UserError, match=r"R\.tsv\.json:1: invalid JSON"):
        read_sidecar(tsv)


def test_atomic_writer_cleans_up_on_error(tmp_path: Path) -> None:
    p = tmp_path / "x.bin"
    atomic_write_text(p, "old")
    with pytest.raises(RuntimeError):
        with atomic_writer(p, "wb") as f:
            f.write(b"new")
            raise RuntimeError("boom")
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["x.bin"]


# ----------------------------------------------------------------------------- tables


def test_summary_table_two_runs() -> None:
    a = make(radius=[0.5, 1.0, 0.0, 0.3], correct=[1, 1, 0, 1], predict=[1, 1, -1, 1],
             time=[1.0, 2.0, 3.0, 4.0])
    b = make(radius=[0.2, 0.6, 0.9, 0.1], correct=[1, 1, 1, 0], predict=[1, 1, 1, 2],
             time=[1.0, 1.0, 1.0, 1.0])
    table = summary_table([a, b], ["base", "smoothmix"], [0.0, 0.25, 0.5, 0.75])
    assert table.splitlines() == [
        "| run | r=0.00 | r=0.25 | r=0.50 | r=0.75 | ACR | abstain | s/example |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        "| base | 0.750 | 0.750* | 0.500 | 0.250 | 0.450* | 25.0% | 2.50 |",
        "| smoothmix | 0.750 | 0.500 | 0.500 | 0.250 | 0.425 | 0.0% | 1.00 |",
    ]  # ties (r = 0, 0.5, 0.75) mark nothing: only strict bests get a *
    single = summary_table([a], ["base"], [0.0])
    assert "*" not in single
    zeros = summary_table([a, b], ["base", "smoothmix"], [5.0])  # an all-zero column
    assert "*" not in zeros.splitlines()[2].split("|")[2] + zeros.splitlines()[3].split("|")[2]


def test_default_radii() -> None:
    assert default_radii([make([0.9, 0.1], [1, 1])]) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert default_radii([make([0.0], [0])]) == [0.0, 0.25]
    wide = default_radii([make([4.1], [1])])  # 0.25 steps would need 18 columns
    assert len(wide) <= 12 and wide[-1] > 4.1 and wide[1] == 0.5
    assert default_radii([make([0.035], [1])], norm="linf") == [0.0, 0.01, 0.02, 0.03]
    assert default_radii([make([0.2], [1])], norm="linf") == [0.0, 0.05, 0.1, 0.15, 0.2]
    with pytest.raises(UserError, match="unknown norm"):
        default_radii([], norm="l1")


def test_certified_accuracy_matches_definition_on_random_data() -> None:
    rng = np.random.default_rng(0)
    radius = np.round(rng.exponential(0.5, 200), 2)  # rounding creates ties at grid points
    correct = rng.integers(0, 2, 200)
    r = make(radius, correct)
    grid = np.linspace(0, 2, 81)
    naive = [np.mean((correct == 1) & (radius >= g)) for g in grid]
    np.testing.assert_allclose(r.certified_accuracy(grid), naive)
