"""Reader lookup by dataset name."""

from __future__ import annotations

from aullm_core.data.casme2 import Casme2Reader
from aullm_core.data.records import DATASETS, Reader
from aullm_core.data.samm import SammReader
from aullm_core.errors import DataError

__all__ = ["get_reader"]

_READERS: dict[str, type[Casme2Reader | SammReader]] = {"casme2": Casme2Reader, "samm": SammReader}


def get_reader(name: str) -> Reader:
    """The reader for ``name`` ('casme2' or 'samm', case ignored); ``DataError`` for any other name."""
    key = str(name).strip().lower()
    if key not in _READERS:
        raise DataError(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)}")
    return _READERS[key]()
