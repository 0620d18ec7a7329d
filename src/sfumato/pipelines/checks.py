"""Input checks shared by all pipelines: each error names the argument, what it got and what it needs."""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Sequence

import torch


def required(name: str, value: Any) -> Any:
    if value is None:
        raise ValueError(f"{name} is required, got None")
    return value


def prompts(name: str, value: Any) -> list[str]:
    """A prompt or a non-empty list of prompts -> a list."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"{name} must be a string or a non-empty list of strings, got {value!r:.80}")


def second_prompts(name: str, value: Any, count: int) -> list[str] | None:
    """A second text encoder's prompts (SDXL's ``prompt_2``): None (or "") for the first encoder's, else one for
    all or one per prompt."""
    if value is None or value == "":
        return None
    texts = prompts(name, value)
    if len(texts) == 1:
        return texts * count
    if len(texts) != count:
        raise ValueError(f"{name} has {len(texts)} entries, but there are {count} prompts; pass one or one per prompt")
    return texts


def negative_prompts(value: Any, count: int) -> list[str]:
    """The negative prompts for ``count`` prompts: "" when none, one for all, or one per prompt."""
    if value is None:
        return [""] * count
    negatives = prompts("negative_prompt", value)
    if len(negatives) == 1:
        return negatives * count
    if len(negatives) != count:
        raise ValueError(f"negative_prompt has {len(negatives)} entries, but prompt has {count}; "
                         f"pass one negative prompt or one per prompt")
    return negatives


def positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def steps_fit(num_inference_steps: int, scheduler: Any) -> None:
    """No more inference steps than the schedule has training steps."""
    train_steps = getattr(getattr(scheduler, "config", None), "num_train_timesteps", None)
    if isinstance(train_steps, int) and num_inference_steps > train_steps:
        raise ValueError(f"num_inference_steps={num_inference_steps} is more than the scheduler's "
                         f"num_train_timesteps={train_steps}; use at most {train_steps}")


def number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def finite(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """NaN or infinite values would run through every model and give black or NaN pictures silently."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains NaN or infinite values; every value must be a finite number")
    return tensor


