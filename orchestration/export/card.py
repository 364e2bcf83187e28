"""The exported model's card in the Hugging Face format: YAML front matter (licence, datasets, metrics,
base model, model-index with the LOSO results) and the sections a reader of a model hub expects: usage,
training data and where it came from, hyperparameters and compute, results with their intervals and the
label-free baselines, per-AU thresholds and support, preprocessing, intended use, limitations, citation.

Nothing in it names a path of the machine that exported it: the cache is named by its file name only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from aullm_core.config import ExperimentConfig
from aullm_core.train.baselines import baseline_scores
from aullm_core.train.objective import Objective
from aullm_core.train.result import FoldResult
from aullm_core.train.uncertainty import Interval, au_support, objective_interval, per_au_intervals
from orchestration.results import tables

__all__ = ["CITATION", "card_markdown", "front_matter"]

CITATION = """@inproceedings{aullm2025,
  title         = {AU-LLM: Micro-Expression Action Unit Detection via Enhanced LLM-Based Feature Fusion},
  booktitle     = {Chinese Conference on Biometric Recognition (CCBR)},
  year          = {2025},
  eprint        = {2507.21778},
  archivePrefix = {arXiv}
}"""

_DATASETS = {"casme2": "CASME II", "samm": "SAMM"}
_LICENCE = ("CASME II and SAMM are licensed to research groups for non-commercial research; weights trained on "
            "them are derived data: share them only as those licences allow.")
_SYNTHETIC_LICENCE = ("Trained on synthetic clips written by aullm (no dataset licence applies); the base LLM's "
                      "licence applies to its weights.")
#: the training fields a reader needs to reproduce the run (the full configuration is in config.json)
_HYPERPARAMETERS = ("train.epochs", "train.lr", "train.batch_size", "train.weight_decay", "train.loss", "train.seed",
                    "train.inner_val_share", "model.llm", "model.lora.r", "model.lora.alpha", "model.lora.dropout",
                    "model.lora.targets", "model.dropout", "data.n_frames")


def _dataset(name: str, synthetic: Mapping[str, Any] | None) -> tuple[str, str]:
    """(type, readable name) of the training data, synthetic said where it is."""
    label = _DATASETS.get(name, name)
    if synthetic:
        return name, (f"synthetic {label}-style clips written by aullm (difficulty {synthetic.get('difficulty', '?')}, "
                      f"seed {synthetic.get('seed', '?')})")
    return name, label


def _value(config: ExperimentConfig, dotted_key: str) -> Any:
    value: Any = config
    for part in dotted_key.split("."):
        value = getattr(value, part)
    return list(value) if isinstance(value, tuple) else value


def _number(value: float) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 4)


def front_matter(*, name: str, dataset: tuple[str, str], synthetic: bool, base_model: str | None,
                 objective: Objective, interval: Interval, per_au: Mapping[int, Interval]) -> dict[str, Any]:
    """The YAML header: licence with the datasets' note, datasets, metrics, base model and a model-index."""
    metrics = [{"type": "f1", "name": f"LOSO {objective} (95% CI {interval.low:.3f}-{interval.high:.3f})",
                "value": _number(interval.value), "verified": False}]
    metrics += [{"type": "f1", "name": f"AU{au} F1 ({objective.thresholds} thresholds, {objective.aggregate})",
                 "value": _number(i.value), "verified": False} for au, i in per_au.items() if not math.isnan(i.value)]
    header: dict[str, Any] = {
        "license": "other",
        "license_name": "synthetic-data" if synthetic else "casme2-samm-research-only",
        "library_name": "aullm",
        "pipeline_tag": "video-classification",
        "tags": ["action-unit-detection", "micro-expression", "facs", "lora", "au-llm",
                 *(["synthetic-data"] if synthetic else [])],
        "datasets": [dataset[0]],
        "metrics": ["f1"],
        "model-index": [{"name": name, "results": [{
            "task": {"type": "video-classification", "name": "Micro-expression Action Unit detection"},
            "dataset": {"type": dataset[0], "name": dataset[1], "split": "leave-one-subject-out"},
            "metrics": metrics}]}],
    }
    if base_model:
        header["base_model"] = base_model
    return header


def _results_table(objective: Objective, interval: Interval, baselines: Mapping[str, Interval]) -> list[str]:
    rows = ["| predictor | " + f"{objective} [95% CI] |", "|---|---|", f"| this model (selection-biased) | {interval} |"]
    rows += [f"| baseline: {name} | {value} |" for name, value in baselines.items()]
    return rows


def _per_au_table(per_au: Mapping[int, Interval], support: Mapping[int, int], thresholds: Mapping[int, float]) -> list[str]:
    rows = ["| AU | F1 [95% CI] | positive clips | decision threshold |", "|---|---|---|---|"]
    for au, value in per_au.items():
        threshold = thresholds.get(au)
        rows.append(f"| AU{au} | {value} | {support.get(au, 0)} | {'-' if threshold is None else f'{threshold:.2f}'} |")
    return rows


