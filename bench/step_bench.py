"""One training step of the whole AU-LLM model: shared prompt KV (eager and CUDA-graphed) vs naive.

The LLM is a Llama-style model built from a config (no download; random weights, which do not
change the cost). The prompt is the reference Chinese prompt through the project's tokenizer
(25 tokens with <s>). A step is what fold training runs (``TorchEngine.train_step``): forward,
the faithful loss, backward and the fused Adam update, in train mode, bf16 autocast on CUDA with
the frozen LLM in bf16. Modes:

- ``naive``: every clip runs the whole prompt and its token (P + 1 positions), eager;
- ``shared``: the packed shared-prompt pass (see ``aullm_core.model.vlm``) with the structured
  attention of ``aullm_core.model.attention`` (what training uses), eager;
- ``shared_graph``: the same, replayed from a CUDA graph (``train.cuda_graphs``, CUDA only);
- ``shared_graph_compiled``: also ``torch.compile`` on the encoder, the projector and each decoder
  layer (``train.compile``; CUDA only, run last since compiling changes the model for good);
- ``*_dense``: the same shared pass with dense masked SDPA over the whole packed sequence instead
  of the structured attention (the A/B for that attention).

``--parts`` (default on CUDA) also times the LLM part alone (``LLMPart``: EFP tokens in, LoRA and
head trained) in the last mode: how much of the step the LLM takes and the MFU of the LLM's own
work at this shape, the ceiling of the whole step's MFU. ``--profile`` adds where the time of two
eager steps of the last mode goes (``profile_step``: kernel time by category and the largest
kernels; the kernels are those a graph replay runs, without the launch gaps).

Step times are the mean of ``--repeats`` consecutive steps between two synchronisations (as in
training, the host runs ahead of the GPU), the median of three such runs.

    .venv/bin/python bench/step_bench.py                      # ~100M LLM, batch 64 and 256, CPU
    .venv/bin/python bench/step_bench.py --quick              # tiny LLM smoke run (seconds)
    python bench/step_bench.py --device cuda --sizes 0.5b 1.5b 7b --batches 256

Writes bench/results/step_bench.json (``--out`` to change): per size and batch the step time,
clips/s, peak GPU memory and MFU of each mode, ``speedup`` = naive / fastest shared mode, the
largest |logit difference| between shared and naive (eval mode, same weights), and on CUDA the
model FLOP utilisation (``model_flops`` counts the LLM, projector and CNN: see ``step_flops``;
the optimiser update is not counted). The top-level ``speedup_b*`` figures are the first size's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from aullm_core.atomic import atomic_write_text
from aullm_core.config import TrainConfig
from aullm_core.errors import one_line
from aullm_core.model.attention import PACKED_ATTENTION, use_packed_attention
from aullm_core.model.config import ModelConfig
from aullm_core.model.llm import BaseLLM, build_tiny_llm, build_tokenizer
from aullm_core.model.vlm import AULLM
from aullm_core.train.engine_torch import TorchEngine
from aullm_core.train.losses import faithful_loss

RESULTS = Path(__file__).parent / "results" / "step_bench.json"
N_AUS = 8
#: In the order they run: compiling changes the model for good, so the compiled modes come last.
MODES = [
    "naive",
    "shared_dense",
    "shared",
    "shared_graph_dense",
    "shared_graph",
    "shared_graph_compiled_dense",
    "shared_graph_compiled",
]


@dataclass(frozen=True)
class LLMSize:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int


#: Llama-style shapes: '100m' is the CPU bench; the others follow Qwen2.5 0.5B/1.5B/7B dimensions.
SIZES: dict[str, LLMSize] = {
    "tiny": LLMSize(64, 2, 4, 4, 256, 512),
    "100m": LLMSize(768, 12, 12, 12, 2048, 32000),
    "0.5b": LLMSize(896, 24, 14, 2, 4864, 151936),
    "1.5b": LLMSize(1536, 28, 12, 2, 8960, 151936),
    "7b": LLMSize(3584, 28, 28, 4, 18944, 152064),
}

#: Dense bf16 peak (TFLOP/s) by device name fragment, for MFU.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def cnn_forward_flops(n_frames: int = 6) -> float:
    """FLOPs (2 per multiply-add) of LED + 3D-CNN + F_high for one clip of 64x64 frames."""
    t1 = n_frames - 1  # LED keeps N-1 frames
    conv1 = 2 * 32 * t1 * 60 * 60 * (1 * 1 * 5 * 5)
    conv2 = 2 * 64 * (t1 - 1) * 18 * 18 * (32 * 2 * 3 * 3)
    f_mid = 64 * ((n_frames - 2) // 2) * 9 * 9
    led = 2 * 2 * n_frames * n_frames * 64 * 64  # numerator and denominator mixes
    se = 2 * (t1 - 1) * (64 * 4 * 2)
    return float(conv1 + conv2 + led + se + 2 * f_mid * 256)


def projector_forward_flops(d: int, efp_input: str = "both", n_frames: int = 6) -> float:
    """FLOPs of the EFP (two linears) and the AU head for one clip."""
    f_mid = 64 * ((n_frames - 2) // 2) * 9 * 9
    n_in = {"both": f_mid + 256, "mid": f_mid, "high": 256}[efp_input]
    hidden = (n_in + d) // 2
    return float(2 * (n_in * hidden + hidden * d) + 2 * d * N_AUS)


def llm_forward_flops(size: LLMSize, queries: int, context_sum: int) -> float:
    """FLOPs of the decoder for ``queries`` new tokens whose attention spans add up to ``context_sum``."""
    head_dim = size.hidden // size.heads
    q_dim, kv_dim = size.heads * head_dim, size.kv_heads * head_dim
    proj = 2 * queries * (size.hidden * q_dim + 2 * size.hidden * kv_dim + q_dim * size.hidden)
    mlp = 2 * queries * 3 * size.hidden * size.intermediate
    attn = 2 * 2 * context_sum * q_dim  # scores and weighted values
    return float(size.layers * (proj + mlp + attn))


def llm_step_flops(size: LLMSize, batch: int, prompt: int, *, shared: bool) -> float:
    """FLOPs of the frozen LLM in one training step: forward and input gradients (x2; the frozen
    weights get no gradient, and LoRA is negligible)."""
    if shared:
        llm = llm_forward_flops(size, prompt, prompt * (prompt + 1) // 2)  # the prompt, once
        llm += llm_forward_flops(size, batch, batch * (prompt + 1))  # one token per clip
    else:
        llm = batch * llm_forward_flops(size, prompt + 1, (prompt + 1) * (prompt + 2) // 2)
    return 2 * llm


def step_flops(size: LLMSize, batch: int, prompt: int, *, shared: bool) -> float:
    """Model FLOPs of one training step: trained parts x3 (forward, input and weight gradients),
    plus the frozen LLM's ``llm_step_flops``."""
    trained = batch * (cnn_forward_flops() + projector_forward_flops(size.hidden))
    return 3 * trained + llm_step_flops(size, batch, prompt, shared=shared)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(size: LLMSize, device: torch.device, dtype: torch.dtype) -> tuple[AULLM, int]:
    tokenizer = build_tokenizer()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            lm = build_tiny_llm(hidden=size.hidden, layers=size.layers, heads=size.heads, kv_heads=size.kv_heads,
                                intermediate=size.intermediate, vocab_size=size.vocab, seed=0)
    finally:
        torch.set_default_dtype(previous)
    decoder = lm.get_decoder().requires_grad_(False).eval()
    use_packed_attention(decoder)  # as the pool does
    del lm
    n_params = sum(p.numel() for p in decoder.parameters())
    torch.manual_seed(0)
    base = BaseLLM(spec=None, decoder=decoder, tokenizer=tokenizer)  # type: ignore[arg-type]
    model = AULLM(ModelConfig(), n_aus=N_AUS, d_model=size.hidden, base=base).to_device(device)
    return model, n_params


