"""External-format loaders of clipguard.data: text encoding of CSV files."""

import pytest
from PIL import Image

from clipguard import data


def _png(path):
    Image.new("RGB", (12, 12), (255, 0, 0)).save(path)


@pytest.mark.parametrize("loader", ["pairs", "labels"])
def test_csv_that_is_not_utf8_raises_data_error_naming_file_and_line(tmp_path, loader):
    _png(tmp_path / "a.png")
    pairs = loader == "pairs"
    header, good = (b"image,caption\n", b"a.png,a red square\n") if pairs else (b"image,label\n", b"a.png,0\n")
    bad = b"a.png,caf\xe9 au lait\n" if pairs else b"a.png,\xff\n"  # Latin-1 / stray byte
    (tmp_path / "train.csv").write_bytes(header + good + bad + good)
    with pytest.raises(data.DataError, match=r"train\.csv, line 3: not UTF-8 text \(byte 0x(e9|ff)"):
        if pairs:
            data.load_csv_pairs(tmp_path / "train.csv", image_size=8, on_error="skip")
        else:
            data.load_labels_csv(tmp_path / "train.csv", ["red"], image_size=8, on_error="skip")


def test_csv_with_utf8_bom_and_non_ascii_caption_loads(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "train.csv").write_bytes("\ufeffimage,caption\na.png,café au lait\n".encode("utf-8"))
    dataset = data.load_csv_pairs(tmp_path / "train.csv", image_size=8)
    assert dataset.captions == ["café au lait"]


def test_classnames_file(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("cat\n\n  dog  \n", encoding="utf-8")
    assert data.load_classnames(path) == ["cat", "dog"]
    path.write_bytes(b"cat\nd\xf6g\n")
    with pytest.raises(data.DataError, match=r"names\.txt, line 2: not UTF-8"):
        data.load_classnames(path)
    path.write_text("cat\ndog\ncat\n")
    with pytest.raises(data.DataError, match=r"\['cat'\] appear more than once"):
        data.load_classnames(path)
    with pytest.raises(data.DataError, match="not found"):
        data.load_classnames(tmp_path / "missing.txt")
