"""The weighting syntax: weights, nesting, escapes, and errors that name the position."""

import pytest

from sfumato.prompts import PromptSyntaxError, has_weighting, parse_prompt, plain_text


@pytest.mark.parametrize("text, expected", [
    ("a red cat", [("a red cat", 1.0)]),
    ("", [("", 1.0)]),
    ("a (red:1.5) cat", [("a ", 1.0), ("red", 1.5), (" cat", 1.0)]),
    ("a (red: 0.25 ) cat", [("a ", 1.0), ("red", 0.25), (" cat", 1.0)]),
    ("(red:-1)", [("red", -1.0)]),
    ("(red:.5)", [("red", 0.5)]),
    ("(red:2.)", [("red", 2.0)]),
    ("(red)", [("red", 1.1)]),
    ("[red]", [("red", 1 / 1.1)]),
    ("((red))", [("red", 1.1 * 1.1)]),
    ("((red:1.5))", [("red", 1.5 * 1.1)]),
    ("[[red]]", [("red", 1 / 1.1 / 1.1)]),
    ("(a (b:2) c)", [("a ", 1.1), ("b", 2 * 1.1), (" c", 1.1)]),
    ("(a [b] c:0.5)", [("a ", 0.5), ("b", 0.5 / 1.1), (" c", 0.5)]),
    # neighbours of equal weight merge; empty brackets vanish
    ("(a)(b) () c", [("ab", 1.1), ("  c", 1.0)]),
    ("time: 5pm, (red:1.2)", [("time: 5pm, ", 1.0), ("red", 1.2)]),
])
def test_weights_and_nesting(text, expected):
    parsed = parse_prompt(text)
    assert [fragment for fragment, _ in parsed] == [fragment for fragment, _ in expected]
    assert [weight for _, weight in parsed] == pytest.approx([weight for _, weight in expected], rel=1e-12)


@pytest.mark.parametrize("text, expected", [
    (r"\(red\)", [("(red)", 1.0)]),
    (r"\[red\]", [("[red]", 1.0)]),
    (r"a \\ b", [("a \\ b", 1.0)]),
    (r"(a\:b)", [("a:b", 1.1)]),
    (r"(smile \(happy\):1.3)", [("smile (happy)", 1.3)]),
    (r"\\(red)", [("\\", 1.0), ("red", 1.1)]),
    # a backslash before anything else is kept
    (r"C:\path\n", [("C:\\path\\n", 1.0)]),
    ("trailing \\", [("trailing \\", 1.0)]),
])
def test_escapes(text, expected):
    assert parse_prompt(text) == expected


@pytest.mark.parametrize("text, position, words", [
    ("a (red cat", 2, r"'\(' is never closed"),
    ("a [red cat", 2, r"'\[' is never closed"),
    ("((red) cat", 0, "never closed"),
    ("a red) cat", 5, r"'\)' closes no bracket"),
    ("a red] cat", 5, r"'\]' closes no bracket"),
    ("(a]", 2, r"closes the '\(' opened at position 0"),
    ("[a)", 2, r"closes the '\[' opened at position 0"),
    ("(word:abc)", 5, "must be followed by a weight"),
    ("(word:1.2.3)", 5, "must be followed by a weight"),
    ("(word:)", 5, "must be followed by a weight"),
    ("(word:1.5", 5, "must be followed by a weight"),
    ("[a:b:0.5]", 2, "prompt editing"),
])
def test_malformed_syntax_names_the_position(text, position, words):
    with pytest.raises(PromptSyntaxError, match=words) as excinfo:
        parse_prompt(text, "negative_prompt")
    assert excinfo.value.position == position
    message = str(excinfo.value)
    assert message.startswith("negative_prompt: ")
    assert f"position {position}" in message
    assert isinstance(excinfo.value, ValueError)


def test_not_a_string():
    with pytest.raises(TypeError, match="prompt must be a string"):
        parse_prompt(3)


def test_helpers():
    assert not has_weighting("a red cat: big")
    assert has_weighting("a (red) cat") and has_weighting(r"a \( cat")
    assert plain_text("a (red:1.4) [cat]") == "a red cat"
