"""loop-hf: the transformers generation backend (`hf`) and model resolution for `loop`."""

import loop
from loop_hf.backend import HFBackend


@loop.hookimpl
def register_backends(register):
    register(HFBackend())
