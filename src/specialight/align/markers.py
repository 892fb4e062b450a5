"""Token strings to surface text: undo each tokenizer family's space, newline and byte markers.

Three schemes:

- ``byte_level`` (GPT-2, SmolLM2, Llama-3): every byte is shown as a printable character (``Ġ`` = space,
  ``Ċ`` = newline); a piece that holds part of a multi-byte character decodes to ``\\ufffd``.
- ``sentencepiece`` (T5, Llama-2): ``▁`` is a space; byte-fallback pieces ``<0x0A>`` are bytes.
- ``text``: already surface text (what OpenAI-compatible APIs return as tokens).

Special tokens (``<unk>``, ``</s>``, ``<|endoftext|>``) become one ``\\ufffd``: they stand for one unknown
character, so the edit distance still pays for them.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

SCHEMES = ("byte_level", "sentencepiece", "text")
UNKNOWN = "\ufffd"
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SPECIAL = re.compile(r"^<\|?[A-Za-z_/][\w/|.-]*\|?>$")


@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's byte-to-printable-character table.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes are shifted to U+0100 onwards in
    byte order, which is why a space shows as ``Ġ`` (U+0120) and a newline as ``Ċ`` (U+010A).
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(b): b for b in printable}
    shifted = 0
    for byte in range(256):
        if byte not in printable:
            table[chr(256 + shifted)] = byte
            shifted += 1
    return table


def surface(token: str, scheme: str) -> str:
    """The text a token string stands for under ``scheme``."""
    if _SPECIAL.match(token) and not _BYTE_PIECE.fullmatch(token):
        return UNKNOWN
    if scheme == "byte_level":
        table = byte_decoder()
        if all(ch in table for ch in token):
            return bytes(table[ch] for ch in token).decode("utf-8", errors="replace")
        return token
    if scheme == "sentencepiece":
        if _BYTE_PIECE.search(token):
            raw = _BYTE_PIECE.sub(lambda m: chr(int(m.group(1), 16)), token)
            return raw.encode("latin-1", errors="ignore").decode("utf-8", errors="replace").replace("▁", " ")
        return token.replace("▁", " ")
    if scheme == "text":
        return token
    raise ValueError(f"unknown token scheme {scheme!r}; known: {', '.join(SCHEMES)}")


def detect_scheme(tokens: list[str]) -> str:
    """Guess a sequence's scheme: ``Ġ``/``Ċ`` mean byte-level, ``▁`` SentencePiece, else surface text."""
    if any(t.startswith("Ġ") or "Ċ" in t for t in tokens):
        return "byte_level"
    if any("▁" in t for t in tokens):
        return "sentencepiece"
    return "text"


def surfaces(tokens: list[str], scheme: str = "auto") -> list[str]:
    """Surface text of every token (``scheme="auto"`` uses `detect_scheme`)."""
    chosen = detect_scheme(tokens) if scheme == "auto" else scheme
    return [surface(t, chosen) for t in tokens]


def spells(pieces: list[str], text: str) -> bool:
    """Whether surface ``pieces`` spell ``text`` (blanks at either end aside, as `specialight align` strips
    the text); a piece holding ``\ufffd`` (part of a multi-byte character, or a special token) matches any
    characters there."""
    if "".join(pieces).strip() == text.strip():
        return True
    if not any(UNKNOWN in piece for piece in pieces):
        return False
    pattern = "".join(".*?" if UNKNOWN in piece else re.escape(piece) for piece in pieces)
    return re.fullmatch(rf"\s*{pattern}\s*", text.strip(), re.DOTALL) is not None


def first_difference(a: str, b: str) -> int:
    """The first index where two strings differ (the shorter one's length where one begins the other)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def tokenizer_scheme(tokenizer) -> str:
    """The scheme of a Hugging Face fast tokenizer, read from its decoder."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer; load it with AutoTokenizer")
    text = json.dumps(json.loads(backend.to_str()).get("decoder"))
    if '"ByteLevel"' in text:
        return "byte_level"
    if '"Metaspace"' in text or '"ByteFallback"' in text or "▁" in text:
        return "sentencepiece"
    return "text"
