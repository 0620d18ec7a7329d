"""Pictures: loading, tiling, PIL / numpy / torch conversion, encoder input, decoder output, masks, depth hints.

Names load on first use, so ``from sfumato.image import load_image`` needs
only PIL; the torch-based parts come in when they are asked for.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "loading": ("load_image", "make_image_grid", "ImageLoadError", "REQUEST_TIMEOUT"),
    "convert": (
        "ImageInput",
        "numpy_to_pil",
        "pil_to_numpy",
        "numpy_to_pt",
        "pt_to_numpy",
        "pt_to_pil",
        "normalize",
        "denormalize",
        "to_pil",
        "to_numpy",
        "to_tensor",
    ),
    "processor": ("ImageProcessor", "ImageProcessorConfig", "VaeImageProcessor", "postprocess", "OUTPUT_TYPES"),
    "sizing": ("downscale_height_and_width", "resize_pil", "resize_tensor", "RESAMPLE_FILTERS", "RESIZE_MODES"),
    "masks": (
        "binarize",
        "preprocess_mask",
        "blur",
        "get_crop_region",
        "apply_overlay",
        "keep_unmasked",
        "prepare_mask_and_masked_image",
        "grow_repaint_region",
        "prepare_mask",
        "kandinsky_latent_mask",
    ),
    "depth": ("load_depth_estimator", "estimate_depth", "depth_hint", "depth_control_image"),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
