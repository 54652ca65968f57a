"""Concept detectors: token-level predicates over text, used to score and label neurons.

A detector finds character spans in a document's text; `token_mask` maps the spans back
to the document's tokens. Tokens are the strings the model saw (byte-level BPE pieces,
often with a leading space), so the text a detector reads is the tokens joined, and
token i covers the characters [offset_i, offset_i + len(token_i)).

A token is *in* a concept when more than half of its non-whitespace characters lie in
matching spans (for a token of only whitespace: more than half of its characters). A
majority, not "any", because BPE merges cross span edges: in `" 12 workers"` the
leading spaces do not count, and `"'t"` in "don't" is not a punctuation token.

Detectors are registered by name in CONCEPTS. A user regex is `regex:PATTERN` or
`NAME=PATTERN`; `concept()` resolves all three forms.
"""
from __future__ import annotations

import bisect
import keyword
import re
import string
import time
import unicodedata
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from solu.errors import UserError

Spans = list[tuple[int, int]]


@dataclass(frozen=True)
class Concept:
    name: str
    description: str
    find: Callable[[str], Spans]
    pattern: str | None = None  # a user regex; None for a built-in detector

    def mask(self, tokens: list[str]) -> np.ndarray:
        return token_mask(tokens, self.find("".join(tokens)))


_SPACES = np.array([cp for cp in range(0x3001) if chr(cp).isspace()], dtype=np.uint32)


def token_mask(tokens: list[str], spans: Iterable[tuple[int, int]]) -> np.ndarray:
    """Boolean mask over tokens: True where most of a token's characters lie in spans."""
    return _majority(tokens, _covered(sum(len(t) for t in tokens), spans), _solid("".join(tokens)))


def _covered(n_chars: int, spans: Iterable[tuple[int, int]]) -> np.ndarray:
    inside = np.zeros(n_chars + 1, dtype=np.int64)  # a difference array over characters
    for start, end in spans:
        if end > start:
            inside[max(start, 0)] += 1
            inside[min(end, n_chars)] -= 1
    return np.cumsum(inside[:n_chars]) > 0


