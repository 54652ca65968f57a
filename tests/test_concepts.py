"""Concept detectors on positive and negative strings, tricky ones included, and the
mapping from character spans to tokens."""
from __future__ import annotations

import base64
import random
import time

import numpy as np
import pytest

from index.measure import concepts as c
from helpers.planted_corpus import planted_documents
from solu.errors import UserError


def matches(name: str, text: str) -> list[str]:
    return [text[s:e] for s, e in c.CONCEPTS[name].find(text)]


def hit(name: str, text: str) -> bool:
    return bool(c.CONCEPTS[name].find(text))


@pytest.mark.parametrize("text", [
    base64.b64encode(b"hello world, this is base64").decode(),
    base64.b64encode(random.Random(0).randbytes(30)).decode(),
    'token = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"',
    "MIIDdzCCAl+gAwIBAgIEAgAAuTANBgkqhkiG9w0BAQUFADBaMQswCQYDVQQGEwJJ",
    "key=dGhlIHF1aWNrIGJyb3duIGZveA==",
])
def test_base64_positive(text):
    assert hit("base64", text)


@pytest.mark.parametrize("text", [
    "internationalization", "antidisestablishmentarianism",         # long English words
    "getElementsByTagName", "getElementsByTagName2", "XMLHttpRequestFactory",  # identifiers
    "AbstractTestZip64InSmallFiles", "NotAProtocolButAnImplicitSubclass3",
    "/usr/share/doc/python3/README", "/Library/Frameworks/Python", "edu/pub/4bsd/README",  # paths
    "9f86d081884c7d659a2feaa0c55ad015",                              # a hex digest, not base64
    "aGVsbG8=",                                                      # too short to tell
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",  # the alphabet itself
    "x_86_64_linux_gnu_shared_object",
])
def test_base64_negative(text):
    assert not hit("base64", text)


def test_base64_span_is_the_whole_run():
    text = 'data = "dGhlIHF1aWNrIGJyb3duIGZveA==" # comment'
    assert matches("base64", text) == ["dGhlIHF1aWNrIGJyb3duIGZveA=="]


@pytest.mark.parametrize("text,expected", [
    ("flags = 0x1F", "0x1F"), ("'\\x1b[0m'", "\\x1b"), ("color: #ff00aa;", "#ff00aa"), ("#fff", "#fff"),
    ("commit 9f2c1a0d", "9f2c1a0d"), ("DEADBEEF01", "DEADBEEF01"),
    ("id 550e8400-e29b-41d4-a716-446655440000", "550e8400-e29b-41d4-a716-446655440000"),
])
def test_hex_positive(text, expected):
    assert matches("hex", text) == [expected]


@pytest.mark.parametrize("text", [
    "deadbeef", "a decade of facades", "we added a bead", "#add", "#define X",  # words of a-f letters
    "123456", "1e1000", "sha256 md5", "x86", "0x", "Cafe", "aBcD12",
])
def test_hex_negative(text):
    assert not hit("hex", text)


def test_numbers():
    text = "pi is 3.14, about 1,000 or 1_000 or 1e-5; the 2nd of x86 v2 and utf8; call 911"
    assert matches("number", text) == ["3.14", "1,000", "1_000", "1e-5", "2nd", "911"]
    assert matches("number", "version 1.2.3") == ["1.2.3"]
    assert not hit("number", "uuid 550e8400-e29b-41d4-a716-446655440000 or 0x1F")


@pytest.mark.parametrize("text,expected", [
    ("three people came", "three people"), ("12 workers", "12 workers"),
    ("a dozen children", "a dozen children"), ("Three People", "Three People"),
    ("twenty-five young men", "twenty-five young men"), ("hundreds of volunteers", "hundreds of volunteers"),
    ("one person", "one person"), ("two hundred and fifty students", "two hundred and fifty students"),
    ("1,200 new employees", "1,200 new employees"), ("About 1500 people came", "1500 people"),
    ("half a dozen tired nurses", "half a dozen tired nurses"),
])
def test_people_count_positive(text, expected):
    assert matches("people_count", text) == [expected]


