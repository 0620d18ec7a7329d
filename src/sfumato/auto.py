"""``AutoPipelineFor*``: pick the pipeline class for a task from what a checkpoint is.

A checkpoint's ``model_index.json`` names its pipeline class; that class
belongs to a model family (Stable Diffusion, SDXL, Kandinsky 2.1 / 2.2 / 3),
and the family has one pipeline per task. Kandinsky decoders load as the
family's combined pipeline (prior + decoder), the prior coming from the
pipeline named in the folder's model card, as the hub repos do it.

The tables below are also what the command line asks (torch is not imported
until a pipeline loads): which family and task a checkpoint's pipeline class
has, and which classes a family offers.
"""

from __future__ import annotations

import os
from typing import Any

TEXT2IMAGE, IMAGE2IMAGE, INPAINT = "text2image", "image2image", "inpaint"
# tasks of pipelines that no AutoPipeline picks: priors (prompt -> image embeddings) and ControlNet decoders
PRIOR, CONTROLNET = "prior", "controlnet"

# family -> task -> pipeline class name (the full pipeline a user wants for that task)
FAMILIES: dict[str, dict[str, str]] = {
    "stable-diffusion": {TEXT2IMAGE: "StableDiffusionPipeline", IMAGE2IMAGE: "StableDiffusionImg2ImgPipeline",
                         INPAINT: "StableDiffusionInpaintPipeline"},
    "stable-diffusion-xl": {TEXT2IMAGE: "StableDiffusionXLPipeline", IMAGE2IMAGE: "StableDiffusionXLImg2ImgPipeline",
                            INPAINT: "StableDiffusionXLInpaintPipeline"},
    "kandinsky": {TEXT2IMAGE: "KandinskyCombinedPipeline", IMAGE2IMAGE: "KandinskyImg2ImgCombinedPipeline",
                  INPAINT: "KandinskyInpaintCombinedPipeline"},
    "kandinsky22": {TEXT2IMAGE: "KandinskyV22CombinedPipeline", IMAGE2IMAGE: "KandinskyV22Img2ImgCombinedPipeline",
                    INPAINT: "KandinskyV22InpaintCombinedPipeline"},
    "kandinsky3": {TEXT2IMAGE: "Kandinsky3Pipeline", IMAGE2IMAGE: "Kandinsky3Img2ImgPipeline"},
}
# the decoder-only pipelines of the two-stage families, per task
DECODERS: dict[str, dict[str, str]] = {
    "kandinsky": {TEXT2IMAGE: "KandinskyPipeline", IMAGE2IMAGE: "KandinskyImg2ImgPipeline",
                  INPAINT: "KandinskyInpaintPipeline"},
    "kandinsky22": {TEXT2IMAGE: "KandinskyV22Pipeline", IMAGE2IMAGE: "KandinskyV22Img2ImgPipeline",
                    INPAINT: "KandinskyV22InpaintPipeline"},
}
# the ControlNet pipelines, per task: Kandinsky 2.2's decoders (hint + image embeddings), and Stable Diffusion's
# (a ControlNetModel beside the UNet), which AutoPipelines pick when a controlnet= is passed
CONTROLNETS: dict[str, dict[str, str]] = {
    "kandinsky22": {TEXT2IMAGE: "KandinskyV22ControlnetPipeline", IMAGE2IMAGE: "KandinskyV22ControlnetImg2ImgPipeline"},
    "stable-diffusion": {TEXT2IMAGE: "StableDiffusionControlNetPipeline",
                         IMAGE2IMAGE: "StableDiffusionControlNetImg2ImgPipeline",
                         INPAINT: "StableDiffusionControlNetInpaintPipeline"},
}
# families whose AutoPipelines take a controlnet= component (the reference's "<family>-controlnet" entries)
CONTROLNET_COMPONENT_FAMILIES = ("stable-diffusion",)
# the priors of the two-stage families: prompt (or picture) -> image embeddings
PRIORS: dict[str, tuple[str, ...]] = {
    "kandinsky": ("KandinskyPriorPipeline",),
    "kandinsky22": ("KandinskyV22PriorPipeline", "KandinskyV22PriorEmb2EmbPipeline"),
}


def family_of(class_name: str) -> tuple[str, bool]:
    """The family a pipeline class belongs to, and whether it is a decoder-only pipeline.

    Priors belong to no AutoPipeline (they make image embeddings, not pictures): a ``ValueError``.
    """
    family, is_decoder, task = describe(class_name)
    if task == PRIOR:
        raise ValueError(f"{class_name} is a prior (prompt -> image embeddings); AutoPipelines load the decoder "
                         f"or combined pipeline of the {family!r} family")
    return family, is_decoder


def task_of(class_name: str) -> str:
    """What a pipeline class does: ``text2image``, ``image2image``, ``inpaint``, ``controlnet`` or ``prior``.

    A ControlNet decoder is ``controlnet`` whatever its task; a combined
    pipeline and its decoder have the same task.
    """
    return describe(class_name)[2]


