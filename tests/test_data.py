import csv
import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from clipguard import data


def test_fashion_mnist_subset_is_deterministic_and_labelled(tiny_fashion):
    again = data.fashion_mnist("train", n=512, seed=0)
    assert again.keys == tiny_fashion.keys
    assert tiny_fashion.images.shape == (512, 3, 32, 32) and tiny_fashion.images.dtype == torch.uint8
    assert set(tiny_fashion.labels.tolist()) <= set(range(10))
    other = data.fashion_mnist("train", n=512, seed=1)
    assert other.keys != tiny_fashion.keys


def test_captions_name_their_class_and_vary(tiny_fashion):
    classes = [data.class_of_caption(c, data.FASHION_SYNONYMS) for c in tiny_fashion.captions]
    assert classes == tiny_fashion.labels.tolist()
    assert len(set(tiny_fashion.captions)) > 0.8 * len(tiny_fashion)


def test_caption_generation_is_deterministic_and_independent_of_subset_size():
    small = data.fashion_mnist("test", n=50, seed=3)
    rng_rows = np.sort(np.random.default_rng(3).choice(10000, size=50, replace=False))
    full = data.fashion_mnist("test", seed=3)
    assert small.captions == [full.captions[r] for r in rng_rows]


def test_fashion_mnist_sets_are_cached_per_process_but_every_caller_gets_its_own_copy(tmp_path):
    import gzip

    first = data.fashion_mnist("test", n=300, seed=5)
    first.images[0] += 1  # a caller changing its set changes no later set
    first.captions[0] = "changed"
    first.classnames.append("changed")
    again = data.fashion_mnist("test", n=300, seed=5)
    assert again.captions[0] != "changed" and "changed" not in again.classnames
    assert not torch.equal(again.images[0], first.images[0])
    assert again.keys == data.fashion_mnist("test", n=300, seed=5).keys

    def write(pixel: int) -> None:  # a two-image test split; rewriting it must be read again
        images, labels = data._FASHION_FILES["test"]
        with gzip.open(tmp_path / images, "wb") as handle:
            handle.write(bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
                         + bytes([pixel]) * (2 * 28 * 28))
        with gzip.open(tmp_path / labels, "wb") as handle:
            handle.write(bytes([0, 0, 8, 1]) + (2).to_bytes(4, "big") + bytes([1, 2]))

    write(7)
    assert int(data.fashion_mnist("test", root=tmp_path).images.max()) == 7
    write(9)
    assert int(data.fashion_mnist("test", root=tmp_path).images.max()) == 9


def test_class_of_caption_prefers_longest_phrase():
    syn = data.FASHION_SYNONYMS
    assert data.class_of_caption("a worn t-shirt", syn) == 0
    assert data.class_of_caption("a button-down shirt", syn) == 6
    assert data.class_of_caption("an ankle boot", syn) == 9
    assert data.class_of_caption("a photo of a cat", syn) is None


def test_content_key_depends_on_image_and_caption():
    image = torch.zeros(3, 4, 4, dtype=torch.uint8)
    key = data.content_key(image, "a cat")
    assert key == data.content_key(image.clone(), "a cat")
    assert key != data.content_key(image, "a dog")
    changed = image.clone()
    changed[0, 0, 0] = 1
    assert key != data.content_key(changed, "a cat")
    with pytest.raises(data.DataError):
        data.content_key(image.float(), "a cat")


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(data.DataError, match="apt-get install dataset-fashion-mnist"):
        data.fashion_mnist("train", root=tmp_path)


def test_truncated_idx_file_is_named(tmp_path):
    import gzip

    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        with gzip.open(tmp_path / name, "wb") as handle:
            handle.write(bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\x00" * 100)
    with pytest.raises(data.DataError, match="train-images-idx3-ubyte.gz.*truncated"):
        data.fashion_mnist("train", root=tmp_path)


def test_shapes_are_deterministic_extendable_and_compositional():
    a = data.shapes(40, seed=2, image_size=32)
    b = data.shapes(60, seed=2, image_size=32)
    assert a.keys == b.keys[:40]
    assert a.images.shape == (40, 3, 32, 32)
    for i in range(40):
        shape = a.attribute_names["shape"][a.attributes["shape"][i]]
        colour = a.attribute_names["colour"][a.attributes["colour"][i]]
        assert shape in a.captions[i] and colour in a.captions[i]
    colours = a.with_labels("colour")
    assert colours.classnames == a.attribute_names["colour"]
    assert torch.equal(colours.labels, a.attributes["colour"])


def test_empty_caption_is_rejected_with_index():
    with pytest.raises(data.DataError, match="item 1"):
        data.ImageCaptionSet(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), ["ok", "  "])


