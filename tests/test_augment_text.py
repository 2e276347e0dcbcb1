"""EDA operations and the caption-augmentation hook (with WordNet and with a stub), pinned outputs under seeds."""

import collections
import hashlib
import json
import random
import re

import pytest
import torch

from clipguard import augment as A

VALID = re.compile(r"^[a-z]+( [a-z]+)*$")


@pytest.fixture(scope="module")
def wordnet():
    return A.load_wordnet()


@pytest.fixture(scope="module")
def synonyms(wordnet):
    return A.SynonymTable(wordnet)


class _Lemma:
    def __init__(self, name):
        self._name = name

    def name(self):
        return self._name


class _Synset:
    def __init__(self, names):
        self._lemmas = [_Lemma(n) for n in names]

    def lemmas(self):
        return self._lemmas


class StubWordNet:
    """Every word w has the single-word synonym 'w' + 'x' (and itself, which EDA excludes)."""

    def synsets(self, word):
        return [_Synset([word, word + "x"])]


CAPTIONS = ["A photo of a shirt.", "a black-and-white picture of a sneaker", "an online shop listing: cheap boot",
            "a photo of the small dress and a bag", "Trouser", "a close-up photo of the pullover, isn't it?"]


def test_clean_caption_and_stop_words():
    assert A.clean_caption("A photo of a T-shirt, isn't it? 42 ") == "a photo of a t shirt isnt it"
    assert A.clean_caption("123 !!") == ""
    assert {"a", "the", "of", "and", "", "don"} <= A.STOP_WORDS and len(A.STOP_WORDS) == 128
    assert not {"photo", "shirt", "cheap"} & A.STOP_WORDS


def _aligned(original, output, synonyms):
    """True when ``output`` is ``original`` with words replaced by (possibly multi-word) synonyms."""
    if not original:
        return not output
    word, rest = original[0], original[1:]
    if output[:1] == [word] and _aligned(rest, output[1:], synonyms):
        return True
    for synonym in synonyms(word):
        parts = synonym.split()
        if output[:len(parts)] == parts and _aligned(rest, output[len(parts):], synonyms):
            return True
    return False


def test_synonym_replacement_uses_wordnet_synonyms(synonyms):
    words = "a photo of a cheap bag and a sneaker".split()
    changed = 0
    for seed in range(20):
        out = A.synonym_replacement(words, 2, random.Random(seed), synonyms)
        assert out == A.synonym_replacement(words, 2, random.Random(seed), synonyms)
        assert all(re.fullmatch("[a-z]+", w) for w in out)
        assert _aligned(words, out, synonyms), out
        assert out[0] == "a" and out[2] == "of"  # stop words are never replaced
        changed += out != words
    assert changed == 20  # four content words, all with synonyms: always two replacements
    assert A.synonym_replacement(["shirt"], 1, random.Random(0), synonyms) == ["shirt"]  # WordNet: no synonym


def test_synonym_replacement_known_answer_with_stub():
    out = A.synonym_replacement("the cat saw the dog".split(), 2, random.Random(0), StubWordNet())
    assert out.count("the") == 2 and len(out) == 5
    assert sum(w.endswith("x") for w in out) == 2  # exactly n distinct words replaced, stop words kept


def test_random_insertion_adds_n_synonyms():
    stub = A.SynonymTable(StubWordNet())
    words = "a cat on a mat".split()
    for n in (1, 2, 3):
        out = A.random_insertion(words, n, random.Random(n), stub)
        assert len(out) == len(words) + n
        assert collections.Counter(out) - collections.Counter(words) == collections.Counter(
            [w for w in out if w.endswith("x")])
        assert out[-1] == "mat"  # the reference never inserts after the last word
        assert out == A.random_insertion(words, n, random.Random(n), stub)


def test_random_insertion_with_wordnet(synonyms):
    words = "a photo of a cheap bag".split()
    out = A.random_insertion(words, 1, random.Random(0), synonyms)
    assert len(out) >= len(words) + 1 and all(re.fullmatch("[a-z]+", w) for w in out)
    assert A.random_insertion(["shirt", "of"], 2, random.Random(0), synonyms) == ["shirt", "of"]  # no synonyms


def test_random_swap_preserves_words():
    words = "one two three four five six".split()
    for seed in range(10):
        out = A.random_swap(words, 2, random.Random(seed))
        assert sorted(out) == sorted(words)
        assert out == A.random_swap(words, 2, random.Random(seed))
    assert A.random_swap(words, 1, random.Random(0)) != words
    assert A.random_swap(["alone"], 3, random.Random(0)) == ["alone"]