def configure(model: AULLM, mode: str) -> None:
    """The path and the attention a mode times: naive, or shared with structured or dense attention."""
    model.shared_prompt_kv = mode != "naive"
    dense = mode == "naive" or mode.endswith("_dense")
    model.llm.get_base_model().set_attn_implementation("sdpa" if dense else PACKED_ATTENTION)  # type: ignore[union-attr]


class LLMPart(nn.Module):
    """The LLM part of a shared step alone: EFP tokens in, AU logits out, LoRA and head trained.

    Timing it with the same step as the whole model says how much of the step the LLM takes and
    what MFU the LLM's own products reach at this shape (the ceiling of the whole step's MFU).
    """

    def __init__(self, model: AULLM) -> None:
        super().__init__()
        self.model = model

    def trainable_parameters(self) -> list[nn.Parameter]:
        llm = self.model.llm
        assert llm is not None
        return [p for p in llm.parameters() if p.requires_grad] + list(self.model.head.parameters())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.token_logits(tokens)  # the path ``configure`` chose


def _engine(module: nn.Module, device: torch.device, *, graphs: bool) -> TorchEngine:
    """The fold-training engine in train mode, as the bench measures it (bf16 on CUDA, fp32 on CPU)."""
    train = TrainConfig(lr=1e-6, precision="bf16" if device.type == "cuda" else "fp32", cuda_graphs=graphs)
    engine = TorchEngine(module, train, device)  # type: ignore[arg-type]
    engine.train()
    return engine


