"""Augmentations: image policy (batched engine == torchvision kernels), AutoAugment, EDA ops, offline WordNet."""

import collections
import importlib.util
import json
import random
import re
from pathlib import Path

import pytest
import torch

from clipguard import augment as A

REPO = Path(__file__).resolve().parents[1]
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


def _images(n=8, side=32, seed=0):
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------------------------
# Image policy
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["batched", "torchvision"])
def test_policy_keeps_shape_range_and_is_seeded(engine):
    policy = A.ImagePolicy(engine=engine)
    images = _images()
    out = A.augment_images(images, _gen(1), policy)
    assert out.shape == images.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, A.augment_images(images, _gen(1), policy))
    assert not torch.allclose(out, A.augment_images(images, _gen(2), policy))
    single = policy(images[0], _gen(1))  # [C,H,W] in, [C,H,W] out; the policy is the training hook
    assert single.shape == images[0].shape
    resized = A.augment_images(images, _gen(1), A.ImagePolicy(size=24, engine=engine))
    assert resized.shape == (8, 3, 24, 24)
    # per-image draws: one image repeated gives different outputs
    repeated = A.augment_images(images[:1].repeat(6, 1, 1, 1), _gen(3), policy)
    assert len({tuple(x.flatten()[:64].tolist()) for x in repeated}) > 1


def test_uint8_in_uint8_out():
    images = (_images(4) * 255).round().to(torch.uint8)
    out = A.augment_images(images, _gen(0))
    assert out.dtype == torch.uint8 and out.shape == images.shape


@pytest.mark.parametrize("fn", [
    lambda x, g: A.augment_images(x, g, A.ImagePolicy()),
    lambda x, g: A.augment_images(x, g, A.ImagePolicy(engine="torchvision")),
    lambda x, g: A.autoaugment_images(x, g),
])
def test_global_rng_state_unchanged(fn):
    torch.manual_seed(123)
    random.seed(5)
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    fn(_images(4), _gen(0))
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == python_state


@pytest.mark.parametrize("side", [32, 64])
def test_batched_engine_matches_torchvision_kernels(side):
    """Same parameters: the batched ops equal torchvision.transforms.v2.functional applied image by image."""
    policy = A.ImagePolicy(jitter_p=1.0, grayscale_p=0.5, blur_sigma=(0.5, 1.5))
    images = _images(12, side)
    params = A.sample_image_params(12, side, side, policy, _gen(4))
    assert params["jitter"].all() and 0 < params["gray"].sum() < 12
    ours = A.apply_image_params(images, params, policy)
    reference = A._apply_image_params_reference(images, params, policy)
    assert torch.allclose(ours, reference, atol=1e-5), (ours - reference).abs().max()


def test_blur_kernel_and_sigma_scale_with_the_side():
    assert [A.blur_kernel_size(s) for s in (28, 32, 64, 100, 224)] == [3, 3, 5, 9, 21]
    policy = A.ImagePolicy()
    assert policy.sigma_range(224) == pytest.approx((0.1, 2.0))
    assert policy.sigma_range(32) == pytest.approx((0.1 / 7, 2.0 / 7))
    assert A.ImagePolicy.reference().scale == (0.08, 1.0)
    assert A.ImagePolicy(blur_kernel=7).kernel_size(32) == 7
    with pytest.raises(ValueError):
        A.ImagePolicy(blur_kernel=4)


def test_parameter_distribution_matches_policy():
    policy = A.ImagePolicy.reference()
    n = 4000
    p = A.sample_image_params(n, 32, 32, policy, _gen(0))
    assert p["flip"].float().mean() == pytest.approx(0.5, abs=0.03)
    assert p["jitter"].float().mean() == pytest.approx(0.8, abs=0.03)
    assert p["gray"].float().mean() == pytest.approx(0.2, abs=0.03)
    top, left, h, w = p["box"].T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 32).all()
    area = (h * w).double() / 32**2
    assert area.min() >= 0.05 and area.max() <= 1.0
    factors = p["factors"]
    assert factors[:, :3].min() >= 0.5 and factors[:, :3].max() <= 1.5 and factors[:, 3].abs().max() <= 0.1
    assert sorted(p["order"][0].tolist()) == [0, 1, 2, 3]
    lo, hi = policy.sigma_range(32)
    assert p["sigma"].min() >= lo and p["sigma"].max() <= hi
    # the crop-area distribution agrees with torchvision's own RandomResizedCrop.get_params
    from torchvision.transforms import v2

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        boxes = [v2.RandomResizedCrop.get_params(torch.zeros(3, 32, 32), list(policy.scale), list(policy.ratio))
                 for _ in range(n)]
    theirs = torch.tensor([bh * bw / 32**2 for _, _, bh, bw in boxes])
    assert area.mean().item() == pytest.approx(theirs.mean().item(), abs=0.02)


def test_autoaugment_is_seeded_and_keeps_dtype():
    images = _images(6)
    out = A.autoaugment_images(images, _gen(0))
    assert out.shape == images.shape and out.is_floating_point() and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, A.AutoAugmentImages()(images, _gen(0)))
    as_uint8 = A.autoaugment_images((images * 255).round().to(torch.uint8), _gen(0))
    assert as_uint8.dtype == torch.uint8
    assert torch.equal(as_uint8, (out * 255).round().to(torch.uint8))
    with pytest.raises(ValueError):
        A.autoaugment_images(images, _gen(0), policy="nope")


