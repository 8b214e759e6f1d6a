"""Our node tags <-> Compute Engine labels, losslessly.

GCE labels are narrow: keys and values use only [a-z0-9_-], are at most 63 characters,
keys start with a lowercase letter, and an instance has at most 64 labels. Our tags are
free text (uppercase, spaces, ':', '/', failure messages of any length).

Encoding (one escape character, '_'):
  a-z 0-9 '-'   stay as they are, so `corral-cluster-name: demo` is a readable label
  '_'           -> '__'
  'A'..'Z'      -> '_' + the lowercase letter
  ' ' . : / = , -> '_-' '_3' '_4' '_5' '_6' '_7'
  any other     -> '_0' + 2 hex digits, '_1' + 4 hex digits or '_2' + 6 hex digits
                   (code point < 0x100, < 0x10000, otherwise)
A key whose encoding does not start with a letter other than 'x' gets an 'x' in front
(decoding drops a leading 'x'). A value longer than 63 characters once encoded is cut into
63-character pieces: the first under the key itself, piece i (i >= 1) under `<key>_9<i>`
('_9' is never produced by the character escapes, so it marks a continuation). Filters on
a label therefore match short values exactly; long values are compared after decoding.

`decode_labels(encode_tags(tags)) == tags` for every mapping of strings whose encoded keys
fit (`MAX_KEY_CHARS`); `encode_tags` raises TagEncodingError otherwise or when the result
would exceed the label limit.

What does not fit at all goes to instance metadata: `split_tags` fills the labels in
priority order (cluster, kind, type, status, hashes first, then the shortest) and returns
the rest as an overflow mapping, stored as JSON in the metadata item `corral-tags`;
`join_tags(labels, overflow_json)` puts them back together (the overflow wins on a key in
both, which only happens halfway through an update). So every mapping of strings survives.
Only the priority tags are used in server-side label filters; the rest are matched after
decoding.
"""
from __future__ import annotations

import json
import re
from typing import Mapping

from launcher import tags as T

MAX_LABEL_CHARS = 63
MAX_LABELS = 64
CONTINUATION = "_9"
# Room left in a key for the continuation suffix `_9NN`.
MAX_KEY_CHARS = MAX_LABEL_CHARS - len(CONTINUATION) - 2

_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
_SHORT_ESCAPES = {"_": "_", " ": "-", ".": "3", ":": "4", "/": "5", "=": "6", ",": "7"}
_SHORT_DECODES = {code: char for char, code in _SHORT_ESCAPES.items()}
_HEX_WIDTHS = {"0": 2, "1": 4, "2": 6}
_HEX = frozenset("0123456789abcdef")
_LABEL_RE = re.compile(r"^[a-z0-9_-]{0,63}$")
OVERFLOW_METADATA_KEY = "corral-tags"
PRIORITY_KEYS = (T.TAG_CLUSTER_NAME, T.TAG_NODE_KIND, T.TAG_NODE_TYPE, T.TAG_NODE_STATUS,
                 T.TAG_LAUNCH_HASH, T.TAG_RUNTIME_HASH)


class TagEncodingError(ValueError):
    """A tag cannot be stored as GCE labels (key too long, or too many labels)."""


def encode_text(text: str) -> str:
    """Encode any string into [a-z0-9_-]* (no length limit)."""
    out = []
    for char in text:
        if char in _PLAIN:
            out.append(char)
        elif char in _SHORT_ESCAPES:
            out.append("_" + _SHORT_ESCAPES[char])
        elif "A" <= char <= "Z":
            out.append("_" + char.lower())
        else:
            point = ord(char)
            if point < 0x100:
                out.append(f"_0{point:02x}")
            elif point < 0x10000:
                out.append(f"_1{point:04x}")
            else:
                out.append(f"_2{point:06x}")
    return "".join(out)


def _decode(text: str, *, stop_at_continuation: bool = False) -> tuple[str, str | None]:
    """Decode `text`; returns (decoded, continuation digits or None). Raises ValueError on
    a malformed escape."""
    out = []
    index = 0
    while index < len(text):
        char = text[index]
        if char != "_":
            if char not in _PLAIN:
                raise ValueError(f"character {char!r} cannot appear in a label")
            out.append(char)
            index += 1
            continue
        if index + 1 >= len(text):
            raise ValueError("dangling escape")
        code = text[index + 1]
        if code == "9" and stop_at_continuation:
            digits = text[index + 2:]
            if not digits.isdigit() or digits.startswith("0"):
                raise ValueError("malformed continuation index")
            return "".join(out), digits
        if code in _SHORT_DECODES:
            out.append(_SHORT_DECODES[code])
            index += 2
        elif "a" <= code <= "z":
            out.append(code.upper())
            index += 2
        elif code in _HEX_WIDTHS:
            width = _HEX_WIDTHS[code]
            digits = text[index + 2:index + 2 + width]
            if len(digits) != width or not set(digits) <= _HEX:
                raise ValueError("malformed hex escape")
            out.append(chr(int(digits, 16)))
            index += 2 + width
        else:
            raise ValueError(f"unknown escape _{code}")
    return "".join(out), None


