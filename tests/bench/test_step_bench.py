"""bench/step_bench.py: its FLOP counts (the MFU numerator) against torch's FLOP counter, and a
failing mode that must not cost the other figures."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from aullm_core.model.llm import build_tiny_llm

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def step_bench():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        spec = importlib.util.spec_from_file_location("step_bench", ROOT / "bench" / "step_bench.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["step_bench"] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("step_bench", None)
        sys.path.remove(str(ROOT / "bench"))


def _counted(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def test_llm_matrix_product_flops_match_torch_flop_counter(step_bench):
    size = step_bench.LLMSize(hidden=96, layers=2, heads=6, kv_heads=2, intermediate=160, vocab=64)
    decoder = build_tiny_llm(hidden=96, layers=2, heads=6, kv_heads=2, intermediate=160, vocab_size=64, seed=0)
    decoder = decoder.get_decoder().eval()
    decoder.set_attn_implementation("eager")  # attention as plain matmuls over the full causal square
    tokens = 9
    with torch.no_grad():
        counted = _counted(lambda: decoder(inputs_embeds=torch.randn(1, tokens, 96), use_cache=False))
    # eager attention multiplies the whole (T x T) score matrix: context_sum = T * T here
    assert counted == step_bench.llm_forward_flops(size, tokens, tokens * tokens)


def test_cnn_convolution_flops_match_the_reference_3d_layers(step_bench):
    conv1 = nn.Conv3d(1, 32, (1, 5, 5))
    pool = nn.MaxPool3d((1, 3, 3))
    conv2 = nn.Conv3d(32, 64, (2, 3, 3))
    with torch.no_grad():
        counted = _counted(lambda: conv2(pool(conv1(torch.rand(1, 1, 5, 64, 64)))))
    n_frames = 6
    f_mid = 64 * ((n_frames - 2) // 2) * 9 * 9
    others = 2 * 2 * n_frames * n_frames * 64 * 64 + 2 * 4 * (64 * 4 * 2) + 2 * f_mid * 256
    assert counted == step_bench.cnn_forward_flops(n_frames) - others


def test_projector_flops_match_torch_flop_counter(step_bench):
    from aullm_core.model.projector import FusionProjector

    d = 48
    projector = FusionProjector(d, efp_input="both", dropout=0.0, f_mid=64 * 2 * 9 * 9).eval()
    head = nn.Linear(d, step_bench.N_AUS)
    with torch.no_grad():
        counted = _counted(lambda: head(projector(torch.rand(1, 64 * 2 * 9 * 9), torch.rand(1, 256))))
    assert counted == step_bench.projector_forward_flops(d)


def test_shared_step_counts_the_prompt_once(step_bench):
    size = step_bench.SIZES["tiny"]
    shared = step_bench.llm_step_flops(size, 32, 25, shared=True)
    naive = step_bench.llm_step_flops(size, 32, 25, shared=False)
    prompt_once = 2 * step_bench.llm_forward_flops(size, 25, 25 * 26 // 2)
    assert shared < naive
    assert step_bench.step_flops(size, 32, 25, shared=True) > shared  # CNN and projector added
    assert shared - prompt_once == pytest.approx(2 * step_bench.llm_forward_flops(size, 32, 32 * 26))


def test_a_failing_mode_is_recorded_and_the_others_still_written(step_bench, tmp_path, monkeypatch):
    real = step_bench.time_steps
    calls = []

    def second_call_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected failure\nsecond line")
        return real(*args, **kwargs)

    monkeypatch.setattr(step_bench, "time_steps", second_call_fails)
    out = tmp_path / "step.json"
    argv = ["step_bench.py", "--quick", "--sizes", "tiny", "--batches", "4", "--repeats", "1",
            "--modes", "shared", "naive", "shared_dense", "--no-parts", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit, match="1 part"):
        step_bench.main()
    result = json.loads(out.read_text())
    row = result["sizes"]["tiny"]["batches"]["4"]
    assert result["modes"] == ["naive", "shared_dense", "shared"]  # fixed order, whatever was asked
    assert row["shared_dense_error"] == "RuntimeError: injected failure"
    assert "shared_dense_s" not in row and row["naive_s"] > 0 and row["shared_s"] > 0
    assert row["best_shared_mode"] == "shared"
    assert result["errors"] == ["tiny batch 4 shared_dense: RuntimeError: injected failure"]


@pytest.mark.parametrize(("name", "category"), [
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nchw", "convolution"),
    ("cudnn::engines_precompiled::nchwToNhwcKernel", "convolution"),
    ("nvjet_tst_128x256_64x4_2x1_v_bz_coopA_TNT", "matrix product"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "matrix product"),
    ("aten::addmm", "matrix product"),
    ("triton_tem_fused_mm_0", "matrix product"),
    ("pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128>>", "attention"),
    ("fmha_cutlassB_bf16_aligned_64x64_k64_sm80", "attention"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>", "optimizer"),
    ("triton_red_fused__native_batch_norm_legit_functional_relu_0", "normalisation"),
    ("triton_poi_fused_add_mul_silu_3", "fused elementwise (triton)"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>", "other"),
    ("aten::normal_", "other"),
])
def test_time_categories(step_bench, name, category):
    assert step_bench.time_category(name) == category


def test_cpu_profile_accounts_for_the_step(step_bench):
    torch.manual_seed(0)
    model, _ = step_bench.build(step_bench.SIZES["tiny"], torch.device("cpu"), torch.float32)
    clips = torch.rand(4, 6, 64, 64) * 255
    targets = (torch.rand(4, step_bench.N_AUS) < 0.3).float()
    result = step_bench.profile_step(model, clips, targets, top=5)
    assert result["ms_per_step"] > 0
    assert sum(result["by_category_ms"].values()) == pytest.approx(result["ms_per_step"])
    assert {"convolution", "matrix product", "optimizer"} <= set(result["by_category_ms"])
    assert len(result["top_ms"]) == 5 and result["top_ms"][0][1] >= result["top_ms"][-1][1]
