"""What an updater sees of a round: the `UpdateContext`, built here and only here.

The train stage, the accelerate workers (loop.train_worker) and `loop export` all build the
context with `update_context`, so an updater trains in-process, in launched workers, and exports
its dataset from exactly the same samples. `fold_verdicts` is the one rule that turns an
attempt's verdicts into pass/score.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from loop.schema import Sample, Verdict

if TYPE_CHECKING:
    from loop.config import LoopConfig
    from loop.store import Store


class EmptyDataset(Exception):
    """Raised by an updater when the round gave it nothing to train on; the round keeps its model."""


class StageProgress(Protocol):
    def __call__(self, *, prompts: int = 0, tokens: int = 0, items: int = 0,
                 total: int | None = None) -> None: ...


def no_progress(**_: Any) -> None:
    """A StageProgress that shows nothing."""


@dataclass
class UpdateContext:
    """Everything an updater gets for one round.

    `samples` are the round's train attempts with their pass/fail, score and reward; the updater
    builds its own dataset from them. `base_model` is the config's model reference and
    `model_path` what the backend's `prepare()` made of it (a local folder for the embedded and
    local models): load the base weights from `model_path`. `adapter_in` is the checkpoint the
    round started from (None in round 1). The updater writes its adapter (or model) into
    `output_dir` and returns its path; the engine moves it into place atomically afterwards.
    Scratch space that must not survive a crash comes from `loop.scratch_dir(context, name)`.
    """

    run_id: str
    round_index: int
    samples: list[Sample]
    base_model: str
    adapter_in: str | None
    output_dir: Path
    config: "LoopConfig"
    options: Any
    seed: int
    progress: StageProgress = no_progress
    reward_names: list[str] = field(default_factory=list)
    model_path: str = ""

    def __post_init__(self) -> None:
        if not self.model_path:
            self.model_path = self.base_model


def derive_seed(seed: int, idx: int, stage: str) -> int:
    """The seed of one stage of one round: a hash of the run's seed, the round and the stage."""
    return int(hashlib.sha256(f"{seed}:{idx}:{stage}".encode()).hexdigest()[:8], 16)


def passed(verdicts: dict[str, Verdict]) -> bool:
    """An attempt passes when it has verdicts and every verifier passed it."""
    return bool(verdicts) and all(v.passed for v in verdicts.values())


def fold_verdicts(verdicts: dict[str, Verdict]) -> dict[str, Any]:
    """One attempt's verdicts folded into one: `passed` (every verifier passed), `score` (the
    lowest), the first `error_kind` and `mistake`, and the feedback lines joined."""
    values = list(verdicts.values())
    return {
        "passed": passed(verdicts),
        "score": min((v.score for v in values), default=0.0),
        "error_kind": next((v.error_kind for v in values if v.error_kind), None),
        "mistake": next((v.mistake for v in values if v.mistake), None),
        "feedback": "\n".join(v.feedback for v in values if v.feedback),
    }


def load_samples(store: "Store", run_id: str, idx: int, reward_names: list[str]) -> list[Sample]:
    """The round's train attempts as an updater sees them: task, attempt, verdicts folded into
    pass/score, and each reward's value (`reward` is the first reward function's)."""
    attempts = store.attempts(run_id, idx, "train")
    tasks = store.get_tasks({a.task_id for a in attempts})
    verdicts = store.verdicts(a.id for a in attempts)
    rewards = store.rewards(a.id for a in attempts)
    first = reward_names[0] if reward_names else None
    samples = []
    for a in attempts:
        folded = fold_verdicts(verdicts[a.id])
        samples.append(Sample(
            task=tasks[a.task_id], attempt=a, passed=folded["passed"], score=folded["score"],
            reward=rewards[a.id].get(first) if first else None,
            rewards={name: rewards[a.id].get(name) for name in reward_names}))
    return samples


_FROM_STORE: Any = object()


def update_context(store: "Store", config: "LoopConfig", run_id: str, idx: int, *,
                   options: Any, output_dir: Path, reward_names: list[str],
                   model_path: str = "", progress: StageProgress = no_progress,
                   adapter_in: str | None = _FROM_STORE, seed: int | None = None
                   ) -> UpdateContext:
    """The UpdateContext of round `idx`'s train stage, from the store: its samples, the round's
    input checkpoint and the stage's seed. A launched worker passes the `adapter_in` and `seed`
    its parent's context had, so both sides train the same update."""
    if adapter_in is _FROM_STORE:
        adapter_in = store.get_round(run_id, idx)["model_in"]
    return UpdateContext(
        run_id=run_id, round_index=idx, samples=load_samples(store, run_id, idx, reward_names),
        base_model=config.model, adapter_in=adapter_in, output_dir=Path(output_dir),
        config=config, options=options,
        seed=derive_seed(config.seed, idx, "train") if seed is None else seed,
        progress=progress, reward_names=list(reward_names), model_path=model_path)
