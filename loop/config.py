"""The run configuration: pydantic models, filled from (lowest to highest precedence)

    defaults < task file (tasks/NAME.yaml, and its `run:` settings) < config file (--config)
    < env LOOP_<SECTION>__<FIELD>
    < CLI flags (--model, --rounds, --method) < --set KEY=VALUE

Every model forbids unknown keys and NaN/inf, so a typo or a bad number is an error naming the
field (`config error: train.learning_rate: ...`), raised before anything is written. The resolved
config is stored with the run (`runs.config_json`), so a run can always be reproduced.

The defaults are the default job's settings (README: `loop run arithmetic` is the measured run
of SmolLM2-135M-Instruct learning 2-digit addition by rejection-sampling fine-tuning on a CPU);
configs/default.yaml names that job and sets nothing else.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

DEFAULT_MODEL = "smollm2-135m-instruct"


class ConfigError(Exception):
    """A bad config value; `str()` is the one line the CLI prints."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_default=True)


class ByName(Section):
    """A section that can be written as its name alone: `backend: hf` means `{name: hf}`."""

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class ComponentRef(ByName):
    """A plugin component chosen by name, with options validated by the component's Options."""

    name: str = Field(min_length=1, description="registered name of the component")
    options: dict[str, Any] = Field(default_factory=dict, description="the component's options")


class EnvironmentConfig(ByName):
    """The environment episodes run in: a registered one by `name`, a TRL `environment_factory`
    class (`factory`), or a gym-style text environment (`gym`); exactly one of the three."""

    name: str | None = Field(default=None, min_length=1,
                             description="registered environment (e.g. calculator, python)")
    factory: str | None = Field(default=None, min_length=3, description=(
        "a TRL environment_factory class, as 'path/to/file.py:ClassName' or "
        "'package.module:ClassName': reset(**row), public documented methods as tools, "
        "optional get_reward()"))
    gym: str | None = Field(default=None, min_length=3, description=(
        "a gym-style text environment: 'path/to/file.py:make' or 'package.module:make', a "
        "callable called with each task's fields (or a class) whose result has reset() -> "
        "observation and step(text) -> (observation, reward, done, info)"))
    options: dict[str, Any] = Field(default_factory=dict, description=(
        "the registered environment's options (or keyword arguments of the gym callable)"))
    max_turns: int | None = Field(default=None, ge=1, le=1000, description=(
        "model turns per episode (default: the environment's own, 8 unless it says)"))
    max_tokens: int = Field(default=1024, ge=1, le=1_000_000, description=(
        "token budget of an episode after its prompt, model and environment tokens together"))
    tool_timeout_s: float = Field(default=10.0, gt=0.0, le=86_400.0, description=(
        "seconds a tool call may take before it is answered with a timeout error"))
    pass_threshold: float = Field(default=1.0, description=(
        "an episode passes the `environment` verdict when its reward is at least this"))
    verdict: bool | None = Field(default=None, description=(
        "judge episodes by the environment's reward (the verdict `environment`); default: "
        "when task.verifiers lists none"))

    @model_validator(mode="after")
    def _one_kind(self) -> "EnvironmentConfig":
        given = [k for k in ("name", "factory", "gym") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of environment.name, environment.factory and "
                             f"environment.gym (got {', '.join(given) or 'none'})")
        if self.options and self.factory:
            raise ValueError("environment.options do not apply to a factory class (TRL's "
                             "contract: a constructor without arguments)")
        return self

    @property
    def label(self) -> str:
        """The environment's name in the store: its registered name, or the class/callable."""
        if self.name:
            return self.name
        return (self.factory or self.gym or "").rsplit(":", 1)[-1]


