"""Synthetic CASME II- and SAMM-style datasets, written in the real datasets' on-disk formats.

``dataset`` plans the clips and writes a dataset folder (frames and coding sheet); ``face`` draws a
neutral face and each AU's motion and shading; ``clips`` renders a clip's frames from its AU codes;
``sheets`` writes the coding spreadsheets.
"""

from aullm_core.data.synth.dataset import (
    DIFFICULTIES,
    DIFFICULTY_FACTORS,
    MANIFEST,
    STYLES,
    SynthStyle,
    difficulty_of,
    plan_clips,
    write_synthetic,
)

__all__ = [
    "DIFFICULTIES",
    "DIFFICULTY_FACTORS",
    "MANIFEST",
    "STYLES",
    "SynthStyle",
    "difficulty_of",
    "plan_clips",
    "write_synthetic",
]
