"""One redaction for every string that leaves the driver.

Error messages carry secrets: a botocore error quotes a presigned URL, a user's exception names a
database URL with its password, a ``storage_options`` dict ends up in a message. Whatever the
engine writes down (log records of the ``engine`` logger, history rows, the run report and its HTML,
``StageFailedError`` messages, the manifest) passes through :func:`redact` first. It replaces with
``***``:

* the secret-looking values of ``storage_options`` (values under keys naming a key, secret, token,
  password, credential or session), of the call and of every run this process started
  (:func:`remember`);
* credentials in URLs (``scheme://user:password@host`` keeps only ``scheme://***@host``);
* signatures and credentials in query strings and headers (``X-Amz-Signature``, ``X-Amz-Credential``,
  ``X-Amz-Security-Token``, ``X-Goog-Signature``, ``sig=``, ``signature=``, ``token=``, ...);
* ``Authorization:`` header values and ``Bearer`` tokens;
* AWS access key ids (``AKIA…``, ``ASIA…``) and 40-character base64 strings that follow a key-ish
  word (an AWS secret access key: ``aws_secret_access_key=…``, ``"secret": "…"``);
* values of ``password=``/``secret=``-like assignments.

Data values are a second concern: the keys of skew decisions are user data (an e-mail address, a
customer id). :func:`public_decisions` replaces them with a short hash plus their Python types
(``{"key": "sha256:1a2b3c4d5e6f", "key_type": ["str"]}``, and the same hash inside the reason text)
for whatever is written down (manifest, history, logs, printed summaries), unless the
``engine.report.key-values`` knob is on. :func:`key_digest` gives the hash of a key, to find it in
one's own data. A short hash hides a value from a casual reader, not from someone who can guess it
(a small integer id or a country code is found by trying them all).

The shape of the text is kept (``...&X-Amz-Signature=***&...``), so a message still says what failed.
Redaction is a filter on text, not a proof: a secret that looks like none of the above and was not
passed in ``storage_options`` goes through.

>>> redact("GET https://b.s3.amazonaws.com/k?X-Amz-Signature=0a1b2c&x=1")
'GET https://b.s3.amazonaws.com/k?X-Amz-Signature=***&x=1'
>>> redact("postgresql://etl:hunter2@db:5432/x")
'postgresql://***@db:5432/x'
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from typing import Any

MASK = "***"

# Names under which storage_options hold secrets (s3fs: key/secret/token, gcsfs: token, adlfs:
# account_key/sas_token/client_secret, ...).
_SECRET_WORDS = ("key", "secret", "token", "password", "credential", "session", "signature", "passwd")

_KEYISH = r"(?:secret|key|token|passw(?:or)?d|credential|signature|auth)"

_PATTERNS: list[tuple[re.Pattern, Any]] = [
    # scheme://user:password@host (also s3://AKIA…:secret@bucket)
    (re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.\-]*://)[^/\s:@'\"]+:[^/\s@'\"]*@"), r"\1" + MASK + "@"),
    # Authorization headers, whatever the scheme (AWS4-HMAC-SHA256 Credential=…, Basic …, Bearer …)
    (re.compile(r"(?i)\b(authorization['\"]?\s*[:=]\s*['\"]?)[^'\"\r\n]+"), r"\1" + MASK),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9\-._~+/]+=*"), r"\1" + MASK),
    # Signatures and credentials of presigned URLs and signed headers, in a query string or a header
    (re.compile(r"(?i)\b(x-(?:amz|goog)-(?:signature|credential|security-token)['\"]?\s*[:=]\s*['\"]?)"
                r"[^&\s'\",;]+"), r"\1" + MASK),
    # Short names that are secrets in query strings (Azure SAS sig=, signature=, token=, AWSAccessKeyId=, ...)
    (re.compile(r"(?i)([?&;](?:sig|signature|token|access_token|id_token|refresh_token|api_key|apikey|key|"
                r"awsaccesskeyid|password|passwd|secret|client_secret|credential|security_token)=)[^&\s'\"#]+"),
     r"\1" + MASK),
    # password=…, "secret": "…", aws_secret_access_key = …, session_token: …
    (re.compile(r"(?i)\b((?:\w*_)?(?:password|passwd|pwd|secret|secret_access_key|secret_key|session_token|"
                r"security_token|access_token|api_key|apikey|client_secret|private_key)['\"]?\s*[:=]\s*['\"]?)"
                r"(?!\*\*\*)[^\s'\",;&)}\]]+"), r"\1" + MASK),
    # AWS access key ids (long-term AKIA, temporary ASIA, and the other unique-id prefixes)
    (re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|AROA|APKA|ASCA)[A-Z0-9]{12,}\b"), MASK),
    # a 40-character base64 string (an AWS secret access key) after a key-ish word
    (re.compile(r"(?i)(\b\w*" + _KEYISH + r"\w*['\"]?\s*[:=]?\s*['\"]?)(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}"
                r"(?![A-Za-z0-9/+=])"), r"\1" + MASK),
]

_DELIMITED = 6     # the patterns before this one need "://", "=", ":" or "bearer" in the text (see redact)

_known: set[str] = set()
_known_lock = threading.Lock()


def secrets_of(storage_options: dict | None) -> list[str]:
    """The secret-looking string values of ``storage_options`` (nested dicts included), longest first."""
    found: list[str] = []

    def walk(obj: Any, key: str = "") -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, str(k))
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v, key)
        elif isinstance(obj, str) and len(obj) >= 4 and any(w in key.lower() for w in _SECRET_WORDS):
            found.append(obj)
    walk(storage_options or {})
    return sorted(set(found), key=len, reverse=True)


def remember(storage_options: dict | None) -> None:
    """Redact the secrets of ``storage_options`` from everything this process writes from now on
    (log records included, which do not know the run's options)."""
    new = secrets_of(storage_options)
    if new:
        with _known_lock:
            _known.update(new)


_USERINFO = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://([^/\s:@'\"]+):([^/\s@'\"]+)@")


def remember_urls(*values: Any) -> None:
    """Redact the passwords of ``scheme://user:password@host`` URLs among ``values`` (strings, or lists
    and dicts of them) from everything this process writes from now on: a library's error may quote
    the password without the URL around it (``Invalid bucket name "user:password@bucket"``)."""
    found: list[str] = []

    def walk(obj: Any) -> None:
        if isinstance(obj, str):
            for m in _USERINFO.finditer(obj):
                found.extend(x for x in (m.group(2), f"{m.group(1)}:{m.group(2)}") if len(x) >= 4)
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)
    walk(values)
    if found:
        with _known_lock:
            _known.update(found)


