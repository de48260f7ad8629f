"""Data-file lookup and the small text helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

from titans.tasks.data_files import DATA_DIR_ENV_VAR, data_file_available, default_data_dir, find_data_file
from titans.tasks.text_utils import (
    longest_fitting_word_prefix,
    parse_token_length,
    split_into_sentence_units,
    split_sentences,
)


def test_env_var_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "thing.txt").write_text("x")
    monkeypatch.setenv(DATA_DIR_ENV_VAR, str(tmp_path))
    assert find_data_file("thing.txt") == tmp_path / "thing.txt"
    assert default_data_dir() == tmp_path
    assert data_file_available("thing.txt")


def test_missing_file_error_names_file_and_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_DIR_ENV_VAR, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"no_such_file\.xz.*TITANS_DATA_DIR"):
        find_data_file("no_such_file.xz")
    assert not data_file_available("no_such_file.xz")


def test_explicit_data_dir_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_DIR_ENV_VAR, "/nonexistent/dir")
    (tmp_path / "a.json").write_text("{}")
    assert find_data_file("a.json", data_dir=tmp_path) == tmp_path / "a.json"


def test_fallback_is_shared_data_next_to_the_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV_VAR, raising=False)
    found = default_data_dir()
    if found is None:
        pytest.skip("no ../shared/data next to the repository or the working directory")
    assert found.parts[-2:] == ("shared", "data")


def test_parse_token_length() -> None:
    assert parse_token_length(4096) == 4096
    assert parse_token_length("4K") == 4096
    assert parse_token_length("0k") == 0
    assert parse_token_length("128K") == 131072
    assert parse_token_length("1M") == 1024 * 1024
    assert parse_token_length("1.5K") == 1536
    for bad in ("", "4G", "-1", "abc", "1.0001K"):
        with pytest.raises(ValueError):
            parse_token_length(bad)


def test_sentence_units_keep_the_text() -> None:
    text = 'He said "Go!" Then left.  Next one?\nYes. trailing'
    units = split_into_sentence_units(text)
    assert "".join(units) == text
    assert units == ['He said "Go!" ', "Then left.  ", "Next one?\n", "Yes. ", "trailing"]
    assert split_sentences("One.\n\nTwo  words. Three") == ["One.", "Two words.", "Three"]


def test_longest_fitting_word_prefix() -> None:
    text = "alpha beta gamma delta"
    assert longest_fitting_word_prefix(text, 10, len) == "alpha beta"
    assert longest_fitting_word_prefix(text, 4, len) == ""
    assert longest_fitting_word_prefix(text, 100, len) == text
    assert longest_fitting_word_prefix(text, 0, len) == ""
