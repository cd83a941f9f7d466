"""Clean harvested (English, foreign) strings and de-duplicate them into a corpus.

Rules, in order, for each pair:

1. accelerators: ``_File``, ``~Open``, ``&Save``, ``(_F)`` → plain text (catalogues: all
   three markers; Firefox: ``&``);
2. markup: tags removed (catalogues, Firefox), HTML entities decoded (catalogues; in
   Firefox strings an ``&lt;`` is literal text);
3. the language's word-break hints deleted on the foreign side (U+200B, and U+200C for
   Khmer: these sources put one between most words, ordinary text does not);
4. whitespace collapsed.

Then a pair is dropped when a side is ``empty``; when it is a translator ``credits``
string (``translator-credits``, "Your names", or a foreign side that adds e-mail
addresses); when the English has ``no_letters`` outside placeholders; when the foreign side is
``untranslated`` (equal to the English, or without a character of the language's
script); when a side is ``too_long`` (over 2,000 characters, the pair reader's limit);
and as a ``duplicate``: every English string and every foreign string occurs once.
Placeholders are kept (they are real UI text); :func:`~llink.data.pairs.is_sentence_like` filters them.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from llink.data.harvest.languages import LanguageSpec
from llink.data.pairs import PLACEHOLDER, Pair

MAX_CHARS = 2000


@dataclass(frozen=True)
class RawPair:
    """A string and its translation as found, before cleaning; ``source`` as in the corpus."""

    en: str
    foreign: str
    source: str

    @property
    def kind(self) -> str:
        """The source family: ``gettext:foo`` → ``gettext``."""
        return self.source.split(":", 1)[0]


@dataclass(frozen=True)
class CleanOptions:
    """Which rules apply to a source family."""

    accelerators: str = ""  # mnemonic markers in use, e.g. "_&~"
    tags: bool = False
    entities: bool = False


_ACCEL_IN_PARENS = re.compile(r"\s*\([_&~][^\W_]\)")  # "ឯកសារ (_F)": mnemonic in brackets
_BARE_AMP = re.compile(r"&(?!(?:[A-Za-z][A-Za-z0-9]*|#\d+|#x[0-9A-Fa-f]+);)(?=[^\W_])")
_TAG = re.compile(r"</?[A-Za-z][\w:.-]*(?:\s[^<>]*)?/?>")
_SPACE = re.compile(r"\s+")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")
_CREDITS = re.compile(
    r"translator[-_ ]?credits?|translators?|your names?|your e-?mails?|"
    r"(?:name|email)s? of translators|roles_of_translators|credit_for_translators",
    re.I,
)
def strip_accelerators(text: str, markers: str = "_&~") -> str:
    """Remove keyboard mnemonics marked with any of ``markers``.

    ``(_F)`` after a translation goes; ``~`` goes before a letter, or before a digit
    that starts a word (``~1 cm``); ``_`` and ``&`` go before a letter only when the
    string has one of them, so ``_NET_WM_PID and _NET_WM_NAME`` stays (but a lone
    ``file_name`` or ``AT&T`` loses it: the rule cannot tell); ``&&`` → ``&``.
    """
    text = _ACCEL_IN_PARENS.sub("", text)
    if "~" in markers:
        text = re.sub(r"~(?=[^\W\d_])|(?<![\w.])~(?=\d)", "", text)
    if "_" in markers and text.count("_") == 1:
        text = re.sub(r"_(?=[^\W_])", "", text)
    if "&" in markers:
        text = text.replace("&&", "\x00")
        if len(_BARE_AMP.findall(text)) == 1:
            text = _BARE_AMP.sub("", text)
        text = text.replace("\x00", "&")
    return text


def strip_tags(text: str) -> str:
    """Remove HTML/XML/Pango tags such as ``<b>``, ``</a>``, ``<a href="…">``, ``<br/>``."""
    return _TAG.sub("", text)


def clean_text(text: str, options: CleanOptions, delete: str = "") -> str:
    """Apply accelerator, tag, entity, deleted-character and whitespace rules to one string.

    Tags go before entities are decoded, so an escaped ``&lt;b&gt;`` survives as text.
    """
    if options.accelerators:
        text = strip_accelerators(text, options.accelerators)
    if options.tags:
        text = strip_tags(text)
    if options.entities:
        text = html.unescape(text)
    if delete:
        text = text.translate({ord(ch): None for ch in delete})
    return _SPACE.sub(" ", text).strip()


def is_credits(en: str, foreign: str) -> bool:
    """A translator-credit string: a credits msgid, or a translation adding e-mail addresses."""
    if _CREDITS.fullmatch(en.strip()):
        return True
    return bool(set(_EMAIL.findall(foreign)) - set(_EMAIL.findall(en)))


def _drop_reason(en: str, foreign: str, spec: LanguageSpec) -> str | None:
    if not en or not foreign:
        return "empty"
    if is_credits(en, foreign):
        return "credits"
    if not any(ch.isalpha() for ch in PLACEHOLDER.sub("", en)):
        return "no_letters"
    if foreign.casefold() == en.casefold() or not spec.has_script(foreign):
        return "untranslated"
    if len(en) > MAX_CHARS or len(foreign) > MAX_CHARS:
        return "too_long"
    return None


def _key(text: str) -> str:
    return text.casefold()


def clean_pairs(
    raw: Iterable[RawPair],
    spec: LanguageSpec,
    options: dict[str, CleanOptions],
    source_order: Sequence[str],
) -> tuple[list[Pair], dict[str, Counter[str]]]:
    """Clean, filter and de-duplicate ``raw``; return sorted pairs and per-family counts.

    Counts per source family: ``raw``, ``kept`` and ``dropped.<reason>``. Among
    duplicates, a family earlier in ``source_order`` wins, then the translation seen
    most often for that English, then alphabetical order (so the result is the same
    whatever order ``raw`` comes in).
    """
    counts: dict[str, Counter[str]] = {kind: Counter() for kind in source_order}
    rank = {kind: i for i, kind in enumerate(source_order)}
    candidates: list[RawPair] = []
    for pair in raw:
        kind = pair.kind
        tally = counts.setdefault(kind, Counter())
        tally["raw"] += 1
        opts = options.get(kind, CleanOptions())
        en = clean_text(pair.en, opts)
        foreign = clean_text(pair.foreign, opts, delete=spec.strip_chars)
        reason = _drop_reason(en, foreign, spec)
        if reason:
            tally[f"dropped.{reason}"] += 1
        else:
            candidates.append(RawPair(en, foreign, pair.source))
    votes = Counter((_key(p.en), _key(p.foreign)) for p in candidates)
    candidates.sort(
        key=lambda p: (
            rank.get(p.kind, len(rank)),
            -votes[_key(p.en), _key(p.foreign)],
            p.en,
            p.foreign,
            p.source,
        )
    )
    seen_en: set[str] = set()
    seen_foreign: set[str] = set()
    kept: list[Pair] = []
    for p in candidates:
        ken, kfo = _key(p.en), _key(p.foreign)
        if ken in seen_en or kfo in seen_foreign:
            counts[p.kind]["dropped.duplicate"] += 1
            continue
        seen_en.add(ken)
        seen_foreign.add(kfo)
        counts[p.kind]["kept"] += 1
        kept.append(Pair(en=p.en, foreign=p.foreign, lang=spec.code, source=p.source))
    kept.sort(key=lambda p: (p.source, p.en, p.foreign))
    return kept, counts
