"""`loop export`: a run's stored rounds as datasets that load back with `datasets`.

Three stores: a hand-made one (every case chosen: identical and distinct passing answers, a
repair with its critique, a checker failure, two reward functions, thirds as rewards so a float
that lost digits shows, stored log-probs, an untrained round), one `loop run` on the doubles
(the parity backend and the noop updater, tests/scripted_runs.py) and one run trained for real
on the tiny model (slow), both shared by the module. The oracle for an updater's rows is its own
`build_dataset` on the train stage's context; for attempts, the store's rows read with SQL.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loop.cli import app
from loop.config import LoopConfig
from loop.schema import Attempt, Critique, Task, Verdict
from loop.store import unpack_logprobs

REPO = Path(__file__).resolve().parent.parent
FORMATS = ["jsonl", "parquet", "hf"]
WHATS = ["attempts", "sft", "dpo", "kto", "grpo"]
RUN_ID = "20250101-000000-abcdef"


def invoke(*args: str):
    return CliRunner().invoke(app, ["export", *args])


def load(path: Path, fmt: str, cache: Path):
    import datasets

    if fmt == "hf":
        return datasets.load_from_disk(str(path))
    return datasets.load_dataset("json" if fmt == "jsonl" else "parquet", data_files=str(path),
                                 split="train", cache_dir=str(cache))


def expected_rows(db: Path, run_ref: str, what: str, rounds: list[int]) -> list[dict]:
    """What the updater's build_dataset (or attempt_rows) returns for each round, plus `round`:
    the context built here as the train stage builds it (RoundEngine.stage_train)."""
    from loop.export import attempt_rows
    from loop.plugin_manager import build_registry, get_plugin_manager
    from loop.updates import UpdateContext, load_samples
    from loop.store import Store

    store = Store.open(db)
    run = store.get_run(run_ref)
    config = LoopConfig.model_validate_json(run["config_json"])
    names = [r.name for r in config.task.rewards]
    rows = []
    for idx in rounds:
        if what == "attempts":
            built = attempt_rows(store, run["id"], idx, config)
        else:
            updater = copy.copy(build_registry(get_plugin_manager()).get("updaters", what))
            raw = config.train.options if config.train.method == what else {}
            updater.options = updater.Options(**raw)
            context = UpdateContext(
                run_id=run["id"], round_index=idx, samples=load_samples(store, run["id"], idx, names),
                base_model=config.model, adapter_in=store.get_round(run["id"], idx)["model_in"],
                output_dir=db.parent, config=config, options=updater.options, seed=0,
                progress=lambda **_: None, reward_names=names)
            built = updater.build_dataset(context)
        rows += [{**row, "round": idx} for row in built]
    return rows


# ----- the hand-made store ---------------------------------------------------------------------


def _task(a: int, b: int, split: str = "train") -> Task:
    return Task(source="arithmetic", split=split,
                prompt=[{"role": "user", "content": f"{a}+{b}="}], reference=str(a + b))


def _attempt(idx: int, task: Task, k: int, text: str, *, parent: Attempt | None = None,
             purpose: str = "train", logprobs: bool = True) -> Attempt:
    ids = [ord(c) for c in text]
    return Attempt(
        id=Attempt.make_id(RUN_ID, idx, task.id, purpose, k, parent.id if parent else None),
        run_id=RUN_ID, round_index=idx, task_id=task.id, purpose=purpose, sample_index=k,
        parent_id=parent.id if parent else None, depth=parent.depth + 1 if parent else 0,
        messages=[*task.prompt, {"role": "assistant", "content": text}], completion=text,
        token_ids=ids, prompt_tokens=4, completion_tokens=len(ids),
        logprobs=[-(i + 1) / 3 for i in range(len(ids))] if logprobs else None)


def make_store(folder: Path, name: str = "hand", n: int = 2, run_id: str = RUN_ID) -> Path:
    """Rounds 0-2 done (1 and 2 trained with sft, max_per_prompt=1), round 3 generated only.

    Per trained round (n = 2 samples): A answers "2" twice (equal group), B passes once and
    fails once, C fails twice and one failure is repaired after a critique, D passes with two
    distinct answers; E's second answer met an infra verdict (no reward). One held-out attempt.
    """
    from loop.store import Store

    db = folder / "loop.db"
    store = Store.open(db)
    config = LoopConfig.model_validate({
        "name": name, "rounds": 3, "model": "tiny", "generate": {"n": n},
        "task": {"source": "arithmetic", "rewards": ["binary", "third"],
                 "critics": ["verifier_feedback"]},
        "train": {"method": "sft", "options": {"max_per_prompt": 1}}})
    store.create_run(run_id=run_id, name=name, task="arithmetic", model="tiny",
                     config=config.model_dump(mode="json"), seed=0, rounds_planned=3,
                     versions={}, git_sha=None, run_dir=str(folder / "runs" / run_id))
    store.ensure_round(run_id, 0, None)
    store.mark_stage(run_id, 0, "evaluate", {"seconds": 0.0})
    store.mark_stage(run_id, 0, "done", {})
    for idx in (1, 2, 3):
        store.ensure_round(run_id, idx, None)
        a, b, c, d, e = (_task(idx, 1), _task(idx, 2), _task(idx, 3), _task(idx, 4),
                         _task(idx, 5))
        held_out = _task(50, idx, split="eval")
        store.upsert_tasks([a, b, c, d, e, held_out])
        first = [
            (_attempt(idx, a, 0, f"{idx + 1}"), True), (_attempt(idx, a, 1, f" {idx + 1} "), True),
            (_attempt(idx, b, 0, f"{idx + 2}", logprobs=False), True),
            (_attempt(idx, b, 1, "99"), False),
            (_attempt(idx, c, 0, "0"), False), (_attempt(idx, c, 1, "1"), False),
            (_attempt(idx, d, 0, f"{idx + 4}"), True), (_attempt(idx, d, 1, f"{idx + 4}.0"), True),
            (_attempt(idx, e, 0, "7"), False), (_attempt(idx, e, 1, "8"), None),
        ]
        repair = _attempt(idx, c, 0, f"{idx + 3}", parent=first[4][0])
        evaluated = _attempt(idx, held_out, 0, f"{50 + idx}", purpose="eval")
        store.insert_attempts([x for x, _ in first] + [repair, evaluated])
        verdicts = []
        for attempt, ok in [*first, (repair, True), (evaluated, True)]:
            if ok is None:
                verdict = Verdict(passed=False, error_kind="infra", feedback="sandbox died")
            else:
                verdict = Verdict(passed=ok, score=float(ok), feedback="" if ok else "wrong sum",
                                  mistake=None if ok else "wrong_answer",
                                  error_kind=None if ok else "model")
            verdicts.append((attempt.id, "math", verdict, 1.0))
            verdicts.append((attempt.id, "format", Verdict(passed=True, score=1.0), 1.0))
        store.insert_verdicts(verdicts)
        rewards = []
        for attempt, ok in [*first, (repair, True)]:
            rewards += [(attempt.id, "binary", None if ok is None else float(ok)),
                        (attempt.id, "third", None if ok is None else (1 + (not ok)) / 3)]
        store.insert_rewards(rewards)
        store.insert_critiques([(first[4][0].id, Critique(kind="wrong_answer", text="Add again.",
                                                          critic="verifier_feedback"))])
        stages = ("select", "generate", "verify", "refine", "reward", "mistakes", "train",
                  "evaluate", "done") if idx < 3 else ("select", "generate")
        for stage in stages:
            store.mark_stage(run_id, idx, stage, {"seconds": 0.0})
    return db


@pytest.fixture
def hand_db(tmp_path) -> Path:
    return make_store(tmp_path)


# ----- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("what", WHATS)
def test_export_loads_back_as_build_dataset_rows(hand_db, tmp_path, what, fmt):
    out = tmp_path / "out" / f"{what}.{fmt}"
    result = invoke("hand", "--what", what, "--format", fmt, "--out", str(out),
                    "--db", str(hand_db))
    assert result.exit_code == 0, result.output
    expected = expected_rows(hand_db, "hand", what, [1, 2])
    assert expected and f"wrote {len(expected)} rows" in result.output
    loaded = load(out, fmt, tmp_path / "cache")
    assert set(loaded.column_names) == set(expected[0]) and "round" in loaded.column_names
    assert loaded.to_list() == expected
    assert sorted(set(loaded["round"])) == [1, 2]


@pytest.mark.parametrize("what", ["attempts", "dpo", "grpo"])
def test_round_option_exports_that_round_only_to_its_default_path(hand_db, tmp_path, what):
    result = invoke(RUN_ID[:10], "--what", what, "--round", "2", "--format", "parquet",
                    "--db", str(hand_db))
    assert result.exit_code == 0, result.output
    out = tmp_path / "export" / f"hand-{what}-r2.parquet"  # tests run in tmp_path
    loaded = load(out, "parquet", tmp_path / "cache").to_list()
    assert loaded == expected_rows(hand_db, "hand", what, [2])
    assert {r["round"] for r in loaded} == {2}
    everything = expected_rows(hand_db, "hand", what, [1, 2])
    assert len(loaded) < len(everything)


def test_default_paths_for_every_format(hand_db, tmp_path):
    for fmt, name in [("jsonl", "hand-kto.jsonl"), ("parquet", "hand-kto.parquet"),
                      ("hf", "hand-kto")]:
        assert invoke("hand", "--what", "kto", "--format", fmt, "--db", str(hand_db)).exit_code == 0
        assert (tmp_path / "export" / name).exists()
    assert (tmp_path / "export" / "hand-kto" / "state.json").is_file()  # save_to_disk folder
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == [
        "hand-kto", "hand-kto.jsonl", "hand-kto.parquet"]  # no temporary left behind


# ----- what the rows mean ----------------------------------------------------------------------


def test_attempt_rows_match_the_store(hand_db, tmp_path):
    out = tmp_path / "a.jsonl"
    assert invoke("hand", "--what", "attempts", "--out", str(out),
                  "--db", str(hand_db)).exit_code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    conn = sqlite3.connect(hand_db)
    stored = conn.execute("select id, round_idx, purpose, parent_id, depth, completion from "
                          "attempts where round_idx in (1, 2)").fetchall()
    assert sorted((r["attempt_id"], r["round"], r["purpose"], r["parent_id"], r["depth"],
                   r["completion"]) for r in rows) == sorted(stored)
    for row in rows:
        ok = conn.execute("select min(passed), min(score) from verdicts where attempt_id = ?",
                          [row["attempt_id"]]).fetchone()
        assert (row["passed"], row["score"]) == (bool(ok[0]), ok[1])
        assert len(row["verdicts"]) == 2
        rewards = dict(conn.execute("select reward_fn, value from rewards where attempt_id = ?",
                                    [row["attempt_id"]]).fetchall())
        assert row["reward_binary"] == rewards.get("binary")
        assert row["reward_third"] == rewards.get("third")  # every digit of a third
        task = conn.execute("select prompt_json, reference from tasks where id = ?",
                            [row["task_id"]]).fetchone()
        assert (row["prompt"], row["reference"]) == (json.loads(task[0]), task[1])
    critiqued = [r for r in rows if r["critique"]]
    assert [(r["critique"], r["critique_kind"], r["mistake"]) for r in critiqued] == [
        ("Add again.", "wrong_answer", "wrong_answer")] * 2
    repairs = [r for r in rows if r["depth"] == 1]
    assert {r["parent_id"] for r in repairs} == {r["attempt_id"] for r in critiqued}
    infra = [r for r in rows if r["error_kind"] == "infra"]
    assert len(infra) == 2 and all(r["reward_binary"] is None and not r["passed"] for r in infra)
    assert {r["purpose"] for r in rows} == {"train", "eval"}
    assert all(r["reward_binary"] is None for r in rows if r["purpose"] == "eval")


def test_updater_rows_follow_each_method_and_the_runs_options(hand_db, tmp_path):
    from loop_trl.datasets import sft_rows

    from loop.updates import load_samples
    from loop.store import Store

    def export(what: str) -> list[dict]:
        out = tmp_path / f"{what}.jsonl"
        assert invoke("hand", "--what", what, "--round", "1", "--out", str(out),
                      "--db", str(hand_db)).exit_code == 0
        return [json.loads(line) for line in out.read_text().splitlines()]

    samples = load_samples(Store.open(hand_db), RUN_ID, 1, ["binary", "third"])
    # The run trained with sft and max_per_prompt=1: D's two distinct answers give one row.
    sft = export("sft")
    assert len(sft) == 4 and len(sft_rows(samples)) == 5
    assert [r["completion"] for r in sft] == [
        r["completion"] for r in sft_rows(samples, max_per_prompt=1)]
    assert "4" in [r["completion"][0]["content"] for r in sft]  # C's repair, for C's own prompt
    dpo = export("dpo")  # not the run's method: DPO's defaults
    passed = {s.attempt.completion.strip() for s in samples if s.passed}
    assert dpo and all(r["chosen"][0]["content"] in passed and
                       r["rejected"][0]["content"] not in passed for r in dpo)
    assert ("4", "0") in [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in dpo]
    kto = export("kto")
    assert "8" not in [r["completion"][0]["content"] for r in kto]  # the checker failed on it
    grpo = export("grpo")
    # B is the only complete group whose rewards differ; E's checker failure makes it incomplete.
    groups = {r["group_id"] for r in grpo}
    assert len(grpo) == 2 * len(groups) == 2 and all(g.startswith("1:") for g in groups)
    conn = sqlite3.connect(hand_db)
    for row in grpo:
        stored = conn.execute("select logprobs_f32 from attempts where id = ?",
                              [row["attempt_id"]]).fetchone()[0]
        assert row["logprob_sum"] == (None if stored is None
                                      else math.fsum(unpack_logprobs(stored)))
        assert row["reward_binary"] in (0.0, 1.0)
    assert any(r["logprob_sum"] is None for r in grpo) and any(r["logprob_sum"] for r in grpo)
    redi = export("redi")  # keeps all-equal groups too
    assert len({r["group_id"] for r in redi}) > len(groups)


def test_text_that_is_not_utf8_is_replaced_not_fatal(hand_db, tmp_path):
    from loop.store import Store

    store = Store.open(hand_db)
    task = _task(60, 1, split="eval")
    store.upsert_tasks([task])
    store.insert_attempts([_attempt(1, task, 0, "61\udcff", purpose="eval")])
    for fmt in FORMATS:
        out = tmp_path / f"bad.{fmt}"
        result = invoke("hand", "--what", "attempts", "--round", "1", "--format", fmt,
                        "--out", str(out), "--db", str(hand_db))
        assert result.exit_code == 0, result.output
        texts = load(out, fmt, tmp_path / "cache")["completion"]
        assert [t for t in texts if t.startswith("61")] == ["61\ufffd\ufffd\ufffd"]


# ----- bad input: one line, nothing written ----------------------------------------------------


def _one_line_error(result, text: str, code: int = 1) -> None:
    assert result.exit_code == code, result.output
    assert text in result.output and result.output.strip().count("\n") == 0, result.output


def test_unknown_run(hand_db):
    _one_line_error(invoke("nope", "--what", "sft", "--db", str(hand_db)), "no run 'nope'")


def test_unknown_what_lists_the_choices(hand_db):
    _one_line_error(invoke("hand", "--what", "ppo", "--db", str(hand_db)),
                    "unknown --what 'ppo' (choose from: attempts, dpo, grpo, kto, nft, redi, sft)")


def test_unknown_format(hand_db, tmp_path):
    _one_line_error(invoke("hand", "--what", "sft", "--format", "csv", "--db", str(hand_db)),
                    "unknown --format 'csv' (choose from: jsonl, parquet, hf)")
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize("idx", ["0", "3", "9"])
def test_round_that_was_not_trained(hand_db, tmp_path, idx):
    _one_line_error(invoke("hand", "--what", "sft", "--round", idx, "--db", str(hand_db)),
                    f"round {idx} of run hand was not trained (trained rounds: 1, 2)")
    assert not (tmp_path / "export").exists()


def test_existing_output_needs_force(hand_db, tmp_path):
    out = tmp_path / "sft.jsonl"
    assert invoke("hand", "--what", "sft", "--round", "1", "--out", str(out),
                  "--db", str(hand_db)).exit_code == 0
    before = out.read_text()
    _one_line_error(invoke("hand", "--what", "sft", "--out", str(out), "--db", str(hand_db)),
                    f"{out} already exists (pass --force to overwrite it)")
    assert out.read_text() == before
    assert invoke("hand", "--what", "sft", "--out", str(out), "--force",
                  "--db", str(hand_db)).exit_code == 0
    assert len(out.read_text().splitlines()) == 2 * len(before.splitlines())


def test_force_replaces_a_saved_dataset_but_not_another_folder(hand_db, tmp_path):
    import datasets

    out = tmp_path / "kto-hf"
    assert invoke("hand", "--what", "kto", "--round", "1", "--format", "hf", "--out", str(out),
                  "--db", str(hand_db)).exit_code == 0
    assert invoke("hand", "--what", "kto", "--format", "hf", "--out", str(out), "--force",
                  "--db", str(hand_db)).exit_code == 0
    assert set(datasets.load_from_disk(str(out))["round"]) == {1, 2}
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    _one_line_error(invoke("hand", "--what", "kto", "--format", "hf", "--out", str(other),
                           "--force", "--db", str(hand_db)),
                    f"{other} is not a saved dataset folder; not replacing it")
    assert (other / "keep.txt").read_text() == "mine"


def test_updater_without_a_dataset(hand_db, tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "plain.py").write_text(
        "import loop\n\nclass Plain(loop.Updater):\n    name = 'plain'\n\n"
        "@loop.hookimpl\ndef register_updaters(register):\n    register(Plain())\n")
    _one_line_error(invoke("hand", "--what", "plain", "--plugins-dir", str(plugins),
                           "--db", str(hand_db)), "updater 'plain' has no dataset to export")


def test_group_methods_need_groups_and_empty_datasets_are_refused(tmp_path):
    db = make_store(tmp_path, name="single", n=1)
    _one_line_error(invoke("single", "--what", "grpo", "--db", str(db)),
                    "round 1: grpo: needs at least 2 samples per prompt to form groups; "
                    "generate.n is 1")
    from loop.store import Store

    store = Store.open(db)
    store.create_run(run_id="empty-run", name="empty", task="arithmetic", model="tiny",
                     config=LoopConfig().model_dump(mode="json"), seed=0, rounds_planned=1,
                     versions={}, git_sha=None, run_dir=str(tmp_path))
    store.ensure_round("empty-run", 1, None)
    _one_line_error(invoke("empty", "--what", "sft", "--db", str(db)),
                    "run empty has no trained round yet; nothing to export")
    store.mark_stage("empty-run", 1, "train", {"seconds": 0.0})
    _one_line_error(invoke("empty", "--what", "sft", "--db", str(db)),
                    "nothing to export: sft has no rows in round(s) 1 of run empty")


# ----- runs: on the doubles, and one trained for real -----------------------------------------

SETTINGS = [
    "--set", "select.prompts_per_round=16", "--set", "generate.n=4",
    "--set", "generate.temperature=1.0", "--set", "generate.max_new_tokens=6",
    "--set", "evaluate.problems=20", "--set", "evaluate.max_new_tokens=6",
    "--set", "refine.depth=1", "--set", "refine.budget=16",
]
TRAIN_SETTINGS = [
    "--set", "train.learning_rate=1e-3", "--set", "train.epochs=1", "--set", "train.lora.r=8",
    "--set", "train.lora.alpha=16", "--set", "train.max_length=32",
]


@pytest.fixture(scope="module")
def run_db(tmp_path_factory) -> Path:
    """`loop run --rounds 2` with refinement on the doubles (the parity backend, the noop
    updater: tests/scripted_runs.py): export builds each updater's rows from the stored
    samples, which needs no model."""
    from scripted_runs import scripted_run
    from tiny_model import tiny_task_yaml

    folder = tmp_path_factory.mktemp("export-run")
    task = folder / "tiny-add.yaml"
    task.write_text(tiny_task_yaml(train_size=400, eval_size=100, critics=["verifier_feedback"]))
    db = folder / "loop.db"
    scripted_run(folder, [task, "--rounds", "2", "--name", "real", "--db", db, *SETTINGS])
    return db


@pytest.fixture(scope="module")
def trained_db(weak_adder_dir, tmp_path_factory) -> Path:
    """`loop run --method sft --rounds 2` on the tiny adder with refinement: a run trained for
    real (round 2 samples from round 1's adapter; the hf backend stores sampling log-probs)."""
    from tiny_model import tiny_task_yaml

    import loop.cli.common

    folder = tmp_path_factory.mktemp("export-trained")
    task = folder / "tiny-add.yaml"
    task.write_text(tiny_task_yaml(train_size=400, eval_size=100, critics=["verifier_feedback"]))
    db = folder / "loop.db"
    with pytest.MonkeyPatch.context() as mp:  # what conftest's isolated_env does per test
        mp.setenv("LOOP_LOAD_PLUGINS", "hf,math,trl,code")
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        mp.delenv("LOOP_PLUGINS_DIR", raising=False)
        for key in [k for k in os.environ if k.startswith("LOOP_") and "__" in k]:
            mp.delenv(key)
        mp.setattr(loop.cli.common, "_PM", None)
        mp.chdir(folder)
        result = CliRunner().invoke(app, [
            "run", str(task), "--config", str(REPO / "configs" / "tiny-cpu.yaml"),
            "--model", str(weak_adder_dir), "--rounds", "2", "--name", "real", "--db", str(db),
            "--method", "sft", *SETTINGS, "--set", "select.prompts_per_round=8",
            "--set", "evaluate.problems=8", "--set", "refine.budget=8", *TRAIN_SETTINGS])
    assert result.exit_code == 0, result.output
    return db


def _exports_load_back_as_build_dataset_rows(db: Path, tmp_path: Path, fmt: str) -> None:
    for what in WHATS:
        out = tmp_path / f"{what}.{fmt}"
        result = invoke("real", "--what", what, "--format", fmt, "--out", str(out),
                        "--db", str(db))
        assert result.exit_code == 0, result.output
        expected = expected_rows(db, "real", what, [1, 2])
        assert expected, what  # every method found data in this run
        loaded = load(out, fmt, tmp_path / "cache")
        assert set(loaded.column_names) == set(expected[0])
        assert loaded.to_list() == expected, what


@pytest.mark.parametrize("fmt", FORMATS)
def test_run_exports_load_back_as_build_dataset_rows(run_db, tmp_path, fmt):
    _exports_load_back_as_build_dataset_rows(run_db, tmp_path, fmt)


@pytest.mark.slow
def test_a_trained_run_exports_load_back_as_build_dataset_rows(trained_db, tmp_path):
    _exports_load_back_as_build_dataset_rows(trained_db, tmp_path, "jsonl")
    out = tmp_path / "grpo-real.jsonl"
    assert invoke("real", "--what", "grpo", "--out", str(out), "--db", str(trained_db)
                  ).exit_code == 0
    grpo = [json.loads(line) for line in out.read_text().splitlines()]
    # The hf backend stores sampling log-probs for every token.
    assert grpo and all(r["logprob_sum"] is not None and r["logprob_sum"] < 0 for r in grpo)


def test_run_round_filter_and_contents(run_db, tmp_path):
    from scripted_runs import expected_counts

    conn = sqlite3.connect(run_db)
    counts = expected_counts(run_db, "real")
    for idx in (1, 2):
        out = tmp_path / f"attempts-{idx}.parquet"
        assert invoke("real", "--what", "attempts", "--round", str(idx), "--format", "parquet",
                      "--out", str(out), "--db", str(run_db)).exit_code == 0
        rows = load(out, "parquet", tmp_path / "cache").to_list()
        stored = conn.execute("select count(*), sum(depth > 0), sum(purpose = 'eval') from "
                              "attempts where round_idx = ?", [idx]).fetchone()
        assert (len(rows), sum(r["depth"] > 0 for r in rows),
                sum(r["purpose"] == "eval" for r in rows)) == stored
        # the parity rule: 16 prompts x 4 samples, the first 16 failures repaired, 20 held out
        assert stored == (16 * 4 + 16 + 20, 16, 20) and all(r["round"] == idx for r in rows)
        assert sum(r["passed"] for r in rows if r["purpose"] == "train") == counts[idx]["passed"]
        critiques = conn.execute("select count(*) from critiques c join attempts a on "
                                 "a.id = c.attempt_id where a.round_idx = ?", [idx]).fetchone()[0]
        assert sum(r["critique"] is not None for r in rows) == critiques == 16
        out = tmp_path / f"grpo-{idx}.jsonl"
        assert invoke("real", "--what", "grpo", "--round", str(idx), "--out", str(out),
                      "--db", str(run_db)).exit_code == 0
        grpo = [json.loads(line) for line in out.read_text().splitlines()]
        # the scripted backend's log-probs are 0.0 per token
        assert grpo and all(r["logprob_sum"] == 0.0 for r in grpo)
        assert len(grpo) == 4 * len({r["group_id"] for r in grpo})
