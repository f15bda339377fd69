"""Tag schemes of token-classification data: IOB2 spellings of other schemes (IOBES, BILOU, BMEWO, suffixed
letters), untyped B/I tags, odd tags refused, scheme detection and repair to IOB2 (``to_bio``)."""
from __future__ import annotations

import functools
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from tuneforge.evaluate import invalid_transitions
from tuneforge.strict import ConfigError

Record = dict[str, Any]


def _sentences(tags: Sequence[str] | Sequence[Sequence[str]]) -> list[Sequence[str]]:
    return [tags] if not tags or isinstance(tags[0], str) else list(tags)


# IOBES/BIOES (S-ingle, E-nd), BILOU (U-nit, L-ast) and BMES/BMEWO (M-iddle, W-hole) prefixes as IOB2's: a chunk's
# first word is B-, the rest I-
PREFIXES = {"B": "B", "I": "I", "S": "B", "U": "B", "E": "I", "L": "I", "M": "I", "W": "B"}
UNTYPED = "SPAN"  # the entity type of tags that are bare prefixes (B, I, O)


@functools.lru_cache(maxsize=4096)  # a file holds a handful of distinct tags, read millions of times
def normal_tag(tag: str) -> str:
    """A tag in IOB2's spelling: ``o`` as ``O``; ``S-X``/``U-X`` as ``B-X``, ``E-X``/``L-X`` as ``I-X``; lower-case
    prefixes and ``B_X`` as ``B-X`` (the type keeps its spelling); a plain label as it is."""
    if tag.upper() == "O":
        return "O"
    if len(tag) > 2 and tag[1] in "-_" and tag[0].upper() in PREFIXES:
        return f"{PREFIXES[tag[0].upper()]}-{tag[2:]}"
    return tag


def note_scheme(records: list[Record], source: str) -> list[Record]:
    """``records``, where every tag but O is a bare prefix (``B``, ``I``: keyphrases, chunks) with those tags
    given the one entity type :data:`UNTYPED`; prints one note when that happens, one when some tags are read
    in IOB2's spelling (:func:`normal_tag`; one example per prefix spelling: ``S-LOC as B-LOC, E-LOC as I-LOC``)
    and one when entity types differ only in case (``PER``, ``per``: separate types)."""
    _read_suffixes(records, source)
    bare = {t.upper() for r in records for t in r["tags"]} - {"O"}
    if bare and bare <= set(PREFIXES) and bare & {"B", "I"}:
        for r in records:
            r["tags"] = [t if t.upper() == "O" else f"{t.upper()}-{UNTYPED}" for t in r["tags"]]
        print(f"note: {source}: tags {', '.join(sorted(bare))} name no entity type; read as one type, {UNTYPED} "
              f"(B as B-{UNTYPED})", file=sys.stderr)
    _refuse_odd_tags(records, source)
    examples: dict[str, str] = {}
    types: dict[str, set[str]] = {}  # lower case -> spellings
    for tag in dict.fromkeys(t for r in records for t in r["tags"]):  # each distinct tag once, in order
        if normal_tag(tag) != tag:
            examples.setdefault(tag if tag.upper() == "O" else tag[:2], f"{tag} as {normal_tag(tag)}")
        kind = normal_tag(tag)[2:] if _prefixed(tag) else normal_tag(tag)
        types.setdefault(kind.lower(), set()).add(kind)
    if examples:
        print(f"note: {source}: tags read as IOB2 ({', '.join(list(examples.values())[:4])})", file=sys.stderr)
    cased = [sorted(g) for k, g in types.items() if len(g) > 1 and k != "o"]
    if cased:
        print(f"note: {source}: entity types {'; '.join(' and '.join(map(repr, g)) for g in cased[:3])} differ only "
              "in case and are separate types; write them one way if they mean the same", file=sys.stderr)
    return records


_PREFIX_LIKE = re.compile(r"[A-Za-z][-_]\S+")  # X-MOV: a one-letter prefix and a type


_SUFFIXED = re.compile(r"(\S+)[-_]([A-Za-z])")  # PER-B: a type, then a one-letter prefix


def _read_suffixes(records: list[Record], source: str) -> None:
    """Where every tag but O puts its scheme letter last (``PER-B``, ``LOC_I``) and not every one reads as
    prefixed, the tags are rewritten prefix first (``B-PER``) with one note; read as they are, each would be an
    entity type of its own."""
    tags = {t for r in records for t in r["tags"]} - {"O", "o"}
    found = [_SUFFIXED.fullmatch(t) for t in tags]
    if not tags or not all(m and m[2].upper() in PREFIXES for m in found) or all(map(_prefixed, tags)):
        return
    for r in records:
        r["tags"] = [t if t in ("O", "o") else f"{t[-1]}-{t[:-2]}" for t in r["tags"]]
    example = sorted(tags)[0]
    print(f"note: {source}: tags read with the scheme letter last ({example} as {example[-1]}-{example[:-2]})",
          file=sys.stderr)