def _clean(value: Any) -> str:
    """A preprocessing value as a person writes it (9.8, not 9.799999999999999)."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_clean(v) for v in value)
    return str(value)


def card_markdown(*, sweep_name: str, config_fp: str, number: int | None, rank: int, n_configs: int,
                  config: ExperimentConfig, results: Sequence[FoldResult], objective: Objective,
                  dataset_name: str, cache_name: str, data_attrs: Mapping[str, Any], n_clips: int, n_subjects: int,
                  thresholds: Mapping[int, float], llm: Mapping[str, Any], train_seconds: float, device: str,
                  variants_table: str, cross_table: str, model_name: str, machine_attrs: set[str]) -> str:
    """``MODEL_CARD.md``: front matter and sections (see the module docstring)."""
    synthetic = data_attrs.get("synthetic") or None
    dataset = _dataset(dataset_name, synthetic)
    interval = objective_interval(objective, results)
    per_au = per_au_intervals(objective, results)
    identity = str(llm.get("identity", ""))
    base_model = None if identity in ("", "tiny") else str(config.model.llm).rstrip("/").rsplit("/", 1)[-1]
    header = front_matter(name=model_name, dataset=dataset, synthetic=bool(synthetic), base_model=base_model,
                          objective=objective, interval=interval, per_au=per_au)
    trial = f"#{number}" if number is not None else config_fp[:8]
    llm_line = (f"the LLM `{base_model}` (checkpoint content {identity})" if base_model
                else "a tiny randomly initialised LLM built in code (a demonstration model, not a pretrained one)")
    preprocessing = [f"- {k}: {_clean(v)}" for k, v in sorted(data_attrs.items())
                     if k not in machine_attrs and k != "synthetic" and v is not None]
    lines = [
        "---", yaml.safe_dump(header, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
        f"# AU-LLM Action Unit detector: sweep `{sweep_name}`, configuration {trial}", "",
        (f"Detects facial Action Units ({', '.join(f'AU{a}' for a in thresholds)}) in a micro-expression clip. "
         f"A 3D-CNN with the Enhanced Fusion Projector turns the clip into one token for {llm_line}, tuned with "
         f"LoRA (r={config.model.lora.r}); one sigmoid output per AU. Configuration `{config_fp}`, rank {rank} of "
         f"{n_configs} in its sweep, retrained on all {n_clips} clips of {n_subjects} subjects."), "",
        "## Usage", "", "```bash", "aullm predict --model <this folder> --clip <folder of one clip's frames, onset to offset>",
        "```", "", "Or through MLflow, where it is registered (input: uint8 frames as the training cache stores them):",
        "", "```python", "import mlflow", f'model = mlflow.pyfunc.load_model("models:/{model_name}/<version>")',
        "probabilities = model.predict(clip[None])  # clip: (frames, height, width) uint8", "```", "",
        "## Training data", "",
        (f"**Synthetic.** {dataset[1]}: no real faces; its scores say that the pipeline works, not how the model "
         "does on CASME II or SAMM." if synthetic else
         f"{dataset[1]} (cache `{cache_name}`), leave-one-subject-out evaluation."), "",
        f"Licence: {_SYNTHETIC_LICENCE if synthetic else _LICENCE}", "",
        "## Training hyperparameters", "", "| key | value |", "|---|---|",
        *(f"| {key} | {_clean(_value(config, key))} |" for key in _HYPERPARAMETERS), "",
        "The full configuration is `config.json`.", "",
        "## Compute", "", f"Retraining on every subject took {train_seconds:.0f} s on {device}.", "",
        "## Results (leave-one-subject-out)", "",
        *_results_table(objective, interval, baseline_scores(objective, results)), "",
        ("Selection-biased: this configuration was chosen among the sweep's on the same folds these numbers come "
         "from, so they are optimistic; `aullm report --nested` estimates the search procedure without this bias. "
         "Intervals: 95% bootstrap over subjects. Baselines look at no frame."), "",
        "### Per AU", "", *_per_au_table(per_au, au_support(results), thresholds), "",
        ("Thresholds are the final model's, chosen on held-out training subjects "
         f"(`train.inner_val_share` {config.train.inner_val_share}) or 0.5, never on test data."), "",
        "### Other protocols", "", variants_table, tables.PAPER_NOTE, "",
    ]
    if cross_table:
        lines += ["### Cross-domain", "", "Trained on all of one dataset, tested on the other over the shared AUs.",
                  "", cross_table]
    lines += ["## Preprocessing", "", "New clips must be read like this (`aullm predict` does):", "", *preprocessing, "",
              "## Intended use", "", INTENDED_USE, "", "## Limitations", "",
              LIMITATIONS + (" Trained on synthetic data: not a model of real faces." if synthetic else ""), "",
              "## Citation", "", "```bibtex", CITATION, "```", ""]
    return "\n".join(lines)


INTENDED_USE = (
    "Research on facial Action Unit detection in micro-expression clips: reproducing and comparing "
    "AU-LLM variants. Input: a clip of face frames from onset to offset, preprocessed like the training "
    "cache (size, colour, crop above)."
)
LIMITATIONS = (
    "Trained on few subjects recorded in one lab setting; expect lower scores on other cameras, frame rates, "
    "crops, populations or on posed or spontaneous macro-expressions. Not for decisions about people "
    "(emotion inference, deception, hiring, security)."
)
