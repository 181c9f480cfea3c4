"""Helpers of the ``fusion predict`` and ``fusion explain`` commands."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._errors import ConfigError
from .._logging import logger
from ._explain import SubjectExplanation, explain_subjects
from ._predict import Bundle

__all__ = ["explain_into_run", "parse_assignments"]


def parse_assignments(values: Sequence[str], option: str, *, single: bool = False) -> dict[str, Any]:
    """Parse ``NAME=PATH`` options into ``{name: path}`` (or ``{name: [paths]}`` when repeated).

    Raises
    ------
    ConfigError
        A value has no ``=``, or a name repeats while ``single`` is True.
    """
    parsed: dict[str, Any] = {}
    for value in values:
        name, separator, path = value.partition("=")
        if not separator or not name or not path:
            raise ConfigError(f"{option} expects MODALITY=PATH, got {value!r}")
        if name in parsed and single:
            raise ConfigError(f"{option} names modality '{name}' twice")
        if name in parsed:
            previous = parsed[name]
            parsed[name] = [*(previous if isinstance(previous, list) else [previous]), path]
        else:
            parsed[name] = path
    return parsed


def explain_into_run(bundle: Bundle, subjects: list[str], out_dir: Path | None,
                     **options: Any) -> list[SubjectExplanation]:
    """Explain ``subjects``; by default into ``explain/`` of the bundle's run directory.

    When the pages land in the run directory that contains ``report.html``, the report is
    written again so that it links to them.
    """
    run_dir = bundle.path.parent
    in_run = (run_dir / "config.yaml").is_file() and bundle.path.name == "bundle"
    if out_dir is None:
        out_dir = run_dir / "explain" if in_run else Path("explain")
    pages = explain_subjects(bundle, subjects, out_dir, **options)

    if in_run and Path(out_dir).resolve() == (run_dir / "explain").resolve() and (run_dir / "report.html").is_file():
        from ..report import write_report

        write_report(run_dir)
        logger.info("report %s now links to the subject pages", run_dir / "report.html")
    return pages
