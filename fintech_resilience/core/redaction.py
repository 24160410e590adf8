"""Masking card data and secrets wherever the library stores, logs, traces or audits data.

A :class:`Redactor` masks

* **PANs**: runs of 13-19 digits that pass the Luhn check, written contiguously or in groups
  separated by one to three spaces, tabs, dashes, dots, slashes or ``+`` (form encoding), by
  no-break and other Unicode spaces (U+00A0, U+202F, U+2000-U+200A, U+3000, ...), Unicode dashes
  and their fullwidth forms, with ASCII or fullwidth digits (U+FF10-U+FF19), mixed freely
  (``4111 1111 1111 1111``, ``4111.1111.1111.1111``, ``4111/1111/1111/1111``). All digits but the
  last four become ``*`` and separators are kept (``**** **** **** 1111``).
  A digit run that fails the Luhn check (an order id, a timestamp, an amount) is kept as is.
  Grouped digits count as a card number only when laid out as cards are printed: four digits
  first, then groups of four to six, and a last group shorter than four only after groups of
  four (4-4-4-4, 4-6-5, 4-6-4, 4-4-4-4-3, 4-4-4-1); so dates, decimal amounts and IP addresses
  next to each other are kept.
  Where a longer run of groups contains a PAN (``"qty 2 4111 1111 1111 1111"``), the PAN is found
  at group boundaries; digits inside one unbroken run are never split.
* **sensitive fields**: JSON object members, mapping keys and ``name=value`` / ``name: value``
  pairs in text whose name is in ``fields`` (compared case-insensitively, ignoring ``_`` and
  ``-``: ``card_cvv``, ``Card-CVV`` and ``cardcvv`` are one name). The whole value is replaced.
* **sensitive headers**: ``Authorization``, ``Cookie``, ... (``headers``). The whole value is
  replaced; other header values are scanned for PANs.

Everything is fast when there is nothing to mask: one precompiled scan finds no candidate and the
input is returned unchanged (the same object).

>>> r = Redactor.pci()
>>> r.redact_text("card 4111 1111 1111 1111, order 1234567890123")
'card **** **** **** 1111, order 1234567890123'
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final, Protocol, TypeVar, overload, runtime_checkable

from ..errors import ConfigurationError

__all__ = [
    "MASK",
    "PCI_FIELDS",
    "PCI_HEADERS",
    "Redactor",
    "RedactorLike",
    "find_pans",
    "luhn_valid",
]

#: What a sensitive field or header value is replaced with.
MASK: Final = "[REDACTED]"

#: Field names :meth:`Redactor.pci` masks entirely (normalised: lower case, no ``_``/``-``).
PCI_FIELDS: Final = frozenset({
    # card verification values (PCI DSS 3.3.1.2: never stored after authorisation)
    "cvv", "cvc", "cvv2", "cvc2", "cvn", "cvd", "cid", "csc", "cav2", "securitycode",
    "cardsecuritycode", "cardverificationvalue", "cardverificationcode", "cardcvv", "cardcvc",
    # PINs and track data (PCI DSS 3.3.1.1 / 3.3.1.3)
    "pin", "pinblock", "track1", "track2", "trackdata", "magstripe",
    # the card number itself, when it sits in a field named for it
    "pan", "cardnumber", "primaryaccountnumber",
    # credentials
    "password", "passwd", "secret", "clientsecret", "apikey", "accesstoken", "refreshtoken",
    "authorization", "privatekey",
})

#: Header names :meth:`Redactor.pci` masks entirely (lower case).
PCI_HEADERS: Final = frozenset({
    "authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key",
    "x-auth-token", "x-csrf-token",
})

_JSON_TYPES: Final = ("application/json", "text/json")
_DIGIT: Final = "0-9\uff10-\uff19"  # ASCII and fullwidth digits
# What a PAN's digit groups are separated with: ASCII space, tab, dash, dot, slash and "+" (a
# space in form encoding); the Unicode spaces (Zs); Unicode dashes; fullwidth - . /
_SEP: Final = (" \t+./\\-\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000\u2010-\u2013"
               "\uff0d\uff0e\uff0f")
# A candidate PAN: at least 13 digits, groups separated by one to three separator characters,
# not touching other digits. The pattern is linear: digits and separators are disjoint classes.
_CANDIDATE_STR: Final = re.compile(
    rf"(?<![{_DIGIT}])[{_DIGIT}](?:[{_SEP}]{{0,3}}[{_DIGIT}]){{12,}}(?![{_DIGIT}])")
_CANDIDATE_BYTES: Final = re.compile(rb"(?<![0-9])[0-9](?:[ \t+./-]{0,3}[0-9]){12,}(?![0-9])")
# Cheap pre-checks: a run of 13+ digit/separator characters (simple classes scan fast).
_MAYBE_PAN_STR: Final = re.compile(rf"[{_DIGIT}][{_DIGIT}{_SEP}]{{11,}}[{_DIGIT}]")
_MAYBE_PAN_BYTES: Final = re.compile(rb"[0-9][0-9 \t+./-]{11,}[0-9]")
_GROUP: Final = re.compile(rf"[{_DIGIT}]+")
_JSON_ESCAPE: Final = re.compile(rb"\\[ut/]")
_ASCII_DIGITS: Final = str.maketrans({0xFF10 + i: 48 + i for i in range(10)})
_SEPARATORS: Final = str.maketrans("", "", "_-")

T = TypeVar("T")


def luhn_valid(digits: str) -> bool:
    """True if the string of ASCII digits passes the Luhn (mod 10) check."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i & 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