def one_of(name: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def size(height: Any, width: Any, multiple: int) -> None:
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1 or value % multiple:
            hint = ""
            if isinstance(value, numbers.Integral) and value > 0:
                lower = max(multiple, value // multiple * multiple)
                hint = f" (e.g. {lower} or {lower + multiple})"
            raise ValueError(
                f"{name} must be a positive multiple of {multiple} for this autoencoder and UNet, got {value!r}{hint}"
            )


def strength(value: Any, num_inference_steps: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ValueError(f"strength must be a number in [0, 1], got {value!r}")
    if int(num_inference_steps * value) < 1:
        raise ValueError(
            f"strength={value} with num_inference_steps={num_inference_steps} leaves no denoising step to run; "
            f"raise strength or num_inference_steps so that their product is at least 1"
        )


def as_batch(name: str, value: Any, ndim: int) -> torch.Tensor:
    """A tensor or a list of tensors -> one tensor with ``ndim`` dimensions."""
    if isinstance(value, (list, tuple)):
        if not value or not all(isinstance(v, torch.Tensor) for v in value):
            raise TypeError(f"{name} must be a tensor or a non-empty list of tensors, got {value!r:.80}")
        value = torch.cat(list(value), dim=0)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(value.shape)}")
    if value.shape[0] == 0:
        raise ValueError(f"{name} has batch size 0; pass at least one")
    return finite(name, value)


def embeds_pair(image_embeds: Any, negative_image_embeds: Any) -> tuple[torch.Tensor, torch.Tensor]:
    embeds = as_batch("image_embeds", image_embeds, 2)
    negative = as_batch("negative_image_embeds", negative_image_embeds, 2)
    if negative.shape[1] != embeds.shape[1]:
        raise ValueError(
            f"negative_image_embeds has width {negative.shape[1]}, but image_embeds has {embeds.shape[1]}"
        )
    if negative.shape[0] != embeds.shape[0]:
        if negative.shape[0] != 1:
            raise ValueError(
                f"negative_image_embeds has batch size {negative.shape[0]}, but image_embeds has "
                f"{embeds.shape[0]}; pass one negative embedding or one per image embedding"
            )
        negative = negative.expand_as(embeds)
    return embeds, negative


def embeds_width(name: str, embeds: torch.Tensor, width: int | None) -> None:
    if width is not None and embeds.shape[-1] != width:
        raise ValueError(f"{name} has width {embeds.shape[-1]}, but this UNet takes image embeddings of width {width}")


def batch_matches(name: str, got: int, batch: int) -> None:
    if got not in (1, batch):
        raise ValueError(
            f"{name} has batch size {got}, but image_embeds has {batch}; pass one {name} for all or one per embedding"
        )


def hint(value: Any, batch: int, size: tuple[int, int]) -> torch.Tensor:
    value = as_batch("hint", value, 4)
    channels = 3
    if value.shape[1] != channels:
        raise ValueError(f"hint must have {channels} channels (N3HW, e.g. a depth map as RGB), got shape "
                         f"{tuple(value.shape)}")
    if tuple(value.shape[-2:]) != tuple(size):
        raise ValueError(f"hint has size {tuple(value.shape[-2:])} (height, width), but this height and width "
                         f"need {tuple(size)}")
    batch_matches("hint", value.shape[0], batch)
    return value.expand(batch, *value.shape[1:]) if value.shape[0] == 1 else value


def generators(value: Any, samples: int) -> None:
    """``generator``: None, one ``torch.Generator``, or a list of exactly one per sample."""
    if value is None or isinstance(value, torch.Generator):
        return
    if isinstance(value, (list, tuple)) and value and all(isinstance(g, torch.Generator) for g in value):
        if len(value) not in (1, samples):
            raise ValueError(f"generator is a list of {len(value)} generators, but this call makes {samples} samples; "
                             f"pass one generator or exactly {samples}")
        return
    raise TypeError(f"generator must be a torch.Generator or a list of them, got {value!r:.80}")


def callback_names(pipeline: Any, names: Sequence[str] | None) -> list[str]:
    """The tensor names a ``callback_on_step_end`` asks for; each must be one the pipeline offers."""
    allowed = getattr(pipeline, "_callback_tensor_inputs", ["latents"])
    wrong = [n for n in (names or []) if n not in allowed]
    if wrong:
        raise ValueError(
            f"callback_on_step_end_tensor_inputs has {wrong}, but {type(pipeline).__name__} offers {allowed}"
        )
    return list(names or ["latents"])


def callable_or_none(name: str, value: Any) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be a function or None, got {type(value).__name__}")


def merge_legacy_callback(callback_on_step_end: Callable | None, callback: Callable | None, callback_steps: int,
                          scheduler: Any) -> Callable | None:
    """Support the older ``callback(step, t, latents)`` every ``callback_steps`` steps."""
    if callback is None:
        return callback_on_step_end
    positive_int("callback_steps", callback_steps)
    order = getattr(scheduler, "order", 1)

    def both(pipeline, i, t, tensors):
        updates = callback_on_step_end(pipeline, i, t, tensors) if callback_on_step_end else {}
        if i % callback_steps == 0:
            callback(i // order, t, (updates or {}).get("latents", tensors["latents"]))
        return updates

    return both


def custom_schedule(timesteps: Any, sigmas: Any) -> None:
    """``timesteps`` or ``sigmas`` (one of them at most): a non-empty list of finite numbers."""
    if timesteps is not None and sigmas is not None:
        raise ValueError("pass timesteps or sigmas, not both: each sets the whole schedule")
    for name, values in (("timesteps", timesteps), ("sigmas", sigmas)):
        if values is None:
            continue
        if isinstance(values, torch.Tensor):
            values = values.tolist()
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"{name} must be a non-empty list of numbers, got {values!r:.80}")
        for value in values:
            number(name, value)


def latents(value: torch.Tensor, expected: Sequence[int], what: str = "this call") -> None:
    """Caller-given starting latents must have the shape the pipeline would draw (channels named first)."""
    expected = tuple(expected)
    if value.ndim != len(expected):
        raise ValueError(f"latents must have shape {expected} for {what}, got {tuple(value.shape)}")
    if value.shape[1] != expected[1]:
        raise ValueError(f"latents have {value.shape[1]} channels, but this pipeline's latent space has "
                         f"{expected[1]} (shape {expected}); latents from another model cannot be used here")
    if tuple(value.shape) != expected:
        raise ValueError(f"latents have shape {tuple(value.shape)}, but {what} needs {expected} "
                         f"(samples, channels, height / scale, width / scale)")


def prompt_inputs(prompt: Any, prompt_embeds: Any, negative_prompt: Any, negative_prompt_embeds: Any, *,
                  width: int | None) -> tuple[list[str] | None, torch.Tensor | None, list[str] | None,
                                              torch.Tensor | None, int]:
    """A prompt given as text or as embeddings (one way each), its negative likewise, checked against each other.

    Returns ``(prompts, prompt_embeds, negative_prompts, negative_prompt_embeds, count)``: text as lists
    (negative prompts default to "" for every prompt), embeddings as 3-d tensors of ``width``, the other
    of each pair None, and the number of prompts.
    """
    if prompt is not None and prompt_embeds is not None:
        raise ValueError("pass prompt or prompt_embeds, not both: prompt_embeds are an already encoded prompt")
    if prompt is None and prompt_embeds is None:
        raise ValueError("prompt or prompt_embeds is required")
    if negative_prompt is not None and negative_prompt_embeds is not None:
        raise ValueError("pass negative_prompt or negative_prompt_embeds, not both")
    texts = embeds = negative_texts = negative_embeds = None
    if prompt_embeds is not None:
        embeds = _text_embeds("prompt_embeds", prompt_embeds, width)
        count = embeds.shape[0]
    else:
        texts = prompts("prompt", prompt)
        count = len(texts)
    if negative_prompt_embeds is None:
        negative_texts = negative_prompts(negative_prompt, count)
        return texts, embeds, negative_texts, None, count
    negative_embeds = _text_embeds("negative_prompt_embeds", negative_prompt_embeds, width)
    if embeds is not None and negative_embeds.shape != embeds.shape:
        raise ValueError(f"negative_prompt_embeds has shape {tuple(negative_embeds.shape)}, but prompt_embeds "
                         f"has {tuple(embeds.shape)}; they must have the same shape")
    if negative_embeds.shape[0] != count:
        raise ValueError(f"negative_prompt_embeds has {negative_embeds.shape[0]} rows, but there are {count} "
                         f"prompts; pass one negative embedding per prompt")
    return texts, embeds, None, negative_embeds, count


def _text_embeds(name: str, value: Any, width: int | None) -> torch.Tensor:
    embeds = as_batch(name, value, 3)
    if isinstance(width, int) and embeds.shape[-1] != width:
        raise ValueError(f"{name} has width {embeds.shape[-1]}, but this UNet reads text embeddings of width {width}")
    return embeds
