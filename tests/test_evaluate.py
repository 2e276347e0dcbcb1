import pytest
import torch
import torch.nn.functional as F

from clipguard import evaluate
from clipguard.data import ImageCaptionSet


class PlantedModel(torch.nn.Module):
    """A stand-in CLIP: image i embeds to the one-hot of the class written in its first pixel; a caption embeds to
    the one-hot of the class name it contains."""

    def __init__(self, classnames):
        super().__init__()
        self.classnames = classnames
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def encode_image(self, images, normalize=True):
        labels = (images[:, 0, 0, 0] * 255).round().long()
        return F.one_hot(labels, len(self.classnames)).float()

    def encode_text(self, captions, normalize=True):
        rows = []
        for caption in captions:
            hits = [i for i, name in enumerate(self.classnames) if name in caption.replace(".", " ").split()]
            rows.append(F.one_hot(torch.tensor(hits[0]), len(self.classnames)).float())
        return torch.stack(rows)


def _planted_set(true_labels, planted_predictions, classnames):
    images = torch.zeros(len(true_labels), 3, 4, 4, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.tensor(planted_predictions, dtype=torch.uint8)
    return ImageCaptionSet(images, None, torch.tensor(true_labels), classnames, ["a photo of a {}.", "a {} ."])


def test_zero_shot_on_a_planted_toy():
    classnames = ["cat", "dog", "cow"]
    dataset = _planted_set([0, 1, 2, 0, 1], [0, 1, 2, 1, 1], classnames)
    accuracy = evaluate.zero_shot_accuracy(PlantedModel(classnames), dataset, ks=(1, 2))
    assert accuracy["top1"] == pytest.approx(4 / 5)


def test_class_embedding_is_normalised_mean_of_normalised_templates():
    classnames = ["cat", "dog"]
    weights = evaluate.zero_shot_classifier(PlantedModel(classnames), classnames, ["a {}", "the {}"])
    assert torch.allclose(weights, torch.eye(2))
    assert torch.allclose(weights.norm(dim=1), torch.ones(2))


def test_topk_accuracy_hand_computed():
    logits = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.1, 0.5, 0.4]])
    labels = torch.tensor([0, 1, 2])
    result = evaluate.topk_accuracy(logits, labels, ks=(1, 2, 5))
    assert result == {"top1": pytest.approx(1 / 3), "top2": pytest.approx(1.0), "top5": pytest.approx(1.0)}


def test_retrieval_recall_on_planted_similarities():
    image = torch.eye(4)
    text = torch.eye(4)[[0, 1, 3, 2]]  # pairs 2 and 3 swapped
    result = evaluate.retrieval_recall(image, text, ks=(1, 2))
    assert result["image_to_text_R@1"] == 0.5 and result["text_to_image_R@1"] == 0.5


def test_linear_probes_separate_separable_features():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 4
    features = F.one_hot(labels, 4).float() * 3 + 0.3 * torch.randn(200, 4, generator=g)
    args = (features[:150], labels[:150], features[150:], labels[150:])
    assert evaluate.linear_probe_torch(*args, epochs=20, batch_size=16) > 0.95
    assert evaluate.linear_probe_sklearn(*args) > 0.95


def test_templates_without_placeholder_are_rejected():
    with pytest.raises(ValueError, match="must contain"):
        evaluate.zero_shot_classifier(PlantedModel(["cat"]), ["cat"], ["a photo"])


def test_pair_statistics_match_direct_computation():
    from clipguard import data, models
    from clipguard.losses import clip_loss_per_sample

    dataset = data.fashion_mnist("train", n=64, seed=0)
    model = models.build_model("clipguard-tiny", seed=0).eval()
    cosine, loss = evaluate.pair_statistics(model, dataset, batch_size=64)
    with torch.no_grad():
        image = model.encode_image(dataset.float_images())
        text = model.encode_text(dataset.captions)
    assert torch.allclose(cosine, (image * text).sum(1), atol=1e-5)
    # one batch holding every row in a permuted order: per-row losses are the same as in row order
    assert torch.allclose(loss, clip_loss_per_sample(image, text, model.logit_scale.exp()), atol=1e-4)


def test_class_retrieval_precision_hand_computed():
    images = torch.eye(3)[[0, 0, 1, 2]]          # images 0,1 of class A, 2 of B, 3 of C
    texts = torch.eye(3)[[0, 1, 1, 2]]           # caption 1 describes class B but belongs to an A image
    labels = torch.tensor([0, 0, 1, 2])
    result = evaluate.class_retrieval_precision(images, texts, labels, ks=(1,))
    # caption0 -> image0 or 1 (A, correct); caption1 -> image2 (B != A); caption2 -> image2 (B, ok); caption3 -> 3
    assert result["class_precision@1"] == pytest.approx(3 / 4)


def test_retrieval_ties_count_against_the_true_partner():
    collapsed = torch.ones(5, 3) / 3 ** 0.5  # every embedding identical: nothing is retrieved
    result = evaluate.retrieval_recall(collapsed, collapsed, ks=(1, 5))
    assert result["image_to_text_R@1"] == 0.0 and result["text_to_image_R@1"] == 0.0
    assert result["image_to_text_R@5"] == 1.0  # all five tie: the partner is within the top five


def test_caption_cleaning_shortcut_gives_open_clips_strings_and_tokens():
    """The tokenizer's ASCII shortcut returns what open_clip's ftfy + HTML cleaning returns, on tricky strings, on
    random printable ASCII and on the book's captions with their EDA views (the same tokens, so the same runs)."""
    import random

    import open_clip

    from clipguard import data, models
    from clipguard.augment.text import augment_captions

    tricky = ["  A  photo\tof a\n  BAG ", "a &amp; b", "a &amp;amp; b", "rock &roll", "x\x1b[31mred", "caf\u00e9",
              "\u201cquoted\u201d", "line\r\nbreak", "ctrl\x07char", "", "   ", "ＦＵＬＬ width", "a<b>&lt;c"]
    rng = random.Random(0)
    randoms = ["".join(rng.choice([chr(c) for c in range(32, 127)]) for _ in range(rng.randint(0, 30)))
               for _ in range(2000)]
    for text in tricky + randoms:
        assert models.clean_lower(text) == open_clip.tokenizer._clean_lower(text), repr(text)
    captions = list(data.fashion_mnist("train", n=500, seed=0).captions)
    captions += augment_captions(captions, seed=0, epoch=1)
    reference = open_clip.tokenizer.SimpleTokenizer(context_length=16)
    model = models.build_model("clipguard-tiny")
    assert model._tokenizer.clean_fn is models.clean_lower
    assert torch.equal(model.tokenize(captions + tricky), reference(captions + tricky))


def test_caption_embeddings_encode_each_distinct_caption_once_and_equal_every_row_encoded():
    from clipguard import data, models

    model = models.build_model("clipguard-tiny", seed=3).eval()
    captions = list(data.fashion_mnist("train", n=300, seed=0).captions)
    calls = []
    encode = model.encode_text
    model.encode_text = lambda texts, **kw: calls.append(len(texts)) or encode(texts, **kw)
    got = evaluate.caption_embeddings(model, captions, batch_size=64)
    model.encode_text = encode
    assert sum(calls) == len(set(captions)) < len(captions)
    with torch.no_grad():
        every_row = torch.cat([model.encode_text(captions[i:i + 64]) for i in range(0, len(captions), 64)])
    assert torch.equal(got, every_row)
    assert evaluate.caption_embeddings(model, []).shape == (0, 0)
