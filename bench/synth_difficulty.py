"""How hard is the synthetic data? A simple baseline and AU-LLM against trivial predictors, under LOSO.

``--grid`` (the table in the README) measures each difficulty (``realistic``, ``easy``) of the casme2
style at 8, 14 and 26 subjects x 6 clips: the baseline below, AU-LLM with the laptop recipe (the
``quick`` preset: inner thresholds, the inner model predicts the test subject) with the tiny LLM and
without it (``model.use_llm=false``; by default only up to 14 subjects, ``--no-llm-max-subjects``),
each scored as pooled LOSO positive-class F1 with inner thresholds and pooled ROC AUC, beside the
all-positive and prior predictors. Results are written after every entry, so an interrupted run
keeps what it measured.

Baseline: per AU, sklearn LogisticRegression (class_weight='balanced', fixed C, standardised
inputs) on ONE feature vector per clip: the grey 32x32 apex frame minus the onset frame (the
middle frame where the sheet gives no apex). Folds: leave-one-subject-out (LeaveOneGroupOut);
predictions of all folds are pooled and scored with the positive-class F1 at threshold 0.5.
Nothing is tuned on test subjects.

Trivial predictors: all-positive, all-negative, and 'prior' (each test clip positive with the
training folds' positive rate; expected F1 over 200 draws).

    .venv/bin/python bench/synth_difficulty.py                 # casme2 style, 26 x 10 clips
    .venv/bin/python bench/synth_difficulty.py --style samm    # samm style, 28 x 6 clips
    .venv/bin/python bench/synth_difficulty.py --grid          # difficulties x sizes, with AU-LLM

Writes bench/results/synth_difficulty.json (one entry per style measured, merged with earlier ones).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _synth_data import DATA_DIR, synthetic_dataset
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import LeaveOneGroupOut
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from aullm_core.atomic import atomic_write_text
from aullm_core.data import AU_SETS, STYLES, get_reader, load_frames

RESULTS = Path(__file__).parent / "results" / "synth_difficulty.json"
DEFAULT_SIZES = {"casme2": (26, 10), "samm": (28, 6)}


def features(
    style: str, root: Path, size: int, crop: tuple[int, int, int, int] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(apex - onset) grey frames flattened, labels over the style's AU set, subject per clip."""
    table = get_reader(style).read(root)
    aus = AU_SETS[style]
    x, y, groups = [], [], []
    for a in table:
        apex = a.apex - a.onset if a.apex is not None else a.n_frames // 2
        first, peak = load_frames([a.frames[0], a.frames[apex]], size=size, color=False, crop=crop).astype(
            np.float32
        )
        x.append((peak - first).ravel())
        y.append([au in a.aus for au in aus])
        groups.append(a.subject)
    return np.stack(x), np.asarray(y, dtype=np.int64), np.asarray(groups)


def loso_scores(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray, c: float, seed: int
) -> dict[str, np.ndarray]:
    """Pooled LOSO positive-class F1 per AU for the baseline and the trivial predictors."""
    rng = np.random.default_rng(seed)
    n, k = y.shape
    pred = np.zeros_like(y)
    prior_draws = np.zeros((200, n, k), dtype=np.int64)
    for train, test in LeaveOneGroupOut().split(x, y, groups):
        rate = y[train].mean(axis=0)
        prior_draws[:, test] = rng.uniform(size=(200, len(test), k)) < rate
        for j in range(k):
            if y[train, j].min() == y[train, j].max():
                pred[test, j] = y[train, j][0]
                continue
            model = make_pipeline(
                StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=2000)
            )
            pred[test, j] = model.fit(x[train], y[train, j]).predict(x[test])

    def f1(yp: np.ndarray, j: int) -> float:
        return float(f1_score(y[:, j], yp, zero_division=0.0))

    return {
        "baseline": np.array([f1(pred[:, j], j) for j in range(k)]),
        "baseline_macro": np.array(
            [float(f1_score(y[:, j], pred[:, j], average="macro", zero_division=0.0)) for j in range(k)]
        ),
        "all_positive": np.array([f1(np.ones(n, np.int64), j) for j in range(k)]),
        "all_negative": np.array([f1(np.zeros(n, np.int64), j) for j in range(k)]),
        "prior": np.array([np.mean([f1(d[:, j], j) for d in prior_draws]) for j in range(k)]),
    }


def face_box(style: str) -> tuple[int, int, int, int]:
    """A fixed crop around where the samm style puts faces (x, y, w, h), as a user would pass --crop."""
    width, height = STYLES[style].width, STYLES[style].height
    return round(0.26 * width), round(0.09 * height), round(0.48 * width), round(0.72 * height)


def measure(
    style: str,
    subjects: int,
    clips: int,
    seed: int,
    size: int,
    c: float,
    data_dir: Path,
    amplitude: float | None,
    crop: tuple[int, int, int, int] | None = None,
) -> dict:
    root = synthetic_dataset(style, subjects, clips, seed, data_dir, amplitude)
    start = time.perf_counter()
    x, y, groups = features(style, root, size, crop)
    scores = loso_scores(x, y, groups, c, seed)
    aus = AU_SETS[style]
    return {
        "style": style,
        "amplitude": 1.0 if amplitude is None else amplitude,
        "subjects": len(set(groups)),
        "clips": len(y),
        "positives": {f"AU{au}": int(y[:, j].sum()) for j, au in enumerate(aus)},
        "baseline": f"LogisticRegression(C={c}, class_weight='balanced') on grey {size}x{size} apex - onset, "
        "LOSO pooled, threshold 0.5",
        "crop": list(crop) if crop else None,
        "f1_pos": {
            name: {
                **{f"AU{au}": round(float(v[j]), 3) for j, au in enumerate(aus)},
                "mean": round(float(v.mean()), 3),
            }
            for name, v in scores.items()
        },
        "seconds": round(time.perf_counter() - start, 1),
    }


