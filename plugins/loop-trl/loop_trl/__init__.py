"""loop-trl: update methods built on TRL trainers (`sft`: rejection-sampling fine-tuning)."""

import loop
from loop_trl.sft import SFTUpdater


@loop.hookimpl
def register_updaters(register):
    register(SFTUpdater())
