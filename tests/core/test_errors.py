"""``one_line``: the project's one summariser of an error for the user."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from aullm_core.errors import ConfigError, one_line


class _Wrapped(Exception):
    """Like Ray's RayTaskError: the worker's exception is kept as ``cause``, the message is a traceback."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__("ray::fold_trainable() (pid=1)\n  File 'x.py', line 3\n    boom()\nValueError: wrapped")
        self.cause = cause


class _M(BaseModel):
    lr: float


def test_validation_errors_name_the_field() -> None:
    with pytest.raises(ValidationError) as err:
        _M(lr="fast")
    assert one_line(err.value).startswith("invalid configuration: lr: ")


def test_a_missing_file_is_named_and_a_wrapped_error_gives_the_worker_exception() -> None:
    assert one_line(FileNotFoundError(2, "No such file", "/data/c.h5")) == "/data/c.h5: no such file or directory"
    assert one_line(_Wrapped(ConfigError("c.h5: the cache changed"))) == "c.h5: the cache changed"


def test_a_traceback_gives_its_last_line_other_messages_their_first_and_long_ones_are_cut() -> None:
    tb = RuntimeError("Traceback (most recent call last):\n  File 'a.py', line 1\nKeyError: 'fold'")
    assert one_line(tb) == "KeyError: 'fold'"
    assert one_line(ValueError("first line\nsecond")) == "first line"
    assert one_line(ValueError("  spaced   out  ")) == "spaced out"
    cut = one_line(ValueError("x" * 500), limit=50)
    assert len(cut) == 50 and cut.endswith("...")
    assert one_line(KeyError()) == "KeyError"
