"""Reading the tables the analysis did not write itself (a run's eval.csv, published score tables, scores.csv
edited by hand): every value that is not a finite number and every malformed row becomes missing data, with
one warning per file and kind of problem naming the file and its lines. Nothing malformed becomes a number.

The rules (`read_checked_csv`):
- a header without a column the caller needs: the file holds no usable rows (warning);
- a row with more or fewer fields than the header: left out;
- a value of a numeric column that is not a finite number (`inf`, `-inf`, `nan`, text) or lies outside the
  column's range (e.g. a negative env step or wall clock, a DeepMind Control return outside [0, 1000]): missing.
  An empty cell is missing too, silently where the column may be empty (e.g. an unknown wall clock);
- a row whose required column is then missing: left out;
- `increasing` (e.g. `env_step`): a row whose value does not exceed every earlier row's (a repeated or a
  backwards step: two logs concatenated, a row written twice) is left out; the first row of a step is kept.
Line numbers are 1-based lines of the file (the header is line 1).
"""
from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)
MAX_LINES_NAMED = 10


@dataclass(frozen=True)
class Numeric:
    """A numeric column: values outside [lo, hi] (or not finite) are missing; `required`: a row without a valid
    value is left out; `may_be_empty`: an empty cell is missing without a warning."""
    lo: float = -math.inf
    hi: float = math.inf
    required: bool = False
    may_be_empty: bool = False


def lines_text(lines: list[int]) -> str:
    """'line 3' / 'lines 3, 7' / 'lines 3, 7, ... (25 in all)'."""
    shown = ", ".join(str(n) for n in lines[:MAX_LINES_NAMED])
    more = f", ... ({len(lines)} in all)" if len(lines) > MAX_LINES_NAMED else ""
    return f"line{'s' if len(lines) > 1 else ''} {shown}{more}"


def warn_lines(path, lines: list[int], what: str) -> None:
    if lines:
        log.warning("%s: %s: %s", path, lines_text(lines), what)


def parse_number(text: str, spec: Numeric) -> float | None:
    """The cell as a float in the column's range, or None (empty, text, non-finite or out of range)."""
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value) or not spec.lo <= value <= spec.hi:
        return None
    return value


def read_checked_csv(path: str | Path, numeric: dict[str, Numeric], text: Iterable[str] = (),
                     required_text: Iterable[str] = (), increasing: str | None = None,
                     rename: dict[str, str] | None = None) -> pd.DataFrame:
    """The file's valid rows: the columns of `numeric` (float, NaN where missing) and `text` (str, "" where
    empty) that the header has, plus `line` (the row's line in the file). `rename` maps header names to column
    names first (e.g. return_mean -> return). A missing file or an empty one: no rows (no warning)."""
    path = Path(path)
    rename = rename or {}
    text, required_text = list(text), set(required_text)
    columns = [*numeric, *text]
    empty = pd.DataFrame({c: pd.Series(dtype=float if c in numeric else object) for c in [*columns, "line"]})
    if not path.exists() or path.stat().st_size == 0:
        return empty
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return empty
        header = [rename.get(h.strip(), h.strip()) for h in header]
        needed = [c for c, s in numeric.items() if s.required] + [c for c in text if c in required_text]
        absent = [c for c in needed if c not in header]
        if absent:
            log.warning("%s: line 1: header %s lacks column(s) %s; the file's rows are treated as missing",
                        path, header, absent)
            return empty
        index = {c: header.index(c) for c in columns if c in header}
        rows, bad_count, bad_value, empty_cell = [], [], {}, {}
        for fields in reader:
            line = reader.line_num
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue  # a blank line
            if len(fields) != len(header):
                bad_count.append(line)
                continue
            row, keep = {"line": line}, True
            for c, spec in numeric.items():
                if c not in index:
                    row[c] = np.nan
                    continue
                cell = fields[index[c]].strip()
                value = parse_number(cell, spec)
                if value is None:
                    if cell or not spec.may_be_empty:
                        bad_value.setdefault(c, []).append((line, cell))
                    keep &= not spec.required
                    value = np.nan
                row[c] = value
            for c in text:
                row[c] = fields[index[c]].strip() if c in index else ""
                if c in required_text and not row[c]:
                    empty_cell.setdefault(c, []).append(line)
                    keep = False
            if keep:
                rows.append(row)
    warn_lines(path, bad_count, f"{len(header)} fields expected (the header's); row(s) left out")
    for c, bad in bad_value.items():
        sample = ", ".join(repr(v) for _, v in bad[:3])
        spec = numeric[c]
        bounds = "" if (spec.lo, spec.hi) == (-math.inf, math.inf) else f" in [{spec.lo:g}, {spec.hi:g}]"
        what = "row(s) left out" if spec.required else "treated as missing"
        warn_lines(path, [n for n, _ in bad], f"{c} is not a finite number{bounds} (got {sample}); {what}")
    for c, lines in empty_cell.items():
        warn_lines(path, lines, f"{c} is empty; row(s) left out")
    frame = pd.DataFrame(rows, columns=[*columns, "line"]) if rows else empty
    if increasing and len(frame):
        seen = frame[increasing].cummax().shift(1)
        back = frame[increasing] <= seen
        warn_lines(path, frame.loc[back, "line"].astype(int).tolist(),
                   f"{increasing} does not increase (repeats or goes back to an earlier step); row(s) left out")
        frame = frame[~back]
    return frame.reset_index(drop=True)