def time_steps(
    module: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, graphs: bool, repeats: int
) -> tuple[float, float]:
    """Seconds per training step (median of 3 runs of ``repeats`` steps) and peak GPU memory (GiB)."""
    device = inputs.device
    engine = _engine(module, device, graphs=graphs)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    warmup = 4 if device.type == "cuda" else 1  # two eager steps, the capture, one replay
    for _ in range(warmup):
        engine.train_step(inputs, targets, faithful_loss)
    runs: list[float] = []
    for _ in range(3 if device.type == "cuda" else 1):
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            engine.train_step(inputs, targets, faithful_loss)
        _sync(device)
        runs.append((time.perf_counter() - start) / repeats)
    if engine.graphed is not None:
        assert engine.graphed.replays >= repeats, "the graphed mode must replay its graph"
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    module.zero_grad(set_to_none=True)
    del engine
    return statistics.median(runs), peak


@torch.no_grad()
def logits(model: AULLM, clips: torch.Tensor, *, shared: bool) -> torch.Tensor:
    """Eval-mode logits of one path under the bench's precision."""
    model.eval()
    model.shared_prompt_kv = shared
    with torch.autocast(device_type=clips.device.type, dtype=torch.bfloat16, enabled=clips.device.type == "cuda"):
        out = model(clips).float()
    model.train()
    return out


#: Where a profiled step's time goes, by kernel (CUDA) or operator (CPU) name; first match wins.
TIME_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("convolution", ("conv", "cudnn", "fprop", "dgrad", "wgrad", "implicit", "im2col", "col2im", "unfold")),
    ("attention", ("flash", "fmha", "attention", "softmax")),
    ("optimizer", ("adam", "multi_tensor")),
    ("matrix product", ("gemm", "nvjet", "xmma", "cutlass", "cublas", "matmul", "aten::mm", "aten::addmm",
                        "aten::bmm", "_mm")),
    ("normalisation", ("batch_norm", "rms_norm", "layer_norm", "welford")),
    ("pooling", ("pool",)),
    ("fused elementwise (triton)", ("triton",)),
)


def time_category(name: str) -> str:
    """The ``TIME_CATEGORIES`` entry a kernel or operator name falls in, else 'other'."""
    lower = name.lower()
    return next((cat for cat, keys in TIME_CATEGORIES if any(k in lower for k in keys)), "other")


def profile_step(
    module: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, steps: int = 2, top: int = 12
) -> dict[str, object]:
    """Kernel time of eager training steps by category (CUDA: device time of every kernel, the same
    kernels a graph replay runs; CPU: operators' own time), per step, with the largest entries."""
    from torch.profiler import ProfilerActivity, profile

    device = inputs.device
    cuda = device.type == "cuda"
    engine = _engine(module, device, graphs=False)
    for _ in range(2):
        engine.train_step(inputs, targets, faithful_loss)
    _sync(device)
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            engine.train_step(inputs, targets, faithful_loss)
        _sync(device)
    module.zero_grad(set_to_none=True)
    own: dict[str, float] = {}
    calls = 0
    for event in prof.key_averages():
        micros = event.self_device_time_total if cuda else event.self_cpu_time_total
        if micros > 0 and (cuda or event.key.startswith("aten::")):
            own[event.key] = own.get(event.key, 0.0) + micros / 1e3 / steps
            calls += event.count
    by_category: dict[str, float] = {}
    for name, ms in own.items():
        by_category[time_category(name)] = by_category.get(time_category(name), 0.0) + ms
    ranked = sorted(own.items(), key=lambda item: -item[1])[:top]
    return {
        "what": "CUDA kernels' device time" if cuda else "CPU aten operators' own time",
        "ms_per_step": sum(own.values()),
        "calls_per_step": calls / steps,
        "by_category_ms": dict(sorted(by_category.items(), key=lambda item: -item[1])),
        "top_ms": [[name[:120], ms] for name, ms in ranked],
    }