def _solid(text: str) -> np.ndarray:
    """True for each character that is not whitespace."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    return ~np.isin(codes, _SPACES)


def _majority(tokens: list[str], covered: np.ndarray, solid: np.ndarray) -> np.ndarray:
    lengths = np.fromiter((len(t) for t in tokens), dtype=np.int64, count=len(tokens))
    owner = np.repeat(np.arange(len(tokens)), lengths)
    n = len(tokens)
    n_solid = np.bincount(owner, weights=solid, minlength=n)
    solid_in = np.bincount(owner, weights=solid & covered, minlength=n)
    all_in = np.bincount(owner, weights=covered, minlength=n)
    return np.where(n_solid > 0, 2 * solid_in > n_solid, 2 * all_in > lengths) & (lengths > 0)


def _regex_spans(pattern, group: int = 0) -> Callable[[str], Spans]:
    def find(text: str) -> Spans:
        return [m.span(group) for m in pattern.finditer(text) if m.end(group) > m.start(group)]
    return find


# ---------------------------------------------------------------- base64

_B64_RUN = re.compile(r"(?<![\w+/])[A-Za-z0-9+/]{16,}={0,2}(?![\w+/=])")
_B64_WORD = re.compile(r"[A-Z]?[a-z]{3,}")
_B64_NEXT_LINE = re.compile(r"\r?\n[A-Za-z0-9+/]{4,}={0,2}(?![\w+/=])")


def _char_class(c: str) -> str:
    return "u" if c.isupper() else "l" if c.islower() else "d"


def looks_base64(run: str) -> bool:
    """A run of the base64 alphabet that is not an identifier, a path or a word.

    Base64 mixes upper case, lower case and digits (or + and /) at random, so all three
    classes occur and the class changes often from one character to the next. CamelCase
    names and paths are mostly dictionary-like words; they fail either test, and a run
    cut by two or more slashes into short pieces is a path."""
    body = run.rstrip("=")
    if body.count("/") >= 2 and len(body) / (body.count("/") + 1) < 8:
        return False
    classes = [_char_class(c) for c in body]
    if not {"u", "l", "d"} <= set(classes):
        return False
    switches = sum(a != b for a, b in zip(classes, classes[1:])) / max(1, len(classes) - 1)
    words = sum(len(w) for w in _B64_WORD.findall(body))
    return switches >= 0.3 and words <= 0.5 * len(body)


def find_base64(text: str) -> Spans:
    """Base64 runs; a line break between two runs of one block (a PEM body, a MIME part)
    belongs to the block, so a neuron that fires there fires inside base64."""
    spans = []
    for m in _B64_RUN.finditer(text):
        if looks_base64(m.group()):
            more = _B64_NEXT_LINE.match(text, m.end())  # the block goes on (its next line may be cut short)
            spans.append((m.start(), more.end() if more else m.end()))
    return _join(spans, text, ("", "\n", "\r\n"))


def _join(spans: Spans, text: str, gaps: tuple[str, ...] | None) -> Spans:
    """Sorted spans with the gaps between them merged where the gap's text is one of `gaps`
    (None: any whitespace)."""
    joined: Spans = []
    for start, end in spans:
        gap = text[joined[-1][1]:start] if joined else None
        if gap is not None and (not gap.strip() if gaps is None else gap in gaps):
            joined[-1] = (joined[-1][0], max(end, joined[-1][1]))
        else:
            joined.append((start, end))
    return joined


# ---------------------------------------------------------------- hexadecimal and numbers

_HEX = re.compile(r"""(?<![\w#])(?:
      0[xX][0-9a-fA-F]+                                   # 0x1f
    | \\x[0-9a-fA-F]{2} | \\u[0-9a-fA-F]{4}               # escapes in string literals
    | [0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12} # a UUID
    | \#(?:[0-9a-fA-F]{6}(?:[0-9a-fA-F]{2})?|([0-9a-fA-F])\1\1|(?=[a-fA-F]*\d)[0-9a-fA-F]{3})  # a colour
    | (?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)(?![0-9]+e[0-9]+\b)[0-9a-f]{6,}   # a hash, lower case
    | (?=[0-9A-F]*[A-F])(?=[0-9A-F]*\d)(?![0-9]+E[0-9]+\b)[0-9A-F]{6,}   # or upper case
)(?![\w-])""", re.VERBOSE)

_NUMBER = re.compile(r"(?<![\w.])\d+(?:[_,]\d{3})*(?:\.\d+)*(?:[eE][-+]?\d+)?(?:st|nd|rd|th)?(?!\w)")


def find_hex(text: str) -> Spans:
    return [m.span() for m in _HEX.finditer(text)]


def find_numbers(text: str) -> Spans:
    """Decimal numerals (12, 3.14, 1,000, 1_000, 1e-5, 2nd); digits inside a word (x86,
    utf8) or inside a hexadecimal string (a UUID, a hash) are not numbers."""
    return _outside([m.span() for m in _NUMBER.finditer(text)], find_hex(text))


def _outside(spans: Spans, blockers: Spans) -> Spans:
    """The spans that overlap none of `blockers` (both sorted, blockers disjoint)."""
    ends = [e for _, e in blockers]
    out = []
    for start, end in spans:
        i = bisect.bisect_right(ends, start)
        if i == len(blockers) or blockers[i][0] >= end:
            out.append((start, end))
    return out


# ---------------------------------------------------------------- a number of people

_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
          "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_UNIT = rf"(?:(?:{'|'.join(_TENS)})(?:-(?:{'|'.join(_UNITS[1:10])}))?|{'|'.join(_UNITS)})"
_SCALE = r"(?:hundred|thousand|million|billion)"
_QUANTITY = rf"""(?:
      \d{{1,3}}(?:,\d{{3}})+ | \d+(?:\.\d+)?                     # 12, 1,200, 1.5
    | {_UNIT}(?:\s+{_SCALE})?(?:\s+(?:and\s+)?{_UNIT})?           # twelve, two hundred and five
    | (?:half\s+)?an?\s+(?:dozen|hundred|thousand)                 # a dozen, half a dozen
    | (?:dozens|hundreds|thousands|millions)\s+of                  # hundreds of
)(?:\s+{_SCALE})?"""
PEOPLE_PLURAL = (
    "people persons men women children kids boys girls babies infants teenagers adults seniors "
    "workers employees staff students pupils teachers professors doctors nurses patients soldiers "
    "officers players athletes passengers travellers travelers tourists residents citizens villagers "
    "inhabitants voters volunteers guests visitors friends colleagues coworkers customers clients users "
    "participants individuals researchers scientists engineers developers programmers authors writers "
    "musicians farmers miners sailors pilots survivors victims refugees prisoners spectators attendees "
    "delegates candidates applicants parents mothers fathers brothers sisters sons daughters siblings "
    "cousins grandchildren humans folks guards firefighters policemen crewmen").split()
PEOPLE_SINGULAR = ("person man woman child kid boy girl baby adult worker employee student teacher "
                   "doctor nurse patient soldier player passenger resident volunteer guest visitor "
                   "friend customer user participant individual").split()
# words that may not stand between the number and the noun ("3 of the people", "2 cats or people")
_STOP = "of|the|a|an|and|or|by|in|on|at|to|for|from|with|per|than|as|is|are|was|were|be|that|which|who"
_PEOPLE = re.compile(rf"""(?<![\w.,])(?:
      {_QUANTITY}(?:\s+(?!(?:{_STOP})\b)[a-z][a-z'-]*){{0,2}}\s+(?:{'|'.join(PEOPLE_PLURAL)})
    | (?:one|1|a\s+single)(?:\s+(?!(?:{_STOP})\b)[a-z][a-z'-]*)?\s+(?:{'|'.join(PEOPLE_SINGULAR)})
)(?![\w-])(?!['’]s\b)""", re.VERBOSE | re.IGNORECASE)
_YEAR_CONTEXT = re.compile(r"(?:\b(?:in|since|by|until|till|of|from|during|after|before|around|circa|year|"
                           r"copyright)|\(c\)|©)\s+$",
                           re.IGNORECASE)


def find_people_counts(text: str) -> Spans:
    """A number that counts people: "three people", "12 workers", "a dozen hungry children",
    "hundreds of volunteers", "one person". Up to two words may stand between the number
    and the noun. Not: things that are not people ("three apples", "4 worker threads"),
    possessives that count something else ("two children's books"), or a year ("in 2020
    people moved", "Copyright 2001 sqlite authors")."""
    spans = []
    for m in _PEOPLE.finditer(text):
        number = re.match(r"\d+", m.group())
        if number and len(number.group()) == 4 and _YEAR_CONTEXT.search(text[max(0, m.start() - 12):m.start()]):
            continue
        spans.append(m.span())
    return spans


# ---------------------------------------------------------------- words and symbols

_ALL_CAPS = re.compile(r"(?<![\w+/])_*[A-Z][A-Z0-9_]*[A-Z][A-Z0-9_]*(?![\w+/])")
_URL = re.compile(r"""(?:\b(?:https?|ftp|file)://|\bwww\.)[^\s<>"'`\[\]{}|\\^]+""", re.IGNORECASE)
_INDENT = re.compile(r"^(?:\t|  )[ \t]*(?=\S)", re.MULTILINE)
_PUNCT_CHARS = "".join(sorted(set(string.punctuation) - {"_"}))
_PUNCT = re.compile(rf"[{re.escape(_PUNCT_CHARS)}]|[^\w\s]")
_NOT_PUNCT = re.compile(r"(?<=[^\W\d_])['’](?=[^\W\d_])|(?<=\d)[.,](?=\d)")  # don't, 3.14, 1,000


def find_all_caps(text: str) -> Spans:
    """Words of two or more capital letters and no lower case: NASA, HTTP, MAX_SIZE, USB3."""
    return [m.span() for m in _ALL_CAPS.finditer(text)]


_CAPS_WORD = r"[A-Z][A-Z'-]*[A-Z]|[A-Z]"
_CAPS_RUN_WORD = re.compile(_CAPS_WORD)
_CAPS_PROSE = re.compile(rf"(?<![\w])(?:{_CAPS_WORD})(?:[ \t,;:.!?()\"-]+(?:{_CAPS_WORD})){{3,}}(?![\w])")


def find_caps_prose(text: str) -> Spans:
    """The words of a stretch of four or more words in capitals with nothing but spaces and
    sentence punctuation between them, read as running text: THE SOFTWARE IS PROVIDED "AS IS".
    Not: a lone acronym (NASA) or a constant (MAX_SIZE) in ordinary prose or code."""
    spans = []
    for m in _CAPS_PROSE.finditer(text):
        found = [(m.start() + w.start(), m.start() + w.end()) for w in _CAPS_RUN_WORD.finditer(m.group())]
        if sum(b - a >= 2 for a, b in found) >= 3:
            spans += found
    return spans


_COPYRIGHT = re.compile(r"^[^\n]*(?:\bcopyright\b|\(c\)|©)[^\n]*", re.IGNORECASE | re.MULTILINE)


def find_copyright(text: str) -> Spans:
    """A line that states a copyright: it holds "Copyright", "(c)" or "©" (the whole line,
    from its first to its last character)."""
    return [m.span() for m in _COPYRIGHT.finditer(text)]


_LICENSE_MARK = re.compile(
    r"\b(?:licen[cs]ed?|licen[cs]es|warrant(?:y|ies)|merchantability|fitness for a particular purpose|"
    r"permission is hereby granted|redistribut(?:e|ion)|liab(?:le|ility)|all rights reserved|"
    r"free software foundation|general public license|provided (?:by the copyright holders )?\W?as is\b)",
    re.IGNORECASE)
_PARAGRAPH = re.compile(r"[^\n]*\S[^\n]*(?:\n[^\n]*\S[^\n]*)*")


def find_license(text: str) -> Spans:
    """Licence text: a paragraph (lines up to a blank line) that names a licence, a
    warranty, liability, redistribution, "all rights reserved" or "as is", as in the GPL,
    MIT and BSD notices at the top of source files and in copyright files; the blank lines
    between two such paragraphs belong to the notice."""
    return _join([m.span() for m in _PARAGRAPH.finditer(text) if _LICENSE_MARK.search(m.group())], text, None)


_PATH = re.compile(r"(?<![\w/.:-])(?:/|\./|~/)?(?:[\w.*+-]+/)+[\w.*+-]*(?![\w/])")


def find_paths(text: str) -> Spans:
    """File paths: two or more names joined by "/" (usr/share/doc, debian/*, ./setup.py,
    /etc/hosts, doc/images/), not a URL's path and not a fraction (1/2)."""
    urls = find_urls(text)
    found = [m.span() for m in _PATH.finditer(text)
             if re.search(r"[A-Za-z_*]", m.group()) and re.search(r"[\w*]/[\w*]", m.group())]
    return _outside(found, urls)


def find_strings(text: str) -> Spans:
    """The inside of a quoted string on one line: 'abc', "abc" (the quotes included)."""
    return [m.span() for m in _STRING.finditer(text)]


def find_urls(text: str) -> Spans:
    """http(s)/ftp/file URLs and www. addresses, without trailing sentence punctuation."""
    spans = []
    for m in _URL.finditer(text):
        url = m.group().rstrip(".,;:!?'\"")
        while url.endswith(")") and url.count("(") < url.count(")"):
            url = url[:-1].rstrip(".,;:!?")
        if re.search(r"(?://|www\.)[\w-]", url, re.IGNORECASE):
            spans.append((m.start(), m.start() + len(url)))
    return spans


def find_indentation(text: str) -> Spans:
    """Leading whitespace of a non-blank line: a tab, or two or more spaces."""
    return [m.span() for m in _INDENT.finditer(text)]


def find_punctuation(text: str) -> Spans:
    """ASCII punctuation and symbols (string.punctuation without '_') and Unicode
    punctuation; not an apostrophe inside a word (don't) nor a decimal point or thousands
    separator inside a number (3.14, 1,000)."""
    skip = {m.start() for m in _NOT_PUNCT.finditer(text)}
    return [m.span() for m in _PUNCT.finditer(text)
            if m.start() not in skip and _is_punct(m.group())]


def _is_punct(c: str) -> bool:
    return c in _PUNCT_CHARS or (unicodedata.category(c).startswith("P") and c != "_")


# ---------------------------------------------------------------- code keywords

OTHER_KEYWORDS = ("function var let const void int char long float double bool struct enum union "
                  "switch case default typedef static public private protected new this null "
                  "undefined typeof extends implements interface package throw throws catch "
                  "unsigned sizeof goto fn impl mut pub use match").split()
CODE_KEYWORDS = frozenset(keyword.kwlist) | frozenset(OTHER_KEYWORDS)
_KEYWORD = re.compile(rf"(?<![\w.])(?:{'|'.join(sorted(CODE_KEYWORDS, key=len, reverse=True))})(?!\w)")
_STRING = re.compile(r"""'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*\"""")
_PROSE_WORD = re.compile(r"\b(?:the|an|this|that|these|those|you|we|it|its|of|to|be|are|was|were|will|"
                         r"can|should|which|when|where|how|then|there|than)\b")
_CODE_CHAR = re.compile(r"[()\[\]{}=<>_+*%/0-9'\"]|\.\w")
_STATEMENTS = [re.compile(p) for p in (
    r"^(?:async\s+)?(?:def|class)\s+[A-Za-z_]\w*\s*[(:]",
    r"^(?:if|elif|while)\s+(?P<e>[^:]+|.+):(?:\s+\S.*)?$",
    r"^(?:async\s+)?for\s+(?P<e>[^:]+?\s+in\s+(?:[^:]+|.+)):(?:\s+\S.*)?$",
    r"^(?:async\s+)?with\s+(?P<e>[^:]+|.+):(?:\s+\S.*)?$",
    r"^except\b(?P<e>.*):$",
    r"^(?:else|try|finally)\s*:$",
    r"^(?:return|yield|raise|assert|del|global|nonlocal|await)\b(?P<e>.*)$",
    r"^import\s+[\w.]+(?:\s+as\s+\w+)?(?:\s*,\s*[\w.]+(?:\s+as\s+\w+)?)*$",
    r"^from\s+[\w.]+\s+import\s+\S",
    r"^(?:pass|break|continue)$",
    r"^@[\w.]+",
    r"^[A-Za-z_][\w.]*(?:\[[^\]]*\])?(?:\s*,\s*[A-Za-z_][\w.]*)*\s*(?::[^=]+)?(?:[-+*/%|&]|//)?=(?!=)\s*(?P<e>\S.*)$",
    r"^[A-Za-z_][\w.]*\(.*\)$",
    r"^(?P<e>.*[;{])$|^}",
)]


def _expression_like(text: str) -> bool:
    """Code rather than English: no English function words outside string literals, and a
    code character or at most six words."""
    bare = _STRING.sub("''", text).strip()
    bare = bare[:-1] if bare.endswith(".") and not bare.endswith("..") else bare
    if _PROSE_WORD.search(bare):
        return False
    return bool(_CODE_CHAR.search(bare)) or len(bare.split()) <= 6


def is_code_line(line: str) -> bool:
    """A line that reads as a Python (or C-like) statement. A doctest prompt and a
    trailing comment are ignored."""
    text = re.sub(r"^\s*(?:>>>|\.\.\.)\s?", "", line).strip()
    text = re.sub(r"\s+#[^'\"]*$", "", text)
    for pattern in _STATEMENTS:
        m = pattern.match(text)
        if m and ("e" not in m.groupdict() or m.group("e") is None or _expression_like(m.group("e"))):
            return True
    return False


def find_code_keywords(text: str) -> Spans:
    """Keywords (Python's, and common C/JavaScript/Rust ones) on lines that read as code,
    outside string literals and comments. English "for", "if" or "class" in prose is not
    a code keyword."""
    spans = []
    for m in re.finditer(r"[^\n]+", text):
        line = m.group()
        if not is_code_line(line):
            continue
        code = _STRING.sub(lambda s: " " * len(s.group()), line)
        code = re.sub(r"#.*$", lambda s: " " * len(s.group()), code)
        spans += [(m.start() + k.start(), m.start() + k.end()) for k in _KEYWORD.finditer(code)]
    return spans


# ---------------------------------------------------------------- the registry

CONCEPTS: dict[str, Concept] = {c.name: c for c in (
    Concept("base64", "a run of 16+ base64 characters mixing upper case, lower case and digits", find_base64),
    Concept("hex", "hexadecimal: 0x1f, \\x1b, a UUID, a #colour, a hash of 6+ hex digits with a digit and a letter", find_hex),
    Concept("number", "a decimal numeral: 12, 3.14, 1,000, 1e-5, 2nd", find_numbers),
    Concept("people_count", "a number counting people: three people, 12 workers, a dozen children", find_people_counts),
    Concept("all_caps", "a word of 2+ capital letters and no lower case: NASA, MAX_SIZE", find_all_caps),
    Concept("code_keyword", "a keyword on a line that reads as code: def, return, for ... in", find_code_keywords),
    Concept("indentation", "leading whitespace of a non-blank line (a tab or 2+ spaces)", find_indentation),
    Concept("caps_prose", "running text in capitals: four or more capitalised words, as in THE SOFTWARE IS PROVIDED",
            find_caps_prose),
    Concept("copyright", "a line stating a copyright: it holds Copyright, (c) or ©", find_copyright),
    Concept("license", "licence text: a paragraph naming a licence, a warranty, liability or redistribution",
            find_license),
    Concept("url", "an http(s)/ftp/file URL or a www. address", find_urls),
    Concept("path", "a file path: names joined by / (usr/share/doc, debian/*, ./setup.py)", find_paths),
    Concept("string", "a quoted string on one line, quotes included: 'abc', \"abc\"", find_strings),
    Concept("punctuation", "punctuation and ASCII symbols, not an apostrophe in a word or a decimal point", find_punctuation),
)}


def _re2_options():
    import re2

    options = re2.Options()
    options.log_errors = False  # RE2 would print its own copy of the error on stderr
    options.max_mem = REGEX_MAX_MEM
    return options


REGEX_MAX_MEM = 64 * 2**20
REGEX_BUDGET_S = 120.0  # matching time one user pattern may spend in one run


def _budgeted(name: str, pattern: str, find: Callable[[str], Spans]) -> Callable[[str], Spans]:
    """find, stopped with one line once it has spent REGEX_BUDGET_S in all (RE2 is linear
    in the text, but a pattern can cost microseconds per character: `(.*a){400}`)."""
    spent = [0.0]

    def timed(text: str) -> Spans:
        start = time.perf_counter()
        spans = find(text)
        spent[0] += time.perf_counter() - start
        if spent[0] > REGEX_BUDGET_S:
            raise UserError(f"concept {name!r}: /{pattern}/ spent more than {REGEX_BUDGET_S:g}s matching; "
                            "simplify the pattern (fewer repeated wildcards)")
        return spans
    return timed


def regex_concept(name: str, pattern: str) -> Concept:
    """A user concept: the tokens inside matches of `pattern`, multiline. User patterns run
    on RE2 (Google's linear-time engine, the one DuckDB's regexp functions use), so no
    pattern backtracks: RE2 refuses what it cannot run in linear time (backreferences,
    lookaround) and patterns whose compiled form needs more than REGEX_MAX_MEM."""
    import re2

    try:
        compiled = re2.compile(f"(?m){pattern}", _re2_options())
    except re2.error as e:
        reason = e.args[0].decode("utf-8", "replace") if e.args and isinstance(e.args[0], bytes) else str(e)
        raise UserError(f"concept {name!r}: bad regular expression {pattern!r}: {reason} (patterns run on RE2: "
                        f"no backreferences or lookaround)") from None
    return Concept(name, f"matches /{pattern}/", _budgeted(name, pattern, _regex_spans(compiled)), pattern)


def concept(spec: str) -> Concept:
    """A registered name, `regex:PATTERN` (named by itself) or `NAME=PATTERN`."""
    if spec in CONCEPTS:
        return CONCEPTS[spec]
    if spec.startswith("regex:"):
        return regex_concept(spec, spec[len("regex:"):])
    name, eq, pattern = spec.partition("=")
    if eq and re.fullmatch(r"[A-Za-z_][\w.-]*", name):
        if name in CONCEPTS:
            raise UserError(f"concept name {name!r} is taken by a built-in concept; pick another")
        return regex_concept(name, pattern)
    raise UserError(f"unknown concept {spec!r}; choose from {', '.join(CONCEPTS)}, regex:PATTERN or NAME=PATTERN")


def detect(spec: str | Concept, tokens: list[str]) -> np.ndarray:
    """The boolean mask of a concept over a document's token strings."""
    return (spec if isinstance(spec, Concept) else concept(spec)).mask(tokens)


def concept_masks(tokens: list[str], concepts: Iterable[Concept]) -> dict[str, np.ndarray]:
    """Masks of several concepts over one document's tokens (the text is joined once)."""
    text = "".join(tokens)
    solid = _solid(text)
    return {c.name: _majority(tokens, _covered(len(text), c.find(text)), solid) for c in concepts}
