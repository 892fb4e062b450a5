"""The one definition of stop strings reads as the three it replaced did."""

import re

from specialight.data.stops import EVALUATION_STOP, NEXT_QUESTION, TEACHER_STOPS, cut_at_stop, until_next_question


def test_the_stop_strings_are_those_each_reader_used():
    assert EVALUATION_STOP == "Q:"
    assert list(TEACHER_STOPS) == ["\n\nQuestion:", "\n\nQ:"]
    previous = re.compile(r"(?:^|\n|\s)(?:Q|Question):\s", re.MULTILINE)
    for text in ["A: 3\nQ: next", "x Question: y", "Q: first\nA: 1", "Q:no space", "QQ: x", " Question:\tz"]:
        assert [m.span() for m in NEXT_QUESTION.finditer(text)] == [m.span() for m in previous.finditer(text)]
    assert until_next_question("Q: a\nA: 1\n\nQ: b") == "Q: a\nA: 1\n"


def test_cut_at_stop_takes_the_earliest_of_several():
    text = "The answer is 4.\n\nQ: more\n\nQuestion: again"
    assert cut_at_stop(text) == "The answer is 4.\n\n"
    expected = text
    for stop in TEACHER_STOPS:  # what the HTTP teacher did before: one split per stop string
        expected = expected.split(stop, 1)[0]
    assert cut_at_stop(text, TEACHER_STOPS) == expected == "The answer is 4."
    assert cut_at_stop("no stop here", TEACHER_STOPS) == "no stop here"