def describe(class_name: str) -> tuple[str, bool, str]:
    """(family, is a decoder without its prior, task) of a pipeline class."""
    for table, is_decoder in ((FAMILIES, False), (DECODERS, True)):
        for family, tasks in table.items():
            for task, name in tasks.items():
                if name == class_name:
                    return family, is_decoder, task
    for family, tasks in CONTROLNETS.items():
        if class_name in tasks.values():
            # a decoder without its prior only in the two-stage families
            return family, family in DECODERS, CONTROLNET
    for family, names in PRIORS.items():
        if class_name in names:
            return family, False, PRIOR
    raise ValueError(f"no AutoPipeline family knows pipeline class {class_name!r}; "
                     f"known families: {sorted(FAMILIES)}")


def _resolve(class_name: str):
    import sfumato

    if class_name not in sfumato._EXPORTS:
        raise NotImplementedError(f"{class_name} is not implemented in sfumato yet")
    return getattr(sfumato, class_name)


class _AutoPipeline:
    task: str = TEXT2IMAGE

    def __init__(self, *args: Any, **kwargs: Any):
        raise EnvironmentError(f"{type(self).__name__} is built with {type(self).__name__}.from_pretrained(path) "
                               f"or {type(self).__name__}.from_pipe(pipeline)")

    @classmethod
    def _target(cls, class_name: str, decoder_only: bool = False, controlnet: bool | None = None) -> type:
        """This task's class in ``class_name``'s family; with ``controlnet`` (None: as ``class_name`` is) the
        family's ControlNet class for it."""
        family, _ = family_of(class_name)
        if family in CONTROLNET_COMPONENT_FAMILIES:
            if controlnet is None:
                controlnet = task_of(class_name) == CONTROLNET
            if controlnet:
                target = CONTROLNETS[family].get(cls.task)
                if target is None:
                    raise NotImplementedError(f"the {family!r} family has no ControlNet {cls.task} pipeline in sfumato "
                                              f"({cls.__name__} from {class_name} with a controlnet)")
                return _resolve(target)
        elif controlnet:
            raise ValueError(f"{cls.__name__} takes controlnet= for Stable Diffusion checkpoints only, "
                             f"not for {class_name}")
        table = DECODERS if decoder_only and family in DECODERS else FAMILIES
        target = table[family].get(cls.task)
        if target is None:
            raise ValueError(f"the {family!r} family has no {cls.task} pipeline ({cls.__name__} from {class_name})")
        return _resolve(target)

    @classmethod
    def from_pretrained(cls, pretrained_model_or_path: str | os.PathLike, **kwargs: Any):
        """Load the checkpoint as this task's pipeline of its family (its ControlNet pipeline with ``controlnet=``)."""
        from .checkpoint import read_json, resolve_folder, split_hub_kwargs

        hub_kwargs = split_hub_kwargs(dict(kwargs))
        folder = resolve_folder(pretrained_model_or_path, allow_patterns=["model_index.json"], **hub_kwargs)
        index = read_json(folder / "model_index.json", what="pipeline index (model_index.json)")
        class_name = index.get("_class_name")
        if not isinstance(class_name, str):
            raise ValueError(f"{str(folder / 'model_index.json')!r} has no _class_name")
        controlnet = _wants_controlnet(kwargs)
        return cls._target(class_name, controlnet=controlnet).from_pretrained(pretrained_model_or_path, **kwargs)

    @classmethod
    def from_pipe(cls, pipeline: Any, **kwargs: Any):
        """This task's pipeline over ``pipeline``'s loaded components (nothing is loaded again).

        ``controlnet=`` a ControlNetModel gives the ControlNet pipeline for the task, ``controlnet=None`` the
        plain one; without it a ControlNet pipeline gives a ControlNet pipeline.
        """
        name = type(pipeline).__name__
        _, is_decoder = family_of(name)
        target = cls._target(name, decoder_only=is_decoder, controlnet=_wants_controlnet(kwargs))
        if type(pipeline) is target and not kwargs:
            return pipeline
        return target.from_pipe(pipeline, **kwargs)


def _wants_controlnet(kwargs: dict[str, Any]) -> bool | None:
    """True / False when the call passes a ControlNet / ``controlnet=None`` (which is then dropped); else None."""
    if "controlnet" not in kwargs:
        return None
    if kwargs["controlnet"] is None:
        del kwargs["controlnet"]
        return False
    return True


class AutoPipelineForText2Image(_AutoPipeline):
    """Text-to-image pipeline of a checkpoint's family (e.g. KandinskyV22CombinedPipeline)."""

    task = TEXT2IMAGE


class AutoPipelineForImage2Image(_AutoPipeline):
    """Image-to-image pipeline of a checkpoint's family (e.g. KandinskyV22Img2ImgCombinedPipeline)."""

    task = IMAGE2IMAGE


class AutoPipelineForInpainting(_AutoPipeline):
    """Inpainting pipeline of a checkpoint's family (e.g. KandinskyV22InpaintCombinedPipeline)."""

    task = INPAINT
