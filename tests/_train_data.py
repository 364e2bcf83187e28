"""Small learnable ClipSets built in memory for the model and training tests (no cache needed).

Each clip is grey noise; for every AU the clip carries, a bright blob at that AU's own place moves
a few pixels over the frames (the LED layer responds to such temporal change).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from aullm_core.data.records import ClipSet

#: Blob centre (row, col) per AU slot.
_PLACES = [(16, 16), (16, 48), (48, 16), (48, 48), (32, 32), (10, 32), (54, 32), (32, 10)]


def tiny_clipset(
    *,
    subjects: int = 4,
    clips_per_subject: int = 4,
    aus: tuple[int, ...] = (1, 4, 12),
    size: int = 64,
    seed: int = 0,
    name: str = "casme2",
    color: bool = False,
) -> ClipSet:
    rng = np.random.default_rng(seed)
    frames, rows, labels = [], [], []
    yy, xx = np.mgrid[0:size, 0:size]
    for s in range(subjects):
        for c in range(clips_per_subject):
            n_frames = int(rng.integers(9, 16))
            label = (rng.random(len(aus)) < 0.45).astype(np.uint8)
            if c == 0:
                label[s % len(aus)] = 1  # every subject shows some AU
            clip = rng.normal(60, 6, size=(n_frames, size, size))
            for k, on in enumerate(label):
                if not on:
                    continue
                r0, c0 = _PLACES[k % len(_PLACES)]
                for t in range(n_frames):
                    shift = 6 * t / (n_frames - 1)
                    blob = np.exp(-((yy - r0 - shift) ** 2 + (xx - c0) ** 2) / 18.0)
                    clip[t] += 150 * blob
            clip = np.clip(clip, 0, 255).astype(np.uint8)
            if color:
                clip = np.repeat(clip[..., None], 3, axis=-1)
            frames.append(clip)
            labels.append(label)
            rows.append({
                "subject": f"sub{s + 1:02d}", "clip": f"EP{s + 1:02d}_{c:02d}", "onset": 0, "apex": n_frames // 2,
                "offset": n_frames - 1, "emotion": "other", "n_frames": n_frames,
            })
    return ClipSet(
        name=name,
        frames=frames,
        meta=pd.DataFrame(rows),
        aus=tuple(aus),
        labels=np.array(labels, dtype=np.uint8),
        attrs={"size": size, "color": color},
    )
