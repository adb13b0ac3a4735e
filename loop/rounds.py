"""The round engine: one run is round 0 (evaluate the untouched model) and then rounds of

    select → generate → verify → refine → reward → mistakes → train → evaluate

Each stage reads what earlier stages stored, does its work, and writes its rows together with its
completion marker in one transaction. A round's finished stages are listed in `rounds.stages_json`;
running a round again (after a crash) skips them, and deterministic row ids make re-done work land
on the same rows. Plugins are reached only through the resolved `Components`; an exception inside a
verifier or reward function becomes an `infra` verdict or a None reward for that item, never a
crashed round. `refine` (critics explain failures, the model repairs its answers) is a no-op
unless `refine.depth` > 0; its parts are in loop.refine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

from loop.checkpoints import TMP_PREFIX, CheckpointError, publish, remove_temporary
from loop.checkpoints import verify as verify_checkpoint
from loop.components import Components
from loop.config import LoopConfig
from loop.records import (
    Attempt,
    Critique,
    ModelRef,
    Sample,
    Sampling,
    Task,
    TaskSet,
    UpdateResult,
    Verdict,
    Verifier,
)
from loop.failpoints import failpoint
from loop.isolation import PluginFailure, call_plugin
from loop.refine import EngineCriticContext, critic_view, model_failure, repair_messages
from loop.selection import choose_prompts, with_hint
from loop.search_index import refresh as refresh_search_index
from loop.store import Store

# Attempts handed to a verifier's verify_batch at once: enough to keep parallel workers busy,
# few enough that progress moves and a chunk's timeout stays meaningful.
VERIFY_CHUNK = 32

TRAIN_STAGES = ("select", "generate", "verify", "refine", "reward", "mistakes", "train",
                "evaluate")
ROUND0_STAGES = ("evaluate",)


class EmptyDataset(Exception):
    """Raised by an updater when the round gave it nothing to train on; the round keeps its model."""


class StageProgress(Protocol):
    def __call__(self, *, prompts: int = 0, tokens: int = 0, items: int = 0,
                 total: int | None = None) -> None: ...


class Reporter(Protocol):
    """What the engine tells the user; the CLI draws rich progress bars from it."""

    def stage(self, round_idx: int, stage: str, total: int | None) -> Any: ...
    def round_done(self, summary: dict) -> None: ...
    def warn(self, message: str) -> None: ...


class _NullStage:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __call__(self, **_: Any) -> None:
        pass


class NullReporter:
    def stage(self, round_idx: int, stage: str, total: int | None) -> _NullStage:
        return _NullStage()

    def round_done(self, summary: dict) -> None:
        pass

    def warn(self, message: str) -> None:
        pass


@dataclass
class UpdateContext:
    """Everything an updater gets for one round.

    `samples` are the round's train attempts with their pass/fail, score and reward; the updater
    builds its own dataset from them. It must write its adapter (or model) into `output_dir` and
    return its path; the engine moves it into place atomically after the update returns.
    """

    run_id: str
    round_index: int
    samples: list[Sample]
    base_model: str
    adapter_in: str | None
    output_dir: Path
    config: LoopConfig
    options: Any
    seed: int
    progress: StageProgress
    reward_names: list[str] = field(default_factory=list)


@dataclass
class RoundEngine:
    store: Store
    config: LoopConfig
    components: Components
    run_id: str
    run_dir: Path
    reporter: Reporter = field(default_factory=NullReporter)
    pm: Any = None
    tasks: TaskSet | None = None

    # ----- the run --------------------------------------------------------------------------

    def run(self) -> None:
        """Run (or continue) every round of the config, in order."""
        if self.tasks is None:
            self.tasks = self._load_tasks()
        for idx in range(self.config.rounds + 1):
            self.run_round(idx)

    def run_round(self, idx: int) -> dict:
        previous = self.store.get_round(self.run_id, idx - 1) if idx > 0 else None
        model_in = previous["model_out"] if previous else None
        row = self.store.ensure_round(self.run_id, idx, model_in)
        if row["stage"] == "done":
            return self.summary(idx)
        clock = time.perf_counter()
        resumed = bool(self._done_stages(idx))  # then this clock sees only part of the round
        self._notify("round_started", run_id=self.run_id, round_index=idx, config=self.config)
        failpoint("round.start")
        stages = ROUND0_STAGES if idx == 0 else TRAIN_STAGES
        for stage in stages:
            if stage in self._done_stages(idx):
                continue
            getattr(self, f"stage_{stage}")(idx)
        failpoint("round.before_done")
        refresh_search_index(self.store.db)  # the round's answers become searchable
        with self.store.transaction():
            self.store.mark_stage(self.run_id, idx, "done", {
                "seconds": time.perf_counter() - clock, "resumed": resumed})
        failpoint("round.after_done")
        summary = self.summary(idx)
        self.reporter.round_done(summary)
        self._notify("round_finished", run_id=self.run_id, round_index=idx, summary=summary)
        return summary

    def recover(self) -> list[str]:
        """Before resuming: drop unfinished temporary checkpoints, and send every round whose
        checkpoint fails its manifest back to its train stage. Returns one line per action."""
        messages = [f"removed unfinished checkpoint folder {p}"
                    for p in remove_temporary(self.run_dir)]
        for row in self.store.rounds(self.run_id):
            reset = self.store.reset_infra_verdicts(self.run_id, row["idx"])
            if reset:
                messages.append(f"round {row['idx']}: checking {reset} answers again whose "
                                "verification failed for infrastructure reasons")
            stages = json.loads(row["stages_json"] or "{}")
            if "train" not in stages or not row["model_out"] or row["model_out"] == row["model_in"]:
                continue
            try:
                verify_checkpoint(row["model_out"])
            except CheckpointError as exc:
                messages.append(f"{exc}: not loading it; retraining round {row['idx']}")
                self.store.reset_round_from_train(self.run_id, row["idx"])
        return messages

    # ----- stages ---------------------------------------------------------------------------

    def stage_select(self, idx: int) -> None:
        """Pick the round's prompts: replayed mistakes (with hints for long-unsolved ones), then
        fresh training tasks; retired tasks stay out (loop.selection)."""
        started = time.perf_counter()
        choice = choose_prompts(self.tasks.train, self.store.task_history(self.run_id),
                                self.store.open_mistake_counts(self.run_id), self.config.select,
                                _derive_seed(self.config.seed, idx, "select"))
        if choice.reused:
            self.reporter.warn(f"round {idx}: only {len(choice.tasks) - len(choice.reused)} "
                               "unused training prompts left; reusing earlier ones")
        with self._commit("select"):
            self.store.upsert_tasks(choice.tasks)
            self.store.mark_stage(self.run_id, idx, "select", {
                "seconds": time.perf_counter() - started, "count": len(choice.tasks),
                "task_ids": [t.id for t in choice.tasks], "replayed": choice.replayed,
                "hinted": choice.hinted, "retired": len(choice.retired)})

    def stage_generate(self, idx: int) -> None:
        chosen = self._stage_stats(idx, "select")
        task_ids, hinted = chosen["task_ids"], set(chosen.get("hinted", []))
        tasks = self.store.get_tasks(task_ids)
        share = self.config.select.hint_share
        ordered = [with_hint(tasks[i], share) if i in hinted else tasks[i] for i in task_ids]
        gen = self.config.generate
        sampling = Sampling(n=gen.n, temperature=gen.temperature, top_p=gen.top_p,
                            max_new_tokens=gen.max_new_tokens,
                            seed=_derive_seed(self.config.seed, idx, "generate"))
        attempts, stats = self._sample(idx, ordered, sampling, "train", "generate", gen.batch_size)
        with self._commit("generate"):
            self.store.insert_attempts(attempts)
            self.store.mark_stage(self.run_id, idx, "generate", stats)

    def stage_verify(self, idx: int) -> None:
        started = time.perf_counter()
        attempts = [a for a in self.store.attempts(self.run_id, idx, "train") if a.depth == 0]
        # On resume after infra failures only the answers without a verdict are checked again.
        done = self.store.verdicts(a.id for a in attempts)
        wanted = {c.name for c in self.components.verifiers}
        attempts = [a for a in attempts if not wanted <= set(done[a.id])]
        rows = self._verify(idx, attempts, "verify")
        with self._commit("verify"):
            self.store.insert_verdicts(rows)
            self.store.mark_stage(self.run_id, idx, "verify", {
                "seconds": time.perf_counter() - started, "count": len(rows)})

    def stage_refine(self, idx: int) -> None:
        """Repair failed answers: critics explain each failure, the model answers again in the
        same conversation, the repair is verified; up to `refine.depth` turns within
        `refine.budget` extra samples. All of it lands in one commit (a crash redoes the stage,
        with the same seeds, onto the same rows)."""
        started = time.perf_counter()
        refine, gen = self.config.refine, self.config.generate
        attempts = self.store.attempts(self.run_id, idx, "train")
        verdicts = self.store.verdicts(a.id for a in attempts)
        tasks = self.store.get_tasks({a.task_id for a in attempts})
        frontier = [a for a in attempts if a.depth == 0 and model_failure(verdicts[a.id])]
        model = ModelRef(base=self.config.model,
                         adapter=self.store.get_round(self.run_id, idx)["model_in"])
        new_attempts: list[Attempt] = []
        verdict_rows: list[tuple[str, str, Verdict, float]] = []
        critique_rows: list[tuple[str, Critique]] = []
        per_turn: list[dict[str, int]] = []
        sessions: list[Any] = []
        verify_seconds = 0.0

        def policy():  # opened on first use: a round with nothing to repair loads no model
            if not sessions:
                if model.adapter:
                    verify_checkpoint(model.adapter)
                backend = self.components.backend
                sessions.append(backend.component.open(model, backend.options))
            return sessions[0]

        critic_context = EngineCriticContext(policy, self.pm, _derive_seed(self.config.seed, idx,
                                                                            "critique"),
                                             gen.batch_size)
        try:
            for depth in range(1, refine.depth + 1):
                if refine.budget is not None:
                    frontier = frontier[: max(0, refine.budget - len(new_attempts))]
                if not frontier:
                    break
                critiques = self._critique(idx, frontier, tasks, verdicts, critic_context)
                critique_rows += [(a.id, c) for a in frontier for c in critiques[a.id]]
                prompts = [repair_messages(a, "\n".join(c.text for c in critiques[a.id]),
                                           refine.template) for a in frontier]
                sampling = Sampling(n=1, temperature=gen.temperature, top_p=gen.top_p,
                                    max_new_tokens=gen.max_new_tokens,
                                    seed=_derive_seed(self.config.seed, idx, f"refine-{depth}"))
                with self.reporter.stage(idx, f"refine {depth}", len(prompts)) as progress:
                    def advance(**counts: Any) -> None:
                        progress(**counts)
                        if counts.get("prompts"):
                            failpoint("refine.in_batch")

                    outputs = policy().generate(prompts, sampling, progress=advance,
                                                batch_size=gen.batch_size)
                children = [
                    Attempt(id=Attempt.make_id(self.run_id, idx, parent.task_id, "train",
                                               parent.sample_index, parent.id),
                            run_id=self.run_id, round_index=idx, task_id=parent.task_id,
                            purpose="train", sample_index=parent.sample_index,
                            parent_id=parent.id, depth=depth,
                            messages=[*prompt, {"role": "assistant", "content": out[0].text}],
                            completion=out[0].text, token_ids=out[0].token_ids,
                            prompt_tokens=out[0].prompt_tokens,
                            completion_tokens=out[0].completion_tokens,
                            finish_reason=out[0].finish_reason, logprobs=out[0].logprobs,
                            model_ref=str(model), seed=sampling.seed)
                    for parent, prompt, out in zip(frontier, prompts, outputs)
                ]
                verifying = time.perf_counter()
                rows = self._verify(idx, children, f"refine {depth}", tasks=tasks,
                                    show=False)
                verify_seconds += time.perf_counter() - verifying
                for attempt_id, name, verdict, _ in rows:
                    verdicts.setdefault(attempt_id, {})[name] = verdict
                new_attempts += children
                verdict_rows += rows
                repaired = sum(_passed(verdicts[c.id]) for c in children)
                per_turn.append({"depth": depth, "attempts": len(children), "repaired": repaired})
                frontier = [c for c in children if model_failure(verdicts[c.id])]
        finally:
            for session in sessions:
                session.close()
        with self._commit("refine"):
            self.store.insert_attempts(new_attempts)
            self.store.insert_verdicts(verdict_rows)
            self.store.insert_critiques(critique_rows)
            self.store.mark_stage(self.run_id, idx, "refine", {
                "seconds": time.perf_counter() - started, "count": len(new_attempts),
                "tokens": sum(a.completion_tokens for a in new_attempts),
                "repaired": sum(t["repaired"] for t in per_turn), "turns": per_turn,
                "critiques": len(critique_rows), "verify_seconds": verify_seconds,
                # no repair asked for: no model opened, no model time
                **(session_timing(sessions[0]) if sessions else {"model_seconds": 0.0})})

    def _critique(self, idx: int, failed: list[Attempt], tasks: dict[str, Task],
                  verdicts: dict[str, dict[str, Verdict]],
                  context: EngineCriticContext | None,
                  critics: list[Any] | None = None) -> dict[str, list[Critique]]:
        """Every configured critic on the failed attempts, each seeing the task without its
        reference (unless `task.hints`). A critic that fails or returns the wrong shape is
        reported in one line and contributes nothing; the round goes on."""
        out: dict[str, list[Critique]] = {a.id: [] for a in failed}
        views = [critic_view(tasks[a.task_id], verdicts[a.id], self.config.task.hints)
                 for a in failed]
        items = [(task, attempt, seen) for (task, seen), attempt in zip(views, failed)]
        for chosen in self.components.critics if critics is None else critics:
            try:
                results = call_plugin(chosen.component.critique_batch, None, items, context)
                results = list(results)
                if len(results) != len(items) or not all(
                        r is None or isinstance(r, Critique) for r in results):
                    raise PluginFailure("did not return one Critique or None per attempt")
            except PluginFailure as exc:
                self.reporter.warn(f"round {idx}: critic {chosen.name!r} (plugin "
                                   f"{chosen.plugin}) failed: {exc.reason}; no critique from it")
                continue
            for attempt, critique in zip(failed, results):
                if critique is not None and critique.text.strip():
                    out[attempt.id].append(critique.model_copy(update={"critic": chosen.name}))
        return out

    def stage_reward(self, idx: int) -> None:
        started = time.perf_counter()
        attempts = self.store.attempts(self.run_id, idx, "train")
        tasks = self.store.get_tasks({a.task_id for a in attempts})
        verdicts = self.store.verdicts(a.id for a in attempts)
        rows: list[tuple[str, str, float | None]] = []
        with self.reporter.stage(idx, "reward", len(self.components.rewards)) as progress:
            for name, fn in self.components.reward_fns.items():
                values = self._call_reward(name, fn, attempts, tasks, verdicts)
                rows += [(a.id, name, v) for a, v in zip(attempts, values)]
                progress(items=1)
        with self._commit("reward"):
            self.store.insert_rewards(rows)
            self.store.mark_stage(self.run_id, idx, "reward", {
                "seconds": time.perf_counter() - started, "count": len(rows)})

    def stage_mistakes(self, idx: int) -> None:
        """Fold the round's failures into the mistake log, one row per (task, kind).

        The kind is the verifier's `mistake`, or, when a classifying critic is configured (the
        `taxonomy` critic), that critic's kind for the attempt; it classifies failures the
        refine stage did not reach here, and those critiques are stored too."""
        started = time.perf_counter()
        attempts = self.store.attempts(self.run_id, idx, "train")
        verdicts = self.store.verdicts(a.id for a in attempts)
        kinds, new_critiques = self._classify(idx, attempts, verdicts)
        seen: dict[tuple[str, str], tuple[str, str, int]] = {}
        solved: set[str] = set()
        for attempt in attempts:
            by_verifier = verdicts[attempt.id]
            if _passed(by_verifier):
                solved.add(attempt.task_id)
                continue
            for verdict in by_verifier.values():
                if verdict.passed or verdict.error_kind not in (None, "model"):
                    continue  # infra/timeout failures are not the model's mistakes
                kind = kinds.get(attempt.id) or verdict.mistake or "wrong_answer"
                key = (attempt.task_id, kind)
                first, feedback, count = seen.get(key, (attempt.id, verdict.feedback, 0))
                seen[key] = (first, verdict.feedback or feedback, count + 1)
                if attempt.id in kinds:
                    break  # one classified kind per attempt, whatever the number of verifiers
        with self._commit("mistakes"):
            self.store.insert_critiques(new_critiques)
            counts = self.store.update_mistakes(self.run_id, idx, seen, solved)
            self.store.mark_stage(self.run_id, idx, "mistakes", {
                "seconds": time.perf_counter() - started, **counts})

    def _classify(self, idx: int, attempts: list[Attempt], verdicts: dict[str, dict[str, Verdict]]
                  ) -> tuple[dict[str, str], list[tuple[str, Critique]]]:
        """attempt id -> kind from the classifying critics (stored critiques first), and the
        critiques made here for failures that had none."""
        classifiers = [c for c in self.components.critics
                       if getattr(c.component, "classifies", False)]
        if not classifiers:
            return {}, []
        failed = [a for a in attempts if model_failure(verdicts[a.id])]
        stored = self.store.critiques(a.id for a in failed)
        names = {c.name for c in classifiers}
        kinds = {a.id: c.kind for a in failed for c in stored[a.id] if c.critic in names}
        todo = [a for a in failed if a.id not in kinds]
        if not todo:
            return kinds, []
        tasks = self.store.get_tasks({a.task_id for a in todo})
        made = self._critique(idx, todo, tasks, verdicts, None, classifiers)
        new = [(a.id, c) for a in todo for c in made[a.id]]
        for attempt_id, critique in new:
            kinds.setdefault(attempt_id, critique.kind)  # the first classifier's kind wins
        return kinds, new

    def stage_train(self, idx: int) -> None:
        started = time.perf_counter()
        samples = load_samples(self.store, self.run_id, idx,
                               [r.name for r in self.components.rewards])
        model_in = self.store.get_round(self.run_id, idx)["model_in"]
        if model_in:
            verify_checkpoint(model_in)
        final_dir = self.run_dir / f"round-{idx}" / "adapter"
        tmp_dir = self.run_dir / f"{TMP_PREFIX}round-{idx}-adapter"
        shutil.rmtree(tmp_dir, ignore_errors=True)  # leftovers of a killed earlier try
        tmp_dir.mkdir(parents=True)
        updater = self.components.updater
        with self.reporter.stage(idx, "train", None) as progress:
            context = UpdateContext(
                run_id=self.run_id, round_index=idx, samples=samples, base_model=self.config.model,
                adapter_in=model_in, output_dir=tmp_dir, config=self.config,
                options=updater.options, seed=_derive_seed(self.config.seed, idx, "train"),
                progress=progress, reward_names=[r.name for r in self.components.rewards],
            )
            try:
                result: UpdateResult | None = (
                    self._launched_update(context)
                    if self.config.train.launcher.name == "accelerate"
                    else updater.component.update(context))
            except EmptyDataset as exc:
                self.reporter.warn(f"round {idx}: no update ({exc}); the model stays as it was")
                result = None
        if result is None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            model_out, sha, metrics, size = model_in, None, {"skipped": "empty dataset"}, 0
        else:
            failpoint("train.after_update")
            sha = publish(Path(result.adapter_path), final_dir)
            shutil.rmtree(tmp_dir, ignore_errors=True)
            failpoint("train.after_rename")
            model_out, metrics = str(final_dir), result.metrics
            size = int(metrics.get("dataset_size", 0))
        seconds = time.perf_counter() - started
        with self._commit("train"):
            self.store.record_update(self.run_id, idx, updater.name, size, metrics,
                                     model_out if result else None, sha, seconds)
            self.store.mark_stage(self.run_id, idx, "train",
                                  {"seconds": seconds, "count": size,
                                   "tokens": int(metrics.get("train_tokens", 0)),
                                   **reported_timing(metrics)},
                                  model_out=model_out)

    def _launched_update(self, context: UpdateContext) -> UpdateResult:
        """The update in worker processes started by `train.launcher` (loop.train_worker); the
        checkpoint they write is published exactly like an in-process update's."""
        from loop.train_worker import launch_update

        return launch_update(context, self.config.train.launcher, store=self.store, pm=self.pm,
                             log_path=self.run_dir / f"round-{context.round_index}" / "train.log",
                             warn=self.reporter.warn)

    def stage_evaluate(self, idx: int) -> None:
        """Greedy pass@1 on the held-out split with the round's final model."""
        eval_tasks = self.tasks.eval[: self.config.evaluate.problems or None]
        self.store.upsert_tasks(eval_tasks)
        ev = self.config.evaluate
        sampling = Sampling(n=1, temperature=0.0, max_new_tokens=ev.max_new_tokens,
                            seed=_derive_seed(self.config.seed, idx, "evaluate"))
        attempts, stats = self._sample(idx, eval_tasks, sampling, "eval", "evaluate",
                                       ev.batch_size, model=self._model_after(idx))
        started = time.perf_counter()
        by_task = {t.id: t for t in eval_tasks}
        rows = self._verify(idx, attempts, "evaluate", tasks=by_task, show=False)
        stats["verify_seconds"] = time.perf_counter() - started
        verdicts: dict[str, dict[str, Verdict]] = {}
        for attempt_id, name, verdict, _ in rows:
            verdicts.setdefault(attempt_id, {})[name] = verdict
        passed = sum(_passed(verdicts.get(a.id, {})) for a in attempts)
        truncated = sum(a.finish_reason == "length" for a in attempts)
        mean_tokens = sum(a.completion_tokens for a in attempts) / max(1, len(attempts))
        stats["seconds"] += time.perf_counter() - started
        with self._commit("evaluate"):
            self.store.insert_attempts(attempts)
            self.store.insert_verdicts(rows)
            self.store.record_evaluation(self.run_id, idx, "eval", len(attempts), passed,
                                         truncated, mean_tokens, stats["seconds"])
            self.store.mark_stage(self.run_id, idx, "evaluate", stats)

    # ----- helpers --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _commit(self, stage: str) -> Iterator[None]:
        """The transaction that lands a stage's rows with its completion marker."""
        failpoint(f"{stage}.before_commit")
        with self.store.transaction():
            yield
        failpoint(f"{stage}.after_commit")

    def _notify(self, hook_name: str, **kwargs: Any) -> None:
        """Call an observer hook on every plugin; a failing observer is reported, not fatal."""
        if self.pm is None:
            return
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            try:
                impl.function(**{k: kwargs[k] for k in impl.argnames})
            except Exception as exc:
                self.reporter.warn(f"plugin {impl.plugin_name!r} failed in {hook_name}: "
                                   f"{type(exc).__name__}: {exc}")

    def _load_tasks(self) -> TaskSet:
        source = self.components.task_source
        return source.component.load(source.options, self.config.seed)

    def _done_stages(self, idx: int) -> set[str]:
        row = self.store.get_round(self.run_id, idx)
        return set(json.loads(row["stages_json"] or "{}"))

    def _stage_stats(self, idx: int, stage: str) -> dict:
        row = self.store.get_round(self.run_id, idx)
        return json.loads(row["stages_json"])[stage]

    def _model_after(self, idx: int) -> ModelRef:
        row = self.store.get_round(self.run_id, idx)
        adapter = row["model_out"] if idx > 0 else None
        return ModelRef(base=self.config.model, adapter=adapter)

    def _sample(self, idx: int, tasks: list[Task], sampling: Sampling, purpose: str, stage: str,
                batch_size: int, model: ModelRef | None = None) -> tuple[list[Attempt], dict]:
        if model is None:
            row = self.store.get_round(self.run_id, idx)
            model = ModelRef(base=self.config.model, adapter=row["model_in"])
        if model.adapter:
            verify_checkpoint(model.adapter)  # never generate with a torn checkpoint
        backend = self.components.backend
        started = time.perf_counter()
        with self.reporter.stage(idx, stage, len(tasks)) as progress:

            def advance(**counts: Any) -> None:
                progress(**counts)
                if counts.get("prompts"):
                    failpoint(f"{stage}.in_batch")

            session = backend.component.open(model, backend.options)
            try:
                generations = session.generate([t.prompt for t in tasks], sampling,
                                               progress=advance, batch_size=batch_size)
            finally:
                session.close()
        seconds = time.perf_counter() - started
        timing = session_timing(session)
        attempts = []
        for task, samples in zip(tasks, generations):
            for k, g in enumerate(samples):
                attempts.append(Attempt(
                    id=Attempt.make_id(self.run_id, idx, task.id, purpose, k),
                    run_id=self.run_id, round_index=idx, task_id=task.id, purpose=purpose,
                    sample_index=k, messages=[*task.prompt, {"role": "assistant", "content": g.text}],
                    completion=g.text, token_ids=g.token_ids, prompt_tokens=g.prompt_tokens,
                    completion_tokens=g.completion_tokens, finish_reason=g.finish_reason,
                    logprobs=g.logprobs, model_ref=str(model), seed=sampling.seed,
                ))
        tokens = sum(a.completion_tokens for a in attempts)
        stats = {"seconds": seconds, "count": len(attempts), "tokens": tokens,
                 "truncated": sum(a.finish_reason == "length" for a in attempts), **timing}
        return attempts, stats

    def _verify(self, idx: int, attempts: list[Attempt], stage: str,
                tasks: dict[str, Task] | None = None,
                show: bool = True) -> list[tuple[str, str, Verdict, float]]:
        tasks = tasks or self.store.get_tasks({a.task_id for a in attempts})
        rows = []
        context = self.reporter.stage(idx, stage if show else f"{stage}:verify", len(attempts))
        with context as progress:
            for start in range(0, len(attempts), VERIFY_CHUNK):
                chunk = attempts[start:start + VERIFY_CHUNK]
                items = [(tasks[a.task_id], a) for a in chunk]
                by_verifier = []
                for chosen in self.components.verifiers:
                    t0 = time.perf_counter()
                    verdicts = safe_verify_batch(chosen, items, self.config.verify.timeout_s)
                    each_ms = (time.perf_counter() - t0) * 1e3 / len(chunk)
                    by_verifier.append((chosen.name, verdicts, each_ms))
                for i, attempt in enumerate(chunk):
                    rows.extend((attempt.id, name, verdicts[i], ms)
                                for name, verdicts, ms in by_verifier)
                    progress(items=1)
                    if stage == "verify":
                        failpoint("verify.in_batch")
        return rows

    def _call_reward(self, name: str, fn: Callable, attempts: list[Attempt],
                     tasks: dict[str, Task], verdicts: dict[str, dict[str, Verdict]]
                     ) -> list[float | None]:
        """Call a reward function with TRL's contract. A failure (exception, exit, timeout, a
        list of the wrong length) gives None for every item; a non-number or non-finite value
        gives None for that item. Each problem is reported in one line naming the reward."""
        kwargs = dict(
            prompts=[tasks[a.task_id].prompt for a in attempts],
            completions=[[{"role": "assistant", "content": a.completion}] for a in attempts],
            completion_ids=[a.token_ids for a in attempts],
            tasks=[tasks[a.task_id] for a in attempts],
            attempts=attempts,
            verdicts=[verdicts[a.id] for a in attempts],
            reference=[tasks[a.task_id].reference for a in attempts],
        )
        plugin = next(r.plugin for r in self.components.rewards if r.name == name)
        try:
            values = call_plugin(fn, self.config.verify.timeout_s * max(1, len(attempts)),
                                 **kwargs)
            values = list(values)
            if len(values) != len(attempts):
                raise PluginFailure(f"returned {len(values)} values for {len(attempts)} "
                                    "completions")
        except (PluginFailure, TypeError) as exc:
            reason = exc.reason if isinstance(exc, PluginFailure) else f"returned {exc}"
            self.reporter.warn(f"reward {name!r} (plugin {plugin}) failed: {reason}; its rewards "
                               "for this round are NULL")
            return [None] * len(attempts)
        out: list[float | None] = []
        for attempt, value in zip(attempts, values):
            number = _finite(value)
            if number is None and value is not None:
                self.reporter.warn(f"reward {name!r} (plugin {plugin}) on attempt {attempt.id}: "
                                   f"{value!r} is not a finite number; stored NULL")
            out.append(number)
        return out

    def summary(self, idx: int) -> dict:
        from loop.summary import round_summary

        return round_summary(self.store, self.run_id, idx)


