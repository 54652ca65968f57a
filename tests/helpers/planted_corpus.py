"""A corpus with planted concepts, to check that concept scoring finds what is there.

Background text is real: lines of a few standard-library modules (code, comments and
docstrings). Into it go two planted concepts, each often enough for a small model to
learn: base64 strings (random bytes and encoded English, in code and MIME contexts)
and sentences that count people ("twelve tired workers signed the petition"). Control
sentences count things that are not people ("twelve old boxes ...") with the same
numbers and verbs, so a neuron that only reads numbers does not pass as a people
counter. The output is a function of (n_docs, seed) and the Python version.

    python -m planted_corpus corpus.jsonl [--docs N] [--seed S]
"""
from __future__ import annotations

import argparse
import base64
import json
import random
import sysconfig
from pathlib import Path

BACKGROUND_MODULES = ("textwrap.py", "string.py", "colorsys.py", "bisect.py", "fnmatch.py", "glob.py",
                      "shlex.py", "heapq.py")
QUANTITIES = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve", "twenty",
              "fifty", "a dozen", "hundreds of", "thousands of", "2", "3", "4", "7", "12", "15", "40", "250")
ADJECTIVES = ("", "", "tired", "young", "local", "new", "angry", "happy", "old", "other")
PEOPLE = ("people", "workers", "children", "students", "women", "men", "teachers", "passengers",
          "volunteers", "soldiers", "doctors", "visitors")
THINGS = ("apples", "boxes", "files", "trees", "cars", "books", "chairs", "bottles", "stones",
          "letters", "rooms", "bags")
PEOPLE_VERBS = ("arrived at the station", "signed the petition", "were waiting outside",
                "came to the meeting", "lived in the village", "joined the team", "left the building")
THING_VERBS = ("were on the table", "lay outside", "stood in the yard", "came in the mail",
               "were left in the building", "fell from the shelf", "were in the box")


def people_sentence(rng: random.Random) -> str:
    adj = rng.choice(ADJECTIVES)
    words = [rng.choice(QUANTITIES), adj, rng.choice(PEOPLE), rng.choice(PEOPLE_VERBS)]
    return _capitalise(" ".join(w for w in words if w)) + "."


def thing_sentence(rng: random.Random) -> str:
    adj = rng.choice(ADJECTIVES)
    words = [rng.choice(QUANTITIES), adj, rng.choice(THINGS), rng.choice(THING_VERBS)]
    return _capitalise(" ".join(w for w in words if w)) + "."


def base64_block(rng: random.Random, background: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """A base64 string in one of three settings, and the character spans of its base64."""
    if rng.random() < 0.5:
        data = rng.randbytes(rng.randint(12, 48))
    else:
        data = "".join(rng.choice(background) for _ in range(2)).encode()[:rng.randint(24, 120)]
    encoded = base64.b64encode(data).decode("ascii")
    kind = rng.randrange(3)
    if kind == 0:
        return f'token = "{encoded}"', [(9, 9 + len(encoded))]
    if kind == 1:
        return f"key: {encoded}", [(5, 5 + len(encoded))]
    header = "Content-Transfer-Encoding: base64\n\n"
    pieces = [encoded[i:i + 64] for i in range(0, len(encoded), 64)]
    spans, at = [], len(header)
    for piece in pieces:
        spans.append((at, at + len(piece)))
        at += len(piece) + 1
    return header + "\n".join(pieces), spans


def _capitalise(s: str) -> str:
    return s[:1].upper() + s[1:]


def background_lines() -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    text = "".join((stdlib / name).read_text(encoding="utf-8") for name in BACKGROUND_MODULES)
    return text.splitlines()


def planted_documents(n_docs: int = 2000, seed: int = 0) -> list[str]:
    """Documents of 5-25 background lines with planted lines between them."""
    return [text for text, _ in planted_documents_with_base64(n_docs, seed)]


def planted_documents_with_base64(n_docs: int = 2000, seed: int = 0) -> list[tuple[str, list[tuple[int, int]]]]:
    """The planted documents, each with the character spans of the base64 planted in it."""
    rng = random.Random(seed)
    lines = background_lines()
    prose = [line.strip() for line in lines if line.strip()]
    docs = []
    for _ in range(n_docs):
        start = rng.randrange(len(lines) - 25)
        doc: list[tuple[str, list]] = [(line, []) for line in lines[start:start + rng.randint(5, 25)]]
        planted = [(people_sentence(rng), []) for _ in range(rng.choice((0, 1, 2, 3)))]
        planted += [(thing_sentence(rng), []) for _ in range(rng.choice((0, 1, 2)))]
        planted += [base64_block(rng, prose) for _ in range(rng.choice((0, 0, 1, 2)))]
        for item in planted:
            doc.insert(rng.randint(0, len(doc)), item)
        text, spans = "", []
        for line, line_spans in doc:
            spans += [(len(text) + a, len(text) + b) for a, b in line_spans]
            text += line + "\n"
        docs.append((text, spans))
    return docs


def write_planted_corpus(path: str | Path, n_docs: int = 2000, seed: int = 0) -> Path:
    """Write the planted corpus as JSONL ({"text", "source"} per line); returns the path."""
    path = Path(path)
    with open(path, "w", encoding="utf-8") as f:
        for i, text in enumerate(planted_documents(n_docs, seed)):
            f.write(json.dumps({"text": text, "source": f"planted:{seed}:{i}"}) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m planted_corpus", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_planted_corpus(args.out, args.docs, args.seed))


if __name__ == "__main__":
    main()
