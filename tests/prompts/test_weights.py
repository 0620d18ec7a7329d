"""Token weights and the weighting itself, checked by hand, and the chunks long prompts are split into."""

import logging

import pytest
import torch

from sfumato.prompts import apply_weights, weighted_tokens

from .. import tiny


@pytest.fixture(scope="module")
def clip_tokenizer(tmp_path_factory):
    return tiny.clip_tokenizer(tmp_path_factory.mktemp("clip-tokenizer"))


def test_apply_weights_by_hand():
    torch.manual_seed(0)
    embeds = torch.randn(2, 5, 3) + 0.5
    weights = torch.tensor([[1.0, 1.5, 1.5, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    out = apply_weights(embeds, weights)
    # row 0: scale tokens 1 and 2 by 1.5, then restore the row's mean over tokens and features
    weighted = embeds[0].clone()
    weighted[1:3] *= 1.5
    expected = weighted * (embeds[0].mean() / weighted.mean())
    torch.testing.assert_close(out[0], expected, rtol=1e-6, atol=1e-6)
    assert torch.allclose(out[0].mean(), embeds[0].mean(), atol=1e-6)
    # relative sizes: the weighted tokens are 1.5x the rest after the common rescale
    ratio = out[0] / embeds[0]
    torch.testing.assert_close(ratio[1:3], torch.full_like(ratio[1:3], 1.5) * ratio[0, 0], rtol=1e-5, atol=1e-6)
    # an unweighted row is untouched, bit for bit
    assert torch.equal(out[1], embeds[1])


def test_apply_weights_with_a_mask_uses_only_kept_tokens():
    torch.manual_seed(1)
    embeds = torch.randn(1, 4, 2) + 1.0
    embeds[:, 3] = 0  # padding, as Kandinsky 3 zeroes it
    mask = torch.tensor([[1, 1, 1, 0]])
    weights = torch.tensor([[2.0, 1.0, 1.0, 1.0]])
    out = apply_weights(embeds, weights, mask)
    weighted = embeds[0].clone()
    weighted[0] *= 2
    expected = weighted * (embeds[0, :3].mean() / weighted[:3].mean())
    torch.testing.assert_close(out[0], expected, rtol=1e-6, atol=1e-6)


def test_apply_weights_checks_shapes():
    with pytest.raises(ValueError, match=r"weights has shape \(1, 3\)"):
        apply_weights(torch.zeros(1, 4, 2), torch.ones(1, 3))


def test_tokens_of_an_unweighted_prompt_are_the_tokenizers(clip_tokenizer):
    prompts = ["a red cat", "", "a long prompt, with words"]
    tokens = weighted_tokens(clip_tokenizer, prompts, length=77, name="prompt", chunked=True)
    plain = clip_tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    assert tokens.chunks == 1
    assert torch.equal(tokens.input_ids[0], plain.input_ids)
    assert torch.equal(tokens.attention_mask[0], plain.attention_mask)
    assert bool((tokens.weights == 1).all())


def test_each_token_gets_its_fragments_weight(clip_tokenizer):
    tokens = weighted_tokens(clip_tokenizer, ["a (red:1.5) [cat]"], length=77, name="prompt", chunked=True)
    ids = clip_tokenizer("a red cat", add_special_tokens=False).input_ids
    red = clip_tokenizer("red", add_special_tokens=False).input_ids
    cat = clip_tokenizer("cat", add_special_tokens=False).input_ids
    assert tokens.input_ids[0, 0, 1:1 + len(ids)].tolist() == ids
    expected = [1.0] + [1.0] + [1.5] * len(red) + [1 / 1.1] * len(cat) + [1.0] * (76 - len(ids))
    assert tokens.weights[0, 0].tolist() == pytest.approx(expected)


def test_long_prompts_are_chunked_with_their_own_special_tokens(clip_tokenizer):
    bos, eos = clip_tokenizer.bos_token_id, clip_tokenizer.eos_token_id
    words = " ".join(["cat"] * 100)  # "cat" is 3 tokens in this tiny vocabulary: 300 tokens
    ids = clip_tokenizer(words, add_special_tokens=False).input_ids
    tokens = weighted_tokens(clip_tokenizer, [f"({words}:1.2)", "dog"], length=20, name="prompt", chunked=True)
    chunks = -(-len(ids) // 18)
    assert tokens.chunks == chunks
    for chunk in range(chunks):
        row = tokens.input_ids[chunk, 0]
        body = ids[chunk * 18:(chunk + 1) * 18]
        assert row[0] == bos and row[1:1 + len(body)].tolist() == body and row[1 + len(body)] == eos
        assert tokens.weights[chunk, 0, 1:1 + len(body)].tolist() == pytest.approx([1.2] * len(body))
        assert tokens.weights[chunk, 0, 0] == 1 and tokens.weights[chunk, 0, 1 + len(body):].eq(1).all()
    # the short prompt gets empty chunks after its first: start, end, padding
    assert tokens.input_ids[1:, 1, :2].tolist() == [[bos, eos]] * (chunks - 1)
    assert tokens.attention_mask[1:, 1].sum(dim=-1).tolist() == [2] * (chunks - 1)
    # min_chunks pads a short batch to another's count (the negative prompt to the prompt's)
    assert weighted_tokens(clip_tokenizer, ["dog"], length=20, name="p", chunked=True, min_chunks=3).chunks == 3


def test_unchunked_long_prompts_are_cut_with_a_warning(clip_tokenizer, caplog):
    words = " ".join(["cat"] * 30)
    with caplog.at_level(logging.WARNING, logger="sfumato"):
        tokens = weighted_tokens(clip_tokenizer, [words], length=20, name="prompt", chunked=False)
    assert tokens.chunks == 1
    plain = clip_tokenizer([words], padding="max_length", max_length=20, truncation=True, return_tensors="pt")
    assert torch.equal(tokens.input_ids[0], plain.input_ids)
    assert "tokens were dropped" in caplog.text


def test_syntax_errors_name_the_prompt_in_a_batch(clip_tokenizer):
    with pytest.raises(ValueError, match=r"prompt\[1\]: at position 3"):
        weighted_tokens(clip_tokenizer, ["fine", "bad(word"], length=77, name="prompt", chunked=True)
