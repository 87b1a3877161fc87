"""`brain3d report --out`: one row per scan, appended and flushed to disk (fsync) as each scan finishes, so
that Ctrl-C or kill -9 keeps every finished row, and a re-run with the same file skips the scans already
reported ok by the same model and retries the others.

JSON lines (one object a line), or CSV with a fixed set of columns and its header written once. A line cut
short by a kill is dropped when the file is opened again; a file that is not such a results file is refused,
never overwritten. When the run ends the file holds one row per scan (the latest).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

# the CSV columns: a row's nested findings, side probabilities, model and timings flattened
CSV_COLUMNS = [
    "scan",
    "status",
    "reason",
    "report",
    "sequence",
    "findings_side",
    "findings_anatomy",
    "findings_pathology",
    "p_left",
    "p_right",
    "explanation",
    "model_dir",
    "model_phase",
    "model_profile",
    "model_trained_on",
    "model_revision",
    "model_dvc_lock_md5",
    "model_sha256",
    "model_use",
    "seconds_preprocess",
    "seconds_model_load",
    "seconds_generate",
]


class ResultsError(ValueError):
    """--out names a file that cannot be used: not a results file, or not writable. One line."""


def printable(text: str) -> str:
    """`text` safe to write anywhere as UTF-8: a file name's undecodable bytes (which Python carries as
    surrogate escapes) shown as backslash escapes (\\xff)."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that is not an escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def _printable(value):
    """`value` (a row) with every string made `printable`."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable(k): _printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_printable(v) for v in value]
    return value


def flat(row: dict) -> dict[str, str]:
    """A row as CSV_COLUMNS (lists joined with ";", mappings such as the model's file hashes as JSON, absent
    values empty)."""
    out = {k: row.get(k) for k in ("scan", "status", "reason", "report", "sequence", "explanation")}
    for section, prefix in (("findings", "findings_"), ("side_probability", "p_"), ("model", "model_")):
        for k, v in (row.get(section) or {}).items():
            out[prefix + k] = (
                ";".join(v)
                if isinstance(v, list)
                else json.dumps(v, sort_keys=True)
                if isinstance(v, dict)
                else v
            )
    for k, v in row.get("seconds", {}).items():
        out[f"seconds_{k}"] = v
    return {c: "" if out.get(c) is None else str(out[c]) for c in CSV_COLUMNS}


class Results:
    """The --out file of one run: the rows already there (one per scan) and the rows this run appends."""

    def __init__(self, path: Path):
        self.path, self.csv = path, path.suffix == ".csv"
        self.rows: dict[str, dict] = {}  # scan -> its latest row (flat for CSV)
        self.appended_over = False  # a row was appended for a scan that already had one
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            text = path.read_text(encoding="utf-8") if path.exists() else ""
            rows = self._parse(text)
            self.rows = {row["scan"]: row for row in rows}
            if text and (len(self.rows) < len(rows) or not text.endswith("\n")):
                self._rewrite()  # duplicates, or a line cut short by a kill: gone before appending
            self.fh = open(path, "a", encoding="utf-8", newline="")  # noqa: SIM115 (closed by close())
            if self.csv and not text.strip():
                self._append(self._csv_line(CSV_COLUMNS))
        except (OSError, UnicodeDecodeError) as exc:
            raise ResultsError(f"--out {self._name}: {getattr(exc, 'strerror', None) or exc}") from exc

    @property
    def _name(self) -> str:
        return printable(str(self.path))

    def finished(self, scan: str, model_dir: str) -> bool:
        """Whether `scan` already has an ok row written with the model in `model_dir`."""
        row = self.rows.get(scan)
        if row is None or row["status"] != "ok":
            return False
        return (row["model_dir"] if self.csv else row["model"]["dir"]) == model_dir

    def add(self, row: dict) -> None:
        """Append `row` and make it durable (flush, fsync) before returning."""
        row = _printable(flat(row) if self.csv else row)
        if self.csv:
            line = self._csv_line([row[c] for c in CSV_COLUMNS])
        else:
            line = json.dumps(row, ensure_ascii=False) + "\n"
        self.appended_over |= row["scan"] in self.rows
        self.rows[row["scan"]] = row
        try:
            self._append(line)
        except OSError as exc:
            raise ResultsError(f"--out {self._name}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        """Close the file, leaving one row per scan."""
        self.fh.close()
        if self.appended_over:
            self._rewrite()

    def _append(self, line: str) -> None:
        self.fh.write(line)
        self.fh.flush()
        os.fsync(self.fh.fileno())

    @staticmethod
    def _csv_line(values: list[str]) -> str:
        buffer = io.StringIO()
        csv.writer(buffer).writerow(values)
        return buffer.getvalue()

    def _parse(self, text: str) -> list[dict]:
        """The rows of an existing file, in order; a last row without its newline (cut short by a kill) is
        dropped. ResultsError for a file that is not a results file."""
        refuse = ResultsError(
            f"--out {self._name}: not a brain3d results file; give a new file name, or the results file "
            "of an earlier run"
        )
        if self.csv:
            table = list(csv.reader(io.StringIO(text)))
            rows = table[1:-1] if text and not text.endswith("\n") else table[1:]
            if table and table[0] != CSV_COLUMNS or any(len(r) != len(CSV_COLUMNS) for r in rows):
                raise refuse
            return [dict(zip(CSV_COLUMNS, r)) for r in rows]
        lines = text.split("\n")[:-1]  # the last piece is "" or a line cut short
        rows = []
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if (
                not isinstance(row, dict)
                or not {"scan", "status"} <= set(row)
                or not isinstance(row.get("model"), dict)
            ):
                raise refuse
            rows.append(row)
        return rows

    def _rewrite(self) -> None:
        from brain3d import fileio

        if self.csv:
            text = "".join(self._csv_line([r[c] for c in CSV_COLUMNS]) for r in self.rows.values())
            text = self._csv_line(CSV_COLUMNS) + text
        else:
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.rows.values())
        fileio.write_text(self.path, text)
