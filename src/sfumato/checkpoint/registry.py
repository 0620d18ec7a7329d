"""Which Python class a ``[library, class_name]`` entry of ``model_index.json`` means."""

from __future__ import annotations

import importlib

from .errors import CheckpointError

# libraries whose classes we provide ourselves, under the same names
_OWN_LIBRARIES = {"diffusers", "sfumato"}
# the only other libraries a checkpoint may name: importing a module runs its code, so a
# model_index.json must not be able to import whatever is installed
_FOREIGN_LIBRARIES = {"transformers"}

# classes the reference keeps inside one of its pipeline packages rather than at its top level; its
# model_index.json names that package as the library (``["kandinsky", "MultilingualCLIP"]``)
_REFERENCE_PACKAGES = {"MultilingualCLIP": "kandinsky"}


def reference_library(class_name: str) -> str:
    """The library a reference-layout ``model_index.json`` names for our class ``class_name``."""
    return _REFERENCE_PACKAGES.get(class_name, "diffusers")


def resolve_class(library: str | None, class_name: str, component: str = "component") -> type:
    """``("diffusers", "VQModel")`` -> ``sfumato.VQModel``; ``("transformers", X)`` -> ``transformers.X``.

    ``("kandinsky", "MultilingualCLIP")`` (the reference's pipeline package) -> ``sfumato.MultilingualCLIP``.
    """
    if library in _OWN_LIBRARIES or library is None or _REFERENCE_PACKAGES.get(class_name) == library:
        import sfumato

        if class_name not in sfumato._EXPORTS:
            raise CheckpointError(
                f"{component!r} names class {class_name!r} from {library!r}, which sfumato does not provide"
            )
        return getattr(sfumato, class_name)
    if library not in _FOREIGN_LIBRARIES or not isinstance(class_name, str) or not class_name.isidentifier():
        raise CheckpointError(
            f"{component!r} names [{library!r}, {class_name!r}]; a checkpoint may only name sfumato's own classes "
            f"(as 'diffusers') or classes of {sorted(_FOREIGN_LIBRARIES)}"
        )
    try:
        module = importlib.import_module(library)
    except ImportError:
        raise CheckpointError(f"{component!r} needs library {library!r}, which is not installed") from None
    try:
        return getattr(module, class_name)
    except AttributeError:
        raise CheckpointError(f"{component!r} names class {class_name!r}, which {library!r} does not have") from None
