"""Turn whatever the engine hands `load()` into the component's own validated Options."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

T = TypeVar("T", bound=BaseModel)


def coerce_options(model: type[T], options: Any) -> T:
    """`options` as an instance of `model`.

    Accepts an instance of `model` (returned as is); any other pydantic model or a mapping
    (validated, so unknown keys and bad values raise pydantic's ValidationError, a ValueError);
    or None (the defaults)."""
    if isinstance(options, model):
        return options
    if options is None:
        return model()
    if isinstance(options, BaseModel):
        options = options.model_dump(exclude_unset=True)
    return model.model_validate(options)
