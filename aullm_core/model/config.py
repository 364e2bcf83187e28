"""Model-internal constants fixed by the method (method.md section 3); tunables live in ExperimentConfig."""

from __future__ import annotations

#: Frames sampled per clip (N) and the frame size the 3D-CNN is built for.
N_FRAMES = 6
FRAME_SIZE = 64

#: LED initial values (stored as logs in the layer).
LED_ALPHA = 10.0
LED_R1 = 0.4
LED_R2 = 0.05
LED_EPS = 1e-8

#: 3D-CNN widths and the feature sizes they give for (B, 1, 5, 64, 64) input.
CONV1_CHANNELS = 32
CONV2_CHANNELS = 64
SE_REDUCED = 4
MID_SHAPE = (CONV2_CHANNELS, 2, 9, 9)  # (C, T, H, W) of the mid-level map
F_MID = CONV2_CHANNELS * 2 * 9 * 9  # 10368
F_HIGH = 256

#: Intermediate size of the 'tiny' LLM is this many times its hidden size.
TINY_MLP_RATIO = 4
