"""A teacher from its command-line spec: ``openai:MODEL`` (an OpenAI-compatible server at ``base_url``) or
``local:PATH_OR_ID`` (a transformers causal LM in this process)."""

from __future__ import annotations

from specialight.data.jsonl import DataError
from specialight.teacher.completion import Teacher

KINDS = ("openai", "local")


def parse_teacher(spec: str) -> tuple[str, str]:
    """``(kind, name)`` of a spec, or a one-line `DataError` saying what a spec looks like."""
    kind, _, name = spec.partition(":")
    if kind not in KINDS or not name:
        raise DataError(f"--teacher must be openai:MODEL or local:PATH_OR_ID, got {spec!r}")
    return kind, name


def build_teacher(
    spec: str,
    base_url: str | None = None,
    endpoint: str = "completions",
    api_key_env: str = "OPENAI_API_KEY",
    max_retries: int = 6,
    device: str = "cpu",
    score: bool = False,
) -> Teacher:
    """The teacher a spec names; ``score``: one that scores given texts (in process, or a server through
    `ServerScorer`).

    `DataError` (one line) for a bad spec or an ``openai:`` teacher without ``base_url``; checked before any
    model is loaded.
    """
    kind, name = parse_teacher(spec)
    if kind == "local":
        from specialight.teacher.local import LocalTeacher

        return LocalTeacher.from_pretrained(name, device)
    if not base_url:
        raise DataError("--teacher openai:MODEL needs --base_url (e.g. http://127.0.0.1:8080/v1)")
    if score:
        import os

        from specialight.teacher.server_scoring import ServerScorer

        return ServerScorer(base_url, name, os.environ.get(api_key_env))
    from specialight.teacher.backends import OpenAITeacher

    return OpenAITeacher(name, base_url, endpoint, api_key_env, max_retries=max_retries)
