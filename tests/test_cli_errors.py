"""How run_cli reports a caught error: our own sentences alone, a library's message with where it was raised.

A ValueError raised inside numpy or torch may be a bug of ours; its one line used to say nothing of where it
came from. HYBRID_TRACEBACK=1 prints the whole traceback of any caught error.
"""

from __future__ import annotations

import json

import numpy as np

from hybrid.cli import TRACEBACK_ENV, run_cli
from hybrid.config import TrainConfig
from hybrid.images import as_images


def _library_error() -> None:
    np.linspace(0, 1, -1)  # numpy's own ValueError, raised in its Python code


def test_our_sentence_stays_one_line_and_a_librarys_error_names_where_it_was_raised(capsys, monkeypatch):
    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    assert run_cli(lambda: as_images(np.zeros((1, 2)), "pixels.npz")) == 2
    ours = capsys.readouterr().err
    assert ours.startswith("error: ") and ours.count("\n") == 1 and "raised in" not in ours
    assert run_cli(_library_error) == 2
    theirs = capsys.readouterr().err
    assert theirs.count("\n") == 1 and "Traceback" not in theirs
    assert "must be non-negative" in theirs and "(raised in numpy/" in theirs and f"{TRACEBACK_ENV}=1" in theirs


def test_standard_library_frames_under_our_code_count_as_ours(tmp_path, capsys):
    """json only carries out what our code asked (TrainConfig.load): a damaged file is the user's to fix. Called
    straight from this test file, the same error is named, as this file is neither ours nor the standard library."""
    damaged = tmp_path / "config.json"
    damaged.write_text("{not json")
    assert run_cli(lambda: TrainConfig.load(damaged)) == 2
    err = capsys.readouterr().err
    assert "Expecting property name" in err and "raised in" not in err
    assert run_cli(lambda: json.loads(damaged.read_text())) == 2
    assert "raised in" in (err := capsys.readouterr().err) and "test_cli_errors.py" in err


def test_the_whole_traceback_when_asked(capsys, monkeypatch):
    monkeypatch.setenv(TRACEBACK_ENV, "1")
    assert run_cli(_library_error) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "_library_error" in err
    assert err.splitlines()[-1].startswith("error: Number of samples, -1")
    monkeypatch.setenv(TRACEBACK_ENV, "0")
    assert run_cli(_library_error) == 2
    assert "Traceback" not in capsys.readouterr().err
