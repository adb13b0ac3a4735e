"""Config: every shipped file validates; precedence; malformed input is one clear line, exit 2."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loop.cli import app
from loop.config import ConfigError, LoopConfig, build_config, env_overrides

REPO = Path(__file__).resolve().parent.parent

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path, registry):
    from loop.resolve import resolve_components

    config = build_config("arithmetic", path, task_dirs=[REPO / "tasks"])
    components = resolve_components(config, registry)
    assert components.task_source.name == "arithmetic"
    assert [v.name for v in components.verifiers] == ["math"]


def test_shipped_configs_exist():
    assert {p.name for p in CONFIGS} >= {"default.yaml", "tiny-cpu.yaml"}


def test_the_default_job_is_loops_defaults():
    """`loop run arithmetic` runs the README's measured job: configs/default.yaml changes
    nothing, and loop's defaults with the task file's `run:` settings are that job's settings."""
    plain = build_config("arithmetic", None, environ={}, task_dirs=[REPO / "tasks"])
    with_file = build_config("arithmetic", REPO / "configs" / "default.yaml", environ={},
                             task_dirs=[REPO / "tasks"])
    assert plain == with_file
    assert (plain.seed, plain.rounds, plain.model, plain.backend.name) == \
        (0, 4, "smollm2-135m-instruct", "hf")
    assert plain.select.prompts_per_round == 128
    g = plain.generate
    assert (g.n, g.temperature, g.top_p, g.max_new_tokens, g.batch_size) == (2, 0.7, 1.0, 48, 256)
    assert (plain.evaluate.max_new_tokens, plain.evaluate.batch_size) == (256, 200)
    t = plain.train
    assert (t.method, t.learning_rate, t.epochs, t.batch_size, t.max_length) == \
        ("sft", None, 2, 8, 384)  # null: each method's own rate (sft: 5e-4)
    assert (t.lora.enabled, t.lora.r, t.lora.alpha, t.lora.dropout, t.lora.target_modules) == \
        (True, 16, 32, 0.0, "all-linear")
    assert [v.name for v in plain.task.verifiers] == ["math"]
    assert [r.name for r in plain.task.rewards] == ["binary"]
    assert plain.train.options == {"max_per_prompt": 1, "shortest_first": True,  # sft's
                                   "references": "unsolved", "learning_rate": 1e-3,
                                   "learning_rate_decay": 0.7}
    assert not plain.select.curriculum.enabled
    # the task's run: settings are defaults of its own, below a config file and flags
    assert build_config("arithmetic", None, flags={"rounds": 2}, environ={},
                        task_dirs=[REPO / "tasks"]).rounds == 2
    assert "loop run arithmetic --config configs/default.yaml" in (REPO / "Makefile").read_text()


