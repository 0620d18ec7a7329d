"""``BaseOutput``: the result objects models, schedulers and pipelines return.

A dataclass whose fields are also reachable as ``out[0]`` / ``out["images"]``
and as a tuple through ``to_tuple()``, as diffusers users expect. Fields that
are ``None`` are left out of the tuple view.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator


class BaseOutput:
    """Mixin for ``@dataclass`` outputs: attribute, key, index and tuple access."""

    def _present(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    def to_tuple(self) -> tuple:
        return tuple(self._present().values())

    def keys(self):
        return self._present().keys()

    def values(self):
        return self._present().values()

    def items(self):
        return self._present().items()

    def __getitem__(self, key: int | slice | str) -> Any:
        if isinstance(key, str):
            present = self._present()
            if key not in present:
                raise KeyError(f"{type(self).__name__} has no field {key!r}; it has {list(present)}")
            return present[key]
        return self.to_tuple()[key]

    def __contains__(self, key: str) -> bool:
        return key in self._present()

    def __iter__(self) -> Iterator[str]:
        # like the reference's OrderedDict-based outputs: iterating gives field names
        return iter(self._present())

    def __len__(self) -> int:
        return len(self._present())