def test_random_deletion():
    words = "one two three four five six".split()
    assert A.random_deletion(words, 0.0, random.Random(0)) == words
    for seed in range(10):
        kept = A.random_deletion(words, 1.0, random.Random(seed))
        assert len(kept) == 1 and kept[0] in words
        out = A.random_deletion(words, 0.5, random.Random(seed))
        assert out and all(w in words for w in out) and out == sorted(out, key=words.index)
    assert A.random_deletion(["alone"], 1.0, random.Random(0)) == ["alone"]


def test_eda_outputs_are_valid_and_seeded(wordnet):
    eda = A.EDA(wordnet=wordnet)
    for caption in CAPTIONS:
        for seed in range(15):
            out = eda(caption, random.Random(seed))
            assert VALID.match(out), (caption, out)
            assert out == eda(caption, random.Random(seed))
    assert eda("42!", random.Random(0)) == "42!"  # nothing EDA can work on: unchanged
    swap_only = A.EDA(operations=("rs",), wordnet=wordnet)
    assert sorted(swap_only("b a c d", random.Random(1)).split()) == ["a", "b", "c", "d"]
    with pytest.raises(ValueError):
        A.EDA(operations=("rd",), p_rd=0.0)
    with pytest.raises(ValueError):
        A.EDA(operations=("xx",))


def test_eda_chooses_operations_uniformly():
    eda = A.EDA(wordnet=StubWordNet())
    caption = "one two three four five seven eight nine ten eleven"
    kinds = collections.Counter()
    for seed in range(400):
        out = eda(caption, random.Random(seed)).split()
        if any(w.endswith("x") for w in out):
            kinds["sr" if len(out) == 10 else "ri"] += 1
        elif len(out) < 10:
            kinds["rd"] += 1
        elif out != caption.split():
            kinds["rs"] += 1
    # rd deletes nothing with probability 0.9^10 = 0.35, so it is seen in ~65% of its draws
    assert kinds["sr"] == pytest.approx(100, abs=30) and kinds["ri"] == pytest.approx(100, abs=30)
    assert kinds["rs"] == pytest.approx(100, abs=30) and kinds["rd"] == pytest.approx(65, abs=25)


def test_augment_captions_per_epoch_and_fixed(wordnet, tmp_path):
    eda = A.EDA(wordnet=wordnet)
    captions = CAPTIONS * 4
    epoch1 = A.augment_captions(captions, 0, 1, eda=eda)
    epoch2 = A.augment_captions(captions, 0, 2, eda=eda)
    assert epoch1 == A.augment_captions(captions, 0, 1, eda=eda)
    assert epoch1 != epoch2 and sum(a != b for a, b in zip(epoch1, epoch2)) >= 5
    fixed = A.augment_captions(captions, 0, None, eda=eda)
    assert fixed == A.augment_captions(captions, 0, None, eda=eda)
    assert fixed != A.augment_captions(captions, 1, None, eda=eda)
    # one caption's augmentation does not depend on the others: a subset with its rows gives the same sentences
    rows = [3, 7, 11]
    assert A.augment_captions([captions[i] for i in rows], 0, 1, indices=torch.tensor(rows), eda=eda) == [
        epoch1[i] for i in rows]
    # on-disk cache: written once, then read back (a doctored entry proves the read)
    cached = A.augment_captions(captions, 0, None, eda=eda, cache_dir=tmp_path)
    assert cached == fixed
    (cache_file,) = tmp_path.glob("eda-*-seed0-fixed.json")
    entries = json.loads(cache_file.read_text())
    assert len(entries) == len(captions)
    entries[next(key for key in entries if key.startswith("0:"))] = "doctored"
    cache_file.write_text(json.dumps(entries))
    assert A.augment_captions(captions[:1], 0, None, eda=eda, cache_dir=tmp_path) == ["doctored"]


def test_caption_augmenter_hook(wordnet):
    captions = CAPTIONS * 3
    rows = torch.arange(len(captions))
    fixed = A.CaptionAugmenter(seed=0, resample=False, eda=A.EDA(wordnet=wordnet))
    assert fixed(captions, 1, rows) == fixed(captions, 2, rows) == A.augment_captions(captions, 0, None, rows,
                                                                                        fixed.eda)
    fresh = A.CaptionAugmenter(seed=0, eda=A.EDA(wordnet=wordnet))
    assert fresh(captions, 1, rows) != fresh(captions, 2, rows)
    assert "0x" not in repr(fresh)  # identity() records the repr: no memory addresses



# Regression pins: EDA output under fixed seeds, recorded before the module was split into a package (stored runs
# depend on it). Python's random and the WordNet 3.0 database make these platform-independent.
PIN_CAPTIONS = CAPTIONS * 4
PIN_ROWS = list(range(10, 10 + len(PIN_CAPTIONS)))


def _text_digest(texts):
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]