def session_timing(session: Any) -> dict[str, float]:
    """A generation session's own `load_seconds`/`model_seconds`, where it reports them."""
    return reported_timing({k: getattr(session, k, None) for k in ("load_seconds", "model_seconds")})


def reported_timing(reported: dict) -> dict[str, float]:
    """The time split a component reports (a session's attributes, an updater's metrics):
    `load_seconds` (loading the model) and `model_seconds` (in the model; an updater's
    `train_seconds`, the time inside its optimizer loop). Missing or bad values are left out."""
    timing = {}
    for key, source in (("load_seconds", "load_seconds"), ("model_seconds", "model_seconds"),
                        ("model_seconds", "train_seconds")):
        value = _finite(reported.get(source))
        if value is not None and value >= 0 and key not in timing:
            timing[key] = value
    return timing


def safe_verify_batch(chosen: Any, items: list[tuple[Task, Attempt]],
                      timeout_s: float | None = None) -> list[Verdict]:
    """One Verdict per item. A verifier that keeps the default `verify_batch` is called item by
    item (safe_verify), so one bad item never costs its neighbours their verdicts; an overridden
    `verify_batch` gets the whole chunk, and if it fails (or returns the wrong number of
    verdicts) every item of the chunk gets an `infra` verdict naming the reason."""
    component = chosen.component
    if type(component).verify_batch is Verifier.verify_batch:
        return [safe_verify(chosen, task, attempt, timeout_s) for task, attempt in items]
    try:
        verdicts = call_plugin(component.verify_batch,
                               None if timeout_s is None else timeout_s * len(items), items)
        verdicts = list(verdicts)
        if len(verdicts) != len(items):
            raise PluginFailure(f"verify_batch returned {len(verdicts)} verdicts for "
                                f"{len(items)} items")
    except (PluginFailure, TypeError) as exc:
        reason = exc.reason if isinstance(exc, PluginFailure) else f"returned {exc}"
        kind = "timeout" if isinstance(exc, PluginFailure) and exc.timed_out else "infra"
        return [Verdict(passed=False, error_kind=kind,
                        feedback=f"verifier {chosen.name!r} (plugin {chosen.plugin}) on attempt "
                                 f"{attempt.id}: {reason}") for _, attempt in items]
    return [v if isinstance(v, Verdict) else Verdict(
        passed=False, error_kind="infra",
        feedback=f"verifier {chosen.name!r} (plugin {chosen.plugin}) on attempt {attempt.id}: "
                 f"returned {type(v).__name__}, not a Verdict")
        for v, (_, attempt) in zip(verdicts, items)]