def _png(path, colour=(255, 0, 0), size=(40, 30)):
    Image.new("RGB", size, colour).save(path)


def _write_csv(path, rows):
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows([["image", "caption"], *rows])


def test_csv_pairs_load_and_resize(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png", (0, 255, 0), (20, 50))
    _write_csv(tmp_path / "train.csv", [["a.png", "a red thing"], ["b.png", "a green thing"]])
    dataset = data.load_csv_pairs(tmp_path / "train.csv", image_size=16)
    assert dataset.images.shape == (2, 3, 16, 16)
    assert dataset.captions == ["a red thing", "a green thing"]
    assert dataset.images[0, 0].float().mean() > 250 and dataset.images[1, 1].float().mean() > 250


@pytest.mark.parametrize("problem, message", [
    ("corrupt", "row 3 .*corrupt"),
    ("missing", "row 3 .*not found"),
    ("empty_caption", "row 3: empty caption"),
    ("malformed", "row 3: malformed row"),
])
def test_csv_bad_rows_raise_naming_the_row_or_are_skipped(tmp_path, problem, message):
    _png(tmp_path / "good.png")
    (tmp_path / "corrupt.png").write_bytes(b"not an image at all")
    bad_row = {"corrupt": ["corrupt.png", "x"], "missing": ["nowhere.png", "x"],
               "empty_caption": ["good.png", ""], "malformed": ["good.png", "x", "extra"]}[problem]
    _write_csv(tmp_path / "train.csv", [["good.png", "fine"], bad_row, ["good.png", "also fine"]])
    with pytest.raises(data.DataError, match=message):
        data.load_csv_pairs(tmp_path / "train.csv", image_size=8)
    report = data.LoadReport()
    dataset = data.load_csv_pairs(tmp_path / "train.csv", image_size=8, on_error="skip", report=report)
    assert len(dataset) == 2 and report.loaded == 2 and len(report.skipped) == 1
    assert "row 3" in report.skipped[0]


def _add(archive, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    archive.addfile(info, io.BytesIO(payload))


def test_webdataset_shards_as_img2dataset_writes_them(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (24, 24), (0, 0, 255)).save(buffer, format="JPEG")
    with tarfile.open(tmp_path / "00000.tar", "w") as archive:
        _add(archive, "000000000.jpg", buffer.getvalue())
        _add(archive, "000000000.txt", b"a blue square")
        _add(archive, "000000000.json", b"{}")
        _add(archive, "000000001.jpg", b"broken jpeg")
        _add(archive, "000000001.txt", b"broken")
    with pytest.raises(data.DataError, match="00000.tar, sample 000000001: corrupt"):
        data.load_webdataset(tmp_path, image_size=8)
    report = data.LoadReport()
    dataset = data.load_webdataset(tmp_path, image_size=8, on_error="skip", report=report)
    assert dataset.captions == ["a blue square"] and len(report.skipped) == 1


def test_image_folder_and_labels_csv(tmp_path):
    for cls, colour in (("n01_cat", (255, 0, 0)), ("n02_dog", (0, 255, 0))):
        (tmp_path / "val" / cls).mkdir(parents=True)
        for i in range(2):
            _png(tmp_path / "val" / cls / f"{i}.png", colour)
    folder = data.load_image_folder(tmp_path / "val", image_size=8, classnames=["cat", "dog"])
    assert folder.labels.tolist() == [0, 0, 1, 1] and folder.classnames == ["cat", "dog"]
    _png(tmp_path / "x.png")
    with open(tmp_path / "labels.csv", "w") as handle:
        handle.write("image,label\nx.png,1\nx.png,7\n")
    with pytest.raises(data.DataError, match="row 3: label 7 outside"):
        data.load_labels_csv(tmp_path / "labels.csv", ["cat", "dog"], image_size=8)


def test_subset_keeps_keys_and_fingerprint_changes(tiny_fashion):
    part = tiny_fashion.subset([3, 1, 2])
    assert part.keys == [tiny_fashion.keys[i] for i in (3, 1, 2)]
    assert part.fingerprint() != tiny_fashion.subset([1, 2, 3]).fingerprint()
