"""Certification result tables: read, append (crash-safe, resumable), merge shards, summarize.

A results file is a TSV with header ``idx label predict radius correct time`` and one row per
test example, the format of the public randomized-smoothing code (locuslab/smoothing, SmoothMix),
so their published files and ours can be compared with the same tools. An abstention is
``predict -1, radius 0, correct 0``. What a row cannot hold (checkpoint hash, certifier
parameters, norm, seed, ...) lives in a JSON sidecar next to it, ``<tsv path>.json``.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from certify.errors import UserError
from certify.fsutil import atomic_write_text, check_output_path
from certify.jsonutil import strict_dumps

__all__ = [
    "HEADER",
    "PER_RUN_SIDECAR_KEYS",
    "Results",
    "ResultWriter",
    "check_writable",
    "merge_results",
    "read_results",
    "read_sidecar",
    "sidecar_path",
    "write_sidecar",
]

HEADER: tuple[str, ...] = ("idx", "label", "predict", "radius", "correct", "time")

# Sidecar keys that legitimately differ between shards of one run; merge ignores them.
PER_RUN_SIDECAR_KEYS: frozenset[str] = frozenset(
    {"wall_time", "shard", "started", "finished", "hostname", "device", "seconds", "command",
     "examples", "complete", "torch", "python", "estimation_samples", "selection_samples"}
)
# Per-run totals that the merged sidecar sums over the shards.
SUMMED_SIDECAR_KEYS: tuple[str, ...] = ("examples", "estimation_samples", "selection_samples")

# str(datetime.timedelta): "H:MM:SS", "H:MM:SS.ffffff", optionally prefixed by "N day(s), ".
_TIMEDELTA_RE = re.compile(r"^(?:(-?\d+) days?, )?(\d+):([0-5]\d):([0-5]\d(?:\.\d*)?)$")


# --------------------------------------------------------------------------------------------
# Results


@dataclass(eq=False)
class Results:
    """One results table as numpy arrays (``time`` in seconds); ``path`` is where it came from."""

    idx: np.ndarray
    label: np.ndarray
    predict: np.ndarray
    radius: np.ndarray
    correct: np.ndarray
    time: np.ndarray
    path: Path | None = None
    columns: dict[str, np.ndarray] = field(default_factory=dict)  # a method's extra numeric columns

    def __len__(self) -> int:
        return int(self.idx.shape[0])

    def certified_accuracy(self, radii: float | Sequence[float] | np.ndarray) -> np.ndarray:
        """Fraction of all rows that are correct with radius >= r, for each r.

        Abstentions and wrong predictions stay in the denominator (as the reference's
        ``ApproximateAccuracy``), so the number is comparable across certifiers. NaN if empty.
        """
        r = np.asarray(radii, dtype=np.float64)
        n = len(self)
        if n == 0:
            return np.full(r.shape, np.nan)
        good = np.sort(self.radius[self.correct == 1])
        # rows with radius >= r are those at or after the first position where r would be inserted
        count = good.shape[0] - np.searchsorted(good, r, side="left")
        return count / n

    def acr(self) -> float:
        """Average certified radius: mean of radius * correct over all rows (NaN if empty)."""
        if len(self) == 0:
            return math.nan
        return float(np.mean(np.where(self.correct == 1, self.radius, 0.0)))

    def abstain_rate(self) -> float:
        """Fraction of rows where the certifier abstained (``predict == -1``)."""
        return float(np.mean(self.predict == -1)) if len(self) else math.nan

    def clean_accuracy(self) -> float:
        """Fraction of rows predicted correctly, i.e. certified accuracy at radius 0."""
        return float(np.mean(self.correct == 1)) if len(self) else math.nan

    def seconds_per_example(self) -> float:
        """Mean certification time per row, in seconds."""
        return float(np.mean(self.time)) if len(self) else math.nan


def _parse_time(text: str) -> float:
    """Seconds from either ``str(timedelta)`` (reference files) or plain seconds (older/ours)."""
    m = _TIMEDELTA_RE.match(text)
    if m:
        days, hours, minutes, seconds = m.groups()
        return (int(days or 0) * 24 + int(hours)) * 3600.0 + int(minutes) * 60.0 + float(seconds)
    value = float(text)  # ValueError for garbage, reported by the caller with the line number
    if not math.isfinite(value):
        raise ValueError(f"time is {text!r}")
    return value


def _parse_int(text: str) -> int:
    return int(text)


def _parse_correct(text: str) -> int:
    # Some hand-written files use Python booleans; the references write 0/1.
    if text in ("True", "False"):
        return int(text == "True")
    value = int(text)
    if value not in (0, 1):
        raise ValueError(f"correct must be 0 or 1, got {text!r}")
    return value


def _parse_radius(text: str) -> float:
    value = float(text)
    if math.isnan(value):
        raise ValueError("radius is NaN")
    return value


_PARSERS = {
    "idx": _parse_int,
    "label": _parse_int,
    "predict": _parse_int,
    "radius": _parse_radius,
    "correct": _parse_correct,
    "time": _parse_time,
}


@dataclass
class _Parsed:
    header_line: str
    header_fields: list[str]
    lines: list[str]  # row text without the line terminator, in file order
    values: dict[str, list[Any]]


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"results file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"cannot read results file {path}: it is a directory") from None
    except OSError as e:
        raise UserError(f"cannot read results file {path}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not a text results file (invalid UTF-8)") from None


def _parse(text: str, path: Path, allow_partial_last: bool) -> _Parsed:
    """Split and validate a results table; every error names the file and line."""
    raw = text.split("\n")
    ends_with_newline = raw[-1] == ""
    if ends_with_newline:
        raw.pop()
    if not raw or not raw[0].strip():
        raise UserError(
            f"{path}:1: missing header (expected {' '.join(HEADER)}, tab-separated); "
            "is this a certification results file?"
        )
    header_line = raw[0].rstrip("\r")
    header_fields = [h.strip() for h in header_line.split("\t")]
    missing = [h for h in HEADER if h not in header_fields]
    if missing:
        raise UserError(
            f"{path}:1: missing header or header lacks column(s) {', '.join(missing)} "
            f"(expected {' '.join(HEADER)}, tab-separated)"
        )
    dup = sorted({h for h in header_fields if header_fields.count(h) > 1})
    if dup:
        raise UserError(f"{path}:1: header repeats column(s) {', '.join(dup)}")
    col = {name: header_fields.index(name) for name in HEADER}
    width = len(header_fields)

    extra = [h for h in header_fields if h not in HEADER]
    values: dict[str, list[Any]] = {name: [] for name in (*HEADER, *extra)}
    lines: list[str] = []
    first_line_of_idx: dict[int, int] = {}
    last_lineno = len(raw)
    for lineno, line in enumerate(raw[1:], start=2):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != width:
            if lineno == last_lineno and not ends_with_newline and len(fields) < width:
                if allow_partial_last:
                    break
                raise UserError(
                    f"{path}:{lineno}: incomplete last row ({len(fields)} of {width} fields, no "
                    "trailing newline); probably left by an interrupted run, resume it or delete "
                    "that line"
                )
            raise UserError(
                f"{path}:{lineno}: malformed row: expected {width} tab-separated fields, "
                f"got {len(fields)}"
            )
        for name in HEADER:
            field = fields[col[name]].strip()
            try:
                values[name].append(_PARSERS[name](field))
            except ValueError:
                raise UserError(
                    f"{path}:{lineno}: malformed row: bad {name} value {field!r}"
                ) from None
        for name in extra:
            values[name].append(fields[header_fields.index(name)].strip())
        i = values["idx"][-1]
        if i in first_line_of_idx:
            raise UserError(
                f"{path}:{lineno}: idx {i} appears twice (first on line {first_line_of_idx[i]})"
            )
        first_line_of_idx[i] = lineno
        lines.append(line)
    return _Parsed(header_line, header_fields, lines, values)


def _numeric(texts: list[str]) -> np.ndarray | None:
    try:
        return np.asarray([float(t) for t in texts], dtype=np.float64)
    except ValueError:
        return None


def _to_results(parsed: _Parsed, path: Path | None) -> Results:
    v = parsed.values
    extra = {name: _numeric(v[name]) for name in v if name not in HEADER}
    return Results(
        idx=np.asarray(v["idx"], dtype=np.int64),
        label=np.asarray(v["label"], dtype=np.int64),
        predict=np.asarray(v["predict"], dtype=np.int64),
        radius=np.asarray(v["radius"], dtype=np.float64),
        correct=np.asarray(v["correct"], dtype=np.int64),
        time=np.asarray(v["time"], dtype=np.float64),
        path=path,
        columns={name: column for name, column in extra.items() if column is not None},
    )


def read_results(path: str | os.PathLike[str], allow_partial_last: bool = False) -> Results:
    """Read our results files and the reference repos' (timedelta or seconds in ``time``).

    Columns are found by header name, so extra columns are ignored. A last line with too few
    fields and no trailing newline is what a killed run leaves; it is skipped only when
    ``allow_partial_last`` is set, otherwise it is an error like any malformed row.
    """
    p = Path(path)
    return _to_results(_parse(_read_text(p), p, allow_partial_last), p)


# --------------------------------------------------------------------------------------------
# Writing


def check_writable(path: str | os.PathLike[str]) -> None:
    """Fail early, with a one-line reason, if ``path`` cannot be created or overwritten.

    Creates nothing, so the CLI can call it before hours of certification start.
    """
    p = Path(path)
    parent = p.parent
    if p.is_dir():
        raise UserError(f"cannot write {p}: it is a directory")
    check_output_path(p)
    if p.exists():
        if not os.access(p, os.W_OK):
            raise UserError(f"cannot write {p}: permission denied")
    elif not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {p}: directory {parent} is not writable")


def _os_error(p: Path, e: OSError) -> UserError:
    return UserError(f"cannot write {p}: {e.strerror or e}")


def _format_radius(radius: float) -> str:
    """6 significant digits on purpose (the references' {:.3} rounding moves ACR by ~±0.001);
    whole numbers keep a ".0" so an abstention reads ``0.0`` as in the reference files."""
    text = f"{float(radius):.6g}"
    return text if any(c in text for c in ".einf") else text + ".0"


class ResultWriter:
    """Append result rows, flushing each, so an interrupted run keeps every finished row.

    ``resume=False`` starts a new file (truncating an existing one: whether that is allowed is
    the CLI's decision). ``resume=True`` continues an existing file: its header is checked, a
    partial last line left by a crash is cut off, and ``done`` holds the idx already written so
    the caller can skip them. A missing file is simply started fresh.
    """

    def __init__(self, path: str | os.PathLike[str], resume: bool = False,
                 columns: Sequence[str] = ()) -> None:
        self.path = Path(path)
        self.header = (*HEADER, *columns)
        self.done: set[int] = set()
        check_writable(self.path)
        try:
            if resume and self.path.exists():
                self._file = self._open_for_resume()
            else:
                self._file = self._open_fresh()
        except OSError as e:
            raise _os_error(self.path, e) from None

    def _open_fresh(self) -> IO[str]:
        f = open(self.path, "w", encoding="utf-8", newline="")
        f.write("\t".join(self.header) + "\n")
        f.flush()
        return f

    def _open_for_resume(self) -> IO[str]:
        with open(self.path, "rb") as f:
            data = f.read()
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            # Not even a complete header: nothing finished was recorded.
            return self._open_fresh()
        try:
            text = data[:cut].decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{self.path}: not a text results file; cannot resume it") from None
        first = text.split("\n", 1)[0].rstrip("\r")
        if tuple(h.strip() for h in first.split("\t")) != self.header:
            raise UserError(
                f"{self.path}:1: header is not {' '.join(self.header)}; cannot resume this file "
                "(start a new results file instead)"
            )
        parsed = _parse(text, self.path, allow_partial_last=False)
        self.done = set(parsed.values["idx"])
        if cut < len(data):
            # Drop the crash remnant so the next row starts on a fresh line.
            with open(self.path, "r+b") as f:
                f.truncate(cut)
        return open(self.path, "a", encoding="utf-8", newline="")

    def write(
        self, idx: int, label: int, predict: int, radius: float, correct: int | bool, seconds: float,
        **extra: Any,
    ) -> None:
        """Append one row and flush it to the OS; ``extra`` gives the values of the extra columns."""
        if self._file.closed:
            raise ValueError(f"ResultWriter for {self.path} is closed")
        idx = int(idx)
        if idx in self.done:
            raise ValueError(f"idx {idx} is already in {self.path}")
        line = (
            f"{idx}\t{int(label)}\t{int(predict)}\t{_format_radius(radius)}\t{int(correct)}"
            f"\t{float(seconds):.4f}"
            + "".join(f"\t{extra[name]}" for name in self.header[len(HEADER):])
            + "\n"
        )
        try:
            self._file.write(line)
            self._file.flush()
        except OSError as e:
            raise _os_error(self.path, e) from None
        self.done.add(idx)

    def close(self) -> None:
        """Flush to disk and close; safe to call twice."""
        if self._file.closed:
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as e:
            raise _os_error(self.path, e) from None
        finally:
            self._file.close()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# Sidecars


def sidecar_path(tsv_path: str | os.PathLike[str]) -> Path:
    """Where the metadata of a results file lives: ``R.tsv`` -> ``R.tsv.json``."""
    return Path(str(tsv_path) + ".json")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"sidecar value of type {type(obj).__name__} is not JSON-serializable")


def write_sidecar(tsv_path: str | os.PathLike[str], data: dict[str, Any]) -> Path:
    """Write the sidecar atomically as stable, diff-friendly JSON (sorted keys, indent 2)."""
    p = sidecar_path(tsv_path)
    text = strict_dumps(data, sort_keys=True, indent=2, default=_json_default) + "\n"  # NaN → null
    try:
        atomic_write_text(p, text)
    except OSError as e:
        raise _os_error(p, e) from None
    return p


def read_sidecar(tsv_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The sidecar of a results file as a dict, or None if it has none."""
    p = sidecar_path(tsv_path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read sidecar {p}: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{p}:{e.lineno}: invalid JSON in sidecar: {e.msg}") from None
    if not isinstance(data, dict):
        raise UserError(f"{p}: sidecar must hold a JSON object, got {type(data).__name__}")
    return data


# --------------------------------------------------------------------------------------------
# Merging shards


def _check_shard_set(shards: list[Any]) -> None:
    """Shards I/N of one run must be exactly 0/N .. N-1/N, or the merge is not that run."""
    if all(s is None for s in shards):
        return
    try:
        pairs = [tuple(int(v) for v in str(s).split("/")) for s in shards]
        parts = {n for _, n in pairs}
    except ValueError:
        raise UserError(f"sidecars name shards {shards}: not all of the form I/N") from None
    if len(parts) != 1 or sorted(i for i, _ in pairs) != list(range(next(iter(parts)))):
        raise UserError(f"these files are shards {', '.join(map(str, shards))}: a full run needs each "
                        f"of 0/N .. N-1/N exactly once")


class IncompleteShard(UserError):
    """A shard to merge is an interrupted run."""


def _merge_sidecars(paths: list[Path], rows_ignore: Collection[str] = (),
                    defaults: Mapping[str, Any] | None = None,
                    allow_incomplete: bool = False) -> dict[str, Any] | None:
    cars = [(p, read_sidecar(p)) for p in paths]
    cars = [(p, None if c is None else {**(defaults or {}), **c}) for p, c in cars]
    have = [p for p, c in cars if c is not None]
    if not have:
        return None
    if len(have) != len(paths):
        missing = next(p for p, c in cars if c is None)
        raise UserError(
            f"{sidecar_path(missing)} is missing but {sidecar_path(have[0])} exists; "
            "are these shards of the same run?"
        )
    present: list[tuple[Path, dict[str, Any]]] = [(p, c) for p, c in cars if c is not None]
    first_path, first = present[0]
    for p, car in present[1:]:
        for key in sorted((set(first) | set(car)) - PER_RUN_SIDECAR_KEYS - set(rows_ignore)):
            a, b = first.get(key, "<absent>"), car.get(key, "<absent>")
            if a != b:
                raise UserError(
                    f"sidecars disagree on {key!r}: {sidecar_path(first_path)} has {a!r}, "
                    f"{sidecar_path(p)} has {b!r}; these are not shards of one run"
                )
    _check_shard_set([car.get("shard") for _, car in present])
    interrupted = [p for p, car in present if car.get("complete") is False]
    if interrupted and not allow_incomplete:
        raise IncompleteShard(f"{interrupted[0]} is an interrupted run (its sidecar says complete: false): "
                              f"finish it with its command and --resume, or merge anyway with "
                              f"--allow-incomplete (the merged file is then marked incomplete)")
    merged = dict(first)
    merged.pop("shard", None)
    merged["merged_from"] = [str(p) for p in paths]
    shards = [car for _, car in present]
    for key in SUMMED_SIDECAR_KEYS:
        if all(key in car for car in shards):
            merged[key] = sum(int(car[key]) for car in shards)
        else:  # an interrupted shard has no total: the first shard's alone would mislead
            merged.pop(key, None)
    if all("wall_time" in car for car in shards):
        merged["wall_time"] = round(sum(float(car["wall_time"]) for car in shards), 3)
    if any("complete" in car for car in shards):
        merged["complete"] = all(car.get("complete") is True for car in shards)
    return merged


def merge_results(
    paths: Sequence[str | os.PathLike[str]], out_path: str | os.PathLike[str],
    rows_ignore: Collection[str] = (), defaults: Mapping[str, Any] | None = None,
    allow_incomplete: bool = False,
) -> Results:
    """Join shard files into one table sorted by idx, rows kept byte-for-byte.

    Keeping each row's text (rather than re-formatting parsed numbers) makes a merged file
    identical to what an unsharded run writes. Sidecars, if the shards have them, must agree
    except on :data:`PER_RUN_SIDECAR_KEYS`; the merged sidecar is the first one without
    ``shard`` and with ``merged_from``. ``rows_ignore`` names more keys the shards may differ on
    (settings the rows do not depend on, such as ``batch`` for the sequential method on a CPU; the
    merged sidecar keeps the first shard's). ``defaults`` fills keys that older sidecars lack.
    An interrupted shard is refused unless ``allow_incomplete``. Both outputs are written atomically.
    """
    if not paths:
        raise UserError("merge needs at least one results file")
    shard_paths = [Path(p) for p in paths]
    out = Path(out_path)
    out_resolved = out.resolve()
    for p in shard_paths:
        if p.resolve() == out_resolved:
            raise UserError(f"merge output {out} is also one of its inputs; choose another name")
    check_writable(out)

    header_line: str | None = None
    header_from: Path | None = None
    owner: dict[int, Path] = {}
    lines: list[str] = []
    values: dict[str, list[Any]] = {}
    for p in shard_paths:
        parsed = _parse(_read_text(p), p, allow_partial_last=False)
        if header_line is None:
            header_line, header_from = parsed.header_line, p
        elif parsed.header_fields != [h.strip() for h in header_line.split("\t")]:
            raise UserError(f"{p}:1: header differs from the header of {header_from}")
        for i in parsed.values["idx"]:
            if i in owner:
                raise UserError(f"idx {i} appears in both {owner[i]} and {p}")
            owner[i] = p
        lines.extend(parsed.lines)
        for name, column in parsed.values.items():
            values.setdefault(name, []).extend(column)
    assert header_line is not None

    order = sorted(range(len(lines)), key=values["idx"].__getitem__)
    values = {name: [column[k] for k in order] for name, column in values.items()}
    text = header_line + "\n" + "".join(lines[k] + "\n" for k in order)

    sidecar = _merge_sidecars(shard_paths, rows_ignore, defaults, allow_incomplete)  # validate before writing
    try:
        atomic_write_text(out, text)
    except OSError as e:
        raise _os_error(out, e) from None
    if sidecar is not None:
        write_sidecar(out, sidecar)
    return _to_results(_Parsed(header_line, [], [], values), out)