def _refuse_odd_tags(records: list[Record], source: str) -> None:
    """ConfigError for a tag that does not fit a file of prefixed tags (B-MOV ...), where it would otherwise train as
    an entity type of its own: a prefix no scheme uses (``X-MOV``: a typo, or a scheme tuneforge does not read), a bare
    prefix (``B``), or a label without a prefix other than O (a header line's ``tag``, a placeholder ``_``, ``O,``)."""
    tags = dict.fromkeys(t for r in records for t in r["tags"])
    if not any(_prefixed(t) for t in tags):
        return
    for i, r in enumerate(records, start=1):
        odd = next((t for t in r["tags"] if _PREFIX_LIKE.fullmatch(t) and t[0].upper() not in PREFIXES), None)
        if odd is not None:
            raise ConfigError(f"{source}: sentence {i}: tag {odd!r} has the prefix {odd[:2]!r}, which no tag scheme "
                              f"uses, while other tags have B-/I- prefixes; write it with one of "
                              f"{', '.join(p + '-' for p in PREFIXES)} (B- begins an entity, I- continues it) or O")
        plain = next((t for t in r["tags"] if t.upper() != "O" and not _prefixed(t)), None)
        if plain is not None:
            what = ("names no entity type" if plain.upper() in PREFIXES else
                    "has no B-/I- prefix (a header line, a placeholder such as _, or a typo?)")
            raise ConfigError(f"{source}: sentence {i}: tag {plain!r} {what}, while other tags have prefixes and "
                              f"types ({next(t for t in tags if _prefixed(t))}); write it as O, or as B-<type> "
                              "(begins an entity) / I-<type> (continues it)")


def _prefixed(tag: str) -> bool:
    return normal_tag(tag)[:2] in ("B-", "I-")


def scheme(tags: Sequence[str] | Sequence[Sequence[str]]) -> str:
    """Tag scheme of one sentence or a list of them: ``"plain"`` (no B-/I- prefixes, e.g. PER), ``"IOB2"``
    (prefixed, every chunk starts with B-) or ``"BIO"`` (prefixed, some chunk starts with I-, as in IOB1 or
    loosely written BIO: :func:`to_bio` repairs it)."""
    sentences = _sentences(tags)
    if not any(_prefixed(t) for s in sentences for t in s):
        return "plain"
    return "BIO" if invalid_sentences(sentences) else "IOB2"


def invalid_sentences(tags: Sequence[str] | Sequence[Sequence[str]]) -> int:
    """How many sentences hold an ``I-X`` that does not continue an X chunk (for reporting; accepted)."""
    return sum(invalid_transitions([normal_tag(t) for t in s]) > 0 for s in _sentences(tags))


def unseen_types(names: Sequence[str], records: Sequence[Record], split: str, file: str | None) -> None:
    """One warning naming the entity types of a ``split`` ("test split", "evaluated data") that training (tag
    ``names``) lacks (types are compared by name, so their entities are never found); where the split is a
    ``file`` of its own and none of its types occurs in training (b-per vs B-PER, PER vs PERSON), a ConfigError."""
    known, types = entity_types(names), entity_types(t for r in records for t in to_bio(r["tags"]))
    if types - known:
        line = (f"entity type(s) {', '.join(sorted(types - known))} of the {split} never occur in training "
                f"({', '.join(sorted(known))}); tags are compared by type name, so they are never found")
        if file and not types & known:
            raise ConfigError(f"{file}: {line}; write them as the training file does")
        print(f"warning: {file or 'data'}: {line}", file=sys.stderr)


def entity_types(names: Iterable[str]) -> set[str]:
    """The entity types of IOB2 tag ``names`` (a run's labels): ``{"PER"}`` of ``["O", "B-PER", "I-PER"]``."""
    return {n[2:] for n in names if n != "O"}


def foreign_types(names: Sequence[str], records: Sequence[Record]) -> list[str]:
    """The entity types of ``records`` that tag ``names`` (a run's) lack, sorted: encoded, they are tagged O."""
    return sorted(entity_types(t for r in records for t in to_bio(r["tags"])) - entity_types(names))


def to_bio(tags: Sequence[str]) -> list[str]:
    """IOB2 tags of one sentence: other schemes' spellings as IOB2's (:func:`normal_tag`), an ``I-X`` starting a
    chunk as ``B-X`` (IOB1 repair), a run of one plain label ``X`` as ``B-X I-X ...``; valid IOB2 as it is."""
    out: list[str] = []
    prev = "O"
    for tag in map(normal_tag, tags):
        if tag == "O":
            out.append(tag)
        elif tag.startswith("I-"):
            out.append(tag if prev in ("B-" + tag[2:], tag) else "B-" + tag[2:])
        elif _prefixed(tag):
            out.append(tag)
        else:
            out.append(("I-" if prev == tag else "B-") + tag)
        prev = tag
    return out
