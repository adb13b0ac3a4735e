"""TextArena's single-player games as gym-style text environments for loop, unchanged.

TextArena (`pip install textarena`) plays its games through `reset(num_players, seed)`,
`get_observation() -> (player, messages)`, `step(action) -> (done, info)` and `close() ->
(rewards, game_info)`. loop's gym adapter wants `reset() -> observation` and `step(text) ->
(observation, reward, done, info)`; this file is the few lines between the two. The game logic
(the secret, the hints, what counts as a valid move, the reward) is TextArena's own.

    task:
      source: jsonl
      options: {path: games.jsonl}            # {"question": "...", "answer": "1", "seed": 7}
      environment:
        gym: "docs/examples/textarena_games.py:make"
        options: {env_id: GuessTheNumber-v0-raw}
        max_turns: 10

`make(env_id, seed)` gets `seed` from each task's row (every field of a jsonl row reaches
`make` as far as it takes it), so each problem is one fixed game. Use a game's `-raw` id: its
observations are only what is new since the model's last turn (TextArena's wrapped ids repeat
the whole history every turn, which a chat already holds). The model's turn is its action as
it is (GuessTheNumber reads the number in square brackets, `[7]`). The reward is the game's
final one for player 0 (1 for a win; TextArena's partial credit otherwise), every earlier step
0; with `pass_threshold: 1` the `environment` verdict passes a win. The games that need no
download at run time (GuessTheNumber, Mastermind, Minesweeper, TowerOfHanoi, ...) work
offline; the word games fetch NLTK corpora when they start.

Note: TextArena seeds Python's global `random` with the game's seed (`random.seed(seed)`).
"""

from __future__ import annotations

from typing import Any

import textarena


class TextArenaGame:
    """One TextArena game for one player, as a gym-style text environment."""

    def __init__(self, env_id: str, seed: int):
        self.env = textarena.make(env_id)
        self.seed = seed

    def reset(self) -> str:
        self.env.reset(num_players=1, seed=self.seed)
        return self._observation()

    def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        done, info = self.env.step(action)
        if not done:
            return self._observation(), 0.0, False, dict(info or {})
        rewards, game_info = self.env.close()
        return "", float(rewards[0]), True, dict(game_info.get(0, {}))

    def _observation(self) -> str:
        """What the game said since the model's last turn: its messages, not the model's own
        action echoed back."""
        _, messages = self.env.get_observation()
        return "\n".join(text for _, text, kind in messages
                         if kind != textarena.ObservationType.PLAYER_ACTION)


def make(env_id: str = "GuessTheNumber-v0-raw", seed: int = 0) -> TextArenaGame:
    """A fresh game per episode; `seed` (from the task's row) fixes it."""
    return TextArenaGame(env_id, int(seed))