def redact(text: str, storage_options: dict | None = None) -> str:
    """``text`` with every secret-looking part replaced by ``***`` (see the module docstring)."""
    if not isinstance(text, str) or not text:
        return text
    with _known_lock:
        known = list(_known)
    extra = secrets_of(storage_options) if storage_options else ()
    for secret in sorted(set(extra) | set(known), key=len, reverse=True) if (extra or known) else ():
        if secret in text:
            text = text.replace(secret, MASK)
    # The first patterns need "://", "=" or ":" (a URL, a key=value, a header) or the word "bearer",
    # the last two a run of 16 or more characters: most strings (names, short values) skip them.
    if "://" in text or "=" in text or ":" in text or "earer" in text.lower():
        for pattern, repl in _PATTERNS[:_DELIMITED]:
            text = pattern.sub(repl, text)
    if len(text) >= 16:
        for pattern, repl in _PATTERNS[_DELIMITED:]:
            text = pattern.sub(repl, text)
    return text


def redact_obj(obj: Any, storage_options: dict | None = None) -> Any:
    """A copy of a JSON-like value (dicts, lists, tuples, strings, numbers) with every string redacted."""
    if isinstance(obj, str):
        return redact(obj, storage_options)
    if isinstance(obj, dict):
        return {k: redact_obj(v, storage_options) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact_obj(v, storage_options) for v in obj]
    if isinstance(obj, tuple):
        return tuple(redact_obj(v, storage_options) for v in obj)
    return obj


def key_digest(key: Any) -> str:
    """A short, stable hash of a key (a tuple of column values, or one value): ``sha256:<12 hex>``."""
    key = tuple(key) if isinstance(key, (list, tuple)) else (key,)
    return "sha256:" + hashlib.sha256(repr(key).encode("utf-8", "backslashreplace")).hexdigest()[:12]


def public_decisions(decisions: list[dict], key_values: bool = False) -> list[dict]:
    """Copies of skew decisions whose keys (``key``, ``keys`` and their text in ``reason``) are short
    hashes, unless ``key_values``."""
    out = []
    for d in decisions:
        d = dict(d)
        if key_values or not any(k in d for k in ("key", "keys")):
            out.append(d)
            continue
        keys = ([d["key"]] if d.get("key") is not None else []) + list(d.get("keys") or [])
        reason = d.get("reason")
        if isinstance(reason, str):
            for k in sorted(keys, key=lambda k: -len(repr(tuple(k)))):
                reason = reason.replace(repr(tuple(k)), key_digest(k))
            d["reason"] = reason
        if d.get("key") is not None:
            d["key_type"] = [type(v).__name__ for v in d["key"]]
            d["key"] = key_digest(d["key"])
        if d.get("keys") is not None:
            d["keys"] = [key_digest(k) for k in d["keys"]]
        out.append(d)
    return out


class RedactingFilter(logging.Filter):
    """A logging filter that redacts a record's message (with its arguments) and its traceback text."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logging's problem, not ours
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install(logger_name: str = "engine") -> None:
    """Attach one :class:`RedactingFilter` to the named logger (idempotent). A logger's filter sees the
    records logged on it, not those of its children: the engine logs on ``"engine"`` itself."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())


__all__ = ["redact", "redact_obj", "remember", "secrets_of", "key_digest", "public_decisions", "RedactingFilter",
           "install", "MASK"]