# Which PAN length wins when several group-aligned windows of one run pass the Luhn check (a
# stray digit group next to a card number passes by chance one time in ten): common lengths first.
_LENGTH_RANK: Final = {16: 0, 15: 1, 19: 2, 14: 3, 13: 4, 18: 5, 17: 6}


def _printed_like_a_card(sizes: list[int]) -> bool:
    """Whether digit groups of these sizes are laid out as card numbers are printed (4-4-4-4,
    4-6-5, 4-6-4, 4-4-4-4-3, 4-4-4-1): four digits first, then groups of four to six, and a
    last group of fewer than four only after groups of four."""
    if len(sizes) == 1:
        return True  # one unbroken run of 13-19 digits
    head, last = sizes[:-1], sizes[-1]
    if head[0] != 4 or any(not 4 <= size <= 6 for size in head) or last > 6:
        return False
    return last >= 4 or all(size == 4 for size in head)


def _pan_spans(run: str) -> list[tuple[int, int]]:
    """Character spans of PANs in one candidate run: windows of whole digit groups with 13-19
    digits, printed like a card, that pass the Luhn check, the most card-like first, never
    overlapping."""
    groups = [(m.start(), m.end()) for m in _GROUP.finditer(run)]
    if len(groups) == 1:
        return ([(0, len(run))] if len(run) <= 19 and luhn_valid(run.translate(_ASCII_DIGITS))
                else [])
    windows: list[tuple[int, int, int, int]] = []  # (rank, first group, last group, digits)
    sizes = [b - a for a, b in groups]
    for i in range(len(groups)):
        digits = 0
        for j in range(i, len(groups)):
            digits += sizes[j]
            if digits > 19:
                break
            if (digits >= 13 and _printed_like_a_card(sizes[i:j + 1]) and luhn_valid(
                    "".join(run[a:b] for a, b in groups[i:j + 1]).translate(_ASCII_DIGITS))):
                windows.append((_LENGTH_RANK[digits], i, j, digits))
    spans: list[tuple[int, int]] = []
    taken: set[int] = set()
    for _, i, j, _ in sorted(windows):
        if taken.isdisjoint(range(i, j + 1)):
            taken.update(range(i, j + 1))
            spans.append((groups[i][0], groups[j][1]))
    return sorted(spans)


def find_pans(text: str) -> list[str]:
    """Every PAN in ``text`` as written (with its separators); used by tests and audits."""
    out: list[str] = []
    for m in _CANDIDATE_STR.finditer(text):
        run = m.group()
        out.extend(run[a:b] for a, b in _pan_spans(run))
    return out


def _normalise(name: str) -> str:
    return name.lower().translate(_SEPARATORS)


