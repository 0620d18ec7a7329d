r"""Prompt weighting for every family with a text encoder, and long prompts past the encoder's limit.

Syntax (AUTOMATIC1111's web UI semantics)
------------------------------------------

================  ==========================================================
``(word:1.3)``    ``word`` weighs 1.3 (any number: ``(a b:0.5)``, ``(x: -1 )``)
``(word)``        x 1.1
``[word]``        / 1.1
nesting           multiplies: ``((word))`` is 1.21, ``((word:1.5))`` 1.65,
                  ``[(word)]`` 1.0
``\(`` ``\)``     literal brackets (also ``\[`` ``\]``), ``\\`` a literal
                  backslash, ``\:`` a literal colon inside ``( )``
================  ==========================================================

Everything else is text with weight 1; a backslash before any other
character is kept as it is, and so is a ``:`` outside brackets. Stricter than
the web UI, which reads mistakes as text, malformed syntax raises
``PromptSyntaxError`` (a ``ValueError``) naming the prompt and the 0-based
position: a ``)`` or ``]`` that closes nothing or the wrong bracket, a bracket
never closed, ``(word:abc)`` (a ``:`` inside ``( )`` not followed by a number and
``)``), and ``:`` inside ``[ ]`` (the web UI's prompt editing, ``[from:to:when]``,
is not supported). ``AND`` and ``BREAK`` are plain words here.

How weights apply (the established tools' method)
-------------------------------------------------

Each fragment is tokenized on its own and every token gets its fragment's
weight (special and padding tokens weigh 1). The family's text encoder runs on
the tokens as its plain prompt path runs it; then each token's output is
multiplied by its weight and each prompt's output rescaled so that its mean is
the unweighted mean (``apply_weights``; per prompt and per chunk, over the
tokens the attention mask keeps where the family masks its text). A prompt
without syntax is therefore bit-identical to the plain prompt.

Long prompts (CLIP families, whose encoders read 77 tokens): the weighted path
splits the tokens into chunks of 75, each with its own start and end token,
encodes each chunk, and puts the token states side by side (154, 231, ...
tokens), as the web UI and Compel do, instead of cutting the prompt; the
negative prompt gets as many chunks (empty ones padded). Chunks are cut every
75 tokens (the web UI's moving of a cut back to a comma is not done). This
applies to Stable Diffusion, both SDXL encoders and the Kandinsky 2.1 decoder's
multilingual encoder. Pooled outputs (SDXL's second encoder, the 2.1
decoder's and the priors' projected text embedding) come from the first chunk,
unweighted, as the web UI and Compel make SDXL's. The Kandinsky 2.1 / 2.2
prior reads exactly 77 text tokens (its positional embedding is that long), so
there a longer prompt is cut with a warning, as the plain path cuts it;
Kandinsky 3's T5 reads its pipeline's 128 tokens likewise.

Use
---

``weighted_embeddings(pipe, prompt, negative_prompt=None)`` returns the keyword
arguments ``pipe`` takes instead of ``prompt`` / ``negative_prompt``::

    from sfumato.prompts import weighted_embeddings
    image = pipe(**weighted_embeddings(pipe, "a (red:1.4) cat", "[blurry]"), generator=generator).images[0]

``prompt_keywords(pipe, prompt, negative_prompt)`` is what a caller with text
(the command line) passes: the plain ``prompt`` keywords where weighting
changes nothing, else ``weighted_embeddings``'. ``parse_prompt(text)`` gives
the fragments and weights; ``apply_weights`` the
weighting of encoder outputs on their own. Embeddings from Compel are
accepted as ``prompt_embeds`` like any others.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "syntax": ("PromptSyntaxError", "parse_prompt", "has_weighting", "plain_text"),
    "tokens": ("apply_weights", "weighted_tokens", "WeightedTokens"),
    "embeddings": ("weighted_embeddings", "prompt_keywords"),
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
