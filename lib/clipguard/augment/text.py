"""EDA caption augmentation (Wei and Zou 2019) as released in the CyCLIP-derived code.

Clean the caption to lower-case letters and spaces, pick one of synonym replacement / random insertion / random
swap / random deletion uniformly and return its sentence.  The released code builds one candidate per operation,
shuffles and keeps the first; building only the chosen candidate gives the same distribution at a quarter of the
cost.  Every random choice goes through an explicit :class:`random.Random`; set iteration order (which makes the
released code depend on ``PYTHONHASHSEED``) is replaced by sorted order.  :func:`augment_captions` derives one RNG
per (seed, epoch, caption index): ``epoch=None`` is the released code's fixed-once caption, an integer epoch
re-samples every epoch.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..utils import atomic_write_bytes, derive_seed
from .wordnet import find_wordnet, load_wordnet

__all__ = ["STOP_WORDS", "clean_caption", "SynonymTable", "default_synonym_table", "synonym_store_identity",
           "synonym_replacement", "random_insertion", "random_swap", "random_deletion", "EDA", "caption_rng",
           "augment_captions", "CaptionAugmenter"]

# The English stop-word list of the EDA reference (NLTK's list of its time without the contraction fragments, plus
# the empty string). Written out here because NLTK's ``stopwords`` corpus is a separate download with no Debian
# package, and the list must not change under us: it decides which words synonym replacement may touch.
STOP_WORDS: frozenset[str] = frozenset("""
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers herself
it its itself they them their theirs themselves what which who whom this that these those am is are was were be
been being have has had having do does did doing a an the and but if or because as until while of at by for with
about against between into through during before after above below to from up down in out on off over under again
further then once here there when where why how all any both each few more most other some such no nor not only
own same so than too very s t can will just don should now
""".split()) | {""}

_NOT_LETTER = re.compile(r"[^a-z]+")


def clean_caption(text: str) -> str:
    """Lower-case letters and single spaces (apostrophes dropped, every other character a word break)."""
    return " ".join(_NOT_LETTER.sub(" ", text.lower().replace("'", "")).split())


class SynonymTable:
    """Memoised WordNet synonyms of a word, as EDA defines them: every lemma of every synset of the word, with
    ``_``/``-`` as spaces, reduced to lower-case letters, minus the word itself and empty strings; sorted.

    ``wordnet``: a reader, or a function returning one (called at the first word the table does not know).
    ``store``: a JSON file of synonyms looked up before (by any process), read at once and extended by
    :meth:`save`, so a process whose words are all stored never loads WordNet (about 3 s). It is used only when it
    was written from the same corpus files and the same rule (:func:`synonym_store_identity`)."""

    def __init__(self, wordnet, store: str | Path | None = None, identity: str | None = None):
        self._wordnet = wordnet
        self._cache: dict[str, tuple[str, ...]] = {}
        self._new: dict[str, tuple[str, ...]] = {}
        self.store, self.identity = (Path(store) if store is not None else None), identity
        if self.store is not None:
            self._cache.update(_read_synonym_store(self.store, identity))

    @property
    def wordnet(self):
        if not hasattr(self._wordnet, "synsets"):
            self._wordnet = self._wordnet()
        return self._wordnet

    def __call__(self, word: str) -> tuple[str, ...]:
        found = self._cache.get(word)
        if found is None:
            names = set()
            for synset in self.wordnet.synsets(word):
                for lemma in synset.lemmas():
                    name = clean_caption(lemma.name().replace("_", " ").replace("-", " "))
                    if name and name != word:
                        names.add(name)
            found = self._cache[word] = tuple(sorted(names))
            self._new[word] = found
        return found

    def save(self) -> None:
        """Add the words looked up since the last save to ``store`` (merged with what other processes wrote;
        written atomically). A store that cannot be written is left alone: it only saves time."""
        if self.store is None or not self._new:
            return
        merged = {**_read_synonym_store(self.store, self.identity), **self._new}
        payload = {"identity": self.identity, "synonyms": {w: list(v) for w, v in sorted(merged.items())}}
        try:
            atomic_write_bytes(self.store, json.dumps(payload).encode())
        except OSError:
            return
        self._new = {}


def _read_synonym_store(path: Path, identity: str | None) -> dict[str, tuple[str, ...]]:
    try:
        payload = json.loads(path.read_text())
        if payload.get("identity") != identity:
            return {}
        return {str(w): tuple(v) for w, v in payload["synonyms"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def synonym_store_identity(folder: Path) -> str:
    """What a stored synonym table depends on: the corpus files (names, sizes, modification times) and the source
    of the rule (:class:`SynonymTable`'s lookup and :func:`clean_caption`)."""
    import inspect

    files = sorted((f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in Path(folder).iterdir()
                   if f.is_file() and (f.name.startswith(("data.", "index.")) or f.name == "lexnames"))
    rule = inspect.getsource(SynonymTable.__call__) + inspect.getsource(clean_caption)
    return hashlib.sha1(json.dumps([files, rule]).encode()).hexdigest()[:16]


def default_synonym_table() -> SynonymTable:
    """The table of the WordNet corpus :func:`clipguard.augment.wordnet.load_wordnet` finds, stored in that
    corpus folder (``clipguard-eda-synonyms.json``); WordNet itself is loaded only for words not stored yet."""
    folder = find_wordnet()
    if folder is None:
        return SynonymTable(load_wordnet)  # installs the corpus or says what to install
    return SynonymTable(partial(load_wordnet, folder), store=Path(folder) / SYNONYM_STORE,
                        identity=synonym_store_identity(folder))


#: File name of the stored synonym table inside a WordNet corpus folder.
SYNONYM_STORE = "clipguard-eda-synonyms.json"


def _table(wordnet) -> SynonymTable:
    return wordnet if isinstance(wordnet, SynonymTable) else SynonymTable(wordnet)


def _words(words: Sequence[str]) -> list[str]:
    """Re-split (inserted synonyms may be several words) into a flat list of words."""
    return " ".join(words).split()


def synonym_replacement(words: Sequence[str], n: int, rng: random.Random, wordnet,
                        stop_words: frozenset[str] = STOP_WORDS) -> list[str]:
    """Replace up to ``n`` distinct non-stop-words (every occurrence) by a random synonym each.

    Candidates are visited in a random order; words without synonyms are skipped."""
    table = _table(wordnet)
    candidates = sorted({w for w in words if w not in stop_words})
    rng.shuffle(candidates)
    out = list(words)
    replaced = 0
    for word in candidates:
        if replaced >= n:
            break
        synonyms = table(word)
        if synonyms:
            synonym = rng.choice(synonyms)
            out = [synonym if w == word else w for w in out]
            replaced += 1
    return _words(out)


def random_insertion(words: Sequence[str], n: int, rng: random.Random, wordnet) -> list[str]:
    """``n`` times: insert a random synonym of a random word (up to 10 tries to find a word with synonyms, else
    stop) at a random position before the last word (the reference never appends). The reference inserts the first
    synonym of its hash-ordered set; a uniform choice is the deterministic equivalent."""
    table = _table(wordnet)
    out = list(words)
    for _ in range(n):
        if not out:
            break
        synonyms: tuple[str, ...] = ()
        for _ in range(10):
            synonyms = table(out[rng.randrange(len(out))])
            if synonyms:
                break
        if not synonyms:
            break
        out.insert(rng.randrange(len(out)), rng.choice(synonyms))
    return _words(out)


def random_swap(words: Sequence[str], n: int, rng: random.Random) -> list[str]:
    """``n`` times: swap the words at two random positions. As in the reference, a swap draws its second position
    at most three times and is skipped when all three equal the first."""
    out = list(words)
    if len(out) < 2:
        return out
    for _ in range(n):
        i = rng.randrange(len(out))
        for _ in range(3):
            j = rng.randrange(len(out))
            if j != i:
                out[i], out[j] = out[j], out[i]
                break
    return out


def random_deletion(words: Sequence[str], p: float, rng: random.Random) -> list[str]:
    """Delete each word with probability ``p``; a one-word sentence is kept; if all go, one random word stays."""
    if len(words) <= 1:
        return list(words)
    kept = [w for w in words if rng.random() > p]
    return kept if kept else [words[rng.randrange(len(words))]]


_EDA_OPS = ("sr", "ri", "rs", "rd")


@dataclass
class EDA:
    """Easy Data Augmentation with the papers' rates; ``eda(caption, rng)`` returns one augmented sentence.

    ``operations``: the operations drawn from (uniformly); the RoCLIP paper text names only ``("sr", "rs", "rd")``,
    the code uses all four. An operation with rate 0 is never drawn (as in the reference). ``wordnet``: a WordNet
    reader (default: :func:`default_synonym_table`: synonyms stored by earlier processes, WordNet loaded only for a
    word not stored yet)."""

    alpha_sr: float = 0.1
    alpha_ri: float = 0.1
    alpha_rs: float = 0.1
    p_rd: float = 0.1
    operations: tuple[str, ...] = _EDA_OPS
    wordnet: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        unknown = set(self.operations) - set(_EDA_OPS)
        if unknown or not self.operations:
            raise ValueError(f"operations must be a non-empty subset of {_EDA_OPS}, got {self.operations}")
        self.operations = tuple(self.operations)
        rates = {"sr": self.alpha_sr, "ri": self.alpha_ri, "rs": self.alpha_rs, "rd": self.p_rd}
        self._active = tuple(op for op in self.operations if rates[op] > 0)
        if not self._active:
            raise ValueError("every selected EDA operation has rate 0")
        self._table: SynonymTable | None = None

    @property
    def synonyms(self) -> SynonymTable:
        if self._table is None:
            self._table = SynonymTable(self.wordnet) if self.wordnet is not None else default_synonym_table()
        return self._table

    def save_synonyms(self) -> None:
        """Store the synonyms looked up so far (:meth:`SynonymTable.save`), for the next process."""
        if self._table is not None:
            self._table.save()

    def config(self) -> dict:
        return {"alpha_sr": self.alpha_sr, "alpha_ri": self.alpha_ri, "alpha_rs": self.alpha_rs, "p_rd": self.p_rd,
                "operations": list(self.operations)}

    def __call__(self, caption: str, rng: random.Random) -> str:
        words = clean_caption(caption).split()
        if not words:  # nothing that EDA can work on (no letters): leave the caption as it is
            return caption
        op = self._active[rng.randrange(len(self._active))]
        count = len(words)
        if op == "sr":
            out = synonym_replacement(words, max(1, int(self.alpha_sr * count)), rng, self.synonyms)
        elif op == "ri":
            out = random_insertion(words, max(1, int(self.alpha_ri * count)), rng, self.synonyms)
        elif op == "rs":
            out = random_swap(words, max(1, int(self.alpha_rs * count)), rng)
        else:
            out = random_deletion(words, self.p_rd, rng)
        return clean_caption(" ".join(out)) or " ".join(words)


def caption_rng(seed: int, epoch: int | None, index: int) -> random.Random:
    """The RNG of caption ``index``: a function of (seed, epoch, index) only; ``epoch=None`` is the fixed draw."""
    return random.Random(derive_seed("clipguard-eda", seed, "fixed" if epoch is None else int(epoch), int(index)))


def _cache_file(cache_dir: Path, eda: EDA, seed: int, epoch: int | None) -> Path:
    config = hashlib.sha1(json.dumps(eda.config(), sort_keys=True).encode()).hexdigest()[:10]
    tag = "fixed" if epoch is None else f"epoch{int(epoch)}"
    return Path(cache_dir) / f"eda-{config}-seed{seed}-{tag}.json"


def _caption_key(index: int, caption: str) -> str:
    return f"{index}:{hashlib.sha1(caption.encode('utf-8')).hexdigest()[:16]}"


_DEFAULT_EDA: EDA | None = None


def augment_captions(captions: Sequence[str], seed: int, epoch: int | None,
                     indices: Sequence[int] | torch.Tensor | None = None, eda: EDA | None = None,
                     cache_dir: str | Path | None = None) -> list[str]:
    """EDA of every caption, each from its own RNG ``caption_rng(seed, epoch, index)``.

    ``indices``: the captions' dataset rows (default: positions 0..n-1), so a caption's augmentation does not depend
    on the batch it comes in. ``epoch``: an integer re-samples every epoch; ``None`` gives the same sentence every
    time (the released code's fixed-once caption). ``cache_dir``: keep results in a JSON file per (EDA settings,
    seed, epoch) keyed by row and caption hash."""
    global _DEFAULT_EDA
    if eda is None:
        _DEFAULT_EDA = _DEFAULT_EDA or EDA()
        eda = _DEFAULT_EDA
    if indices is None:
        indices = range(len(captions))
    elif isinstance(indices, torch.Tensor):
        indices = indices.tolist()
    if len(indices) != len(captions):
        raise ValueError(f"{len(captions)} captions but {len(indices)} indices")
    cache: dict[str, str] = {}
    path = None
    if cache_dir is not None:
        path = _cache_file(Path(cache_dir), eda, seed, epoch)
        if path.exists():
            cache = json.loads(path.read_text())
    out, added = [], False
    for index, caption in zip(indices, captions):
        key = _caption_key(index, caption) if path is not None else None
        if key is not None and key in cache:
            out.append(cache[key])
            continue
        augmented = eda(caption, caption_rng(seed, epoch, index))
        out.append(augmented)
        if key is not None:
            cache[key] = augmented
            added = True
    if path is not None and added:
        atomic_write_bytes(path, json.dumps(cache, sort_keys=True).encode())
    eda.save_synonyms()
    return out


@dataclass
class CaptionAugmenter:
    """Training hook ``text_augment(captions, epoch, indices)`` of :class:`clipguard.train.ClipObjective`.

    ``resample=True`` draws a new EDA sentence every epoch; ``False`` fixes one per caption row (released code),
    memoised in memory and optionally on disk (``cache_dir``). :meth:`prepare_epoch` augments a whole epoch ahead
    of the training steps (in a worker thread if asked), which then only look their batch up; the sentences are the
    same either way (each is a function of seed, epoch, row and caption only)."""

    seed: int = 0
    resample: bool = True
    eda: EDA = field(default_factory=EDA)
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        self._fixed: dict[tuple[int, str], str] = {}
        self._prepared: dict[int | None, tuple[list[str], list[str]] | Future] = {}  # epoch -> (captions, EDA)
        self._worker: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()  # one thread at a time in EDA: NLTK's WordNet reader shares file handles

    def __getstate__(self) -> dict:  # copies and pickles carry the settings and memo, not the worker
        state = dict(self.__dict__)
        state.update(_prepared={}, _worker=None, _lock=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    def _epoch_key(self, epoch: int | None) -> int | None:
        return int(epoch) if self.resample and epoch is not None else None

    def prepare_epoch(self, captions: Sequence[str], epoch: int, background: bool = False,
                      warm: Callable[[list[str]], object] | None = None) -> None:
        """Augment every caption of ``epoch`` at once (``captions[i]`` is dataset row i, as ``indices`` count
        them), so that the training steps of that epoch only look their batch up. ``background=True`` computes
        in a worker thread and returns at once (e.g. the next epoch's captions while this epoch trains); a step
        that needs them waits for it. ``warm``: called with the augmented captions in the same job, e.g. the
        model's ``tokenize`` to fill its token cache off the step. The two most recently prepared epochs are kept."""
        key = self._epoch_key(epoch)
        if key in self._prepared:
            return
        job = partial(self._augment_rows, list(captions), key, warm)
        if background:
            if self._worker is None:
                self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clipguard-eda")
            self._prepared[key] = self._worker.submit(job)
        else:
            self._prepared[key] = job()
        while len(self._prepared) > 2:
            del self._prepared[next(iter(self._prepared))]

    def _augment_rows(self, captions: list[str], epoch: int | None, warm: Callable | None
                      ) -> tuple[list[str], list[str]]:
        with self._lock:
            augmented = augment_captions(captions, self.seed, epoch, range(len(captions)), self.eda, self.cache_dir)
        if warm is not None:
            warm(augmented)
        return captions, augmented

    def _lookup(self, captions: Sequence[str], epoch: int | None, indices: Sequence[int]) -> list[str] | None:
        prepared = self._prepared.get(self._epoch_key(epoch))
        if prepared is None:
            return None
        source, augmented = prepared.result() if isinstance(prepared, Future) else prepared
        if not all(0 <= i < len(source) and source[i] == c for i, c in zip(indices, captions)):
            return None  # other captions than the prepared ones: augment them here
        return [augmented[i] for i in indices]

    def __call__(self, captions: Sequence[str], epoch: int, indices: Sequence[int] | torch.Tensor | None = None
                 ) -> list[str]:
        if indices is None:
            indices = range(len(captions))
        elif isinstance(indices, torch.Tensor):
            indices = indices.tolist()
        prepared = self._lookup(captions, epoch, indices)
        if prepared is not None:
            return prepared
        with self._lock:
            if self.resample:
                return augment_captions(captions, self.seed, epoch, indices, self.eda, self.cache_dir)
            missing = [(i, c) for i, c in zip(indices, captions) if (i, c) not in self._fixed]
            if missing:
                rows, texts = zip(*missing)
                for row, text, augmented in zip(rows, texts, augment_captions(texts, self.seed, None, rows, self.eda,
                                                                              self.cache_dir)):
                    self._fixed[(row, text)] = augmented
            return [self._fixed[(i, c)] for i, c in zip(indices, captions)]
