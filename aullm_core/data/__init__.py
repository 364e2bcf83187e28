"""Datasets: native readers, synthetic data, preprocessing, the HDF5 clip cache, protocols."""

from aullm_core.data.annotations import AUParseError, load_overrides, parse_au_cell
from aullm_core.data.cache import CacheBuild, load_cache, make_cache, verify_cache
from aullm_core.data.casme2 import Casme2Reader
from aullm_core.data.preprocess import list_frames, load_frames
from aullm_core.data.readers import Reader, get_reader
from aullm_core.data.records import (
    AU_SETS,
    DATASETS,
    SHARED_AUS,
    Annotation,
    AnnotationTable,
    ClipSet,
)
from aullm_core.data.samm import SammReader
from aullm_core.data.splits import Fold, cross_domain_fold, loso_folds
from aullm_core.data.synth import STYLES, write_synthetic

__all__ = [
    "AU_SETS",
    "DATASETS",
    "SHARED_AUS",
    "STYLES",
    "AUParseError",
    "Annotation",
    "AnnotationTable",
    "CacheBuild",
    "Casme2Reader",
    "ClipSet",
    "Fold",
    "Reader",
    "SammReader",
    "cross_domain_fold",
    "get_reader",
    "list_frames",
    "load_cache",
    "load_frames",
    "load_overrides",
    "loso_folds",
    "make_cache",
    "parse_au_cell",
    "verify_cache",
    "write_synthetic",
]
