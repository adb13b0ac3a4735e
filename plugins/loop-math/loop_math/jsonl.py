"""The `jsonl` task source: word problems from GSM8K-style JSON Lines files.

One JSON object per line, e.g. `{"question": "...", "answer": "...reasoning...\\n#### 72"}`. The
reference is the text after the last "####" (stripped, thousands commas removed); an answer with no
"####" is the reference as a whole. Blank lines are skipped. See the plugin README for the format.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

import loop

DEFAULT_SYSTEM_PROMPT = "Solve the problem step by step. End with: The answer is <number>."
MAX_FIELD_CHARS = 100_000  # a longer question is a broken file, not a word problem


class JsonlOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    path: str = Field(min_length=1, description=(
        "JSONL file of problems (relative to the working directory); the train split, and the "
        "eval split too unless eval_path is given"))
    eval_path: str | None = Field(default=None, min_length=1, description=(
        "optional JSONL file of held-out problems; rows whose question is also in it are dropped "
        "from train"))
    eval_size: int = Field(default=200, ge=1, le=1_000_000, description=(
        "held-out problems, by a seeded shuffle: from eval_path if given, else split off path"))
    train_size: int | None = Field(default=None, ge=1, description=(
        "cap on training problems (default: all that are not held out)"))
    system_prompt: str | None = Field(default=DEFAULT_SYSTEM_PROMPT, max_length=10_000,
                                      description="system message; null or empty for none")
    question_field: str = Field(default="question", min_length=1,
                                description="JSON key holding the question text")
    answer_field: str = Field(default="answer", min_length=1, description=(
        'JSON key holding the answer; the reference is what follows "####", or all of it'))

    @model_validator(mode="after")
    def _fields_differ(self) -> "JsonlOptions":
        if self.question_field == self.answer_field:
            raise ValueError("question_field and answer_field must differ")
        return self


def reference_of(answer: str) -> str:
    """The reference in a GSM8K answer: after the last "####", stripped, commas removed
    ("...\\n#### 1,234" -> "1234"); without "####", the whole answer stripped."""
    if "####" in answer:
        return answer.rsplit("####", 1)[1].strip().replace(",", "")
    return answer.strip()


def read_rows(path: str, options: JsonlOptions) -> list[dict[str, Any]]:
    """Parse `path` into [{"line", "question", "answer", "reference", "row"}] in file order;
    `row` is the line's whole JSON object as it is in the file, every field kept.

    Every problem raises ValueError with one line naming the file (and line, where there is one):
    missing or unreadable file, invalid UTF-8 or JSON, a non-object row (`loop.read_jsonl`), a
    missing/empty/non-text field, or a file with no rows."""
    rows = []
    for number, obj in loop.read_jsonl(path):
        where = f"{path} line {number}"
        question = _text_field(obj, options.question_field, where)
        answer = _text_field(obj, options.answer_field, where)
        reference = reference_of(answer)
        if not reference:
            raise ValueError(f"{where}: empty answer after '####'")
        rows.append({"line": number, "question": question, "answer": answer,
                     "reference": reference, "row": obj})
    return rows


def _text_field(obj: dict[str, Any], key: str, where: str) -> str:
    if key not in obj:
        raise ValueError(f"{where}: missing field {key!r}")
    value = obj[key]
    # Numbers are accepted (some datasets store answers as 72); bool is an int subclass, not text.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{where}: field {key!r} is empty")
    if len(value) > MAX_FIELD_CHARS:
        raise ValueError(f"{where}: field {key!r} is longer than {MAX_FIELD_CHARS} characters")
    return value


class JsonlTasks(loop.TaskSource):
    """Word problems from a JSONL file (GSM8K format by default).

    Contract of `load(options, seed)`:
    - rows with the same question are kept once (first occurrence), so no question is in both
      splits;
    - without eval_path: a seeded shuffle of the rows, the first eval_size are eval, the rest
      train (capped at train_size), so eval never depends on train_size; at least one row must
      be left for train;
    - with eval_path: eval is eval_size rows drawn the same way from that file, and train is every
      row of path whose question is not in eval_path (shuffled, capped at train_size);
    - Task.prompt is [system (if set), user=question]; reference as in `reference_of`; metadata
      holds the file line, the full answer text (the worked solution, useful for SFT) and the
      whole row (`row`: every field of the line, under the file's own keys), which an
      environment's `reset(**row)` gets;
    - bad input raises ValueError with one line naming the file and line.
    """

    name = "jsonl"
    default_verifiers: ClassVar[list[str]] = ["math"]
    Options = JsonlOptions

    def load(self, options: Any, seed: int) -> loop.TaskSet:
        opts = loop.coerce_options(JsonlOptions, options)
        rows = _dedupe(read_rows(opts.path, opts))
        held_out = None if opts.eval_path is None else _dedupe(read_rows(opts.eval_path, opts))
        # With eval_path, a question anywhere in the eval file is withheld from training, even if
        # it is not among the eval_size drawn: the file as a whole is declared held-out.
        train_rows, eval_rows = loop.split_tasks(
            rows, eval_size=opts.eval_size, seed=seed, train_size=opts.train_size,
            held_out=held_out, key=_question, shown=opts.path,
            held_out_shown=opts.eval_path or "", advice="lower eval_size or give eval_path")
        return loop.TaskSet(train=[self._task(opts, row, "train") for row in train_rows],
                            eval=[self._task(opts, row, "eval") for row in eval_rows])

    def _task(self, opts: JsonlOptions, row: dict[str, Any], split: str) -> loop.Task:
        messages = []
        if opts.system_prompt:
            messages.append({"role": "system", "content": opts.system_prompt})
        messages.append({"role": "user", "content": row["question"]})
        return loop.Task(source=self.name, split=split, prompt=messages,
                         reference=row["reference"],
                         metadata={"line": row["line"], loop.SOLUTION_KEY: row["answer"],
                                   "row": row["row"]})


def _question(row: dict[str, Any]) -> str:
    return row["question"]


def _dedupe(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """First occurrence of each question, so no question is in both splits."""
    return loop.unique_by(rows, _question)
