"""One backend session kept between the stages that sample from the same model.

A round's evaluation (greedy, then sampled) and the next round's generation sample from the same
checkpoint; opening it once for all of them saves loading the weights (and merging an adapter,
or starting workers) again. The engine asks for a session with `take(model)` and hands it back
with `keep(model, session)` after a use that finished. It calls `release()` before every stage
that does not sample (verifiers, rewards and the trainer get the memory back, as when every
stage opened its own) and when the run stops, finished or not.

Contract:
- `take(model)` returns `(session, since)`: the kept session when it was opened on an equal
  `ModelRef`, else a new one through `opener(model)` (the kept one, if any, closed first);
- a session whose use raised is never kept: the caller closes it (`discard`), since a backend
  interrupted mid-request (Ctrl-C, a failing progress callback) may be in no state to continue;
- `release()` closes the kept session, if any; it is idempotent.

Timing stays per use: `usage(session, since)` is the session's load and model seconds since
`since` (empty for a new session), so a stage that reuses a session reports no load time and only
its own model time.
"""

from __future__ import annotations

from typing import Any, Callable

from loop.schema import ModelRef
from loop.timing import session_timing


class KeptSession:
    def __init__(self, opener: Callable[[ModelRef], Any]):
        self._opener = opener
        self._kept: tuple[ModelRef, Any] | None = None

    def take(self, model: ModelRef) -> tuple[Any, dict[str, float]]:
        """A session on `model` and its timing so far: the kept one if it is on the same model,
        else a new one. The caller owns it until `keep` or `discard`."""
        if self._kept is not None:
            kept_model, session = self._kept
            self._kept = None
            if kept_model == model:
                return session, session_timing(session)
            session.close()
        return self._opener(model), {}

    def keep(self, model: ModelRef, session: Any) -> None:
        """Hold `session` (on `model`) for the next `take`; one is held at a time."""
        self.release()
        self._kept = (model, session)

    @staticmethod
    def discard(session: Any) -> None:
        session.close()

    def release(self) -> None:
        """Close the kept session, freeing its memory (before training, at the run's end)."""
        if self._kept is not None:
            _, session = self._kept
            self._kept = None
            session.close()


def usage(session: Any, since: dict[str, float]) -> dict[str, float]:
    """The session's `load_seconds`/`model_seconds` accrued after the `since` snapshot (a
    `session_timing` taken when the use began; `{}` for a fresh session)."""
    now = session_timing(session)
    return {key: max(0.0, value - since.get(key, 0.0)) for key, value in now.items()}
