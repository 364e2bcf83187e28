"""Where a configured LLM comes from and what it is.

``model.llm`` names what researchers actually have: ``tiny`` (built in code), a checkpoint folder
(``save_pretrained``'s layout), a Hugging Face cache folder (``models--ORG--NAME``, what
``huggingface-cli download`` leaves) or a hub id (``Qwen/Qwen2.5-7B``) found in the local Hugging
Face cache. Nothing is ever downloaded. ``resolve_model`` turns it into an absolute snapshot folder
and the folder's **content identity** (``content_identity``), which the configuration fingerprint
uses instead of the path: the same checkpoint at another path is the same key, a changed file is not.

``check_llm`` is the one check before anything trains (``aullm train``, ``aullm sweep`` for every
LLM its space can propose, ``aullm export``): config, weights and tokenizer present and loadable,
the prompt tokenizes to at least one token, the LoRA targets name modules of this model, and the
weights fit this machine's memory on CPU. Each failure is one ``ConfigError`` line naming the
folder, what is missing and the fix.

LoRA targets (``lora_targets``): the configured names when the model has them. The default
(``q_proj, v_proj``, the paper's query and value projections) means "the attention's query and
value projections": on a model whose attention computes them in one fused projection (GPT-2's
``c_attn``, Phi-3's ``qkv_proj``, Falcon's ``query_key_value``, ...) it is that projection. Other
configured names must exist, or the error lists the model's projections and the ``--set`` to use.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aullm_core.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from aullm_core.model.config import ModelConfig

__all__ = [
    "DEFAULT_TARGETS",
    "TINY",
    "LLMInfo",
    "check_llm",
    "content_identity",
    "lora_targets",
    "resolve_model",
    "resolve_source",
]

log = logging.getLogger(__name__)

TINY = "tiny"
DEFAULT_TARGETS = ("q_proj", "v_proj")
#: fused query/key/value projections, by the names the families use for them
FUSED_ATTENTION = ("qkv_proj", "c_attn", "query_key_value", "Wqkv", "W_pack", "qkv")
_SMALL = 1 << 20  # files up to this size are hashed whole
_CHUNK = 1 << 16  # a sampled chunk of a large file
_STRIDE = 256 << 20  # one more sampled chunk per this many bytes
_IGNORED = re.compile(r"(^|/)(\.|README|LICENSE|NOTICE|USE_POLICY)|\.(md|png|jpe?g|gif)$", re.IGNORECASE)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt",
                    "tokenizer.tiktoken", "qwen.tiktoken")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _err(value: str, text: str) -> ConfigError:
    return ConfigError(f"model.llm={value!r}: {text}")


def _cache_snapshot(folder: Path, value: str) -> Path:
    """The snapshot a Hugging Face cache folder (refs/, snapshots/) points at."""
    snapshots = folder / "snapshots"
    ref = folder / "refs" / "main"
    if ref.is_file():
        target = snapshots / ref.read_text().strip()
        if target.is_dir():
            return target
    found = sorted(p for p in snapshots.iterdir() if p.is_dir()) if snapshots.is_dir() else []
    if len(found) == 1:
        return found[0]
    raise _err(value, f"a Hugging Face cache folder with {len(found)} snapshots and no refs/main naming one of "
                      f"them; set model.llm to one of {snapshots}/<hash>")


def resolve_source(value: str) -> Path:
    """The checkpoint folder ``model.llm`` names (absolute; relative paths from the current folder)."""
    path = Path(value).expanduser()
    if path.is_dir():
        path = path.resolve()
        if (path / "snapshots").is_dir() and not (path / "config.json").exists():
            return _cache_snapshot(path, value)
        return path
    if path.exists():
        raise _err(value, f"{path.resolve()} is a file; expected a checkpoint folder (config.json, weights, tokenizer)")
    if _HUB_ID.fullmatch(value) and not value.startswith((".", "~")):
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            return Path(snapshot_download(value, local_files_only=True)).resolve()
        except (LocalEntryNotFoundError, OSError, ValueError):
            raise _err(value, f"no folder {path.resolve()} and not in the local Hugging Face cache "
                              f"({constants.HF_HUB_CACHE}); nothing is downloaded here: on a machine with internet "
                              f"run `huggingface-cli download {value}`, copy the folder it prints here and set "
                              "model.llm to it (or point HF_HOME at a copied cache)") from None
    raise _err(value, f"no checkpoint folder at {path.resolve()} (relative paths are read from the current folder, "
                      f"{Path.cwd()}); expected 'tiny', a folder, or a hub id in the local Hugging Face cache")


def _files(folder: Path) -> list[tuple[str, Path]]:
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and not _IGNORED.search(rel):
            out.append((rel, path))
    return out


def _file_digest(path: Path, size: int) -> str:
    """SHA-256 of a small file; of a large one, its safetensors header (if any) and sampled chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if size <= _SMALL:
            digest.update(handle.read())
            return digest.hexdigest()
        if path.suffix == ".safetensors":
            head = handle.read(8)
            digest.update(head)
            digest.update(handle.read(min(int.from_bytes(head, "little"), 100 << 20)))
        count = 16 + size // _STRIDE
        for k in range(count):
            handle.seek(max(0, (size - _CHUNK) * k // (count - 1)))
            digest.update(handle.read(_CHUNK))
    return digest.hexdigest()


_IDENTITIES: dict[tuple, str] = {}


def content_identity(folder: Path) -> str:
    """16 hex digits naming what is in a checkpoint folder, not where it is.

    Every file but READMEs, licences, images and hidden files counts by its relative name, size and
    content: small files (config, tokenizer, code, shard index) are hashed whole; weight files by
    their safetensors header (tensor names, dtypes, shapes) and 16 chunks of 64 KiB spread over the
    file, plus one per 256 MiB, so a 15 GB folder costs a few MB of reads yet any retrained,
    converted, truncated or replaced weight file changes the identity. Cached per process by
    (folder, names, sizes, modification times).
    """
    files = _files(folder)
    stats = [(rel, path.stat()) for rel, path in files]
    key = (str(folder), tuple((rel, st.st_size, st.st_mtime_ns) for rel, st in stats))
    if key not in _IDENTITIES:
        digest = hashlib.sha256()
        for (rel, path), (_, st) in zip(files, stats):
            digest.update(f"{rel}\0{st.st_size}\0{_file_digest(path, st.st_size)}\n".encode())
        _IDENTITIES[key] = digest.hexdigest()[:16]
    return _IDENTITIES[key]


def resolve_model(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with ``llm`` an absolute checkpoint folder and ``llm_id`` its content identity ('tiny' as is)."""
    if cfg.llm == TINY or not cfg.use_llm:
        return cfg
    folder = resolve_source(cfg.llm)
    return cfg.model_copy(update={"llm": str(folder), "llm_id": content_identity(folder)})


def lora_targets(module_names: list[str], configured: tuple[str, ...], model_type: str) -> tuple[str, ...]:
    """The LoRA target names to use on a model whose modules are ``module_names`` (see the module docstring)."""
    leaves = {name.rsplit(".", 1)[-1] for name in module_names}
    if all(t in leaves for t in configured):
        return tuple(configured)
    if tuple(configured) == DEFAULT_TARGETS:
        fused = [name for name in FUSED_ATTENTION if name in leaves]
        if fused:
            return (fused[0],)
    projections = sorted(n for n in leaves if re.search(r"proj|attn|qkv|query|key|value|fc|dense|Wqkv", n))
    example = ",".join(projections[:2]) if projections else "NAME"
    raise ConfigError(
        f"model.lora.targets={list(configured)}: not modules of this {model_type} model; its projections are "
        f"{', '.join(projections) or 'none found'}: e.g. --set model.lora.targets=[{example}]"
    )


@dataclass(frozen=True)
class LLMInfo:
    """What was built: recorded at the start of a fold, in run.json, MLflow and the model card."""

    family: str
    parameters: int
    dtype: str
    lora_modules: tuple[str, ...]
    lora_trainable: int
    prompt_tokens: int
    identity: str

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["lora_modules"] = list(self.lora_modules)
        return data

    def line(self) -> str:
        return (f"LLM {self.family}, {self.parameters / 1e6:.1f}M parameters in {self.dtype}, LoRA on "
                f"{'+'.join(self.lora_modules) or '-'} ({self.lora_trainable:,} trainable), prompt "
                f"{self.prompt_tokens} tokens, checkpoint {self.identity}")


def _config(folder: Path, value: str, trust_remote_code: bool) -> Any:
    from transformers import AutoConfig

    if not (folder / "config.json").is_file():
        raise _err(value, f"{folder} has no config.json: not a Hugging Face model folder")
    try:
        return AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
    except ValueError as err:
        if "trust_remote_code" in str(err):
            raise _err(value, f"{folder} needs the model code it ships (config.json auto_map); if you trust it, "
                              "pass --set model.trust_remote_code=true") from None
        raise _err(value, f"{folder}/config.json: {str(err).splitlines()[0]}") from None
    except (OSError, ImportError, AttributeError) as err:
        raise _err(value, f"{folder}: its model code cannot be loaded ({str(err).splitlines()[0]})") from None


def _check_weights(folder: Path, value: str) -> None:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise _err(value, f"{folder} lacks {missing[0]} named in model.safetensors.index.json "
                              f"({len(missing)} of {len(shards)} shards missing): copy the whole checkpoint")
        return
    if any(folder.glob("*.safetensors")):
        return
    if any(folder.glob("pytorch_model*.bin")):
        raise _err(value, f"{folder} holds its weights as pytorch_model.bin (pickle), which this tool does not load; "
                          "convert them to safetensors (model.save_pretrained(folder, safe_serialization=True) "
                          "where you trust the file)")
    raise _err(value, f"{folder} has no weights (model.safetensors or model.safetensors.index.json with its shards)")


def load_tokenizer(folder: Path, value: str, trust_remote_code: bool) -> Any:
    """The checkpoint's tokenizer (one-line errors for a missing or unloadable one)."""
    from transformers import AutoTokenizer

    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise _err(value, f"{folder} has no tokenizer ({', '.join(_TOKENIZER_FILES[:3])}, ...): the prompt needs "
                          "one; copy the base model's tokenizer files into the folder, or --set model.use_prompt=false")
    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, ImportError) as err:
        raise _err(value, f"{folder}: the tokenizer does not load ({str(err).splitlines()[0][:200]})") from None


def prompt_token_count(tokenizer: Any, prompt: str) -> int:
    """Tokens of ``prompt`` that are not special tokens (a BOS alone is no prompt)."""
    ids = tokenizer(prompt)["input_ids"]
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    return sum(1 for i in ids if i not in special)


def _meta_model(config: Any, trust_remote_code: bool) -> nn.Module:
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _available_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def check_llm(cfg: ModelConfig, *, device: str = "cpu", memory: int | None = None) -> LLMInfo | None:
    """Check the configured LLM before anything trains (see the module docstring); None for 'tiny' or no LLM.

    ``memory``: bytes free for the weights on CPU (default: what this machine has available)."""
    if not cfg.use_llm or cfg.llm == TINY:
        return None
    import torch

    value = cfg.llm
    folder = resolve_source(value)
    config = _config(folder, value, cfg.trust_remote_code)
    _check_weights(folder, value)
    model = _meta_model(config, cfg.trust_remote_code)
    prompt_tokens = 0
    if cfg.use_prompt:
        tokenizer = load_tokenizer(folder, value, cfg.trust_remote_code)
        prompt_tokens = prompt_token_count(tokenizer, cfg.prompt)
        if prompt_tokens == 0:
            raise _err(value, f"{folder}: its tokenizer turns the prompt into no tokens (an empty vocabulary?); "
                              "copy the base model's tokenizer files, or --set model.use_prompt=false")
        rows = model.get_input_embeddings().weight.shape[0]
        top = max(tokenizer(cfg.prompt)["input_ids"])
        if top >= rows:
            raise _err(value, f"{folder}: the tokenizer gives the prompt token id {top} but the model has {rows} "
                              "embeddings: the tokenizer is not this model's; copy the base model's tokenizer files")
    decoder = model.get_decoder()
    names = [n for n, m in decoder.named_modules() if type(m).__name__ in ("Linear", "Conv1D")]
    model_type = str(getattr(config, "model_type", "?"))
    targets = lora_targets(names, tuple(cfg.lora.targets), model_type)
    parameters = sum(p.numel() for p in decoder.parameters())
    on_cuda = torch.device(device).type == "cuda"
    dtype = "fp32" if not on_cuda else "bf16"
    if not on_cuda:
        need = parameters * 4
        free = _available_memory() if memory is None else memory
        if need > free:
            raise _err(value, f"{parameters / 1e6:,.1f}M parameters need {_size(need)} in fp32 on CPU and "
                              f"{_size(free)} are free: train on a GPU (--device cuda) or use a smaller model")
    rank = cfg.lora.r
    trainable = 0
    for name, module in decoder.named_modules():
        if name.rsplit(".", 1)[-1] in targets and hasattr(module, "weight"):
            fan_out, fan_in = module.weight.shape[:2]
            trainable += rank * (fan_in + fan_out)
    return LLMInfo(family=model_type, parameters=parameters, dtype=dtype, lora_modules=targets,
                   lora_trainable=trainable, prompt_tokens=prompt_tokens, identity=content_identity(folder))

