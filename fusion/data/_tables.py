"""Reading id-indexed tables (CSV or Parquet) with clear errors."""

from __future__ import annotations

import difflib
from pathlib import Path

import pandas as pd

from .._errors import DataError

__all__ = ["check_unique_ids", "closest", "read_table"]


def closest(name: str, options: list[str]) -> str:
    """Return a ``"; did you mean 'x'?"`` hint for ``name`` among ``options``, or ``""``."""
    match = difflib.get_close_matches(str(name), [str(o) for o in options], n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else ""


_TABLE_ID_FIX = (
    "Remove the repeated rows or make the ids unique (for several scans of one patient, give "
    "each scan its own id and declare the patient column as 'groups')"
)


def check_unique_ids(ids: pd.Index, *, what: str, fix: str = _TABLE_ID_FIX) -> None:
    """Raise DataError naming the count and examples of repeated ids: a join key must be unique."""
    duplicated = ids[ids.duplicated()].unique()
    if len(duplicated):
        examples = ", ".join(map(str, duplicated[:5]))
        raise DataError(
            f"{what}: {len(duplicated)} subject id(s) appear more than once ({examples}); ids are "
            f"join keys and must be unique. {fix}"
        )


def read_table(path: Path, *, id_column: str, what: str) -> pd.DataFrame:
    """Read a CSV or Parquet table and index it by ``id_column`` (as strings).

    Parameters
    ----------
    path
        ``.csv``, ``.tsv``, ``.parquet`` or ``.pq`` file.
    id_column
        Column holding subject ids; rows are never matched by position.
    what
        How errors refer to the table, e.g. ``"clinical table"``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what}: file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            table = pd.read_parquet(path)
        elif suffix == ".tsv":
            table = pd.read_csv(path, sep="\t")
        else:
            table = pd.read_csv(path)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"{what}: could not read {path}: {exc}") from exc
    if table.empty:
        raise DataError(f"{what}: {path} has no rows")
    if id_column not in table.columns:
        columns = [str(c) for c in table.columns]
        raise DataError(
            f"{what}: id column '{id_column}' not found in {path}{closest(id_column, columns)} "
            f"(columns: {', '.join(columns[:12])}{' ...' if len(columns) > 12 else ''}). "
            "Set 'id_column' to the column holding subject ids; rows are never matched by position"
        )
    missing_id = table[id_column].isna()
    if missing_id.any():
        rows = (missing_id[missing_id].index + 2).tolist()[:5]
        raise DataError(
            f"{what}: {int(missing_id.sum())} row(s) of {path} have no id in '{id_column}' "
            f"(file lines {rows}); give every row an id or remove it"
        )
    table = table.set_index(table[id_column].astype(str).str.strip()).drop(columns=[id_column])
    table.index.name = "subject_id"
    check_unique_ids(table.index, what=f"{what} {path}")
    return table
