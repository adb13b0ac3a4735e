"""loop-reasoning-gym: every reasoning-gym dataset as a loop task source, written as any
third-party plugin would be.

Registers (by name, selected in a task file or on the command line):
- task sources `rg:<dataset>`, one per dataset of reasoning-gym's registry (`rg:leg_counting`,
  `rg:basic_arithmetic`, ... 106 in reasoning-gym 0.1.25);
- verifier `reasoning_gym`: the dataset's own `score_answer` on the reply's <answer> text.

Importing this module is cheap: the names come from names.py, and reasoning-gym (1.5-2 s to
import) loads on the first `load` or verification.
"""

import loop

from loop_reasoning_gym.names import DATASET_NAMES
from loop_reasoning_gym.tasks import ReasoningGymOptions, ReasoningGymTasks
from loop_reasoning_gym.verifier import ReasoningGymVerifier

__all__ = ["DATASET_NAMES", "ReasoningGymOptions", "ReasoningGymTasks", "ReasoningGymVerifier"]


@loop.hookimpl
def register_tasks(register):
    for dataset in DATASET_NAMES:
        register(ReasoningGymTasks(dataset))


@loop.hookimpl
def register_verifiers(register):
    register(ReasoningGymVerifier())