def safe_verify(chosen: Any, task: Task, attempt: Attempt,
                timeout_s: float | None = None) -> Verdict:
    """Run one verifier; an exception, `sys.exit`, a hang past `timeout_s` or a wrong return type
    becomes an `infra` (or `timeout`) verdict naming the plugin, the attempt and the reason, so a
    broken verifier never crashes the round nor penalises the model."""
    try:
        verdict = call_plugin(chosen.component.verify, timeout_s, task, attempt)
        if not isinstance(verdict, Verdict):
            raise PluginFailure(f"returned {type(verdict).__name__}, not a Verdict")
        return verdict
    except PluginFailure as exc:
        return Verdict(passed=False, score=0.0, error_kind="timeout" if exc.timed_out else "infra",
                       feedback=f"verifier {chosen.name!r} (plugin {chosen.plugin}) on attempt "
                                f"{attempt.id}: {exc.reason}")


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def load_samples(store: Store, run_id: str, idx: int, reward_names: list[str]) -> list[Sample]:
    """The round's train attempts as an updater sees them: task, attempt, verdicts folded into
    pass/score (every verifier must pass; the score is the lowest), and each reward's value."""
    attempts = store.attempts(run_id, idx, "train")
    tasks = store.get_tasks({a.task_id for a in attempts})
    verdicts = store.verdicts(a.id for a in attempts)
    rewards = store.rewards(a.id for a in attempts)
    first = reward_names[0] if reward_names else None
    return [
        Sample(task=tasks[a.task_id], attempt=a, passed=_passed(verdicts[a.id]),
               score=min((v.score for v in verdicts[a.id].values()), default=0.0),
               reward=rewards[a.id].get(first) if first else None,
               rewards={name: rewards[a.id].get(name) for name in reward_names})
        for a in attempts
    ]


def _passed(verdicts: dict[str, Verdict]) -> bool:
    return bool(verdicts) and all(v.passed for v in verdicts.values())


def _derive_seed(seed: int, idx: int, stage: str) -> int:
    return int(hashlib.sha256(f"{seed}:{idx}:{stage}".encode()).hexdigest()[:8], 16)