@runtime_checkable
class RedactorLike(Protocol):
    """Anything with ``redact_bytes`` (e.g. :class:`Redactor`): what stores accept."""

    def redact_bytes(self, data: bytes, content_type: str | None = None) -> bytes:
        """Return ``data`` with card numbers and sensitive fields masked."""
        ...


class Redactor:
    """Masks PANs, sensitive fields and sensitive headers in text, bytes, mappings and headers.

    :param pans: mask Luhn-valid 13-19 digit runs (default True).
    :param fields: field names whose values are replaced by ``mask`` (any case; ``_`` and ``-``
        are ignored when comparing).
    :param headers: header names whose values are replaced by ``mask`` (any case).
    :param keep_last: digits of a PAN left visible at its end (0-4; PCI DSS allows at most the
        first six and last four, this library shows at most the last four).
    :param mask: the replacement for sensitive field and header values.

    Use :meth:`pci` for the safe default. Instances are immutable and thread-safe.
    """

    __slots__ = ("_field_bytes", "_field_text", "_maybe_field_bytes", "_maybe_field_text",
                 "fields", "headers", "keep_last", "mask", "pans")

    def __init__(self, *, pans: bool = True, fields: Iterable[str] = (),
                 headers: Iterable[str] = (), keep_last: int = 4, mask: str = MASK) -> None:
        if type(keep_last) is not int or not 0 <= keep_last <= 4:
            raise ConfigurationError(
                f"keep_last must be an int from 0 to 4 (PCI DSS shows at most the last four"
                f" digits); got {keep_last!r}"
            )
        if isinstance(fields, str) or isinstance(headers, str):
            raise ConfigurationError(
                "fields and headers are collections of names: write fields=('cvv',), not"
                " fields='cvv'"
            )
        if not isinstance(mask, str) or any(c.isdigit() for c in mask):
            raise ConfigurationError(f"mask must be a string without digits; got {mask!r}")
        self.pans = bool(pans)
        self.fields: frozenset[str] = frozenset(_normalise(f) for f in fields if f)
        self.headers: frozenset[str] = frozenset(h.lower() for h in headers if h)
        self.keep_last = keep_last
        self.mask = mask
        self._field_text: re.Pattern[str] | None = None
        self._field_bytes: re.Pattern[bytes] | None = None
        self._maybe_field_text: re.Pattern[str] | None = None
        self._maybe_field_bytes: re.Pattern[bytes] | None = None
        if self.fields:
            # pre-check on lower-cased text without '_'/'-': the names that contain no other name
            needles = sorted(f for f in self.fields
                             if not any(o != f and o in f for o in self.fields))
            quick = "|".join(re.escape(n) for n in needles)
            self._maybe_field_text = re.compile(quick)
            self._maybe_field_bytes = re.compile(quick.encode())
            # a field name in text, in any case, with optional '_'/'-' between its characters
            names = "|".join(
                "[-_]?".join(re.escape(c) for c in name)
                for name in sorted(self.fields, key=len, reverse=True)
            )
            key = rf"(?<![A-Za-z0-9_\-])(?:{names})(?![A-Za-z0-9_\-])"
            value = r"""(?P<v>"(?:[^"\\]|\\.)*"|'[^']*'|[^"'&,;\s}\]]+)"""
            pattern = rf"""(?P<k>{key}["']?\s*[:=]\s*){value}"""
            self._field_text = re.compile(pattern, re.IGNORECASE)
            self._field_bytes = re.compile(pattern.encode(), re.IGNORECASE)

    @classmethod
    def pci(cls) -> Redactor:
        """The safe default: PANs (last four kept), CVV/CVC, PIN, track data, credentials and
        authentication headers (see :data:`PCI_FIELDS` and :data:`PCI_HEADERS`)."""
        return _PCI

    def with_fields(self, *names: str) -> Redactor:
        """A copy that also masks the fields ``names``."""
        return Redactor(pans=self.pans, fields=self.fields | set(names), headers=self.headers,
                        keep_last=self.keep_last, mask=self.mask)

    def with_headers(self, *names: str) -> Redactor:
        """A copy that also masks the headers ``names``."""
        return Redactor(pans=self.pans, fields=self.fields, headers=self.headers | set(names),
                        keep_last=self.keep_last, mask=self.mask)

    # -- decisions -------------------------------------------------------------------------------
    def is_sensitive_field(self, name: str) -> bool:
        """True if values of field ``name`` are masked entirely."""
        return _normalise(name) in self.fields

    def is_sensitive_header(self, name: str | bytes) -> bool:
        """True if values of header ``name`` are masked entirely."""
        if isinstance(name, bytes):
            name = name.decode("latin-1")
        return name.lower() in self.headers

    def _mask_run(self, run: str) -> str:
        spans = _pan_spans(run)
        if not spans:
            return run
        chars = list(run)
        for start, end in spans:
            visible = self.keep_last
            for k in range(end - 1, start - 1, -1):
                if chars[k].isdigit():
                    if visible:
                        visible -= 1
                    else:
                        chars[k] = "*"
        return "".join(chars)

    # -- text ------------------------------------------------------------------------------------
    def redact_text(self, text: str) -> str:
        """``text`` with PANs and ``name=value`` pairs of sensitive fields masked."""
        if self.pans and len(text) >= 13 and _MAYBE_PAN_STR.search(text) is not None:
            text = _CANDIDATE_STR.sub(lambda m: self._mask_run(m.group()), text)
        if self._field_text is not None and self._maybe_field(text):
            text = self._field_text.sub(self._mask_field_text, text)
        return text

    def _maybe_field(self, text: str) -> bool:
        if ":" not in text and "=" not in text:
            return False
        normal = text.lower().replace("_", "").replace("-", "")
        return self._maybe_field_text.search(normal) is not None  # type: ignore[union-attr]

    def _maybe_field_in_bytes(self, data: bytes) -> bool:
        if b":" not in data and b"=" not in data:
            return False
        normal = data.lower().translate(None, b"_-")
        return self._maybe_field_bytes.search(normal) is not None  # type: ignore[union-attr]

    def _mask_field_text(self, m: re.Match[str]) -> str:
        value = m.group("v")
        quote = value[0] if value[:1] in ('"', "'") else ""
        return f"{m.group('k')}{quote}{self.mask}{quote}"

    def _mask_field_bytes(self, m: re.Match[bytes]) -> bytes:
        value = m.group("v")
        quote = value[:1] if value[:1] in (b'"', b"'") else b""
        return m.group("k") + quote + self.mask.encode() + quote

    def _redact_raw_bytes(self, data: bytes) -> bytes:
        if not data.isascii():  # Unicode spaces and fullwidth digits: redact it as text
            text, encoding = _as_text(data)
            redacted = self.redact_text(text)
            return data if redacted is text else redacted.encode(encoding)
        if self.pans and len(data) >= 13 and _MAYBE_PAN_BYTES.search(data) is not None:
            data = _CANDIDATE_BYTES.sub(
                lambda m: self._mask_run(m.group().decode("ascii")).encode("ascii"), data
            )
        if self._field_bytes is not None and self._maybe_field_in_bytes(data):
            data = self._field_bytes.sub(self._mask_field_bytes, data)
        return data

    def _needs_work(self, data: bytes) -> bool:
        if not data.isascii():
            text = _as_text(data)[0]
            if (self.pans and _MAYBE_PAN_STR.search(text) is not None
                    and any(_pan_spans(m.group()) for m in _CANDIDATE_STR.finditer(text))):
                return True
            return self._field_text is not None and self._maybe_field(text)
        if (self.pans and len(data) >= 13 and _MAYBE_PAN_BYTES.search(data) is not None
                and any(_pan_spans(m.group().decode("ascii"))
                        for m in _CANDIDATE_BYTES.finditer(data))):
            return True
        return self._field_bytes is not None and self._maybe_field_in_bytes(data)

    def redact_bytes(self, data: bytes, content_type: str | None = None) -> bytes:
        """``data`` with PANs and sensitive fields masked.

        JSON bodies (``application/json``, ``*/*+json``) are parsed and every member is redacted
        (a PAN stored as a JSON number becomes a masked string); anything else, and JSON that
        does not parse, is treated as text. Returns ``data`` itself when nothing is masked.
        """
        if not data:
            return data
        is_json = content_type is not None and _is_json(content_type)
        # a JSON string can spell a separator or a digit as an escape (\u00a0, \uff14, \t, \/),
        # which no scan of the raw bytes sees: such a document is parsed whatever the scan says
        escaped = is_json and _JSON_ESCAPE.search(data) is not None
        if not escaped and not self._needs_work(data):
            return data
        if is_json:
            try:
                document = json.loads(data)
            except ValueError:
                pass
            else:
                redacted = self.redact_value(document)
                if escaped and redacted == document:
                    return data
                return json.dumps(redacted, ensure_ascii=False, separators=(",", ":")).encode()
        return self._redact_raw_bytes(data)

    # -- structured data -------------------------------------------------------------------------
    def redact_value(self, value: T) -> T:
        """A redacted copy of a JSON-like value (dicts, lists, tuples, strings, numbers)."""
        return self._value(value)  # type: ignore[no-any-return]

    def _value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, Mapping):
            return self.redact_mapping(value)
        if isinstance(value, list):
            return [self._value(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self._value(v) for v in value)
        if isinstance(value, bytes):
            return self._redact_raw_bytes(value)
        if type(value) is int and self.pans and 10**12 <= value < 10**19:
            digits = str(value)
            if luhn_valid(digits):
                return self._mask_run(digits)
        return value

    def redact_mapping(self, mapping: Mapping[Any, Any]) -> dict[Any, Any]:
        """A redacted deep copy of ``mapping``: sensitive fields masked, PANs masked anywhere
        (also in keys); nested mappings and lists are redacted too."""
        out: dict[Any, Any] = {}
        for key, value in mapping.items():
            if isinstance(key, str):
                if self.fields and _normalise(key) in self.fields:
                    out[self.redact_text(key)] = self.mask
                    continue
                key = self.redact_text(key)
            out[key] = self._value(value)
        return out

    @overload
    def redact_headers(self, headers: Mapping[str, str]) -> dict[str, str]: ...

    @overload
    def redact_headers(
        self, headers: Iterable[tuple[bytes, bytes]]
    ) -> list[tuple[bytes, bytes]]: ...

    @overload
    def redact_headers(self, headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]: ...

    def redact_headers(self, headers: Any) -> Any:
        """Headers with sensitive values masked and PANs masked in the others.

        Accepts a mapping (returns a dict), ASGI-style ``[(b"name", b"value")]`` or WSGI-style
        ``[("Name", "value")]`` pairs (returns a list of the same types).
        """
        if isinstance(headers, Mapping):
            return {k: self._header_value(k, v) for k, v in headers.items()}
        return [(k, self._header_value(k, v)) for k, v in headers]

    def _header_value(self, name: Any, value: Any) -> Any:
        if self.is_sensitive_header(name):
            return self.mask.encode() if isinstance(value, bytes) else self.mask
        if isinstance(value, bytes):
            return self._redact_raw_bytes(value)
        return self.redact_text(value)

    def __call__(self, value: T) -> T:
        """Redact any supported value (text, bytes, mapping, list): :meth:`redact_value`."""
        return self.redact_value(value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Redactor) and (
            (self.pans, self.fields, self.headers, self.keep_last, self.mask)
            == (other.pans, other.fields, other.headers, other.keep_last, other.mask)
        )

    def __hash__(self) -> int:
        return hash((self.pans, self.fields, self.headers, self.keep_last, self.mask))

    def __repr__(self) -> str:
        if self is _PCI:
            return "Redactor.pci()"
        return (f"Redactor(pans={self.pans}, fields={sorted(self.fields)},"
                f" headers={sorted(self.headers)}, keep_last={self.keep_last})")


def _as_text(data: bytes) -> tuple[str, str]:
    """Non-ASCII bytes as text, and the encoding to write them back with: UTF-8 when they are,
    else latin-1 (which reads any byte, so a no-break space written as 0xA0 is seen too)."""
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return data.decode("latin-1"), "latin-1"


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media in _JSON_TYPES or media.endswith("+json")


_PCI: Final = Redactor(fields=PCI_FIELDS, headers=PCI_HEADERS)
