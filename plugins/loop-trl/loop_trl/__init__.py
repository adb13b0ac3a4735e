"""loop-trl: update methods built on TRL trainers.

`sft` (rejection-sampling fine-tuning), `dpo` and `kto` (preference trainers), `grpo` (TRL's
GRPO loss on the round's stored groups), and the negative-aware `nft` and `redi`.
"""

import loop
from loop_trl.grpo import GRPOUpdater
from loop_trl.negative import NFTUpdater, REDIUpdater
from loop_trl.preference import DPOUpdater, KTOUpdater
from loop_trl.sft import SFTUpdater


@loop.hookimpl
def register_updaters(register):
    for updater in (SFTUpdater(), DPOUpdater(), KTOUpdater(), GRPOUpdater(), NFTUpdater(),
                    REDIUpdater()):
        register(updater)
