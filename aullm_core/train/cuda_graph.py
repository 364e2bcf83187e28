"""A training step replayed from a CUDA graph: the launch overhead of a step paid once.

A step of AU-LLM is thousands of small kernels (every decoder layer's norms, rotary embedding,
LoRA products and residual adds, forward and backward), and at the paper's batch of 256 the GPU
finishes most of them faster than Python can launch them: eager steps are bound by the host, not
the GPU. ``GraphedTrainStep`` runs the first ``warmup`` steps of each batch shape eagerly, then
captures forward, loss and backward of that shape in one ``torch.cuda.CUDAGraph`` and replays it
for every later step of that shape; the optimiser update stays eager (fused Adam: a few launches).

What a replay needs, and how it is met:
- static inputs: each step copies its batch into the captured input tensors;
- static gradients: the capture starts with every ``.grad`` unset, so backward writes fresh
  gradient tensors from the graph's memory pool; they are re-attached to the parameters after
  each replay (an eager step or another shape's graph may have replaced them in between);
- no host synchronisation inside the step (the model and losses keep everything on the device);
- a side stream for warm-up, capture and replay, as PyTorch's graph recipe requires.
Dropout draws come from the graph-safe Philox generator: fresh random numbers on every replay.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch

from aullm_core.train.losses import LossFn

#: forward(clips) -> logits, run under the engine's precision policy
Forward = Callable[[torch.Tensor], torch.Tensor]
#: the engine's eager step(clips, targets, loss_fn) -> detached loss, used before a capture
EagerStep = Callable[[torch.Tensor, torch.Tensor, LossFn], torch.Tensor]

_Key = tuple[tuple[int, ...], tuple[int, ...], LossFn]


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    x: torch.Tensor
    y: torch.Tensor
    loss: torch.Tensor
    grads: list[torch.Tensor | None]


class GraphedTrainStep:
    """Forward + loss + backward per batch shape from a CUDA graph, after ``warmup`` eager steps.

    ``max_shapes`` bounds the number of graphs (each holds its own activations); further shapes,
    such as a short last batch of an epoch, run eagerly.
    """

    def __init__(
        self,
        forward: Forward,
        eager_step: EagerStep,
        params: list[torch.nn.Parameter],
        optimizer: torch.optim.Optimizer,
        *,
        warmup: int = 2,
        max_shapes: int = 2,
    ) -> None:
        self.forward = forward
        self.eager_step = eager_step
        self.params = params
        self.optimizer = optimizer
        self.warmup = warmup
        self.max_shapes = max_shapes
        self.stream = torch.cuda.Stream()
        self.seen: Counter[_Key] = Counter()
        self.graphs: dict[_Key, _Captured] = {}
        self.replays = 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
        """One optimiser step on (x, y); returns the batch loss as a detached device tensor."""
        key = (tuple(x.shape), tuple(y.shape), loss_fn)
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            captured = self.graphs.get(key)
            if captured is None:
                self.seen[key] += 1
                if self.seen[key] > self.warmup and len(self.graphs) < self.max_shapes:
                    captured = self.graphs[key] = self._capture(x, y, loss_fn)
            if captured is None:
                loss = self.eager_step(x, y, loss_fn)
            else:
                loss = self._replay(captured, x, y)
        torch.cuda.current_stream().wait_stream(self.stream)
        return loss

    def _capture(self, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> _Captured:
        static_x, static_y = x.clone(), y.clone()
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream):
            loss = loss_fn(self.forward(static_x).float(), static_y)
            loss.backward()
        return _Captured(graph, static_x, static_y, loss, [p.grad for p in self.params])

    def _replay(self, captured: _Captured, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        captured.x.copy_(x)
        captured.y.copy_(y)
        captured.graph.replay()
        self.replays += 1
        for param, grad in zip(self.params, captured.grads):
            param.grad = grad
        self.optimizer.step()
        return captured.loss.detach().clone()  # the next replay overwrites the captured loss
