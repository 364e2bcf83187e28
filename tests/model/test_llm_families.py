"""Checkpoints researchers download: every family trains with the default LoRA targets, the shared-prompt
pass matches the per-clip pass, bad folders are refused in one line, and a checkpoint is keyed by content."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from llm_checkpoints import FAMILIES, save_checkpoint
from typer.testing import CliRunner

from aullm_core.config import ExperimentConfig
from aullm_core.errors import ConfigError
from aullm_core.model.llm import clear_pool
from aullm_core.model.llm_source import check_llm, content_identity, resolve_model, resolve_source
from aullm_core.train.fold import build_model
from orchestration.cli.main import app

runner = CliRunner()
EXPECTED_TARGETS = {"gpt2": ["c_attn"], "phi3": ["qkv_proj"]}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("llms")
    return {family: save_checkpoint(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    from aullm_core.data.cache import make_cache
    from aullm_core.data.synth import write_synthetic

    root = tmp_path_factory.mktemp("synth")
    data = write_synthetic("casme2", root / "casme2", subjects=3, clips_per_subject=2, seed=0, progress=False)
    return make_cache("casme2", data, root / "casme2.h5", progress=False).path


def _train(cache: Path, out: Path, *sets: str) -> object:
    args = ["train", "--cache", str(cache), "--preset", "quick", "--folds", "1", "--set", "train.epochs=1",
            "--out", str(out), "--no-progress"]
    for item in sets:
        args += ["--set", item]
    return runner.invoke(app, args)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_trains_with_the_default_targets(family, checkpoints, cache, tmp_path):
    result = _train(cache, tmp_path / "run", f"model.llm={checkpoints[family]}")
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    llm = run["llm"]
    assert llm["lora_modules"] == EXPECTED_TARGETS.get(family, ["q_proj", "v_proj"])
    assert llm["prompt_tokens"] > 0 and llm["lora_trainable"] > 0 and llm["parameters"] > 0
    assert llm["identity"] == content_identity(checkpoints[family]) == run["config"]["model"]["llm_id"]
    assert "1 folds (0 reused)" in result.output


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_shared_prompt_pass_matches_the_per_clip_pass(family, checkpoints):
    clear_pool()
    config = ExperimentConfig.preset("quick").with_overrides({"model.llm": str(checkpoints[family])})
    config = config.model_copy(update={"model": resolve_model(config.model)})
    torch.manual_seed(0)
    model = build_model(config, n_aus=3, device=torch.device("cpu"))
    model.eval()
    token = torch.randn(5, model.head.in_features)
    with torch.no_grad():
        shared = model.llm_last_hidden(token, shared=True)
        plain = model.llm_last_hidden(token, shared=False)
    assert model.prompt_length > 0
    torch.testing.assert_close(shared, plain, rtol=1e-5, atol=1e-6)


def _refused(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(("damage", "needles"), [
    (lambda d: [p.unlink() for p in d.glob("tokenizer*")], ("has no tokenizer", "model.use_prompt=false")),
    (lambda d: (d / "model.safetensors").unlink(), ("has no weights",)),
    (lambda d: (d / "config.json").unlink(), ("no config.json",)),
    (lambda d: (d / "model.safetensors").rename(d / "pytorch_model.bin"), ("pickle", "safetensors")),
])
def test_a_damaged_folder_is_refused_in_one_line(damage, needles, checkpoints, cache, tmp_path):
    folder = _copy(checkpoints["qwen2"], tmp_path / "ckpt")
    damage(folder)
    _refused(_train(cache, tmp_path / "run", f"model.llm={folder}"), str(folder), *needles)
    assert not (tmp_path / "run" / "run.json").exists()


def test_remote_code_is_named_when_needed_and_a_missing_code_file_is_one_line(checkpoints, cache, tmp_path):
    folder = _copy(checkpoints["llama-gqa"], tmp_path / "custom")
    config = json.loads((folder / "config.json").read_text())
    config.update({"model_type": "aullm_custom", "auto_map": {"AutoConfig": "custom_config.CustomConfig",
                                                               "AutoModelForCausalLM": "custom_model.CustomModel"}})
    (folder / "config.json").write_text(json.dumps(config))
    _refused(_train(cache, tmp_path / "run", f"model.llm={folder}"), "model.trust_remote_code=true")
    _refused(_train(cache, tmp_path / "run", f"model.llm={folder}", "model.trust_remote_code=true"),
             "its model code cannot be loaded")


def test_explicit_targets_the_model_lacks_list_its_projections(checkpoints, cache, tmp_path):
    result = _train(cache, tmp_path / "run", f"model.llm={checkpoints['gpt2']}", "model.lora.targets=[q_proj, k_proj]")
    _refused(result, "c_attn", "c_proj", "--set model.lora.targets=[")
    typed = _train(cache, tmp_path / "ok", f"model.llm={checkpoints['gpt2']}", "model.lora.targets=[c_attn, c_proj]")
    assert typed.exit_code == 0, typed.output
    assert json.loads((tmp_path / "ok" / "run.json").read_text())["llm"]["lora_modules"] == ["c_attn", "c_proj"]


def test_a_model_larger_than_free_memory_is_refused(checkpoints):
    config = ExperimentConfig.preset("quick").with_overrides({"model.llm": str(checkpoints["opt"])})
    with pytest.raises(ConfigError, match=r"MiB in fp32 on CPU and 0.0 MiB are free: train on a GPU \(--device cuda\)"):
        check_llm(config.model, memory=1000)


def test_a_hugging_face_cache_folder_and_a_hub_id_resolve_offline(checkpoints, tmp_path, monkeypatch):
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--org--tiny-qwen"
    snapshot = repo / "snapshots" / "0123abcd"
    _copy(checkpoints["qwen2"], snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    assert resolve_source(str(repo)) == snapshot.resolve()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_source("org/tiny-qwen") == snapshot.resolve()
    with pytest.raises(ConfigError, match="huggingface-cli download org/absent") as info:
        resolve_source("org/absent")
    assert str(tmp_path / "hub") in str(info.value)
    assert content_identity(snapshot) == content_identity(checkpoints["qwen2"])  # same files, same identity


def test_a_changed_tokenizer_trains_anew_and_a_moved_folder_reuses_its_folds(checkpoints, cache, tmp_path):
    folder = _copy(checkpoints["qwen2"], tmp_path / "ckpt")
    out = tmp_path / "run"
    first = _train(cache, out, f"model.llm={folder}")
    assert first.exit_code == 0 and "1 folds (0 reused)" in first.output, first.output
    moved = folder.rename(tmp_path / "elsewhere")
    again = _train(cache, out, f"model.llm={moved}")
    assert again.exit_code == 0 and "1 folds (1 reused)" in again.output, again.output
    settings = json.loads((moved / "tokenizer_config.json").read_text())
    (moved / "tokenizer_config.json").write_text(json.dumps({**settings, "model_max_length": 4096}))
    changed = _train(cache, out, f"model.llm={moved}")
    assert changed.exit_code == 0 and "1 folds (0 reused)" in changed.output, changed.output
    weights = moved / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # the last weight's last bytes
    weights.write_bytes(bytes(data))
    retrained = _train(cache, out, f"model.llm={moved}")
    assert retrained.exit_code == 0 and "1 folds (0 reused)" in retrained.output, retrained.output


def test_a_sentencepiece_only_tokenizer_loads(cache, tmp_path):
    from llm_checkpoints import write_sentencepiece_tokenizer

    folder = write_sentencepiece_tokenizer(save_checkpoint("llama-gqa", tmp_path / "llama2", tokenizer=False,
                                                           vocab_size=400))
    assert not (folder / "tokenizer.json").exists()
    result = _train(cache, tmp_path / "run", f"model.llm={folder}")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "run.json").read_text())["llm"]["prompt_tokens"] > 0


def test_a_tokenizer_larger_than_the_models_vocabulary_is_refused(cache, tmp_path):
    from llm_checkpoints import write_sentencepiece_tokenizer

    folder = write_sentencepiece_tokenizer(save_checkpoint("llama-gqa", tmp_path / "llama2", tokenizer=False,
                                                           vocab_size=300))
    _refused(_train(cache, tmp_path / "run", f"model.llm={folder}"), "token id", "300 embeddings")
