"""Names and labels of jobs: their syntax and bounds, and how a listing selects by them.

A job may have a name, unique among its owner's jobs that have not been removed,
which the API accepts wherever it takes a job id (resolved among the caller's own
jobs only, an admin's too: a name is a user's handle on their jobs, never a way to
find someone else's). A name is 1 to `MAX_NAME_BYTES` characters of
`[A-Za-z0-9_.-]`, starting with a letter or a digit, as docker's container names;
one shaped like a job id (a UUID) is refused, so that an id and a name never read
the same.

Labels are `key=value` pairs in the Kubernetes label syntax
(https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#syntax-and-character-set):
a key is an optional DNS-subdomain prefix and "/", then a name of at most 63
characters of `[A-Za-z0-9_.-]` that starts and ends with a letter or a digit; a
value is empty or such a name. A job has at most `MAX_LABELS`. Every check
raises InvalidRequestError saying what was wrong, with the value `quoted`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from jobworker.echo import quoted
from jobworker.errors import InvalidRequestError

#: Longest job name.
MAX_NAME_BYTES = 63
#: Most labels on one job, and in one listing's selector.
MAX_LABELS = 32
#: Longest label name (the key's part after any prefix) and label value.
MAX_LABEL_NAME_BYTES = 63
#: Longest label key prefix (a DNS subdomain).
MAX_LABEL_PREFIX_BYTES = 253

#: A job's labels: (key, value) pairs sorted by key, each key once.
Labels = tuple[tuple[str, str], ...]

#: A job id: a UUID in its canonical lower-case form, as the tracker makes them
#: (here, not in `jobworker.model`, which checks names with this module).
JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?")
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")


def check_name(name: str) -> str:
    """`name` when it can name a job (see the module docstring); raises InvalidRequestError."""
    if not name.isascii() or len(name) > MAX_NAME_BYTES or not _NAME.fullmatch(name):
        raise InvalidRequestError(
            f"bad job name {quoted(name)}: a name is 1 to {MAX_NAME_BYTES} letters, digits, "
            "'_', '.' or '-', starting with a letter or a digit"
        )
    if JOB_ID.fullmatch(name):
        raise InvalidRequestError(
            f"bad job name {quoted(name)}: it reads as a job id; choose a name that does not"
        )
    return name


def is_name(text: str) -> bool:
    """Whether `text` has the syntax of a job name (and so is not a job id)."""
    try:
        check_name(text)
    except InvalidRequestError:
        return False
    return True


def _check_label_name(name: str, what: str, whole: str) -> None:
    if not name.isascii() or len(name) > MAX_LABEL_NAME_BYTES or not _LABEL_NAME.fullmatch(name):
        raise InvalidRequestError(
            f"bad label {what} {quoted(whole)}: at most {MAX_LABEL_NAME_BYTES} letters, digits, "
            "'_', '.' or '-', starting and ending with a letter or a digit"
        )


def check_label(key: str, value: str) -> tuple[str, str]:
    """(key, value) when they are a label in the Kubernetes syntax; raises InvalidRequestError."""
    prefix, slash, name = key.rpartition("/")
    if slash and (
        not prefix
        or len(prefix) > MAX_LABEL_PREFIX_BYTES
        or not prefix.isascii()
        or not all(_DNS_LABEL.fullmatch(part) for part in prefix.split("."))
    ):
        raise InvalidRequestError(
            f"bad label key {quoted(key)}: a prefix before '/' must be a DNS subdomain "
            f"(lower-case, dot-separated, at most {MAX_LABEL_PREFIX_BYTES} characters)"
        )
    _check_label_name(name, "key", key)
    if value:
        _check_label_name(value, "value", value)
    return key, value


def labels_from(pairs: Mapping[str, str] | Iterable[tuple[str, str]]) -> Labels:
    """Checked, sorted labels from a mapping or pairs; raises InvalidRequestError for
    more than `MAX_LABELS`, a key given twice, or one outside the syntax. The count
    is checked first, before any label."""
    items = list(pairs.items() if isinstance(pairs, Mapping) else pairs)
    if len(items) > MAX_LABELS:
        raise InvalidRequestError(f"{len(items)} labels given; at most {MAX_LABELS} are allowed")
    checked = dict(check_label(key, value) for key, value in items)
    if len(checked) != len(items):
        raise InvalidRequestError("a label key is given twice; give each key once")
    return tuple(sorted(checked.items()))


def parse_label(text: str) -> tuple[str, str]:
    """A label from "KEY=VALUE" (or "KEY=" for an empty value); raises InvalidRequestError."""
    key, sep, value = text.partition("=")
    if not sep:
        raise InvalidRequestError(f"a label is KEY=VALUE, not {quoted(text)}")
    return check_label(key, value)


def selects(selector: Labels, labels: Labels) -> bool:
    """Whether a job with `labels` has every label of `selector` (an empty one: any job)."""
    if not selector:
        return True
    have = dict(labels)
    return all(have.get(key) == value for key, value in selector)


__all__ = [
    "JOB_ID",
    "MAX_LABELS",
    "MAX_LABEL_NAME_BYTES",
    "MAX_LABEL_PREFIX_BYTES",
    "MAX_NAME_BYTES",
    "Labels",
    "check_label",
    "check_name",
    "is_name",
    "labels_from",
    "parse_label",
    "selects",
]
