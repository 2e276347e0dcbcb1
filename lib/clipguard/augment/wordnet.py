"""WordNet 3.0 for EDA, offline: Debian's ``wordnet-base`` package made readable by NLTK.

:func:`install_wordnet` (CLI: ``data_scripts/setup_wordnet.py``) turns ``/usr/share/wordnet`` into an NLTK corpus
folder, :func:`load_wordnet` finds (or installs) it.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import warnings
from functools import lru_cache, partial
from pathlib import Path

from ..utils import atomic_write, atomic_write_bytes

__all__ = ["WordNetUnavailable", "WORDNET_SOURCE", "LEXNAMES", "lexnames_text", "sense_index_lines",
           "default_nltk_data", "install_wordnet", "find_wordnet", "load_wordnet"]

WORDNET_SOURCE = Path("/usr/share/wordnet")
_LEXNAMES_MAN_PAGE = Path("/usr/share/man/man5/lexnames.5WN.gz")
_REPO_ROOT = Path(__file__).resolve().parents[3]  # lib/clipguard/augment/wordnet.py -> repo

# The 45 lexicographer files of WordNet 3.0, in file-number order (lexnames(5WN)); the man page is checked against
# this list when present (minimal images often drop man pages).
LEXNAMES: tuple[str, ...] = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant",
    "noun.possession", "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication",
    "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)
_POS_NUMBER = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
_REQUIRED = tuple(f"{kind}.{pos}" for kind in ("data", "index") for pos in ("adj", "adv", "noun", "verb")) + tuple(
    f"{pos}.exc" for pos in ("adj", "adv", "noun", "verb"))
_OPTIONAL = ("cntlist.rev", "index.sense")


class WordNetUnavailable(RuntimeError):
    """WordNet cannot be found or installed."""


_HOW_TO = ("install Debian's WordNet 3.0 package and convert it: `apt-get install wordnet-base` then "
           "`python data_scripts/setup_wordnet.py`")


def lexnames_text(man_page: Path | None = _LEXNAMES_MAN_PAGE) -> str:
    """The ``lexnames`` file NLTK's reader expects: ``NN<TAB>name<TAB>pos`` per line (pos: 1 noun, 2 verb,
    3 adjective, 4 adverb). Checked against the lexnames(5WN) man page when it exists."""
    if man_page is not None and Path(man_page).exists():
        listed = re.findall(r"^(\d\d)\t(\S+)[ \t]*\t", gzip.decompress(Path(man_page).read_bytes()).decode("latin-1"),
                            flags=re.MULTILINE)
        names = tuple(name for _, name in listed)
        if names != LEXNAMES or [int(n) for n, _ in listed] != list(range(len(LEXNAMES))):
            raise WordNetUnavailable(f"{man_page} lists {len(names)} lexicographer files that differ from "
                                     f"WordNet 3.0's 45: {names}")
    return "".join(f"{i:02d}\t{name}\t{_POS_NUMBER[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))


_SS_TYPE = {"n": 1, "v": 2, "a": 3, "r": 4, "s": 5}
_MARKER = re.compile(r"\((?:a|p|ip)\)$")
_HEAD_MARKER = re.compile(r"\((?:a|p|ip)\):")


def sense_index_lines(source: str | Path = WORDNET_SOURCE) -> list[str]:
    """The lines of WordNet's ``index.sense`` (senseidx(5WN)), built from the database files.

    Debian ships this file in a separate package (``wordnet-sense-index``); NLTK's reader reads it when it opens the
    corpus. Each line is ``sense_key synset_offset sense_number tag_cnt``, with the sense key
    ``lemma%ss_type:lex_filenum:lex_id:head_word:head_id`` (head fields only for adjective satellites), sense numbers
    from ``index.<pos>`` and tag counts from ``cntlist.rev``; sorted by byte value like the distributed file."""
    source = Path(source)
    sense_number: dict[tuple[str, str, str], int] = {}  # (lemma, index pos, offset) -> 1-based sense number
    for pos in ("adj", "adv", "noun", "verb"):
        with open(source / f"index.{pos}", encoding="utf-8") as stream:
            for line in stream:
                if line.startswith(" "):
                    continue
                fields = line.split()
                synsets = int(fields[2])
                for number, offset in enumerate(fields[-synsets:], start=1):
                    sense_number[(fields[0], fields[1], offset)] = number
    counts: dict[str, int] = {}
    if (source / "cntlist.rev").is_file():
        with open(source / "cntlist.rev", encoding="utf-8") as stream:
            for line in stream:
                key, _, count = line.split()
                counts[_HEAD_MARKER.sub(":", key)] = int(count)  # head words there keep their (a)/(p) marker
    synsets: dict[str, tuple[str, int, str, list[tuple[str, int]], list[tuple[str, str, str]]]] = {}
    for pos in ("adj", "adv", "noun", "verb"):
        with open(source / f"data.{pos}", encoding="utf-8") as stream:
            for line in stream:
                if line.startswith(" "):
                    continue
                fields = line.split(" | ")[0].split()
                offset, lex_filenum, ss_type, n_words = fields[0], int(fields[1]), fields[2], int(fields[3], 16)
                words = [(_MARKER.sub("", fields[4 + 2 * i]).lower(), int(fields[5 + 2 * i], 16))
                         for i in range(n_words)]
                at = 4 + 2 * n_words
                pointers = [tuple(fields[at + 1 + 4 * i: at + 4 + 4 * i]) for i in range(int(fields[at]))]
                synsets[f"{ss_type}{offset}"] = (offset, lex_filenum, ss_type, words, pointers)
    lines = []
    for offset, lex_filenum, ss_type, words, pointers in synsets.values():
        head = ":"
        if ss_type == "s":
            target = next(f"a{p_offset}" for symbol, p_offset, p_pos in pointers if symbol == "&" and p_pos == "a")
            head_word, head_id = synsets[target][3][0]
            head = f"{head_word}:{head_id:02d}"
        index_pos = "a" if ss_type == "s" else ss_type
        seen = set()
        for lemma, lex_id in words:
            if lemma in seen:  # "A"/"a", "KB"/"kB": one sense per lemma and synset, the first
                continue
            seen.add(lemma)
            key = f"{lemma}%{_SS_TYPE[ss_type]}:{lex_filenum:02d}:{lex_id:02d}:{head}"
            lines.append(f"{key} {offset} {sense_number[(lemma, index_pos, offset)]} {counts.get(key, 0)}\n")
    lines.sort(key=lambda line: line.encode("utf-8"))
    return lines


def default_nltk_data() -> Path:
    """Where :func:`install_wordnet` writes by default: the first entry of ``$NLTK_DATA``, else
    ``<repo>/.nltk_data``."""
    env = [p for p in os.environ.get("NLTK_DATA", "").split(os.pathsep) if p]
    return Path(env[0]) if env else _REPO_ROOT / ".nltk_data"


def install_wordnet(dest: str | Path | None = None, source: str | Path = WORDNET_SOURCE,
                    man_page: Path | None = _LEXNAMES_MAN_PAGE) -> tuple[Path, list[str]]:
    """Copy Debian's WordNet 3.0 (``source``) into ``<dest>/corpora/wordnet``; write ``lexnames`` and, unless the
    source has one (package ``wordnet-sense-index``), ``index.sense`` (:func:`sense_index_lines`).

    Idempotent: files already there with the same size and modification time are left alone. Returns the corpus
    folder and the names of the files written (empty when everything was already in place)."""
    source = Path(source)
    missing = [name for name in _REQUIRED if not (source / name).is_file()]
    if missing:
        raise WordNetUnavailable(f"{source} lacks {', '.join(missing)}; {_HOW_TO}")
    target = Path(dest if dest is not None else default_nltk_data()) / "corpora" / "wordnet"
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name in _REQUIRED + tuple(n for n in _OPTIONAL if (source / n).is_file()):
        src, dst = source / name, target / name
        stat = src.stat()
        if dst.is_file() and dst.stat().st_size == stat.st_size and int(dst.stat().st_mtime) == int(stat.st_mtime):
            continue
        atomic_write(dst, partial(shutil.copy2, src))  # copy2 keeps the mtime that the check above compares
        written.append(name)
    if not (source / "index.sense").is_file() and (written or not (target / "index.sense").is_file()):
        atomic_write_bytes(target / "index.sense", "".join(sense_index_lines(source)).encode("utf-8"))
        written.append("index.sense")
    lexnames = lexnames_text(man_page).encode()
    if not (target / "lexnames").is_file() or (target / "lexnames").read_bytes() != lexnames:
        atomic_write_bytes(target / "lexnames", lexnames)
        written.append("lexnames")
    return target, written


def _search_roots(with_nltk_paths: bool = True) -> list[Path]:
    roots = [Path(p) for p in os.environ.get("NLTK_DATA", "").split(os.pathsep) if p]
    roots.append(_REPO_ROOT / ".nltk_data")
    if with_nltk_paths:
        import nltk

        roots.extend(Path(p) for p in nltk.data.path)
    unique = []
    for root in roots:
        if root not in unique:
            unique.append(root)
    return unique


def find_wordnet() -> Path | None:
    """The first usable ``corpora/wordnet`` folder (one with ``lexnames`` and ``data.noun``) under ``$NLTK_DATA``,
    ``<repo>/.nltk_data`` or NLTK's default paths (importing NLTK, about 1.5 s, only when the first two have none);
    None when there is none."""
    for with_nltk_paths in (False, True):
        for root in _search_roots(with_nltk_paths):
            folder = root / "corpora" / "wordnet"
            if (folder / "lexnames").is_file() and (folder / "data.noun").is_file():
                return folder
    return None


@lru_cache(maxsize=4)
def _reader(folder: str):
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class EnglishWordNetReader(WordNetCorpusReader):
        """NLTK's reader without the WordNet-3.0 sense map it builds for the multilingual (OMW) functions, which
        are unavailable offline anyway; saves ~2.5 s per load."""

        def map_wn(self, version="wordnet"):
            return None

    # NLTK (>= 3.9.3) opens corpus files only under its data paths: authorise this corpus's data root.
    path = Path(folder)
    root = str(path.parents[1] if path.parent.name == "corpora" else path)
    if root not in nltk.data.path:
        nltk.data.path.append(root)

    with warnings.catch_warnings():  # "multilingual functions are not available": we need English only
        warnings.simplefilter("ignore", UserWarning)
        return EnglishWordNetReader(folder, None)


def load_wordnet(folder: str | Path | None = None, auto_install: bool = True):
    """NLTK's WordNet reader on an offline WordNet 3.0 corpus (cached per folder).

    Without ``folder``: :func:`find_wordnet`; when nothing is found and ``/usr/share/wordnet`` exists, the corpus is
    installed first (into :func:`default_nltk_data`). Raises :class:`WordNetUnavailable` saying what to install."""
    if folder is None:
        found = find_wordnet()
        if found is None:
            if not auto_install or not WORDNET_SOURCE.is_dir():
                raise WordNetUnavailable(f"no WordNet corpus found under {[str(r) for r in _search_roots()]}; "
                                         f"{_HOW_TO}")
            found, _ = install_wordnet()
        folder = found
    return _reader(str(Path(folder).resolve()))
