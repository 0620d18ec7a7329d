"""Which Python class a ``[library, class_name]`` entry of ``model_index.json`` means."""

from __future__ import annotations

import importlib
import sys
from typing import Callable

from .errors import CheckpointError

# libraries whose classes we provide ourselves, under the same names
_OWN_LIBRARIES = {"diffusers", "sfumato"}
# the only other libraries a checkpoint may name: importing a module runs its code, so a
# model_index.json must not be able to import whatever is installed
_FOREIGN_LIBRARIES = {"transformers"}

# classes the reference keeps inside one of its pipeline packages rather than at its top level; its
# model_index.json names that package as the library (``["kandinsky", "MultilingualCLIP"]``)
_REFERENCE_PACKAGES = {"MultilingualCLIP": "kandinsky", "StableDiffusionSafetyChecker": "stable_diffusion"}
# our classes built on transformers' (importing them imports transformers)
_ON_TRANSFORMERS = {"MultilingualCLIP", "StableDiffusionSafetyChecker"}

# called once, just before a checkpoint first makes transformers load (see before_transformers)
_BEFORE_TRANSFORMERS: list[Callable[[], None]] = []


def before_transformers(hook: Callable[[], None]) -> Callable[[], None]:
    """Call ``hook`` just before loading a component first imports transformers (now, if it is imported).

    Loading with ``fast_start=True`` may never import it (seconds saved), so
    whoever quiets its logging (the command line) waits for this moment
    instead of importing it up front. Returns a function that withdraws the hook.
    """
    if "transformers" in sys.modules:
        hook()
        return lambda: None
    _BEFORE_TRANSFORMERS.append(hook)
    return lambda: _BEFORE_TRANSFORMERS.remove(hook) if hook in _BEFORE_TRANSFORMERS else None


def _transformers_needed() -> None:
    while _BEFORE_TRANSFORMERS:
        _BEFORE_TRANSFORMERS.pop(0)()


def reference_library(class_name: str) -> str:
    """The library a reference-layout ``model_index.json`` names for our class ``class_name``."""
    return _REFERENCE_PACKAGES.get(class_name, "diffusers")


def resolve_class(library: str | None, class_name: str, component: str = "component") -> type:
    """``("diffusers", "VQModel")`` -> ``sfumato.VQModel``; ``("transformers", X)`` -> ``transformers.X``.

    ``("kandinsky", "MultilingualCLIP")`` (the reference's pipeline package) -> ``sfumato.MultilingualCLIP``.
    Only classes that load from a folder are resolved; transformers' ``Auto*`` classes are refused
    because they can run code shipped inside a checkpoint.
    """
    if not isinstance(class_name, str) or not class_name.isidentifier():
        raise CheckpointError(f"{component!r} names class {class_name!r}; a class name must be a string such as "
                              f"'UNet2DConditionModel'")
    if library in _OWN_LIBRARIES or library is None or _REFERENCE_PACKAGES.get(class_name) == library:
        import sfumato

        if class_name in _ON_TRANSFORMERS:
            _transformers_needed()

        if class_name not in sfumato._EXPORTS:
            raise CheckpointError(
                f"{component!r} names class {class_name!r} from {library!r}, which sfumato does not provide"
            )
        return _loadable(getattr(sfumato, class_name), library, class_name, component)
    if library not in _FOREIGN_LIBRARIES:
        raise CheckpointError(
            f"{component!r} names [{library!r}, {class_name!r}]; a checkpoint may only name sfumato's own classes "
            f"(as 'diffusers') or classes of {sorted(_FOREIGN_LIBRARIES)}"
        )
    if class_name.startswith("Auto"):
        raise CheckpointError(
            f"{component!r} names [{library!r}, {class_name!r}]; name the concrete class (e.g. CLIPTextModel): "
            f"{library}'s Auto classes can run code that ships inside a checkpoint"
        )
    if library == "transformers":
        _transformers_needed()
    try:
        module = importlib.import_module(library)
    except ImportError:
        raise CheckpointError(f"{component!r} needs library {library!r}, which is not installed") from None
    try:
        klass = getattr(module, class_name)
    except AttributeError:
        raise CheckpointError(f"{component!r} names class {class_name!r}, which {library!r} does not have") from None
    return _loadable(klass, library, class_name, component)


def _loadable(klass: object, library: str | None, class_name: str, component: str) -> type:
    """Only classes that can be read from a folder (models, schedulers, tokenizers, processors) are components."""
    if not isinstance(klass, type) or not (hasattr(klass, "from_pretrained") or hasattr(klass, "from_config")):
        raise CheckpointError(f"{component!r} names [{library!r}, {class_name!r}], which is not a class that "
                              f"loads from a folder (a model, scheduler, tokenizer or processor)")
    return klass
