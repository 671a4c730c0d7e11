"""Post a detection to Telegram: ``sendPhoto`` as multipart/form-data, with urllib only.

The Lambda runtime has no ``requests``, and one POST does not need it. Telegram answers a flood
with 429 and ``parameters.retry_after`` (seconds): we wait that long, but never more than a
total cap, so a rate-limited channel cannot keep the Lambda running (and billing) for minutes.
The bot token is part of the URL, so it is scrubbed from every error message we raise.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://api.telegram.org"
CAPTION_LIMIT = 1024  # Telegram's limit for photo captions


class TelegramError(RuntimeError):
    """sendPhoto failed for good (after the retries it was allowed)."""

    def __init__(self, message: str, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


@dataclass(frozen=True)
class SendResult:
    message_id: int | None
    attempts: int
    waited_s: float


def format_caption(event: Mapping[str, Any]) -> str:
    """Plain-text caption: observatory, local capture time, score, model version."""
    local = str(event.get("captured_local", ""))
    # Unparseable: show what the device sent; the caption is plain text, nothing to inject.
    with contextlib.suppress(ValueError):
        local = datetime.fromisoformat(local).strftime("%Y-%m-%d %H:%M:%S %z")
    model = event.get("model") or {}
    lines = [
        "☄️ Meteor candidate",
        f"Observatory: {event.get('observatory', '?')}",
        f"Local time: {local}",
        f"Score: {float(event.get('score', 0.0)):.2f}",
        f"Model: {model.get('name', '?')} {model.get('version', '?')}",
    ]
    return "\n".join(lines)[:CAPTION_LIMIT]


def encode_multipart(
    fields: Mapping[str, str], files: Mapping[str, tuple[str, str, bytes]]
) -> tuple[bytes, str]:
    """Body and Content-Type for multipart/form-data; files map name → (filename, type, data)."""
    boundary = f"guaita-{uuid.uuid4().hex}"
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value.encode()
            + b"\r\n"
        )
    for name, (filename, content_type, data) in files.items():
        head = (
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; "
            f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _scrub(text: str, token: str) -> str:
    return text.replace(token, "<token>") if token else text


def _retry_after(body: bytes) -> float | None:
    try:
        value = json.loads(body)["parameters"]["retry_after"]
    except (ValueError, KeyError, TypeError):
        return None
    return float(value) if isinstance(value, int | float) and value >= 0 else None


def send_photo(
    token: str,
    chat_id: str,
    photo: bytes,
    caption: str,
    *,
    api_base: str = DEFAULT_API_BASE,
    timeout_s: float = 10.0,
    max_attempts: int = 4,
    max_total_wait_s: float = 20.0,
    sleep: Callable[[float], None] = time.sleep,
) -> SendResult:
    """Send one photo; retry 429 (after ``retry_after``), 5xx and network errors, bounded.

    Raises TelegramError when the message could not be delivered within ``max_attempts`` and
    ``max_total_wait_s``; other 4xx (bad token, bot not in the chat) are not retried.
    """
    url = f"{api_base.rstrip('/')}/bot{token}/sendPhoto"
    body, content_type = encode_multipart(
        {"chat_id": chat_id, "caption": caption[:CAPTION_LIMIT]},
        {"photo": ("preview.jpg", "image/jpeg", photo)},
    )
    waited = 0.0
    last_error = "not attempted"
    for attempt in range(1, max_attempts + 1):
        request = urllib.request.Request(
            url, data=body, method="POST", headers={"Content-Type": content_type}
        )
        wait: float | None
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                answer = json.loads(response.read() or b"{}")
            if answer.get("ok"):
                message_id = (answer.get("result") or {}).get("message_id")
                return SendResult(message_id, attempt, waited)
            raise TelegramError(
                f"sendPhoto answered ok=false: {str(answer.get('description'))[:200]}", attempt
            )
        except urllib.error.HTTPError as exc:
            payload = exc.read() if exc.fp else b""
            last_error = f"HTTP {exc.code}"
            if exc.code == 429:
                wait = _retry_after(payload)
                wait = 1.0 if wait is None else wait
            elif exc.code >= 500:
                wait = min(2.0 ** (attempt - 1), 8.0)
            else:
                try:
                    detail = str(json.loads(payload).get("description", ""))[:200]
                except (ValueError, AttributeError):
                    detail = ""
                raise TelegramError(
                    _scrub(f"sendPhoto refused: HTTP {exc.code} {detail}".strip(), token), attempt
                ) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, ValueError) as exc:
            last_error = _scrub(f"{type(exc).__name__}: {exc}", token)
            wait = min(2.0 ** (attempt - 1), 8.0)
        if attempt == max_attempts:
            break
        if waited + wait > max_total_wait_s:
            last_error += f" (next retry in {wait:g} s would exceed the {max_total_wait_s:g} s cap)"
            break
        log.warning("telegram: %s, retrying in %g s (attempt %d)", last_error, wait, attempt)
        sleep(wait)
        waited += wait
    raise TelegramError(f"sendPhoto failed after {attempt} attempt(s): {last_error}", attempt)