def aullm_loso(style: str, root: Path, work: Path, use_llm: bool) -> dict:
    """AU-LLM with the quick preset under LOSO: pooled F1+ (inner thresholds), pooled AUC, seconds."""
    from sklearn.metrics import roc_auc_score

    from aullm_core.config import ExperimentConfig
    from aullm_core.data.cache import load_cache, make_cache
    from aullm_core.data.splits import loso_folds
    from aullm_core.train.fold import train_fold
    from aullm_core.train.metrics import score_results

    clips = load_cache(make_cache(style, root, work / f"{root.name}.h5", progress=False).path)
    config = ExperimentConfig.preset("quick").with_overrides({"model.use_llm": use_llm})
    start = time.perf_counter()
    results = [train_fold(clips, clips, fold, config, progress=False) for fold in loso_folds(clips)]
    seconds = time.perf_counter() - start
    inner = score_results(results, mode="inner", aggregate="pooled")
    probs = np.concatenate([r.probs for r in results])
    labels = np.concatenate([r.labels for r in results])
    aucs = [roc_auc_score(labels[:, k], probs[:, k]) for k in range(labels.shape[1]) if 0 < labels[:, k].sum() < len(labels)]
    return {
        "f1_pos_inner_pooled": round(inner.mean_f1_pos, 3),
        "per_au_f1_pos_inner_pooled": {f"AU{au}": round(v, 3) for au, v in inner.f1_pos.items()},
        "auc_pooled": round(float(np.mean(aucs)), 3),
        "seconds": round(seconds, 1),
        "seconds_per_fold": round(seconds / len(results), 1),
    }


def grid(args: argparse.Namespace) -> None:
    """Every difficulty at every size: baseline, AU-LLM with and without the LLM, trivial predictors."""
    import tempfile

    from aullm_core.data.synth import DIFFICULTIES

    out = args.out.with_name("synth_difficulty_grid.json") if args.out == RESULTS else args.out
    results = json.loads(out.read_text()) if out.is_file() else {}
    work = Path(tempfile.mkdtemp(prefix="aullm-difficulty-"))
    for subjects in args.sizes:
        for difficulty in DIFFICULTIES:
            key = f"casme2/{difficulty}/{subjects}x{args.grid_clips}"
            entry = results.get(key, {})
            root = synthetic_dataset("casme2", subjects, args.grid_clips, args.seed, args.data_dir, None, difficulty)
            if "baseline" not in entry:
                x, y, groups = features("casme2", root, args.size)
                scores = loso_scores(x, y, groups, args.c, args.seed)
                entry.update({
                    "difficulty": difficulty, "subjects": subjects, "clips": len(y),
                    "positives": {f"AU{au}": int(y[:, j].sum()) for j, au in enumerate(AU_SETS["casme2"])},
                    **{name: round(float(v.mean()), 3) for name, v in scores.items() if name != "baseline_macro"},
                })
            models = [("aullm_llm", True)] + [("aullm_no_llm", False)] * (subjects <= args.no_llm_max_subjects)
            for name, use_llm in models:
                if name not in entry:
                    entry[name] = aullm_loso("casme2", root, work, use_llm)
                    results[key] = entry
                    atomic_write_text(out, json.dumps(results, indent=2) + "\n")
                print(key, name, entry[name])
            results[key] = entry
            atomic_write_text(out, json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--style", choices=["casme2", "samm", "both"], default="casme2")
    parser.add_argument("--subjects", type=int, help="default: 26 (casme2) / 28 (samm)")
    parser.add_argument("--clips-per-subject", type=int, help="default: 10 (casme2) / 6 (samm)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=32, help="frame size of the baseline's input")
    parser.add_argument("--amplitude", type=float, help="AU amplitude factor (default: the style's, 1.0)")
    parser.add_argument("--C", type=float, default=0.01, dest="c", help="inverse L2 strength (fixed)")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="synthetic data (reused)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--grid", action="store_true", help="difficulties x sizes with AU-LLM (see above)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 14, 26], help="--grid: subject counts")
    parser.add_argument("--grid-clips", type=int, default=6, help="--grid: clips per subject")
    parser.add_argument("--no-llm-max-subjects", type=int, default=14, help="--grid: largest size without LLM")
    args = parser.parse_args()
    if args.grid:
        grid(args)
        return
    styles = ["casme2", "samm"] if args.style == "both" else [args.style]
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    runs = [(style, None) for style in styles] + [("samm", face_box("samm"))] * ("samm" in styles)
    for style, crop in runs:
        subjects = args.subjects or DEFAULT_SIZES[style][0]
        clips = args.clips_per_subject or DEFAULT_SIZES[style][1]
        result = measure(
            style, subjects, clips, args.seed, args.size, args.c, args.data_dir, args.amplitude, crop
        )
        key = style if crop is None else f"{style}_face_crop"
        results[key] = result
        print(
            f"{key}: {result['clips']} clips, {result['subjects']} subjects, crop {crop}; "
            "positive-class F1 (LOSO, pooled)"
        )
        names = list(result["f1_pos"])
        print(f"  {'AU':>6} " + " ".join(f"{n:>14}" for n in names))
        for key in result["f1_pos"][names[0]]:
            print(f"  {key:>6} " + " ".join(f"{result['f1_pos'][n][key]:>14.3f}" for n in names))
    atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
