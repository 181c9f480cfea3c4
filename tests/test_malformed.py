"""Malformed inputs through `fusion validate`: one error line each, never a traceback.

Every case of the corpus (tests/corpus) writes one fault into a small valid cohort. The
command must exit with status 2 and print exactly one line starting with ``error:`` that
matches the case's expected message.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import pytest
from corpus import CASES, write_cohort

from fusion.cli import main


@pytest.fixture(autouse=True)
def _restore_fusion_logger():
    """Remove the terminal handler each command adds, so handlers do not pile up across cases."""
    fusion_logger = logging.getLogger("fusion")
    handlers = list(fusion_logger.handlers)
    level = fusion_logger.level
    yield
    fusion_logger.handlers[:] = handlers
    fusion_logger.setLevel(level)


def _fusion(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["fusion", *map(str, args)])
    with pytest.raises(SystemExit) as exited:
        main()
    captured = capsys.readouterr()
    return exited.value.code, captured.out + captured.err


def test_corpus_has_thirty_named_cases():
    names = [case.name for case in CASES]
    listed = (Path(__file__).parent / "corpus" / "README.md").read_text()
    assert len(names) >= 30
    assert len(set(names)) == len(names)
    for name in names:
        assert f"| `{name}` |" in listed, f"case {name} is not listed in tests/corpus/README.md"


def test_base_cohort_is_valid(tmp_path, monkeypatch, capsys):
    config = write_cohort(tmp_path)
    monkeypatch.setattr(sys, "argv", ["fusion", "validate", str(config)])
    main()
    output = capsys.readouterr().out
    assert "no errors found" in output
    assert "subjects with a target: 24" in output


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_malformed_input_one_error_line(case, tmp_path, monkeypatch, capsys):
    config = write_cohort(tmp_path)
    case.write(tmp_path)

    code, output = _fusion(monkeypatch, capsys, "validate", config)

    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert code == 2, output
    assert "Traceback" not in output
    assert len(errors) == 1, output
    assert re.search(case.message, errors[0]), errors[0]
