"""Raw text -> words with character offsets, split close to how named-entity data sets are tokenised (CoNLL, Penn
Treebank): at whitespace, with the punctuation around a word, a possessive ``'s``, each em dash and each CJK
ideograph as words of their own.

So ``"I met Tim Cook, then flew to London."`` gives ``I met Tim Cook , then flew to London .``: a tagger trained on
such words sees the same kind of words at prediction time, and an entity's span stops before the comma. Punctuation
inside a word stays (``e-mail``, ``10:30``, ``google.com``, ``rock'n'roll``), as do the periods of an abbreviation
(``U.S.``, ``e.g.``, ``Mr.``, ``Inc.``), ``#``/``@`` (hashtags, mentions) and ``%``. Rules, not a trained tokenizer:
a sentence's last word keeps its period where it looks like an initial (``Plan B.``), and scripts written without
spaces other than CJK ideographs (Thai, Japanese kana runs) stay one word per whitespace-separated run.
"""
from __future__ import annotations

import re
import unicodedata

_CHUNK = re.compile(r"[^\s\u200b\ufeff]+")  # zero-width spaces and stray byte-order marks separate words too
_ABBREVIATION = re.compile(r"(?:[^\W\d_]\.)+\Z")  # U.S., e.g., J.
_TITLES = {"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "inc", "corp", "ltd", "co", "bros", "vs", "etc", "mt",
           "gen", "gov", "sen", "rep", "rev", "capt", "col", "lt", "sgt"}  # kept with their period, as CoNLL keeps them
_ALONE = set("—―")  # em dash, horizontal bar: a word of their own wherever they stand ("Paris—the capital")
_POSSESSIVE = re.compile(r"['’][sS]\Z")
_KEPT = set("%#@&*/\\")  # punctuation (Unicode category Po) that stays on a word's end: 50%, C#
# CJK ideograph blocks, as BERT's BasicTokenizer splits them (one ideograph = one word)
_CJK = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2A6DF), (0x2A700, 0x2CEAF),
        (0x2F800, 0x2FA1F))

Word = tuple[str, int, int]  # (text, start, end): end exclusive, text == source[start:end]


def split_words(text: str) -> list[Word]:
    """The words of ``text`` with their character offsets (see the module's docstring)."""
    out: list[Word] = []
    for chunk in _CHUNK.finditer(text):
        for run, at in _runs(chunk.group()):
            out.extend(_trim(run, chunk.start() + at))
    return out


def _alone(ch: str) -> bool:
    """A CJK ideograph or an em dash: one word by itself."""
    cp = ord(ch)
    return ch in _ALONE or any(a <= cp <= b for a, b in _CJK)


def _runs(chunk: str) -> list[tuple[str, int]]:
    """``chunk`` cut into CJK ideographs and em dashes (one each) and the runs between them: (text, offset)."""
    runs: list[tuple[str, int]] = []
    begin = 0
    for i, ch in enumerate(chunk):
        if _alone(ch):
            if begin < i:
                runs.append((chunk[begin:i], begin))
            runs.append((ch, i))
            begin = i + 1
    if begin < len(chunk):
        runs.append((chunk[begin:], begin))
    return runs


def _leading(ch: str) -> bool:
    return unicodedata.category(ch) in ("Ps", "Pi") or ch in "\"'¿¡–"


def _trailing(ch: str) -> bool:
    cat = unicodedata.category(ch)
    return cat in ("Pe", "Pf") or cat == "Po" and ch not in _KEPT or ch == "–"  # an en dash at a word's end


def _trim(run: str, offset: int) -> list[Word]:
    """Words of one run without spaces: leading and trailing punctuation split off one mark at a time (a run of
    periods stays together: ``...``), then a possessive ``'s``; a run of punctuation alone (or ``'s`` alone: text
    already split) is one word."""
    a, b = 0, len(run)
    if all(_leading(c) or _trailing(c) for c in run) or _POSSESSIVE.fullmatch(run):
        return [(run, offset, offset + b)]
    head = []
    while _leading(run[a]):
        head.append(a)
        a += 1
    tail: list[tuple[int, int]] = []
    while _trailing(run[b - 1]):
        end, b = b, b - 1
        if run[b] == ".":
            while b > a and run[b - 1] == ".":
                b -= 1  # an ellipsis is one word
            if end - b == 1 and (_ABBREVIATION.match(run, a, end) or run[a:b].lower() in _TITLES):
                b = end
                break  # U.S. keeps its period
        tail.append((b, end))
    words = [(i, i + 1) for i in head]
    possessive = _POSSESSIVE.search(run, a, b)
    if possessive and possessive.start() > a:
        words += [(a, possessive.start()), (possessive.start(), b)]
    else:
        words.append((a, b))
    words += reversed(tail)
    return [(run[s:e], offset + s, offset + e) for s, e in words]
