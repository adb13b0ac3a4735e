"""The stages of a round, in the engine's order (loop.rounds runs them; loop.timing and the
summaries read their stats in this order)."""

TRAIN_STAGES = ("select", "generate", "verify", "refine", "reward", "mistakes", "train",
                "evaluate")
ROUND0_STAGES = ("evaluate",)  # round 0 evaluates the untouched model, nothing else
