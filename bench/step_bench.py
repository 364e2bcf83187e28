"""One training step (forward + backward) of the whole AU-LLM model: shared prompt KV vs naive.

The LLM is a Llama-style model built from a config (no download; random weights, which do not
change the cost). The prompt is the reference Chinese prompt through the project's tokenizer
(25 tokens with <s>). Both paths run on the same weights and inputs in eval mode (dropout off, so
their logits can be compared); a step is forward, the faithful loss, and backward (the optimiser
update is the same for both paths and left out).

    .venv/bin/python bench/step_bench.py                      # ~100M LLM, batch 64 and 256, CPU
    .venv/bin/python bench/step_bench.py --quick              # tiny LLM smoke run (seconds)
    python bench/step_bench.py --device cuda --sizes 100m 0.5b 1.5b 7b --batches 256

Writes bench/results/step_bench.json (``--out`` to change): per size and batch the step times,
``speedup`` = naive / shared, the largest |logit difference| between the paths, and on CUDA the
model FLOP utilisation (``model_flops`` counts the LLM, projector and CNN: see ``step_flops``).
The top-level ``speedup_b64``, ``speedup_b256`` and ``max_abs_logit_diff`` are the first size's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from aullm_core.config import ModelConfig
from aullm_core.model.llm import BaseLLM, build_tiny_llm, build_tokenizer
from aullm_core.model.vlm import AULLM
from aullm_core.train.losses import faithful_loss

RESULTS = Path(__file__).parent / "results" / "step_bench.json"
N_AUS = 8


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


def step_flops(size: LLMSize, batch: int, prompt: int, *, shared: bool) -> float:
    """Model FLOPs of one training step: trained parts x3 (forward, input and weight gradients),
    the frozen LLM x2 (forward and input gradients only; LoRA is negligible)."""
    if shared:
        llm = llm_forward_flops(size, prompt, prompt * (prompt + 1) // 2)  # the prompt, batch 1
        llm += llm_forward_flops(size, batch, batch * (prompt + 1))  # one token per clip
    else:
        llm = batch * llm_forward_flops(size, prompt + 1, (prompt + 1) * (prompt + 2) // 2)
    trained = batch * (cnn_forward_flops() + projector_forward_flops(size.hidden))
    return 3 * trained + 2 * llm


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
    del lm
    n_params = sum(p.numel() for p in decoder.parameters())
    torch.manual_seed(0)
    base = BaseLLM(spec=None, decoder=decoder, tokenizer=tokenizer)  # type: ignore[arg-type]
    model = AULLM(ModelConfig(), n_aus=N_AUS, d_model=size.hidden, base=base).to_device(device)
    return model.eval(), n_params


def time_step(model: AULLM, clips: torch.Tensor, targets: torch.Tensor, *, shared: bool, repeats: int,
              dtype: torch.dtype | None) -> tuple[float, torch.Tensor, float]:
    """Median seconds of forward + loss + backward; the logits; peak GPU memory (GiB)."""
    model.shared_prompt_kv = shared
    device = clips.device
    times: list[float] = []
    logits = torch.empty(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(repeats + 1):
        model.zero_grad(set_to_none=True)
        _sync(device)
        start = time.perf_counter()
        with torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(clips)
        faithful_loss(logits.float(), targets).backward()
        _sync(device)
        elapsed = time.perf_counter() - start
        if i > 0 or (repeats == 0 or elapsed > 20.0):  # a long first step is its own measurement
            times.append(elapsed)
            if elapsed > 20.0:
                break
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    return statistics.median(times), logits.detach().float(), peak


def bench_size(name: str, batches: list[int], device: torch.device, repeats: int) -> dict[str, object]:
    size = SIZES[name]
    dtype = torch.bfloat16 if device.type == "cuda" else None
    model, n_params = build(size, device, dtype or torch.float32)
    prompt = model.prompt_length
    peak_tflops = None
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
        peak_tflops = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in gpu), None)
    out: dict[str, object] = {"llm": {**asdict(size), "params": n_params}, "prompt_tokens": prompt, "batches": {}}
    for batch in batches:
        g = torch.Generator().manual_seed(batch)
        clips = (torch.rand(batch, 6, 64, 64, generator=g) * 255).to(device)
        targets = (torch.rand(batch, N_AUS, generator=g) < 0.3).float().to(device)
        row: dict[str, float | None] = {}
        logits = {}
        for mode in ("shared", "naive"):
            seconds, logits[mode], peak = time_step(model, clips, targets, shared=mode == "shared",
                                                    repeats=repeats, dtype=dtype)
            flops = step_flops(size, batch, prompt, shared=mode == "shared")
            row[f"{mode}_s"] = seconds
            row[f"{mode}_clips_per_s"] = batch / seconds
            row[f"{mode}_model_tflop"] = flops / 1e12
            row[f"{mode}_peak_mem_gib"] = peak if device.type == "cuda" else None
            row[f"{mode}_mfu"] = flops / seconds / (peak_tflops * 1e12) if peak_tflops else None
            print(f"{name} batch {batch} {mode}: {seconds:.3f} s/step, {batch / seconds:.1f} clips/s"
                  + (f", MFU {row[f'{mode}_mfu']:.1%}" if row[f"{mode}_mfu"] is not None else ""), flush=True)
        row["speedup"] = row["naive_s"] / row["shared_s"]  # type: ignore[operator]
        row["max_abs_logit_diff"] = float((logits["shared"] - logits["naive"]).abs().max())
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
    parser.add_argument("--repeats", type=int, default=None, help="timed steps after one warm-up")
    parser.add_argument("--quick", action="store_true", help="tiny LLM, batches 8 and 32: a smoke run")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sizes = args.sizes or (["tiny"] if args.quick else ["100m"])
    batches = args.batches or ([8, 32] if args.quick else [64, 256])
    repeats = args.repeats if args.repeats is not None else (3 if device.type == "cuda" or args.quick else 1)
    results = {name: bench_size(name, batches, device, repeats) for name in sizes}
    first = results[sizes[0]]["batches"]  # type: ignore[index]
    summary: dict[str, object] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {args.threads} threads, {os.cpu_count()} cores)",
        "torch": torch.__version__,
        "dtype": "bf16 autocast, frozen LLM in bf16" if device.type == "cuda" else "fp32",
        "quick": args.quick,
        "sizes": results,
        "max_abs_logit_diff": max(r["max_abs_logit_diff"] for r in first.values()),
    }
    for batch, row in first.items():
        summary[f"speedup_b{batch}"] = row["speedup"]
        summary[f"shared_s_b{batch}"] = row["shared_s"]
        summary[f"naive_s_b{batch}"] = row["naive_s"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, args.out)
    print(json.dumps({k: v for k, v in summary.items() if k != "sizes"}, indent=2))


if __name__ == "__main__":
    main()