@pytest.mark.parametrize("text", [
    "three apples", "12 files", "a dozen eggs", "20 bytes", "five threads",   # counting things
    "4 worker threads", "start 8 worker processes",                        # 'worker' as a modifier
    "two children's books",                                                # counts books
    "In 2020 people moved", "Copyright 2001 sqlite authors",               # a year, not a count
    "3 of the people", "2 cats or people", "many people", "the people",    # no count of people
    "three people-counting neurons", "someone people", "often people",
])
def test_people_count_negative(text):
    assert not hit("people_count", text)


def test_all_caps():
    text = "NASA Nasa I A HTTPServer MAX_SIZE USB3 x86 OK iPhone"
    assert matches("all_caps", text) == ["NASA", "MAX_SIZE", "USB3", "OK"]
    assert not hit("all_caps", "aGVsbG8gV29ybGQgQUJD/ABCD+EFGH")  # capitals inside base64


def test_code_keywords_in_code():
    code = ("def f(x):\n    for i in range(10):\n        if i is not None and x:\n"
            "            return i\n    >>> for x in [1, 2]: print(x)\nx = a if b else None  # for real\n"
            "with open(p) as f: data = f.read()\nimport os, sys\nfrom os import path\n")
    assert matches("code_keyword", code) == [
        "def", "for", "in", "if", "is", "not", "None", "and", "return", "for", "in",
        "if", "else", "None", "with", "as", "import", "from", "import"]


@pytest.mark.parametrize("text", [
    "for example, see the following:", "if the file exists:", "This is a class of problems; for each one we import nothing.",
    "from the start we knew", "return values are ignored", "    return the value of x.",
    "class of service: see below", "It is not in the list, and it is None of your business.",
    'print("if for while")', "x = 1  # if for while",   # keywords in strings and comments
])
def test_code_keywords_not_in_prose_or_strings(text):
    assert not hit("code_keyword", text)


def test_indentation():
    text = "def f():\n    return 1\n\n\tx = 2\n a  b\n   \nend"
    assert [(s, e) for s, e in c.find_indentation(text)] == [(9, 13), (23, 24)]
    assert not hit("indentation", "two  spaces in the  middle")


def test_urls():
    text = "see https://example.com/a_(b)). and http:// or www.python.org, and (http://x.org/y)."
    assert matches("url", text) == ["https://example.com/a_(b)", "www.python.org", "http://x.org/y"]
    for negative in ("the http module", "e.g. file.txt", "user@example.com", "os.path.join", "http:// alone"):
        assert not hit("url", negative)


def test_punctuation():
    text = "don't 3.14 1,000 (x)! __init__ “hi” —"
    assert matches("punctuation", text) == ["(", ")", "!", "“", "”", "—"]


def test_a_costly_user_regex_is_stopped_at_its_budget(monkeypatch):
    """RE2 is linear, but (.*a){400} costs microseconds per character: a 20 KB line takes longer
    than the budget allows (about 0.4 s here), and the concept stops with one clear error."""
    from index.measure import concepts

    monkeypatch.setattr(concepts, "REGEX_BUDGET_S", 0.05)
    slow = concepts.regex_concept("slow", "(.*a){400}$")
    with pytest.raises(UserError, match="'slow'.*spent more than 0.05s matching"):
        slow.find("a" * 20_000)
    monkeypatch.setattr(concepts, "REGEX_BUDGET_S", 5.0)
    # the budget is for all of a run's matching, not per call: calls each well under it add up
    probe = concepts.regex_concept("probe", "(.*a){400}$")
    start = time.perf_counter()
    probe.find("a" * 2_000)
    monkeypatch.setattr(concepts, "REGEX_BUDGET_S", 5 * (time.perf_counter() - start))
    many = concepts.regex_concept("many", "(.*a){400}$")
    with pytest.raises(UserError, match="'many'"):
        for _ in range(40):
            many.find("a" * 2_000)
    cheap = concepts.regex_concept("cheap", "\\bcat\\b")
    for _ in range(50):
        cheap.find("a cat sat " * 100)  # well within it (about a millisecond in all), even on a loaded machine


def test_user_regex():
    con = c.concept(r"regex:\bTODO\b")
    assert con.name == r"regex:\bTODO\b"
    assert con.find("x TODO y TODOS") == [(2, 6)]
    named = c.concept("todo=TODO|FIXME")
    assert named.name == "todo" and len(named.find("TODO and FIXME")) == 2
    assert c.concept("empty=a*").find("bbb") == []  # empty matches are dropped