def time_llm_part(
    model: AULLM, size: LLMSize, batch: int, prompt: int, mode: str, repeats: int, peak_tflops: float | None
) -> dict[str, float | str | None]:
    """``LLMPart`` timed as ``mode`` runs it (the last mode timed: compiled and graphed on CUDA)."""
    configure(model, mode)
    g = torch.Generator().manual_seed(batch + 1)
    tokens = torch.randn(batch, size.hidden, generator=g).to(model.head.weight.device)
    targets = (torch.rand(batch, N_AUS, generator=g) < 0.3).float().to(tokens.device)
    seconds, _ = time_steps(LLMPart(model), tokens, targets, graphs=mode.startswith("shared_graph"), repeats=repeats)
    flops = llm_step_flops(size, batch, prompt, shared=True)
    mfu = flops / seconds / (peak_tflops * 1e12) if peak_tflops else None
    print(f"  LLM part alone ({mode}): {seconds * 1e3:.1f} ms/step" + (f", MFU {mfu:.1%}" if mfu is not None else ""), flush=True)
    return {"llm_part_mode": mode, "llm_part_s": seconds, "llm_part_tflop": flops / 1e12, "llm_part_mfu": mfu}


def bench_size(
    name: str, batches: list[int], modes: list[str], device: torch.device, repeats: int, *, parts: bool = False,
    profile: bool = False,
) -> dict[str, object]:
    size = SIZES[name]
    model, n_params = build(size, device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    prompt = model.prompt_length
    peak_tflops = None
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
        peak_tflops = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in gpu), None)
    out: dict[str, object] = {"llm": {**asdict(size), "params": n_params}, "prompt_tokens": prompt, "batches": {}}
    compiled = False
    for batch in batches:
        g = torch.Generator().manual_seed(batch)
        clips = (torch.rand(batch, 6, 64, 64, generator=g) * 255).to(device)
        targets = (torch.rand(batch, N_AUS, generator=g) < 0.3).float().to(device)
        configure(model, "shared")
        row: dict[str, float | None] = {
            "max_abs_logit_diff": float((logits(model, clips, shared=True) - logits(model, clips, shared=False)).abs().max())
        }
        for mode in modes:
            if "compiled" in mode and not compiled:
                model.compile_regions()  # what train.compile does
                compiled = True
            started = time.perf_counter()
            configure(model, mode)
            try:
                seconds, peak = time_steps(model, clips, targets, graphs=mode.startswith("shared_graph"), repeats=repeats)
            except Exception as err:  # noqa: BLE001 - one broken mode must not cost a GPU lease the other figures
                row[f"{mode}_error"] = _first_line(err)  # type: ignore[assignment]
                print(f"{name} batch {batch} {mode}: FAILED: {row[f'{mode}_error']}", file=sys.stderr, flush=True)
                model.zero_grad(set_to_none=True)
                continue
            flops = step_flops(size, batch, prompt, shared=mode != "naive")
            row[f"{mode}_s"] = seconds
            row[f"{mode}_clips_per_s"] = batch / seconds
            row[f"{mode}_model_tflop"] = flops / 1e12
            row[f"{mode}_peak_mem_gib"] = peak if device.type == "cuda" else None
            row[f"{mode}_mfu"] = flops / seconds / (peak_tflops * 1e12) if peak_tflops else None
            print(f"{name} batch {batch} {mode}: {seconds * 1e3:.1f} ms/step, {batch / seconds:.0f} clips/s"
                  + (f", MFU {row[f'{mode}_mfu']:.1%}" if row[f"{mode}_mfu"] is not None else "")
                  + f" ({time.perf_counter() - started:.0f} s with warm-up)", flush=True)
        if parts and modes[-1] != "naive":
            try:
                row.update(time_llm_part(model, size, batch, prompt, modes[-1], repeats, peak_tflops))
            except Exception as err:  # noqa: BLE001 - as above
                row["llm_part_error"] = _first_line(err)  # type: ignore[assignment]
                print(f"{name} batch {batch} LLM part: FAILED: {row['llm_part_error']}", file=sys.stderr, flush=True)
        if profile and modes[-1] != "naive":
            configure(model, modes[-1])
            try:
                row["profile"] = profile_step(model, clips, targets)  # type: ignore[assignment]
                print(f"  profile ({modes[-1]}, eager): {row['profile']['ms_per_step']:.1f} ms per step in "  # type: ignore[index]
                      f"{row['profile']['by_category_ms']}", flush=True)  # type: ignore[index]
            except Exception as err:  # noqa: BLE001 - as above
                row["profile_error"] = _first_line(err)  # type: ignore[assignment]
                print(f"{name} batch {batch} profile: FAILED: {row['profile_error']}", file=sys.stderr, flush=True)
        shared = [m for m in modes if m != "naive" and f"{m}_s" in row]
        if shared:
            best = min(shared, key=lambda m: row[f"{m}_s"])  # type: ignore[arg-type, return-value]
            row["best_shared_mode"] = best  # type: ignore[assignment]
            if "naive_s" in row:
                row["speedup"] = row["naive_s"] / row[f"{best}_s"]  # type: ignore[operator]
        out["batches"][str(batch)] = row  # type: ignore[index]
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--sizes", nargs="+", default=None, choices=sorted(SIZES), help="LLM sizes (default 100m)")
    parser.add_argument("--batches", nargs="+", type=int, default=None, help="batch sizes (default 64 256)")
    parser.add_argument("--modes", nargs="+", default=None, choices=MODES,
                        help="what to time, run in the order of MODES whatever the order given (compiled "
                             "last; default: naive shared_dense shared on CPU, naive shared shared_graph on CUDA)")
    parser.add_argument("--repeats", type=int, default=None, help="timed consecutive steps per run")
    parser.add_argument("--quick", action="store_true", help="tiny LLM, batches 8 and 32: a smoke run")
    parser.add_argument("--parts", action=argparse.BooleanOptionalAction, default=None,
                        help="also time the LLM part alone in the last mode (default: on CUDA)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile two eager steps of the last mode: time by kernel category and "
                             "the largest kernels (CPU: by operator)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    modes = args.modes or (["naive", "shared", "shared_graph"] if device.type == "cuda" else ["naive", "shared_dense", "shared"])
    if device.type != "cuda" and any(m.startswith("shared_graph") for m in modes):
        parser.error("the shared_graph modes need --device cuda")
    modes = sorted(modes, key=MODES.index)  # compiling changes the model: it runs last
    sizes = args.sizes or (["tiny"] if args.quick else ["100m"])
    batches = args.batches or ([8, 32] if args.quick else [64, 256])
    repeats = args.repeats if args.repeats is not None else (10 if device.type == "cuda" else 2 if args.quick else 1)
    parts = args.parts if args.parts is not None else device.type == "cuda"
    results: dict[str, dict[str, object]] = {}
    for name in sizes:
        results[name] = bench_size(name, batches, modes, device, repeats, parts=parts, profile=args.profile)
        summary = _summary(results, modes, device, args)
        atomic_write_text(args.out, json.dumps(summary, indent=2))  # after every size: a crash keeps the rest
    print(json.dumps({k: v for k, v in summary.items() if k != "sizes"}, indent=2))
    if summary["errors"]:
        sys.exit(f"step_bench: {len(summary['errors'])} part(s) failed (see {args.out})")


def _first_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {one_line(err)}"


def _summary(
    results: dict[str, dict[str, object]], modes: list[str], device: torch.device, args: argparse.Namespace
) -> dict[str, object]:
    first = next(iter(results.values()))["batches"]
    errors = [f"{name} batch {batch} {key[:-len('_error')]}: {value}"
              for name, res in results.items() for batch, row in res["batches"].items()  # type: ignore[attr-defined]
              for key, value in row.items() if key.endswith("_error")]
    summary: dict[str, object] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {args.threads} threads, {os.cpu_count()} cores)",
        "torch": torch.__version__,
        "dtype": "bf16 autocast, frozen LLM in bf16" if device.type == "cuda" else "fp32",
        "step": "forward + faithful loss + backward + fused Adam update, train mode",
        "quick": args.quick,
        "modes": modes,
        "sizes": results,
        "errors": errors,
        "max_abs_logit_diff": max(r["max_abs_logit_diff"] for r in first.values()),  # type: ignore[attr-defined]
    }
    for batch, row in first.items():  # type: ignore[attr-defined]
        for key in ("speedup", "naive_s", "shared_s"):
            if key in row:
                summary[f"{key}_b{batch}"] = row[key]
    return summary


if __name__ == "__main__":
    main()