class TaskConfig(Section):
    source: str = Field(default="", description="registered task source (e.g. arithmetic, jsonl)")
    name: str | None = Field(default=None, max_length=100, description=(
        "what the task is called: runs are named after it (`calculator-1`); a task file's "
        "name by default (tasks/calculator.yaml: calculator), else the source"))
    options: dict[str, Any] = Field(default_factory=dict, description="the source's options")
    verifiers: list[ComponentRef] = Field(default_factory=list, description=(
        "verifiers that judge each attempt (default: the task source's own default_verifiers)"))
    rewards: list[ComponentRef] = Field(default_factory=lambda: [ComponentRef(name="binary")],
                                        description="reward functions (TRL contract)")
    critics: list[ComponentRef] = Field(default_factory=list, description=(
        "critics that explain a failed answer before the model repairs it (refine stage), in "
        "order; their texts are joined"))
    hints: bool = Field(default=False, description=(
        "let critics see the reference answer; off, the reference is hidden from them and "
        "masked in the verdicts they read"))
    environment: EnvironmentConfig | None = Field(default=None, description=(
        "run each attempt as a multi-turn episode in this environment (tools, or a text "
        "world); none: single answers"))


class CurriculumConfig(Section):
    """How the select stage spends a round's prompts from the run's solve history
    (loop.selection). Written alone, `on`/`off` (or true/false) sets `enabled`."""

    enabled: bool = Field(default=False, description=(
        "use each train task's solve history: skip tasks every first try solved when last seen, "
        "take `share` of the prompts from tasks solved sometimes; off: fresh tasks in order"))
    share: float = Field(default=0.5, ge=0.0, le=1.0, description=(
        "share of each round's prompts taken from tasks solved sometimes when last seen "
        "(0 < first tries passed < n), those nearest half solved first; the rest are fresh"))
    groups: Literal["auto", "on", "off"] = Field(default="auto", description=(
        "dynamic sampling for updaters that learn from reward differences within a prompt's "
        "group: also skip tasks no first try solved when last seen (their groups would be all "
        "equal again); auto: when the update method drops all-equal groups (grpo, nft)"))
    extra_share: float = Field(default=0.0, ge=0.0, le=1.0, description=(
        "dynamic sampling: up to this share of prompts_per_round more prompts, sized by the "
        "share of all-equal groups in the last round, so about prompts_per_round groups have "
        "mixed results (costs samples; 0: the round's size is fixed)"))

    @model_validator(mode="before")
    @classmethod
    def _from_switch(cls, value: Any) -> Any:
        # YAML reads a bare `on`/`off` as true/false; the strings come from JSON or env values
        if isinstance(value, bool):
            return {"enabled": value}
        if isinstance(value, str) and value.strip().lower() in ("on", "off"):
            return {"enabled": value.strip().lower() == "on"}
        return value

    @field_validator("groups", mode="before")
    @classmethod
    def _groups_switch(cls, value: Any) -> Any:
        if isinstance(value, bool):  # `groups: on` in YAML
            return "on" if value else "off"
        return value


class SelectConfig(Section):
    prompts_per_round: int = Field(default=128, ge=1, le=1_000_000,
                                   description="training prompts per round")
    replay_share: float = Field(default=0.0, ge=0.0, le=1.0, description=(
        "share of each round's prompts given to tasks with open mistakes (replay); the rest "
        "are fresh"))
    retire_solved_after: int = Field(default=2, ge=0, le=1000, description=(
        "stop replaying a task every first try solved in this many consecutive rounds (0: never)"))
    retire_unsolved_after: int = Field(default=3, ge=0, le=1000, description=(
        "stop replaying a task no attempt solved in this many rounds (0: never)"))
    hint_unsolved_after: int = Field(default=0, ge=0, le=1000, description=(
        "ReGFT: replay a task unsolved in this many rounds with the start of its reference "
        "solution as a hint, when its source has one (0: off)"))
    hint_share: float = Field(default=0.5, gt=0.0, lt=1.0, description=(
        "share of the reference solution's lines shown as the hint"))
    curriculum: CurriculumConfig = Field(default_factory=CurriculumConfig, description=(
        "spend the round's prompts where the solve history says they teach (off by default)"))