def test_task_file_then_config_then_env_then_flags_then_set(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("rounds: 5\ntrain: {learning_rate: 0.001, epochs: 2}\nmodel: a\n")
    env = {"LOOP_TRAIN__LEARNING_RATE": "0.002", "LOOP_TRAIN__EPOCHS": "3", "LOOP_DB": "x.db"}
    config = build_config("arithmetic", cfg_file, flags={"model": "b", "rounds": None},
                          sets=["train.epochs=4"], environ=env, task_dirs=[REPO / "tasks"])
    assert config.rounds == 5  # file (flag was None)
    assert config.train.learning_rate == 0.002  # env beats file
    assert config.train.epochs == 4  # --set beats env
    assert config.model == "b"  # flag beats file
    assert config.task.options["train_size"] == 2000  # from tasks/arithmetic.yaml


def test_config_task_section_overrides_task_file(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("task: {options: {eval_size: 300}}\n")
    config = build_config("arithmetic", cfg_file, environ={}, task_dirs=[REPO / "tasks"])
    assert config.task.options["eval_size"] == 300
    assert config.task.options["train_size"] == 2000  # merged, not replaced


def test_a_task_files_run_settings_sit_below_the_config_file_and_name_the_runs(tmp_path):
    task = tmp_path / "mytask.yaml"
    task.write_text("source: arithmetic\nrun:\n  select: {prompts_per_round: 48}\n"
                    "  train: {max_steps: 6, learning_rate: 0.001}\n  rounds: 2\n")
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("train: {learning_rate: 0.002}\n")
    config = build_config(str(task), cfg_file, sets=["rounds=4"], environ={})
    assert config.select.prompts_per_round == 48 and config.train.max_steps == 6  # task file
    assert config.train.learning_rate == 0.002  # the config file beats the task file
    assert config.rounds == 4  # --set beats both
    assert config.task.name == "mytask" and "run" not in config.task.model_dump()
    shipped = build_config("calculator", None, environ={}, task_dirs=[REPO / "tasks"])
    assert shipped.task.name == "calculator" and shipped.task.source == "arithmetic"
    assert shipped.select.prompts_per_round == 48
    assert build_config("jsonl", None, environ={}, task_dirs=[]).task.name is None


def test_a_backend_option_set_alone_is_the_default_backends(tmp_path):
    config = build_config("arithmetic", None, sets=["backend.options.dtype=bfloat16"], environ={})
    assert config.backend.name == "hf" and config.backend.options == {"dtype": "bfloat16"}
    named = build_config("arithmetic", None, environ={},
                         sets=["backend.name=openai", "backend.options.base_url=http://x"])
    assert named.backend.name == "openai"  # a name given is kept
    # a task file's hf options belong to hf: another backend chosen above drops them
    task = tmp_path / "t.yaml"
    task.write_text("source: arithmetic\nrun:\n  backend: {options: {dtype: auto}}\n")
    assert build_config(str(task), None, environ={}).backend.options == {"dtype": "auto"}
    other = build_config(str(task), None, environ={}, sets=["backend.name=openai"])
    assert other.backend.name == "openai" and other.backend.options == {}
    kept = build_config(str(task), None, environ={}, sets=["backend.name=hf"])
    assert kept.backend.options == {"dtype": "auto"}


def test_train_options_belong_to_the_method_they_were_set_for(tmp_path):
    task = tmp_path / "mytask.yaml"
    task.write_text("source: arithmetic\nrun:\n  train: {options: {max_per_prompt: 1}}\n")
    build = lambda **kw: build_config(str(task), environ=kw.pop("environ", {}), **kw)  # noqa: E731
    assert build().train.options == {"max_per_prompt": 1}  # sft, the default method
    # another method, from a flag, --set, env or a config file: the task file's sft options go
    assert build(flags={"train.method": "kto"}).train.options == {}
    assert build(sets=["train.method=dpo"]).train.options == {}
    assert build(environ={"LOOP_TRAIN__METHOD": "grpo"}).train.options == {}
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("train: {method: nft}\n")
    assert build(config_path=cfg_file).train.options == {}
    # the same method, or another method with options of its own: kept, or replaced
    assert build(flags={"train.method": "sft"}).train.options == {"max_per_prompt": 1}
    assert build(flags={"train.method": "kto"}, sets=["train.options.beta=0.2"]).train.options == \
        {"beta": 0.2}
    cfg_file.write_text("train: {method: kto, options: {beta: 0.3}}\n")
    assert build(config_path=cfg_file).train.options == {"beta": 0.3}


@pytest.mark.parametrize("text, needle", [
    ("source: arithmetic\nrun: 3\n", "the task file's run: must be a mapping"),
    ("source: arithmetic\nrun: {task: {source: x}}\n", "cannot hold task:"),
    ("source: arithmetic\nrun: {select: {prompts_per_round: 0}}\n", "select.prompts_per_round"),
])
def test_a_bad_run_section_in_a_task_file_is_one_line(tmp_path, text, needle):
    task = tmp_path / "bad.yaml"
    task.write_text(text)
    with pytest.raises(ConfigError) as info:
        build_config(str(task), None, environ={})
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_env_ignores_non_config_loop_variables():
    assert env_overrides({"LOOP_DB": "x", "LOOP_LOAD_PLUGINS": "", "LOOP_GENERATE__N": "8"}) == {
        "generate": {"n": 8}}


def test_bare_source_name_becomes_task_source():
    config = build_config("jsonl", None, environ={}, task_dirs=[])
    assert config.task.source == "jsonl"


BAD = [
    # (YAML config text, the field the one-line error must name)
    ("rounds: -1", "rounds"),
    ("rounds: many", "rounds"),
    ("rounds: 1.5", "rounds"),
    ("rounds: [1]", "rounds"),
    ("seed: -3", "seed"),
    ("model: ''", "model"),
    ("model: 12", "model"),
    ("roundz: 3", "roundz"),
    ("train: {learning_rate: -1}", "train.learning_rate"),
    ("train: {learning_rate: .nan}", "train.learning_rate"),
    ("train: {learning_rate: .inf}", "train.learning_rate"),
    ("train: {learning_rate: fast}", "train.learning_rate"),
    ("train: {epochs: 0}", "train.epochs"),
    ("train: {batch_size: 0}", "train.batch_size"),
    ("train: {lr: 0.1}", "train.lr"),
    ("train: {lora: {r: 0}}", "train.lora.r"),
    ("train: {lora: {dropout: 1.5}}", "train.lora.dropout"),
    ("train: {lora: {rank: 8}}", "train.lora.rank"),
    ("train: {max_length: 2}", "train.max_length"),
    ("train: 5", "train"),
    ("generate: {n: 0}", "generate.n"),
    ("generate: {temperature: -0.5}", "generate.temperature"),
    ("generate: {top_p: 0}", "generate.top_p"),
    ("generate: {top_p: 1.5}", "generate.top_p"),
    ("generate: {max_new_tokens: 0}", "generate.max_new_tokens"),
    ("generate: {samples: 4}", "generate.samples"),
    ("select: {prompts_per_round: 0}", "select.prompts_per_round"),
    ("evaluate: {problems: 0}", "evaluate.problems"),
    ("backend: {name: ''}", "backend.name"),
    ("backend: {name: hf, opts: {}}", "backend.opts"),
    ("task: {verifiers: [{}]}", "task.verifiers.0.name"),
    ("task: {options: {x: .nan}}", "task.options.x"),
    ("name: ''", "name"),
    ("verify: {timeout_s: 0}", "verify.timeout_s"),
    ("verify: {timeout_s: forever}", "verify.timeout_s"),
    ("verify: 3", "verify"),
]


@pytest.mark.parametrize("text,field", BAD, ids=[b[0] for b in BAD])
def test_bad_config_is_one_line_naming_the_field(tmp_path, text, field):
    path = tmp_path / "bad.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        build_config("arithmetic", path, environ={}, task_dirs=[REPO / "tasks"])
    message = str(info.value)
    assert message.startswith(f"config error: {field}:"), message
    assert "\n" not in message


@pytest.mark.parametrize("text", ["[1, 2]", "rounds: [", "\tfoo: : bar", "just a string"])
def test_unparseable_or_non_mapping_file(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        build_config(None, path, environ={})
    assert str(info.value).startswith("config error:") and "\n" not in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        build_config(None, tmp_path / "nope.yaml", environ={})


def test_bad_env_value_names_field():
    with pytest.raises(ConfigError, match=r"^config error: train.batch_size:"):
        build_config("arithmetic", None, environ={"LOOP_TRAIN__BATCH_SIZE": "zero"},
                     task_dirs=[REPO / "tasks"])


def test_set_without_equals():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        build_config("arithmetic", None, sets=["rounds"], environ={}, task_dirs=[REPO / "tasks"])


def test_resolved_config_round_trips():
    config = build_config("arithmetic", REPO / "configs" / "default.yaml", environ={},
                          task_dirs=[REPO / "tasks"])
    again = LoopConfig.model_validate_json(config.model_dump_json())
    assert again == config


@pytest.mark.parametrize("args,needle", [
    (["--set", "train.learning_rate=-1"], "config error: train.learning_rate:"),
    (["--set", "generate.n=0"], "config error: generate.n:"),
    (["--method", "nope"], "config error: train.method: unknown updater 'nope'"),
    (["--set", "backend.name=nope"], "config error: backend: unknown backend 'nope'"),
    (["--set", "task.verifiers=[nope]"], "config error: task.verifiers.nope: unknown verifier"),
    (["--set", "task.options.digits=0"], "config error: task.options: digits:"),
    (["--set", "train.options.bogus=1"], "config error: train.method.options: bogus: unknown key"),
    (["--rounds", "-2"], "config error: rounds:"),
])
def test_cli_config_errors_exit_2_with_one_line_and_write_nothing(tmp_path, args, needle):
    db = tmp_path / "store" / "loop.db"
    result = CliRunner().invoke(app, ["run", "arithmetic", "--db", str(db), *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], result.output
    assert "Traceback" not in result.output
    assert not db.exists()  # nothing written


def test_cli_unknown_task_file_field(tmp_path):
    task = tmp_path / "t.yaml"
    task.write_text("source: arithmetic\nverifier: [math]\n")
    result = CliRunner().invoke(app, ["run", str(task)])
    assert result.exit_code == 2
    assert "config error: task.verifier: unknown key" in result.output


@pytest.mark.parametrize("model,needle", [
    ("./no/such/model", "model error: ./no/such/model: no such model folder"),
    (".", "model error: .: folder has no config.json"),
])
def test_cli_bad_model_exits_2_before_writing(tmp_path, model, needle):
    db = tmp_path / "store" / "loop.db"
    result = CliRunner().invoke(app, ["run", "arithmetic", "--model", model, "--db", str(db)])
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output
    assert not db.exists()


def test_cli_bad_task_data_exits_2_naming_file_and_line(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "1+1?", "answer": "#### 2"}\n{not json}\n')
    db = tmp_path / "store" / "loop.db"
    result = CliRunner().invoke(app, ["run", "jsonl", "--set", f"task.options.path={data}",
                                      "--db", str(db)])
    assert result.exit_code == 2, result.output
    assert "task error: jsonl:" in result.output and "line 2" in result.output
    assert not db.exists()


@pytest.mark.parametrize("content,needle", [
    (b"", r"bad\.yaml: file is empty"),
    (b"# only a comment\n", r"bad\.yaml: file is empty"),
    (b"rounds: 1\nrounds: 2\n", r"bad\.yaml line 2: duplicate key 'rounds'"),
    (b"rounds: \xff\xfe\n", r"bad\.yaml: not UTF-8 text \(byte 8\)"),
    (b"a: 1\n" + b"#" * (2 << 20), r"bad\.yaml: file too large \(\d+ bytes; the limit is"),
    (b"rounds: [1, 2\n", r"bad\.yaml line \d+: "),
])
def test_unreadable_config_files(tmp_path, content, needle):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        build_config(None, path, environ={})
    assert re.search(r"^config error: .*" + needle, str(info.value)), str(info.value)
    assert "\n" not in str(info.value)


def test_config_path_is_a_folder(tmp_path):
    with pytest.raises(ConfigError, match="is a folder, not a file"):
        build_config(None, tmp_path, environ={})


@pytest.mark.parametrize("args", [
    ["--config", "missing.yaml"],
    ["--set", "generate.temperature=.nan"],
    ["--set", "train.lora={r: 0}"],
])
def test_stderr_is_exactly_one_line_and_stdout_empty(tmp_path, args):
    import subprocess
    import sys

    db = tmp_path / "store" / "loop.db"
    out = subprocess.run([sys.executable, "-m", "loop.cli", "run", "arithmetic", "--db", str(db),
                          *args], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stdout == ""
    assert len(out.stderr.splitlines()) == 1 and out.stderr.startswith("config error: ")
    assert not (tmp_path / "store").exists()
