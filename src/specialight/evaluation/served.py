"""What `specialight evaluate --base_url` needs to know of a served model besides its tokenizer: the context
its prompts are fitted to.

The server says it where it can: vLLM's ``/v1/models`` gives each model's ``max_model_len``, llama.cpp's
``llama-server`` gives ``meta.n_ctx_train`` there and the context of one slot in ``/props``
(``default_generation_settings.n_ctx``). A model folder's ``config.json`` gives its position limit. The
smallest of these is used (a prompt must fit each); ``--context_length`` overrides them all. Without any of
them the command stops with one line naming both ways to give it.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from specialight.core.errors import DataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedConfig:
    """The fields of a model config that prompt fitting reads (`specialight.evaluation.context`)."""

    max_position_embeddings: int | None
    is_encoder_decoder: bool = False


def _get_json(url: str, api_key: str | None, timeout: float) -> dict:
    """The JSON object at ``url``, or ``{}`` when the server has no such endpoint or is not reachable."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read())
    except (OSError, ValueError):  # URLError, HTTPError and timeouts are OSErrors; ValueError: not JSON
        return {}
    return answer if isinstance(answer, dict) else {}


def server_context(base_url: str, served_model: str, api_key: str | None = None, timeout: float = 10.0) -> int | None:
    """The smallest context the server reports for ``served_model`` (see the module docstring), or None."""
    models = _get_json(base_url.rstrip("/") + "/models", api_key, timeout).get("data") or []
    entries = [e for e in models if isinstance(e, dict) and (e.get("id") == served_model or len(models) == 1)]
    found = [e.get("max_model_len") for e in entries]
    found += [(e.get("meta") or {}).get("n_ctx_train") for e in entries]
    root = base_url.rstrip("/").removesuffix("/v1")
    found.append((_get_json(root + "/props", api_key, timeout).get("default_generation_settings") or {}).get("n_ctx"))
    values = [v for v in found if isinstance(v, int) and not isinstance(v, bool) and v > 0]
    return min(values) if values else None


def served_config(
    source: str,
    base_url: str,
    served_model: str,
    context_length: int | None = None,
    api_key_env: str = "OPENAI_API_KEY",
) -> ServedConfig:
    """The context (and kind) of the served model whose tokenizer is at ``source``; `DataError` when
    neither ``context_length``, the server nor a ``config.json`` in ``source`` gives one."""
    config = None
    if (Path(source) / "config.json").is_file() or not Path(source).exists():
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(source)
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    if context_length is not None:
        return ServedConfig(context_length, encoder_decoder)
    from specialight.evaluation.generation import context_length as config_context

    reported = server_context(base_url, served_model, os.environ.get(api_key_env))
    limits = [v for v in (reported, config_context(config) if config is not None else None) if v is not None]
    if limits:
        logger.info("fitting prompts to a context of %d tokens (server: %s)", min(limits), reported)
        return ServedConfig(min(limits), encoder_decoder)
    if config is not None:  # a model with no position limit (T5), as in-process evaluation treats it
        return ServedConfig(None, encoder_decoder)
    raise DataError(
        f"{source} has no config.json and {base_url} does not report the served model's context "
        "(/v1/models max_model_len, /props n_ctx): give --context_length N"
    )
