"""Every call into reasoning-gym goes through here, imported on first use (it takes 1.5-2 s).

reasoning-gym's contract, as its source shows it (reasoning_gym/factory.py, dataset.py, utils.py):
- `create_dataset(name, seed=..., size=..., **config)` builds the dataset's config dataclass from
  the keyword arguments, validates it and returns a `ProceduralDataset`;
- `dataset[i]` is `{"question": str, "answer": str | None, "metadata": dict}`, a pure function of
  (config, seed, i): most datasets draw item i from `Random(seed + i)`, so seeds s and s+1 share
  all but one item: the splits' seeds must be chosen apart;
- `dataset.score_answer(answer, entry)` scores an answer in [0, 1]; `answer` is what
  `utils.extract_answer(reply)` finds inside the reply's last `<answer>...</answer>` tag (None
  when there is none), as reasoning-gym's own eval script does it;
- `utils.SYSTEM_PROMPTS["default"]` is the system prompt its eval script uses.

Entries are not always JSON-exact (tuples in the metadata come back as lists, and score_answer
may compare them: arc_agi and rearc do), so a stored task keeps the *recipe* of its entry
(dataset, config, seed, size, index) and the verifier rebuilds the entry exactly: from the
entries this process already generated when it can, by regenerating item `index` otherwise.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import threading
from dataclasses import dataclass
from typing import Any

# Set by the run, never by the dataset config: they are the splits' own seed and size.
RESERVED_KEYS = ("seed", "size")


def _rg() -> Any:
    import reasoning_gym

    return reasoning_gym


def version() -> str:
    import importlib.metadata

    return importlib.metadata.version("reasoning-gym")


@dataclass(frozen=True)
class Recipe:
    """What makes a dataset: its name, its config (canonical JSON), seed and size."""

    dataset: str
    config_json: str
    seed: int
    size: int

    @classmethod
    def of(cls, dataset: str, config: dict[str, Any], seed: int, size: int) -> "Recipe":
        return cls(dataset, json.dumps(config, sort_keys=True), int(seed), int(size))

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(self.config_json)


def config_keys(name: str) -> list[str]:
    """The dataset's own config keys (its config dataclass's fields, minus seed and size)."""
    _, config_cls = _registered(name)
    return [f.name for f in dataclasses.fields(config_cls) if f.name not in RESERVED_KEYS]


def check_config(name: str, config: dict[str, Any]) -> None:
    """Raise ValueError (one line) for a config reasoning-gym would not take for `name`: a key
    its config class lacks, seed/size (the run sets those), or values that are not plain JSON."""
    for key in RESERVED_KEYS:
        if key in config:
            where = "options.size / options.eval_size" if key == "size" else "the run's seed"
            raise ValueError(f"config.{key} is set by loop ({where}); remove it from config")
    keys = config_keys(name)
    unknown = sorted(set(config) - set(keys))
    if unknown:
        listed = ", ".join(keys) or "none"
        raise ValueError(f"unknown config key{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(map(repr, unknown))} for reasoning-gym dataset {name!r}; "
                         f"valid keys: {listed}")
    try:
        same = json.loads(json.dumps(config, allow_nan=False)) == config
    except (TypeError, ValueError):
        same = False
    if not same:
        raise ValueError("config values must be plain JSON (strings, finite numbers, booleans, "
                         "null, lists and mappings with string keys)")


@functools.lru_cache(maxsize=64)
def dataset(recipe: Recipe) -> Any:
    """The reasoning-gym dataset for `recipe` (built once per process). Raises ValueError (one
    line) when reasoning-gym rejects the config."""
    _registered(recipe.dataset)
    kwargs = _config_objects(recipe.dataset, recipe.config)
    try:
        return _rg().create_dataset(recipe.dataset, seed=recipe.seed, size=recipe.size, **kwargs)
    except (TypeError, ValueError, AssertionError, KeyError) as exc:
        raise ValueError(f"reasoning-gym rejected the config of {recipe.dataset!r}: "
                         f"{one_line(exc)}") from None


# Entries generated in this process, by (recipe, index): the verifier of a run finds the entries
# the task source made for it here (the engine loads tasks in the process that verifies them),
# exact and free, and regenerates only what it does not find (a store read elsewhere).
_ENTRIES: dict[tuple[Recipe, int], dict[str, Any]] = {}
_ENTRIES_LOCK = threading.Lock()


def generate(recipe: Recipe) -> list[dict[str, Any]]:
    """Items 0..size-1 of the recipe's dataset, in order (remembered for `entry`)."""
    data = dataset(recipe)
    entries = [data[i] for i in range(recipe.size)]
    with _ENTRIES_LOCK:
        for index, item in enumerate(entries):
            _ENTRIES[(recipe, index)] = item
    return entries


def entry(recipe: Recipe, index: int) -> tuple[Any, dict[str, Any]]:
    """(dataset, its item `index`): the exact entry score_answer expects."""
    data = dataset(recipe)
    with _ENTRIES_LOCK:
        found = _ENTRIES.get((recipe, index))
    if found is None:
        found = data[index]
        with _ENTRIES_LOCK:
            _ENTRIES[(recipe, index)] = found
    return data, found


def forget_entries() -> None:
    """Drop the remembered entries and datasets (tests: force the regenerating path)."""
    with _ENTRIES_LOCK:
        _ENTRIES.clear()
    dataset.cache_clear()


def system_prompt(choice: str | None) -> str | None:
    """A name from reasoning_gym.utils.SYSTEM_PROMPTS as its text; other text as is; None or ""
    as no system prompt."""
    if not choice:
        return None
    from reasoning_gym.utils import SYSTEM_PROMPTS

    return SYSTEM_PROMPTS.get(choice, choice)


def system_prompt_names() -> list[str]:
    from reasoning_gym.utils import SYSTEM_PROMPTS

    return sorted(SYSTEM_PROMPTS)


def extract_answer(completion: str, tag: str = "answer") -> str | None:
    """reasoning-gym's own extraction: the text of the last <tag>...</tag>, stripped; None if
    there is none."""
    from reasoning_gym.utils import extract_answer as rg_extract

    return rg_extract(completion, tag_name=tag)


def json_safe(value: Any) -> Any:
    """`value` as plain JSON data (for the store): tuples and sets become lists, mapping keys
    strings, numpy scalars numbers, non-finite floats and anything else their str()."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (set, frozenset)):
        items = [json_safe(v) for v in value]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        try:
            return json_safe(item())
        except (TypeError, ValueError):
            pass
    return str(value)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _registered(name: str) -> tuple[Any, Any]:
    from reasoning_gym.factory import DATASETS

    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"reasoning-gym {version()} has no dataset {name!r}") from None


def _config_objects(name: str, config: dict[str, Any]) -> dict[str, Any]:
    """The config as create_dataset wants it. Only `composite` needs objects: its `datasets` is
    a list of DatasetSpec (name, weight, config), which YAML gives as mappings."""
    if name != "composite" or "datasets" not in config:
        return dict(config)
    from reasoning_gym.composite import DatasetSpec

    specs = config["datasets"]
    if not isinstance(specs, list) or not all(isinstance(s, dict) for s in specs):
        raise ValueError("composite: config.datasets must be a list of {name, weight, config}")
    try:
        converted = [DatasetSpec(**{"config": {}, "weight": 1.0, **spec}) for spec in specs]
    except TypeError as exc:
        raise ValueError(f"composite: config.datasets: {one_line(exc)}") from None
    return {**config, "datasets": converted}