class RefineConfig(Section):
    depth: int = Field(default=0, ge=0, le=16, description=(
        "repair turns per failed answer (0: no refine stage); a repair that fails may be "
        "repaired again, up to this depth"))
    budget: int | None = Field(default=None, ge=0, le=10_000_000, description=(
        "cap on extra samples per round (None: one per failed answer per turn); equal-sample "
        "comparisons with best-of-n"))
    template: str = Field(default=(
        "Your answer is not correct.\n{critique}\nPlease solve the problem again and end with "
        "the final answer."), min_length=1, description=(
        "the user turn that asks for a repair; {critique} is replaced by the critics' text"))


class GenerateConfig(Section):
    n: int = Field(default=4, ge=1, le=1024, description="samples per training prompt")
    temperature: float = Field(default=0.7, ge=0.0, le=10.0, description="0 = greedy")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(default=256, ge=1, le=1_000_000, description=(
        "the base model rambles: 256 lets ~95 % of its answers to the default task finish"))
    batch_size: int = Field(default=128, ge=1, le=100_000, description=(
        "rows decoded at once; finished rows leave the batch"))


class EvaluateConfig(Section):
    problems: int | None = Field(default=None, ge=1, description="held-out problems (default: all)")
    max_new_tokens: int = Field(default=256, ge=1, le=1_000_000, description=(
        "same limit as sampling: round 0 is not cut short"))
    batch_size: int = Field(default=100, ge=1, le=100_000)
    samples: int = Field(default=0, ge=0, le=10_000, description=(
        "sampled answers per held-out problem for pass@k, next to the greedy pass@1 (0: off; "
        "costs that many times the greedy pass's generation)"))
    temperature: float | None = Field(default=None, ge=0.0, le=10.0, description=(
        "temperature of the sampled answers (default: generate.temperature)"))
    pass_k: list[int] | None = Field(default=None, description=(
        "the k of pass@k, each 1..samples (default: 1 and samples)"))

    @model_validator(mode="after")
    def _k_within_samples(self) -> "EvaluateConfig":
        if self.pass_k is not None:
            if not self.pass_k:
                raise PydanticCustomError("pass_k",
                                          "pass_k is empty; leave it out for [1, samples]")
            bad = [k for k in self.pass_k if not 1 <= k <= self.samples]
            if bad:
                # PydanticCustomError: the message as it is, without pydantic's "Value error, "
                raise PydanticCustomError("pass_k", "pass_k {k} is not within 1..samples "
                                          "({n}): pass@k needs k <= the samples drawn",
                                          {"k": bad[0], "n": self.samples})
        return self

    @property
    def ks(self) -> list[int]:
        """The k of pass@k, sorted and distinct: pass_k, or 1 and samples; [] when off."""
        if not self.samples:
            return []
        return sorted(set(self.pass_k if self.pass_k is not None else [1, self.samples]))


class VerifyConfig(Section):
    timeout_s: float = Field(default=30.0, gt=0.0, le=86_400.0, description=(
        "time limit of one verifier call (a reward function gets this per completion); past it "
        "the item gets a `timeout` error row and the round goes on"))


class PluginsConfig(Section):
    """Where verifier, reward and critic calls run (loop.plugin_workers). `process`: in a pool
    of worker processes forked once per run, each with a memory cap; a call past its time limit
    (verify.timeout_s) is killed, and a worker that dies (os._exit, a segfault, the OOM killer,
    its memory cap) costs only the items it was working on and is replaced. `in_process`: in
    the loop's own process with a thread time limit (a hang in C code cannot be stopped and a
    crash takes the run down): for debugging a plugin with pdb or prints."""

    isolation: Literal["process", "in_process"] = Field(default="process", description=(
        "process: plugin calls run in supervised worker processes; in_process: in the loop's "
        "own process (debugging)"))
    workers: int = Field(default=1, ge=1, le=256, description=(
        "worker processes kept; the engine makes one plugin call at a time, so more only help "
        "plugins called from several threads"))
    memory_mb: int | None = Field(default=4096, ge=64, le=16 * 2**20, description=(
        "address space a worker may map beyond what it inherits when it is forked, in MiB "
        "(RLIMIT_AS; past it allocations fail with MemoryError and the worker is replaced); "
        "None: no cap"))


