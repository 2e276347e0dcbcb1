"""Offline WordNet: lexnames, the rebuilt index.sense, the set-up script, and the error when it is missing."""

import importlib.util
from pathlib import Path

import pytest

from clipguard import augment as A
from clipguard.augment import wordnet as wordnet_module

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wordnet():
    return A.load_wordnet()


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
    monkeypatch.setattr(wordnet_module, "find_wordnet", lambda: None)
    monkeypatch.setattr(wordnet_module, "WORDNET_SOURCE", tmp_path / "absent")
    with pytest.raises(A.WordNetUnavailable, match="apt-get install wordnet-base"):
        A.load_wordnet()
    with pytest.raises(A.WordNetUnavailable, match="setup_wordnet.py"):
        A.install_wordnet(tmp_path / "dest", source=tmp_path / "absent")