# ---------------------------------------------------------------------------------------------------------------
# EDA
# ---------------------------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------------------------
# WordNet offline
# ---------------------------------------------------------------------------------------------------------------


def test_lexnames_text():
    lines = A.lexnames_text().splitlines()  # checked against lexnames(5WN) when the man page is installed
    assert len(lines) == 45
    assert lines[0] == "00\tadj.all\t3" and lines[2] == "02\tadv.all\t4" and lines[3] == "03\tnoun.Tops\t1"
    assert lines[29] == "29\tverb.body\t2" and lines[44] == "44\tadj.ppl\t3"


def test_load_wordnet(wordnet):
    assert [s.name() for s in wordnet.synsets("shirt")] == ["shirt.n.01", "shirt.v.01"]
    assert wordnet.synset("photograph.n.01").lexname() == "noun.artifact"
    assert wordnet.lemma_from_key("shirt%1:06:00::").name() == "shirt"


@pytest.mark.skipif(not A.WORDNET_SOURCE.is_dir(), reason="needs Debian's wordnet-base")
def test_setup_script_writes_a_working_corpus(tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("setup_wordnet", REPO / "data_scripts" / "setup_wordnet.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--dest", str(tmp_path)]) == 0
    assert "shirt.n.01" in capsys.readouterr().out
    folder = tmp_path / "corpora" / "wordnet"
    assert (folder / "lexnames").read_text() == A.lexnames_text()
    # index.sense, rebuilt from the database: lines as in Debian's wordnet-sense-index
    sense = (folder / "index.sense").read_text()
    for line in ("shirt%1:06:00:: 04197391 1 15", "sneaker%1:18:00:: 10091012 2 0",
                 "0%5:00:00:cardinal:00 02186133 1 3", "kb%1:23:00:: 13627516 3 0"):
        assert f"\n{line}\n" in sense
    assert len(sense.splitlines()) == 206941
    _, written = A.install_wordnet(tmp_path)
    assert written == []  # idempotent
    monkeypatch.setenv("NLTK_DATA", str(tmp_path))
    assert A.find_wordnet() == folder
    assert "shirt.n.01" in [s.name() for s in A.load_wordnet(folder).synsets("shirt")]


def test_missing_wordnet_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(A, "find_wordnet", lambda: None)
    monkeypatch.setattr(A, "WORDNET_SOURCE", tmp_path / "absent")
    with pytest.raises(A.WordNetUnavailable, match="apt-get install wordnet-base"):
        A.load_wordnet()
    with pytest.raises(A.WordNetUnavailable, match="setup_wordnet.py"):
        A.install_wordnet(tmp_path / "dest", source=tmp_path / "absent")


# ---------------------------------------------------------------------------------------------------------------
# Regression pins: outputs under fixed seeds, recorded before the module was split into a package. Stored runs
# depend on them, so a change here means results change. Float hashes depend on the torch build and the CPU's
# vector kernels, so they are checked on the platform they were recorded on (elsewhere the known-answer tests
# against torchvision cover the maths).
# ---------------------------------------------------------------------------------------------------------------

PIN_PLATFORM = ("2.14.1+cu130", "AVX512")
SMALL_POLICY = dict(scale=(0.8, 1.0), jitter_p=0.5, brightness=0.3, contrast=0.3, saturation=0.3, hue=0.0)
PIN_CAPTIONS = CAPTIONS * 4
PIN_ROWS = list(range(10, 10 + len(PIN_CAPTIONS)))


def _digest(tensor):
    import hashlib

    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()[:16]


def _text_digest(texts):
    import hashlib

    return hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]


def _pinned_platform():
    if (torch.__version__, torch.backends.cpu.get_cpu_capability()) != PIN_PLATFORM:
        pytest.skip(f"pins recorded on torch {PIN_PLATFORM[0]} with {PIN_PLATFORM[1]} kernels")


@pytest.mark.parametrize("name, make, expected", [
    ("params", lambda: torch.cat([v.double().flatten() for _, v in sorted(
        A.sample_image_params(16, 32, 32, A.ImagePolicy(), _gen(7)).items())]), "5e3633ac87ea874e"),
    ("default", lambda: A.augment_images(_images(), _gen(1), A.ImagePolicy()), "55d25c557ff37f60"),
    ("book policy", lambda: A.augment_images(_images(), _gen(1), A.ImagePolicy(**SMALL_POLICY)), "8ef19774d47bbcd5"),
    ("resized", lambda: A.augment_images(_images(), _gen(1), A.ImagePolicy(size=24)), "07c89e8304b0a933"),
    ("uint8", lambda: A.augment_images((_images() * 255).round().to(torch.uint8), _gen(1)), "84b01dc86a944736"),
    ("torchvision engine", lambda: A.augment_images(_images(), _gen(1), A.ImagePolicy(engine="torchvision")),
     "3eeaae48ed93db38"),
    ("autoaugment", lambda: A.autoaugment_images((_images() * 255).round().to(torch.uint8), _gen(1)),
     "b8930c45908eafa1"),
])
def test_pinned_image_outputs(name, make, expected):
    _pinned_platform()
    assert _digest(make()) == expected, name


@pytest.mark.parametrize("resample, expected", [(True, "225516cf0d0d9373"), (False, "e084fd5970b2be94")])
def test_pinned_caption_outputs(wordnet, resample, expected):
    augmenter = A.CaptionAugmenter(seed=3, resample=resample, eda=A.EDA(wordnet=wordnet))
    assert _text_digest(augmenter(PIN_CAPTIONS, 2, PIN_ROWS)) == expected