def decode_text(text: str) -> str:
    return _decode(text)[0]


def encode_key(key: str) -> str:
    encoded = encode_text(key)
    if not encoded or encoded[0] not in "abcdefghijklmnopqrstuvwyz":
        encoded = "x" + encoded
    return encoded


def decode_key(label_key: str) -> tuple[str, int]:
    """(tag key, piece index) of a label key; index 0 is the label holding the first piece."""
    body = label_key[1:] if label_key.startswith("x") else label_key
    key, digits = _decode(body, stop_at_continuation=True)
    return key, int(digits) if digits else 0


def encode_tags(tags: Mapping[str, str], max_labels: int = MAX_LABELS) -> dict[str, str]:
    labels: dict[str, str] = {}
    for key, value in tags.items():
        label_key = encode_key(str(key))
        if len(label_key) > MAX_KEY_CHARS:
            raise TagEncodingError(
                f"tag key {key!r} is too long for a GCE label once encoded "
                f"({len(label_key)} > {MAX_KEY_CHARS} characters)")
        encoded = encode_text(str(value))
        pieces = [encoded[start:start + MAX_LABEL_CHARS]
                  for start in range(0, len(encoded), MAX_LABEL_CHARS)] or [""]
        labels[label_key] = pieces[0]
        for number, piece in enumerate(pieces[1:], start=1):
            labels[f"{label_key}{CONTINUATION}{number}"] = piece
    if len(labels) > max_labels:
        raise TagEncodingError(
            f"these tags need {len(labels)} GCE labels, more than the {max_labels} allowed; "
            f"shorten the longest tag values")
    return labels


def decode_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """Tags from labels. A label that is not in our encoding (one a user set by hand) is
    kept as it is."""
    pieces: dict[str, dict[int, str]] = {}
    foreign: dict[str, str] = {}
    for label_key, value in labels.items():
        try:
            key, number = decode_key(label_key)
        except ValueError:
            foreign[label_key] = value
            continue
        pieces.setdefault(key, {})[number] = value
    tags: dict[str, str] = {}
    for key, numbered in pieces.items():
        joined = "".join(numbered[number] for number in sorted(numbered))
        try:
            tags[key] = decode_text(joined)
        except ValueError:
            tags[key] = joined
    for label_key, value in foreign.items():
        tags.setdefault(label_key, value)
    return tags


def is_valid_label(key: str, value: str) -> bool:
    """What GCE accepts (ASCII subset): used by the fake server and by tests."""
    return (bool(key) and key[0].isascii() and key[0].islower() and key[0].isalpha()
            and bool(_LABEL_RE.match(key)) and bool(_LABEL_RE.match(value)))


def split_tags(tags: Mapping[str, str], max_labels: int = MAX_LABELS
               ) -> tuple[dict[str, str], dict[str, str]]:
    """(labels, overflow): as many tags as fit go to labels, the priority ones first."""
    def order(item):
        key, value = item
        if key in PRIORITY_KEYS:
            return (0, PRIORITY_KEYS.index(key), 0, "")
        return (1, 0, len(encode_text(str(value))), str(key))
    labels: dict[str, str] = {}
    overflow: dict[str, str] = {}
    for key, value in sorted(tags.items(), key=order):
        try:
            encoded = encode_tags({key: value}, max_labels=max_labels)
        except TagEncodingError:
            overflow[key] = value
            continue
        if len(labels) + len(encoded) > max_labels:
            overflow[key] = value
        else:
            labels.update(encoded)
    return labels, overflow


def join_tags(labels: Mapping[str, str], overflow_json: str | None) -> dict[str, str]:
    tags = decode_labels(labels)
    if overflow_json:
        try:
            overflow = json.loads(overflow_json)
        except ValueError:
            overflow = {}
        if isinstance(overflow, dict):
            tags.update({str(key): str(value) for key, value in overflow.items()})
    return tags


def overflow_json(overflow: Mapping[str, str]) -> str:
    return json.dumps(dict(overflow), sort_keys=True, ensure_ascii=False)


def metadata_overflow(instance: Mapping) -> str | None:
    """The `corral-tags` metadata value of an instance resource, if any."""
    for item in (instance.get("metadata") or {}).get("items") or []:
        if item.get("key") == OVERFLOW_METADATA_KEY:
            return item.get("value")
    return None


def instance_tags(instance: Mapping) -> dict[str, str]:
    """All our tags of an instance resource (labels plus metadata overflow)."""
    return join_tags(instance.get("labels") or {}, metadata_overflow(instance))