class LoraConfig(Section):
    enabled: bool = Field(default=True, description="train a LoRA adapter (false: full fine-tuning)")
    r: int = Field(default=16, ge=1, le=4096)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: str | list[str] = Field(default="all-linear")


class LauncherConfig(ByName):
    """How the train stage runs the update: in the loop's own process (`inprocess`), or in
    processes started by `accelerate launch` (DDP, FSDP, DeepSpeed; loop.train_worker). It is
    stored with the run, so `loop resume` launches the same way."""

    name: Literal["inprocess", "accelerate"] = Field(default="inprocess", description=(
        "inprocess: the updater runs in this process; accelerate: in `accelerate launch` "
        "worker processes"))
    config_file: str | None = Field(default=None, description=(
        "accelerate config YAML (e.g. configs/accelerate/multi-gpu-ddp.yaml); relative paths "
        "are looked up in the working directory, then in this checkout; stored absolute. "
        "None: accelerate's own default config"))
    num_processes: int | None = Field(default=None, ge=1, le=65_536, description=(
        "processes to launch, overriding the config file's num_processes"))
    timeout_s: float | None = Field(default=None, gt=0.0, le=30 * 86_400.0, description=(
        "wall-clock limit of one update; past it the workers are killed and the run fails "
        "(resumable)"))
    stall_timeout_s: float = Field(default=1800.0, gt=0.0, le=30 * 86_400.0, description=(
        "kill the workers when none of them wrote a line for this long (a hung NCCL/gloo "
        "collective prints nothing; a training step prints a progress line)"))

    @field_validator("config_file")
    @classmethod
    def _config_file_exists(cls, value: str | None) -> str | None:
        if value is None:
            return None
        path = find_launcher_config(value)
        try:
            data = read_yaml(path, "accelerate config")
        except ConfigError as exc:  # a field error, so it is reported as train.launcher.config_file
            raise ValueError(str(exc).removeprefix("accelerate config error: ")) from None
        if not isinstance(data.get("distributed_type"), str):
            raise ValueError(f"{path}: not an accelerate config (no distributed_type; "
                             "`accelerate config` writes one)")
        return str(path)

    @model_validator(mode="after")
    def _options_need_a_launcher(self) -> "LauncherConfig":
        if self.name == "inprocess" and (self.config_file or self.num_processes):
            raise ValueError("config_file and num_processes need name: accelerate")
        return self


def find_launcher_config(value: str) -> Path:
    """An accelerate config path made absolute: as given (relative to the working directory),
    else relative to this checkout (so `configs/accelerate/x.yaml` works from anywhere)."""
    path = Path(value).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, _CHECKOUT / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise ValueError(f"{value}: no such file")


_CHECKOUT = Path(__file__).resolve().parent.parent


class TrainConfig(Section):
    method: str = Field(default="sft", min_length=1,
                        description="registered updater: sft, dpo, kto, grpo, nft, redi, ...")
    learning_rate: float | None = Field(default=None, gt=0.0, le=1.0, description=(
        "null: the update method's own rate (on a LoRA adapter: sft 5e-4, kto 1e-4, dpo, grpo, "
        "nft and redi 2e-4); a method's `learning_rate` option wins over both"))
    learning_rate_decay: float = Field(default=1.0, gt=0.0, le=1.0, description=(
        "each round after the first trains at the previous round's rate times this (round r: "
        "rate x decay^(r-1)): large steps while the model learns the task's form, smaller ones "
        "once its own answers are mostly right"))
    epochs: float = Field(default=1.0, gt=0.0, le=1000.0,
                          description="passes over the round's data (grpo/nft/redi: PPO "
                                      "iterations per batch, rounded)")
    max_steps: int | None = Field(default=None, ge=1, le=10_000_000, description=(
        "train exactly this many optimizer steps per round, cycling the round's data; overrides "
        "epochs (equal-compute comparisons of methods)"))
    batch_size: int = Field(default=8, ge=1, le=100_000)
    max_length: int = Field(default=384, ge=8, le=1_000_000, description="tokens per example")
    lora: LoraConfig = Field(default_factory=LoraConfig)
    options: dict[str, Any] = Field(default_factory=dict, description="the updater's own options")
    report_to: list[str] = Field(default_factory=list, description=(
        "TRL/transformers loggers for per-step training curves, passed to the trainer's "
        "report_to: e.g. [wandb] or [tensorboard] (empty: none)"))
    launcher: LauncherConfig = Field(default_factory=LauncherConfig, description=(
        "where the update runs: in process, or under `accelerate launch`"))


