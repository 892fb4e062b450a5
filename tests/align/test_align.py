import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specialight.align.markers import surface, surfaces
from specialight.align.paths import align_path, align_tokens
from tests.align.reference_dp import edit_distance, reference_path

tokens = st.lists(st.text(alphabet="ab c1\n", min_size=0, max_size=4), min_size=1, max_size=12)


def check_path_shape(path, n, m):
    assert path[0] == (0, 0) and path[-1] == (n - 1, m - 1)
    for (i0, j0), (i1, j1) in zip(path, path[1:]):
        assert (i1 - i0, j1 - j0) in {(1, 0), (0, 1), (1, 1)}
    assert {i for i, _ in path} == set(range(n)) and {j for _, j in path} == set(range(m))


@settings(max_examples=300, deadline=None)
@given(tokens, tokens)
def test_dp_path_is_a_monotone_cover_and_equals_the_oracle(source, target):
    path = align_tokens(source, target, source_scheme="text", target_scheme="text")
    check_path_shape(path, len(source), len(target))
    assert path == reference_path(source, target)


@settings(max_examples=200, deadline=None)
@given(tokens)
def test_identical_sequences_align_diagonally(sequence):
    for method in ("dp", "offsets"):
        path = align_tokens(sequence, sequence, method=method, source_scheme="text", target_scheme="text")
        assert path == [(i, i) for i in range(len(sequence))]


def split_points(text, cuts):
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in zip(points, points[1:])] or [text]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="abc 12", min_size=1, max_size=30), st.lists(st.integers(0, 40)), st.lists(st.integers(0, 40)))
def test_offsets_path_is_a_cover_and_pairs_shared_tokens_one_to_one(text, cuts_a, cuts_b):
    source, target = split_points(text, cuts_a), split_points(text, cuts_b)
    offsets = align_tokens(source, target, method="offsets", source_scheme="text", target_scheme="text")
    check_path_shape(offsets, len(source), len(target))
    # where both tokenizations cut the same span, the exact aligner pairs it one-to-one; the dynamic
    # program need not (its edit-distance cost can slide along repeated characters such as "1111")
    starts_a = {sum(map(len, source[:i])): i for i in range(len(source))}
    starts_b = {sum(map(len, target[:j])): j for j in range(len(target))}
    for start, i in starts_a.items():
        j = starts_b.get(start)
        if j is not None and source[i] == target[j]:
            assert (i, j) in offsets
            assert sum(1 for a, _ in offsets if a == i) == 1 and sum(1 for _, b in offsets if b == j) == 1


def test_auto_falls_back_to_dp_when_texts_differ():
    source, target = ["a", "\n", "b"], [" a", " |", " b"]
    assert align_path(source, target, "auto").tolist() == [list(p) for p in reference_path(source, target)]
    with pytest.raises(ValueError, match="same text"):
        align_path(source, target, "offsets")


def test_empty_sequences_and_unknown_method_are_refused():
    with pytest.raises(ValueError, match="empty token sequence"):
        align_tokens([], ["a"])
    with pytest.raises(ValueError, match="empty token sequence"):
        align_tokens(["a"], [], method="offsets")
    with pytest.raises(ValueError, match="unknown alignment method"):
        align_tokens(["a"], ["a"], method="fast")


def test_markers():
    assert surface("Ġ42", "byte_level") == " 42"
    assert surface("Ċ", "byte_level") == "\n"
    assert surface("ĠcafÃ©", "byte_level") == " café"
    assert surface("▁4", "sentencepiece") == " 4"
    assert surface("<0x0A>", "sentencepiece") == "\n"
    assert surface("<unk>", "sentencepiece") == "\ufffd"
    assert surfaces(["Ġa", "b"]) == [" a", "b"] and surfaces(["▁a", "b"]) == [" a", "b"]
    assert edit_distance(" 42", " 4") == 1


def real_pair(tokenizer_a, tokenizer_b, text):
    a = tokenizer_a.convert_ids_to_tokens(tokenizer_a.encode(text, add_special_tokens=False))
    b = tokenizer_b.convert_ids_to_tokens(tokenizer_b.encode(text, add_special_tokens=False))
    return a, b


@pytest.mark.parametrize(
    "text",
    [
        "The answer is 42.",
        "She paid $1,250.50 for 3 bikes.",
        "Step one.\nStep two.\n\nThe answer is 7.",
        "Use {x} and {y}.",
        "Great job 😀 at the café in Zürich!",
    ],
)
def test_gpt2_to_t5_on_hard_text(gpt2_tokenizer, t5_tokenizer, text):
    teacher, student = real_pair(gpt2_tokenizer, t5_tokenizer, text)
    path = align_tokens(teacher, student)
    check_path_shape(path, len(teacher), len(student))
    assert path == reference_path(surfaces(teacher), surfaces(student))


def test_gpt2_42_against_t5_digits(gpt2_tokenizer, t5_tokenizer):
    teacher, student = ["Ġ42"], ["▁4", "2"]
    assert align_tokens(teacher, student) == [(0, 0), (0, 1)]
    teacher, student = real_pair(gpt2_tokenizer, t5_tokenizer, "He has 1,250 apples")
    path = align_tokens(teacher, student, method="auto")
    one = {i for i, _ in path if sum(1 for a, _ in path if a == i) == 1}
    assert teacher.index("Ġapples") in one


@pytest.mark.parametrize(
    "text",
    ["The answer is 1,250.\nSo she pays $3.50 for {2} items.", "Café Zürich 😀 costs 12 francs.\n\nThe answer is 12."],
)
@pytest.mark.slow
def test_gpt2_to_smollm2_two_byte_level_bpes(gpt2_tokenizer, smollm2_tokenizer, text):
    teacher, student = real_pair(gpt2_tokenizer, smollm2_tokenizer, text)
    assert surfaces(teacher) != teacher  # raw byte-level pieces, markers undone by the aligner
    exact = align_tokens(teacher, student, method="auto")
    check_path_shape(exact, len(teacher), len(student))
    if "".join(surfaces(teacher)) == "".join(surfaces(student)):
        assert exact == align_tokens(teacher, student, method="offsets")
    else:
        assert exact == align_tokens(teacher, student, method="dp")
    # byte pieces of the emoji are no text alone: their surfaces are replacement characters
    assert ("\U0001f600" in text) == ("\ufffd" in "".join(surfaces(teacher)))
    same = [(i, j) for i, j in exact if surfaces(teacher)[i] == surfaces(student)[j]]
    assert len(same) >= 0.6 * min(len(teacher), len(student))
    assert align_tokens(teacher, student) == reference_path(surfaces(teacher), surfaces(student))
