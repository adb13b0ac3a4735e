"""The round engine: one run is round 0 (evaluate the untouched model) and then rounds of

    select → generate → verify → refine → reward → mistakes → train → evaluate

Each stage reads what earlier stages stored, does its work, and lands its rows together with its
completion marker in one transaction (`_landing`). A round's finished stages are listed in
`rounds.stages_json`; running a round again (after a crash) skips them, and deterministic row ids
make re-done work land on the same rows. Plugins are reached only through the resolved
`Components` and the guarded calls of loop.guarded: an exception inside a verifier, reward
function or critic becomes an `infra` verdict, a None reward or a warning, never a crashed round.
`refine` (critics explain failures, the model repairs its answers) is a no-op unless
`refine.depth` > 0; its parts are in loop.refine. A round's evaluation and the next round's
generation sample from the same checkpoint through one backend session (loop.kept_session).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Protocol

from loop.checkpoints import (CheckpointError, checkpoint_space, publish, remove_temporary,
                              scratch_path)
from loop.checkpoints import verify as verify_checkpoint
from loop.config import LoopConfig
from loop.episodes import EpisodeResult, EpisodeSettings, episode_stats, run_episodes
from loop.failpoints import failpoint
# Through their modules, not by name: safe_verify_batch and EmptyDataset moved out of this module,
# and `from loop.rounds import ...` must keep reaching its __getattr__ (a DeprecationWarning).
import loop.guarded
import loop.updates
from loop.guarded import call_critic, call_reward, notify
from loop.kept_session import KeptSession, usage
from loop.refine import EngineCriticContext, critic_view, model_failure, repair_messages
from loop.resolve import Components
from loop.schema import (
    Attempt,
    Critique,
    Generation,
    Message,
    ModelRef,
    Sampling,
    Task,
    TaskSet,
    UpdateResult,
    Verdict,
)
from loop.search_index import refresh as refresh_search_index
from loop.selection import choose_prompts, drops_equal_groups, with_hint
from loop.stage_order import ROUND0_STAGES, TRAIN_STAGES
from loop.store import Store
from loop.timing import reported_timing
from loop.updates import derive_seed, passed, update_context

# Stages that sample from the model (or, select, touch only the store): the session of one
# stays open for the next while they run on the same model. Any other stage starts by closing it.
SAMPLING_STAGES = ("select", "generate", "refine", "evaluate")

# Attempts handed to a verifier's verify_batch at once: enough to keep parallel workers busy,
# few enough that progress moves and a chunk's timeout stays meaningful.
VERIFY_CHUNK = 32

VerdictRow = tuple[str, str, Verdict, float]  # attempt id, verifier, verdict, ms per item


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
class RoundEngine:
    """Runs a run's rounds over the store. `model_path` is what the backend's `prepare()` made
    of the config's model (updaters get it as `UpdateContext.model_path`)."""

    store: Store
    config: LoopConfig
    components: Components
    run_id: str
    run_dir: Path
    reporter: Any = field(default_factory=NullReporter)
    pm: Any = None
    tasks: TaskSet | None = None
    model_path: str = ""
    # the session kept from the last sampling stage, for the next one on the same model
    sessions: KeptSession = field(init=False)

    def __post_init__(self) -> None:
        self.sessions = KeptSession(self._open)

    # ----- the run --------------------------------------------------------------------------

    def run(self) -> None:
        """Run (or continue) every round of the config, in order."""
        if self.tasks is None:
            source = self.components.task_source
            self.tasks = source.component.load(source.options, self.config.seed)
        try:
            for idx in range(self.config.rounds + 1):
                self.run_round(idx)
        finally:
            self.sessions.release()

    def run_round(self, idx: int) -> dict:
        previous = self.store.get_round(self.run_id, idx - 1) if idx > 0 else None
        row = self.store.ensure_round(self.run_id, idx, previous["model_out"] if previous else None)
        if row["stage"] == "done":
            return self.summary(idx)
        clock = time.perf_counter()
        resumed = bool(self._done_stages(idx))  # then this clock sees only part of the round
        self._notify("round_started", run_id=self.run_id, round_index=idx, config=self.config)
        failpoint("round.start")
        for stage in ROUND0_STAGES if idx == 0 else TRAIN_STAGES:
            if stage not in self._done_stages(idx):
                if stage not in SAMPLING_STAGES:  # its plugins (the trainer) get the memory
                    self.sessions.release()
                self.STAGES[stage](self, idx)
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
        fresh training tasks; retired tasks stay out; with `select.curriculum` on, tasks solved
        sometimes first and solved ones skipped (loop.selection). The choice depends only on
        earlier rounds' stored rows and the seed, and lands with the stage: a resumed round
        samples the stored task ids, a redone stage chooses the same ones."""
        started = time.perf_counter()
        select = self.config.select
        groups = select.curriculum.enabled and drops_equal_groups(
            select.curriculum.groups, self.components.updater.component)
        choice = choose_prompts(self.tasks.train, self.store.task_history(self.run_id),
                                self.store.open_mistake_counts(self.run_id), select,
                                derive_seed(self.config.seed, idx, "select"), groups=groups)
        if choice.reused:
            self.reporter.warn(f"round {idx}: only {len(choice.tasks) - len(choice.reused)} "
                               "unused training prompts left; reusing earlier ones")
        with self._landing(idx, "select", started) as stats:
            self.store.upsert_tasks(choice.tasks)
            stats.update(count=len(choice.tasks), task_ids=[t.id for t in choice.tasks],
                         replayed=choice.replayed, hinted=choice.hinted,
                         retired=len(choice.retired))
            if select.curriculum.enabled:
                stats["curriculum"] = {"frontier": choice.frontier,
                                       "skipped": len(choice.skipped), "groups": groups,
                                       "extra": choice.extra}

    def stage_generate(self, idx: int) -> None:
        """Sample `generate.n` answers for each selected prompt with the round's input model."""
        chosen = self._stage_stats(idx, "select")
        task_ids, hinted = chosen["task_ids"], set(chosen.get("hinted", []))
        tasks = self.store.get_tasks(task_ids)
        share = self.config.select.hint_share
        ordered = [with_hint(tasks[i], share) if i in hinted else tasks[i] for i in task_ids]
        gen = self.config.generate
        sampling = Sampling(n=gen.n, temperature=gen.temperature, top_p=gen.top_p,
                            max_new_tokens=gen.max_new_tokens,
                            seed=derive_seed(self.config.seed, idx, "generate"))
        attempts, stats = self._sample(idx, ordered, sampling, "train", "generate", gen.batch_size,
                                       self._model_in(idx))
        with self._landing(idx, "generate") as landing:
            self.store.insert_attempts(attempts)
            landing.update(stats)

    def stage_verify(self, idx: int) -> None:
        """Every verifier on every fresh answer of the round. On resume after infra failures only
        the answers without a verdict from each verifier are checked again."""
        started = time.perf_counter()
        attempts = [a for a in self.store.attempts(self.run_id, idx, "train") if a.depth == 0]
        done = self.store.verdicts(a.id for a in attempts)
        wanted = {c.name for c in self.components.verifiers}
        attempts = [a for a in attempts if not wanted <= set(done[a.id])]
        rows = self._verify(idx, attempts, "verify")
        with self._landing(idx, "verify", started) as stats:
            self.store.insert_verdicts(rows)
            stats["count"] = len(rows)

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
        model = self._model_in(idx)
        new_attempts: list[Attempt] = []
        verdict_rows: list[VerdictRow] = []
        critique_rows: list[tuple[str, Critique]] = []
        per_turn: list[dict[str, int]] = []
        sessions: list[Any] = []  # [(session, its timing when taken)] once taken
        verify_seconds = 0.0

        def policy():  # taken on first use: a round with nothing to repair loads no model
            if not sessions:
                sessions.append(self.sessions.take(model))
            return sessions[0][0]

        critic_context = EngineCriticContext(policy, self.pm,
                                             derive_seed(self.config.seed, idx, "critique"),
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
                                    seed=derive_seed(self.config.seed, idx, f"refine-{depth}"))
                with self.reporter.stage(idx, f"refine {depth}", len(prompts)) as progress:
                    outputs = policy().generate(prompts, sampling,
                                                progress=self._advance(progress, "refine"),
                                                batch_size=gen.batch_size)
                children = [self._attempt(idx, parent.task_id, "train", parent.sample_index,
                                          prompt, out[0], model, sampling.seed, parent)
                            for parent, prompt, out in zip(frontier, prompts, outputs)]
                verifying = time.perf_counter()
                rows = self._verify(idx, children, f"refine {depth}", tasks=tasks, show=False)
                verify_seconds += time.perf_counter() - verifying
                for attempt_id, name, verdict, _ in rows:
                    verdicts.setdefault(attempt_id, {})[name] = verdict
                new_attempts += children
                verdict_rows += rows
                repaired = sum(passed(verdicts[c.id]) for c in children)
                per_turn.append({"depth": depth, "attempts": len(children), "repaired": repaired})
                frontier = [c for c in children if model_failure(verdicts[c.id])]
        except BaseException:
            for session, _ in sessions:
                self.sessions.discard(session)
            raise
        for session, _ in sessions:
            self.sessions.keep(model, session)
        with self._landing(idx, "refine", started) as stats:
            self.store.insert_attempts(new_attempts)
            self.store.insert_verdicts(verdict_rows)
            self.store.insert_critiques(critique_rows)
            stats.update(
                count=len(new_attempts), tokens=sum(a.completion_tokens for a in new_attempts),
                repaired=sum(t["repaired"] for t in per_turn), turns=per_turn,
                critiques=len(critique_rows), verify_seconds=verify_seconds,
                # no repair asked for: no model opened, no model time
                **(usage(*sessions[0]) if sessions else {"model_seconds": 0.0}))

    def stage_reward(self, idx: int) -> None:
        """Every reward function on every train answer of the round (TRL's contract)."""
        started = time.perf_counter()
        attempts = self.store.attempts(self.run_id, idx, "train")
        tasks = self.store.get_tasks({a.task_id for a in attempts})
        verdicts = self.store.verdicts(a.id for a in attempts)
        rows: list[tuple[str, str, float | None]] = []
        failures: dict[str, list[str]] = {}
        with self.reporter.stage(idx, "reward", len(self.components.rewards)) as progress:
            for chosen in self.components.rewards:
                failed: list[str] = []
                values = call_reward(chosen, attempts, tasks, verdicts,
                                     self.config.verify.timeout_s, self.reporter.warn, failed)
                rows += [(a.id, chosen.name, v) for a, v in zip(attempts, values)]
                if failed:
                    failures[chosen.name] = failed
                progress(items=1)
        with self._landing(idx, "reward", started) as stats:
            self.store.insert_rewards(rows)
            stats["count"] = len(rows)
            # the values each reward function failed to give (loop show's reward errors), apart
            # from the NULLs it returned itself (not applicable: e.g. on an infra verdict)
            stats["failures"] = {name: len(reasons) for name, reasons in failures.items()}
            if failures:
                stats["failure_reasons"] = {name: reasons[0] for name, reasons in failures.items()}

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
            if passed(by_verifier):
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
        with self._landing(idx, "mistakes", started) as stats:
            self.store.insert_critiques(new_critiques)
            stats.update(self.store.update_mistakes(self.run_id, idx, seen, solved))

    def stage_train(self, idx: int) -> None:
        """The update method on the round's samples; its checkpoint is published atomically
        (loop.checkpoints) before the `updates` row names it. An EmptyDataset keeps the model."""
        started = time.perf_counter()
        model_in = self.store.get_round(self.run_id, idx)["model_in"]
        if model_in:
            verify_checkpoint(model_in)
        final_dir = self.run_dir / f"round-{idx}" / "adapter"
        tmp_dir = scratch_path(self.run_dir, f"round-{idx}-adapter")
        shutil.rmtree(tmp_dir, ignore_errors=True)  # leftovers of a killed earlier try
        tmp_dir.mkdir(parents=True)
        updater = self.components.updater
        with self.reporter.stage(idx, "train", None) as progress:
            context = update_context(self.store, self.config, self.run_id, idx,
                                     options=updater.options, output_dir=tmp_dir,
                                     reward_names=[r.name for r in self.components.rewards],
                                     model_path=self.model_path, progress=progress)
            try:
                with checkpoint_space(tmp_dir):  # no space: a DiskFull naming the folder
                    result: UpdateResult | None = (
                        self._launched_update(context)
                        if self.config.train.launcher.name == "accelerate"
                        else updater.component.update(context))
            except loop.updates.EmptyDataset as exc:
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
        with self._landing(idx, "train", started, model_out=model_out) as stats:
            self.store.record_update(self.run_id, idx, updater.name, size, metrics,
                                     model_out if result else None, sha, seconds)
            stats.update(seconds=seconds, count=size,
                         tokens=int(metrics.get("train_tokens", 0)), **reported_timing(metrics))

    def stage_evaluate(self, idx: int) -> None:
        """Greedy pass@1 on the held-out split with the round's final model; with
        `evaluate.samples` n > 0 also n sampled answers per problem and pass@k for each k of
        `evaluate.pass_k` (the unbiased estimator, loop.pass_at_k). Sampled answers are `eval`
        attempts numbered from sample_index 1 (the greedy answer is 0), so they never enter
        pass@1, and like every held-out answer they are never trained on or selected. Both
        passes land in the stage's one commit, each with its own derived seed, so a redone
        stage stores the same rows."""
        eval_tasks = self.tasks.eval[: self.config.evaluate.problems or None]
        by_id = {t.id: t for t in eval_tasks}
        self.store.upsert_tasks(eval_tasks)
        ev = self.config.evaluate
        model = self._model_after(idx)
        sampling = Sampling(n=1, temperature=0.0, max_new_tokens=ev.max_new_tokens,
                            seed=derive_seed(self.config.seed, idx, "evaluate"))
        attempts, stats = self._sample(idx, eval_tasks, sampling, "eval", "evaluate",
                                       ev.batch_size, model)
        started = time.perf_counter()
        rows = self._verify(idx, attempts, "evaluate", tasks=by_id, show=False)
        stats["verify_seconds"] = time.perf_counter() - started
        verdicts: dict[str, dict[str, Verdict]] = {}
        for attempt_id, name, verdict, _ in rows:
            verdicts.setdefault(attempt_id, {})[name] = verdict
        solved = sum(passed(verdicts.get(a.id, {})) for a in attempts)
        truncated = sum(a.finish_reason == "length" for a in attempts)
        mean_tokens = sum(a.completion_tokens for a in attempts) / max(1, len(attempts))
        stats["seconds"] += time.perf_counter() - started
        sampled: list[Attempt] = []
        sampled_rows: list[VerdictRow] = []
        pass_k: dict[int, float] = {}
        temperature = (self.config.generate.temperature if ev.temperature is None
                       else ev.temperature)
        if ev.samples:
            from loop.pass_at_k import mean_pass_at_k

            gen = self.config.generate
            sampling = Sampling(n=ev.samples, temperature=temperature, top_p=gen.top_p,
                                max_new_tokens=ev.max_new_tokens,
                                seed=derive_seed(self.config.seed, idx, "evaluate-samples"))
            drawn, more = self._sample(idx, eval_tasks, sampling, "eval", "evaluate-samples",
                                       ev.batch_size, model)
            # _sample numbers a task's answers from 0, the greedy answer's number (and id)
            sampled = [a.model_copy(update={
                "sample_index": a.sample_index + 1,
                "id": Attempt.make_id(self.run_id, idx, a.task_id, "eval", a.sample_index + 1)})
                for a in drawn]
            started = time.perf_counter()
            sampled_rows = self._verify(idx, sampled, "evaluate-samples", tasks=by_id,
                                        show=False)
            sampled_verdicts: dict[str, dict[str, Verdict]] = {}
            for attempt_id, name, verdict, _ in sampled_rows:
                sampled_verdicts.setdefault(attempt_id, {})[name] = verdict
            counts = {t.id: [0, 0] for t in eval_tasks}  # task -> [samples, passed]
            for a in sampled:
                counts[a.task_id][0] += 1
                counts[a.task_id][1] += passed(sampled_verdicts.get(a.id, {}))
            pass_k = {k: mean_pass_at_k([(n, c) for n, c in counts.values()], k)
                      for k in ev.ks}
            verify_seconds = time.perf_counter() - started
            more["seconds"] += verify_seconds
            stats["samples"] = {"count": more["count"], "tokens": more["tokens"],
                                "truncated": more["truncated"], "seconds": more["seconds"]}
            # the stage's totals cover both passes (loop show's time and tokens/s)
            stats["verify_seconds"] += verify_seconds
            for key in ("seconds", "tokens", "model_seconds", "load_seconds"):
                if key in more or key in stats:
                    stats[key] = stats.get(key, 0) + more.get(key, 0)
        with self._landing(idx, "evaluate") as landing:
            self.store.insert_attempts([*attempts, *sampled])
            self.store.insert_verdicts([*rows, *sampled_rows])
            self.store.record_evaluation(self.run_id, idx, "eval", len(attempts), solved,
                                         truncated, mean_tokens, stats["seconds"])
            if ev.samples:
                self.store.record_pass_at_k(self.run_id, idx, "eval", ev.samples, temperature,
                                            pass_k)
            landing.update(stats)

    # The stage path: run_round calls these by name, in loop.stage_order's order.
    STAGES: ClassVar[dict[str, Callable[["RoundEngine", int], None]]] = {
        "select": stage_select, "generate": stage_generate, "verify": stage_verify,
        "refine": stage_refine, "reward": stage_reward, "mistakes": stage_mistakes,
        "train": stage_train, "evaluate": stage_evaluate,
    }

    # ----- helpers --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _landing(self, idx: int, stage: str, started: float | None = None,
                 **mark: Any) -> Iterator[dict]:
        """The transaction that lands a stage's rows with its completion marker. The body writes
        the rows and fills the yielded stats; `seconds` since `started` is added unless the body
        set it, and the stage is marked done in the same transaction (`mark`: extra columns of
        the round row, e.g. `model_out`). Fail points before and after the commit."""
        failpoint(f"{stage}.before_commit")
        stats: dict[str, Any] = {}
        with self.store.transaction():
            yield stats
            if started is not None:
                stats.setdefault("seconds", time.perf_counter() - started)
            self.store.mark_stage(self.run_id, idx, stage, {"seconds": stats.pop("seconds"),
                                                            **stats}, **mark)
        failpoint(f"{stage}.after_commit")

    def _notify(self, hook_name: str, **kwargs: Any) -> None:
        notify(self.pm, hook_name, self.reporter.warn, **kwargs)

    def _done_stages(self, idx: int) -> set[str]:
        row = self.store.get_round(self.run_id, idx)
        return set(json.loads(row["stages_json"] or "{}"))

    def _stage_stats(self, idx: int, stage: str) -> dict:
        row = self.store.get_round(self.run_id, idx)
        return json.loads(row["stages_json"])[stage]

    def _model_in(self, idx: int) -> ModelRef:
        """The model the round starts from (the previous round's checkpoint)."""
        adapter = self.store.get_round(self.run_id, idx)["model_in"]
        return ModelRef(base=self.config.model, adapter=adapter)

    def _model_after(self, idx: int) -> ModelRef:
        """The round's final model (round 0: the untouched base)."""
        adapter = self.store.get_round(self.run_id, idx)["model_out"] if idx > 0 else None
        return ModelRef(base=self.config.model, adapter=adapter)

    def _open(self, model: ModelRef) -> Any:
        """A backend session on `model`; never with a torn checkpoint."""
        if model.adapter:
            verify_checkpoint(model.adapter)
        backend = self.components.backend
        return backend.component.open(model, backend.options)

    def _advance(self, progress: Any, stage: str) -> Callable[..., None]:
        """The backend's progress callback: the stage's bar, and the stage's in-batch fail point
        after every finished prompt."""
        def advance(**counts: Any) -> None:
            progress(**counts)
            if counts.get("prompts"):
                failpoint(f"{stage}.in_batch")
        return advance

    def _attempt(self, idx: int, task_id: str, purpose: str, sample_index: int,
                 prompt: list[Message], generation: Generation, model: ModelRef, seed: int,
                 parent: Attempt | None = None) -> Attempt:
        """The stored Attempt of one generation: its conversation is `prompt` plus the answer; a
        repair links to the `parent` it repairs, one turn deeper."""
        return Attempt(
            id=Attempt.make_id(self.run_id, idx, task_id, purpose, sample_index,
                               parent.id if parent else None),
            run_id=self.run_id, round_index=idx, task_id=task_id, purpose=purpose,
            sample_index=sample_index, parent_id=parent.id if parent else None,
            depth=parent.depth + 1 if parent else 0,
            messages=[*prompt, {"role": "assistant", "content": generation.text}],
            completion=generation.text, token_ids=generation.token_ids,
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens,
            finish_reason=generation.finish_reason, logprobs=generation.logprobs,
            model_ref=str(model), seed=seed)

    def _sample(self, idx: int, tasks: list[Task], sampling: Sampling, purpose: str, stage: str,
                batch_size: int, model: ModelRef) -> tuple[list[Attempt], dict]:
        """`sampling.n` answers per task from `model`, as Attempts, and the stage's stats. With
        an environment, each answer is an episode (loop.episodes)."""
        started = time.perf_counter()
        with self.reporter.stage(idx, stage, len(tasks)) as progress:
            session, since = self.sessions.take(model)
            try:
                if self.components.environment is not None:
                    episodes = run_episodes(session, self.components.environment.component,
                                            tasks, sampling, self._episode_settings(),
                                            batch_size=batch_size,
                                            progress=self._advance(progress, stage), stage=stage)
                else:
                    generations = session.generate([t.prompt for t in tasks], sampling,
                                                   progress=self._advance(progress, stage),
                                                   batch_size=batch_size)
            except BaseException:
                self.sessions.discard(session)
                raise
            self.sessions.keep(model, session)
        seconds = time.perf_counter() - started
        if self.components.environment is not None:
            attempts = [self._episode_attempt(idx, task.id, purpose, k, e, model, sampling.seed)
                        for task, samples in zip(tasks, episodes) for k, e in enumerate(samples)]
        else:
            attempts = [self._attempt(idx, task.id, purpose, k, task.prompt, g, model,
                                      sampling.seed)
                        for task, samples in zip(tasks, generations)
                        for k, g in enumerate(samples)]
        stats = {"seconds": seconds, "count": len(attempts),
                 "tokens": sum(a.completion_tokens for a in attempts),
                 "truncated": sum(a.finish_reason == "length" for a in attempts),
                 **usage(session, since)}
        if self.components.environment is not None:
            stats["episodes"] = episode_stats(attempts)
        return attempts, stats

    def _episode_settings(self) -> EpisodeSettings:
        env = self.components.environment
        ref = self.config.task.environment
        return EpisodeSettings(max_turns=ref.max_turns or env.component.max_turns,
                               max_tokens=ref.max_tokens, tool_timeout_s=ref.tool_timeout_s,
                               environment=env.name)

    def _episode_attempt(self, idx: int, task_id: str, purpose: str, sample_index: int,
                         episode: EpisodeResult, model: ModelRef, seed: int) -> Attempt:
        """The stored Attempt of one episode (see loop.schema.Attempt for what each field holds
        for an episode)."""
        model_turns = [t for t in episode.turns if t.role == "assistant"]
        token_ids = [i for t in episode.turns for i in t.token_ids]
        logprobs = None
        if model_turns and all(t.logprobs is not None for t in model_turns):
            logprobs = [lp for t in episode.turns
                        for lp in (t.logprobs if t.trained else [0.0] * len(t.token_ids))]
        cut = bool(model_turns) and model_turns[-1].finish_reason == "length"
        return Attempt(
            id=Attempt.make_id(self.run_id, idx, task_id, purpose, sample_index),
            run_id=self.run_id, round_index=idx, task_id=task_id, purpose=purpose,
            sample_index=sample_index, messages=episode.messages,
            completion=episode.completion, token_ids=token_ids,
            prompt_tokens=len(episode.prompt_ids),
            completion_tokens=sum(len(t.token_ids) for t in model_turns),
            finish_reason="length" if cut or episode.end_reason == "budget" else "stop",
            logprobs=logprobs, model_ref=str(model), seed=seed, turns=episode.turns,
            prompt_ids=episode.prompt_ids, environment=self.components.environment.name,
            tools=episode.tools, env_reward=episode.env_reward, env_error=episode.env_error,
            end_reason=episode.end_reason)

    def _verify(self, idx: int, attempts: list[Attempt], stage: str,
                tasks: dict[str, Task] | None = None, show: bool = True) -> list[VerdictRow]:
        """Every verifier on `attempts`, in chunks of VERIFY_CHUNK (loop.guarded)."""
        tasks = tasks or self.store.get_tasks({a.task_id for a in attempts})
        rows = []
        with self.reporter.stage(idx, stage if show else f"{stage}:verify",
                                 len(attempts)) as progress:
            for start in range(0, len(attempts), VERIFY_CHUNK):
                chunk = attempts[start:start + VERIFY_CHUNK]
                items = [(tasks[a.task_id], a) for a in chunk]
                by_verifier = []
                for chosen in self.components.verifiers:
                    t0 = time.perf_counter()
                    verdicts = loop.guarded.safe_verify_batch(chosen, items,
                                                              self.config.verify.timeout_s)
                    each_ms = (time.perf_counter() - t0) * 1e3 / len(chunk)
                    by_verifier.append((chosen.name, verdicts, each_ms))
                for i, attempt in enumerate(chunk):
                    rows.extend((attempt.id, name, verdicts[i], ms)
                                for name, verdicts, ms in by_verifier)
                    progress(items=1)
                    if stage == "verify":
                        failpoint("verify.in_batch")
        return rows

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
            results = call_critic(chosen, items, context,
                                  lambda line: self.reporter.warn(f"round {idx}: {line}"))
            for attempt, critique in zip(failed, results or []):
                if critique is not None and critique.text.strip():
                    out[attempt.id].append(critique.model_copy(update={"critic": chosen.name}))
        return out

    def _classify(self, idx: int, attempts: list[Attempt], verdicts: dict[str, dict[str, Verdict]]
                  ) -> tuple[dict[str, str], list[tuple[str, Critique]]]:
        """attempt id -> kind from the classifying critics (stored critiques first), and the
        critiques made here for failures that had none."""
        classifiers = [c for c in self.components.critics if c.component.classifies]
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

    def _launched_update(self, context: Any) -> UpdateResult:
        """The update in worker processes started by `train.launcher` (loop.train_worker); the
        checkpoint they write is published exactly like an in-process update's."""
        from loop.train_worker import launch_update

        return launch_update(context, self.config.train.launcher, store=self.store, pm=self.pm,
                             log_path=self.run_dir / f"round-{context.round_index}" / "train.log",
                             warn=self.reporter.warn)

    def summary(self, idx: int) -> dict:
        from loop.summary import round_summary

        return round_summary(self.store, self.run_id, idx)


def __getattr__(name: str) -> Any:
    """Names that moved out of this module stay importable for a deprecation period."""
    from loop._moved import moved

    return moved(__name__, name, {
        "UpdateContext": "loop.updates", "EmptyDataset": "loop.updates",
        "load_samples": "loop.updates", "StageProgress": "loop.updates",
        "safe_verify_batch": "loop.guarded", "safe_verify": "loop.guarded",
        "session_timing": "loop.timing", "reported_timing": "loop.timing",
        "TRAIN_STAGES": "loop.stage_order", "ROUND0_STAGES": "loop.stage_order",
    })