DEFAULT_BACKEND = "hf"


class LoopConfig(Section):
    """Everything a run needs; `loop run` validates it before touching the store."""

    name: str | None = Field(default=None, description="a unique, human name for the run")
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    rounds: int = Field(default=3, ge=0, le=10_000, description="training rounds after round 0")
    model: str = Field(default=DEFAULT_MODEL, min_length=1, description="alias, local folder or hub id")
    backend: ComponentRef = Field(default_factory=lambda: ComponentRef(name=DEFAULT_BACKEND))
    task: TaskConfig = Field(default_factory=TaskConfig)
    select: SelectConfig = Field(default_factory=SelectConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    refine: RefineConfig = Field(default_factory=RefineConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    plugins: PluginsConfig = Field(default_factory=PluginsConfig, description=(
        "where verifier, reward and critic calls run: worker processes or this process"))
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="before")
    @classmethod
    def _components_keep_their_default_name(cls, value: Any) -> Any:
        """A component section given without its name is the default component's:
        `--set backend.options.dtype=bfloat16` sets an option of the default backend."""
        if not isinstance(value, dict):
            return value
        for key, field in cls.model_fields.items():
            section = value.get(key)
            if (field.annotation is ComponentRef and isinstance(section, dict)
                    and "name" not in section and field.default_factory is not None):
                value = {**value, key: {"name": field.default_factory().name, **section}}
        return value

    @field_validator("name")
    @classmethod
    def _name_is_not_an_id_lookalike(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or len(value) > 200):
            raise ValueError("must be 1-200 characters")
        return value


# ----- loading ---------------------------------------------------------------------------------

SECTIONS = tuple(LoopConfig.model_fields)


def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _set_path(target: dict[str, Any], dotted: str, value: Any) -> None:
    parts = [p for p in dotted.split(".")]
    if not all(parts):
        raise ConfigError(f"config error: {dotted!r}: empty key part")
    node = target
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


MAX_FILE_BYTES = 1 << 20  # configs and task files are small; a huge one is a mistake


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML would keep the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path, what: str = "config") -> dict[str, Any]:
    """Read a YAML mapping; any problem is a one-line ConfigError naming the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise ConfigError(f"{what} error: {path}: is a folder, not a file")
        if size > MAX_FILE_BYTES:
            raise ConfigError(f"{what} error: {path}: file too large ({size} bytes; the limit "
                              f"is {MAX_FILE_BYTES} bytes)")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} error: {path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} error: {path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{what} error: {path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"{what} error: {path}{where}: {problem}") from None
    if data is None:
        raise ConfigError(f"{what} error: {path}: file is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{what} error: {path}: top level must be a mapping, got {type(data).__name__}")
    return data


def parse_value(text: str) -> Any:
    """A --set or env value: YAML scalars/lists/maps (`1e-4`, `true`, `[a, b]`), else the string."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """LOOP_<SECTION>__<FIELD>[__<SUB>] variables as a nested dict. Other LOOP_* variables (LOOP_DB,
    LOOP_LOAD_PLUGINS, ...) are not config and are left alone."""
    out: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith("LOOP_") or "__" not in key:
            continue
        path = key[len("LOOP_"):].lower().split("__")
        _set_path(out, ".".join(path), parse_value(value))
    return out


def format_validation_error(exc: ValidationError, prefix: str = "config error") -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    extra = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{prefix}: {loc}: {msg}{extra}"


def build_config(
    task: str | None = None,
    config_path: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    sets: list[str] | None = None,
    environ: Mapping[str, str] | None = None,
    task_dirs: list[Path] | None = None,
) -> LoopConfig:
    """Resolve and validate a run config. Raises ConfigError with a one-line message."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    if task:
        section = load_task_file(task, task_dirs)
        data = task_run_settings(section)
        data["task"] = section
    if config_path is not None:
        data = _over(data, read_yaml(Path(config_path)))
    data = _over(data, env_overrides(environ))
    flag_data: dict[str, Any] = {}
    for key, value in (flags or {}).items():
        if value is not None:
            _set_path(flag_data, key, value)
    data = _over(data, flag_data)
    for item in sets or []:
        if "=" not in item:
            raise ConfigError(f"config error: --set {item!r}: expected KEY=VALUE")
        key, _, value = item.partition("=")
        key, value = key.strip(), parse_value(value)
        layer: dict[str, Any] = {}
        _set_path(layer, key, value)
        _drop_options_of_another_method(data, layer)
        _set_path(data, key, value)
    _reject_nonfinite(data, ())
    try:
        return LoopConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def _over(data: dict[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    """`layer` merged over `data`, the options of a method it replaces dropped first."""
    _drop_options_of_another_method(data, layer)
    return _deep_merge(data, layer)


def _drop_options_of_another_method(data: dict[str, Any], layer: Mapping[str, Any]) -> None:
    """`train.options` are the options of `train.method`, and `backend.options` those of
    `backend.name`. A layer (config file, env, flags, one --set) that picks another method or
    backend drops the options set below it (its own, if any, are all that remain): a task file's
    options for sft must not reach `--method kto`, which would reject them or train at sft's
    rate, nor its hf options (`dtype`) a `backend: openai`."""
    for section, key, default in (
            ("train", "method", TrainConfig.model_fields["method"].default),
            ("backend", "name", DEFAULT_BACKEND)):
        chosen = layer.get(section)
        if not isinstance(chosen, Mapping) or key not in chosen:
            continue
        below = data.get(section)
        if isinstance(below, dict) and "options" in below and \
                chosen[key] != below.get(key, default):
            data[section] = {k: v for k, v in below.items() if k != "options"}  # not in place


def task_run_settings(section: dict[str, Any]) -> dict[str, Any]:
    """The `run:` part of a task file, taken out of `section`: config sections the task needs
    beyond loop's defaults (e.g. `select: {prompts_per_round: 48}`), applied below the config
    file, env and flags. A bad one is a ConfigError naming the task file's key."""
    settings = section.pop("run", None)
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        raise ConfigError("config error: the task file's run: must be a mapping of config "
                          "sections (e.g. run: {select: {prompts_per_round: 48}})")
    if "task" in settings:
        raise ConfigError("config error: the task file's run: cannot hold task: (the file is "
                          "the task section)")
    return dict(settings)


def _reject_nonfinite(value: Any, path: tuple[str, ...]) -> None:
    # Free-form option dicts are validated later by each component; NaN is never a good option.
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config error: {'.'.join(path)}: must be a finite number")
    if isinstance(value, dict):
        for key, child in value.items():
            _reject_nonfinite(child, (*path, str(key)))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            _reject_nonfinite(child, (*path, str(i)))


def default_task_dirs() -> list[Path]:
    """Where `loop run NAME` looks for NAME.yaml: ./tasks, then the tasks/ of this checkout."""
    here = Path(__file__).resolve().parent.parent / "tasks"
    dirs = [Path.cwd() / "tasks"]
    if here not in dirs:
        dirs.append(here)
    return dirs


def load_task_file(task: str, task_dirs: list[Path] | None = None) -> dict[str, Any]:
    """The `task:` section for TASK: a YAML path, tasks/TASK.yaml, or a bare task source name."""
    path = Path(task)
    if task.endswith((".yaml", ".yml")) or path.is_file():
        data = read_yaml(path, "task")
    else:
        for folder in task_dirs if task_dirs is not None else default_task_dirs():
            candidate = folder / f"{task}.yaml"
            if candidate.is_file():
                data = read_yaml(candidate, "task")
                break
        else:
            return {"source": task}
    data.setdefault("source", path.stem if path.suffix else task)
    data.setdefault("name", path.stem if path.suffix else task)
    return data