@pytest.mark.parametrize("spec,message", [
    ("regex:(", "bad regular expression"), ("bad=(", "bad regular expression"),
    ("nosuch", "unknown concept"), ("base64=abc", "taken by a built-in"),
])
def test_concept_errors_are_user_errors(spec, message):
    with pytest.raises(UserError, match=message):
        c.concept(spec)


def test_token_mask_majority_rule():
    tokens = ["Then", " 12", " workers", " and", " 3", " apples", " don", "'t", " stop", "."]
    assert list(c.detect("people_count", tokens)) == [False, True, True] + [False] * 7
    assert list(c.detect("number", tokens)) == [False, True, False, False, True] + [False] * 5
    assert list(c.detect("punctuation", tokens)) == [False] * 7 + [False, False, True]
    # a whitespace-only token counts by all its characters: "\n   " is 3/4 indentation
    assert list(c.detect("indentation", ["def", " f", "():", "\n   ", " return", " 1"])) == [
        False, False, False, True, False, False]


def test_token_mask_edges():
    assert c.token_mask([], []).shape == (0,)
    assert list(c.token_mask(["ab", "cd"], [(1, 3)])) == [False, False]  # half is not a majority
    assert list(c.token_mask(["ab", "cd"], [(0, 4)])) == [True, True]
    assert c.detect("base64", ["x"]).dtype == np.bool_


def test_masks_on_real_bpe_tokens():
    from solu.tokenizer import token_strings, train_tokenizer

    docs = planted_documents(60, seed=1)
    tok = train_tokenizer(docs, 400)
    text = ('def f(x):\n    return 12 workers and 3 apples\nkey: QUJDREVGR0hJSktMTU5PUFFSU1RVVldY\n'
            'See https://python.org/x. NASA 0x1F\n')
    tokens = token_strings(tok, tok.encode(text).ids)
    assert "".join(tokens) == text
    masks = c.concept_masks(tokens, c.CONCEPTS.values())
    assert set(masks) == set(c.CONCEPTS)
    picked = {name: "".join(t for t, m in zip(tokens, mask) if m) for name, mask in masks.items()}
    assert picked["base64"] == "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"
    assert picked["people_count"].strip() == "12 workers"
    assert picked["url"].strip() == "https://python.org/x"
    assert picked["hex"].strip() == "0x1F"
    assert picked["all_caps"].strip() == "NASA"


def test_planted_corpus_is_deterministic_and_has_both_concepts():
    a, b = planted_documents(50, seed=3), planted_documents(50, seed=3)
    assert a == b and a != planted_documents(50, seed=4)
    text = "".join(a)
    assert hit("base64", text) and hit("people_count", text)
    # the control sentences count things, and are not people counts
    assert any(w in text for w in (" apples ", " boxes ", " files "))


@pytest.mark.parametrize("pattern,short_match", [(r"cat=(a+)+$", [(0, 7)]), (r"(a+)+$", [(4, 7)]),
                                                 (r"(a|aa)*b", []), (r"(.*a){20}", [])])
def test_catastrophic_patterns_run_in_linear_time(pattern, short_match):
    """Patterns that backtrack exponentially in Python's re finish at once on RE2."""
    import time

    concept = c.concept(f"evil={pattern}")
    text = "cat=" + "a" * 100_000 + "!"
    start = time.perf_counter()
    spans = concept.find(text)
    elapsed = time.perf_counter() - start
    print(f"{pattern!r} over 100 KB: {elapsed * 1000:.1f} ms, {len(spans)} spans")
    assert elapsed < 2.0
    assert concept.find("cat=aaa") == short_match


@pytest.mark.parametrize("pattern,reason", [(r"(a)\1", "escape"), (r"(?<=a)b", "perl operator"),
                                            (r"((a{1000}){1000}){1000}", "repetition"), ("(", "missing")])
def test_patterns_re2_cannot_run_are_refused_in_one_line(pattern, reason, capfd):
    with pytest.raises(UserError, match=reason) as e:
        c.concept(f"x={pattern}")
    assert "\n" not in str(e.value) and "RE2" in str(e.value)
    assert capfd.readouterr().err == ""  # RE2's own logging is off