@pytest.mark.parametrize("resample, expected", [(True, "225516cf0d0d9373"), (False, "e084fd5970b2be94")])
def test_pinned_caption_outputs(wordnet, resample, expected):
    augmenter = A.CaptionAugmenter(seed=3, resample=resample, eda=A.EDA(wordnet=wordnet))
    assert _text_digest(augmenter(PIN_CAPTIONS, 2, PIN_ROWS)) == expected


@pytest.mark.parametrize("resample", [True, False])
@pytest.mark.parametrize("background", [False, True])
def test_prepared_epoch_gives_the_same_captions(wordnet, resample, background):
    captions = CAPTIONS * 5
    direct = A.CaptionAugmenter(seed=2, resample=resample, eda=A.EDA(wordnet=wordnet))
    prepared = A.CaptionAugmenter(seed=2, resample=resample, eda=A.EDA(wordnet=wordnet))
    for epoch in (1, 2):
        prepared.prepare_epoch(captions, epoch, background=background)
        for rows in (torch.tensor([4, 0, 17, 29]), [3, 3, 8]):
            batch = [captions[i] for i in rows]
            assert prepared(batch, epoch, rows) == direct(batch, epoch, rows)
    # a batch whose captions differ from the prepared rows is augmented on the spot, as without preparation
    assert prepared(["a photo of a bag"], 2, [0]) == direct(["a photo of a bag"], 2, [0])


def test_prepared_epochs_are_looked_up_and_bounded(wordnet):
    augmenter = A.CaptionAugmenter(seed=0, eda=A.EDA(wordnet=wordnet))
    for epoch in (1, 2, 3):
        augmenter.prepare_epoch(CAPTIONS, epoch)
    assert sorted(augmenter._prepared) == [2, 3]  # the two most recent
    seen = []
    augmenter.prepare_epoch(CAPTIONS, 4, background=True, warm=seen.append)  # e.g. the model's tokenizer
    assert augmenter(CAPTIONS, 4) == seen[0] == A.CaptionAugmenter(seed=0, eda=A.EDA(wordnet=wordnet))(CAPTIONS, 4)
    source, augmented = augmenter._prepared[4].result()
    augmented[1] = "planted"  # the step reads the prepared sentence, it does not recompute it
    assert augmenter(CAPTIONS[:2], 4, [0, 1])[1] == "planted"


def test_caption_augmenter_copies_without_its_worker():
    import copy
    import pickle

    augmenter = A.CaptionAugmenter(seed=4, eda=A.EDA(wordnet=StubWordNet()))
    augmenter.prepare_epoch(CAPTIONS, 1, background=True)
    clone = copy.deepcopy(augmenter)  # the settings and the memo travel, the worker thread and its results do not
    assert clone._prepared == {} and clone(CAPTIONS, 1) == augmenter(CAPTIONS, 1)
    restored = pickle.loads(pickle.dumps(augmenter))
    assert restored == augmenter and restored(CAPTIONS, 2) == augmenter(CAPTIONS, 2)


def test_stored_synonyms_spare_loading_wordnet_and_equal_the_lookup(tmp_path):
    store = tmp_path / "synonyms.json"
    loads = []

    def stub():
        loads.append(1)
        return StubWordNet()

    first = A.SynonymTable(stub, store=store, identity="corpus-1")
    assert loads == []  # WordNet is loaded at the first word the table does not know, not before
    assert first("shirt") == ("shirtx",) and first("bag") == ("bagx",) and loads == [1]
    first.save()
    other = A.SynonymTable(stub, store=store, identity="corpus-1")  # another process: words from the store
    assert other("shirt") == ("shirtx",) and loads == [1]
    assert other("coat") == ("coatx",) and loads == [1, 1]
    other.save()  # merged with what the first table wrote
    assert set(json.loads(store.read_text())["synonyms"]) == {"shirt", "bag", "coat"}
    # a store written from another corpus or rule, or an unreadable one, is ignored
    assert A.SynonymTable(stub, store=store, identity="corpus-2")._cache == {}
    store.write_text("{not json")
    assert A.SynonymTable(stub, store=store, identity="corpus-1")._cache == {}


def test_the_default_table_reads_the_store_of_the_corpus_and_gives_wordnets_synonyms(synonyms):
    from clipguard.augment.text import SYNONYM_STORE

    table = A.default_synonym_table()
    assert table.store == A.find_wordnet() / SYNONYM_STORE
    words = ["shirt", "photo", "cheap", "boot", "picture", "dress"]
    assert [table(w) for w in words] == [synonyms(w) for w in words]
    table.save()
    again = A.default_synonym_table()
    again._wordnet = lambda: pytest.fail("a stored word must not load WordNet")
    assert [again(w) for w in words] == [synonyms(w) for w in words]
