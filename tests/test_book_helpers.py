"""The presentation tier's guards: one poison rate, attacks that did not take, collapsed defences, robust timings,
formatted tables and the scorecard's records (clipguard.book.checks / timing / formatting / scorecard)."""

import json
import math
from types import SimpleNamespace

import pandas as pd
import pytest

from clipguard.book import checks, formatting, scorecard, timing
from clipguard.runs import RunStore


def fake_run(run_id, epoch_seconds=(), metrics=None, config=None):
    history = [{"kind": "step", "step": 1}] + [{"kind": "epoch", "epoch": i + 1, "seconds": s}
                                                for i, s in enumerate(epoch_seconds)]
    return SimpleNamespace(id=run_id, history=history, metrics=metrics or {}, config=config or {})


# --- poison rate -----------------------------------------------------------------------------------------------

def test_poison_rate_is_poisons_over_the_set_the_model_sees():
    assert checks.poison_rate(200, 10_000) == pytest.approx(200 / 10_200)
    assert checks.format_rate(checks.poison_rate(200, 10_000)) == "1.96%"
    assert checks.format_rate(checks.poison_rate(256, 10_000)) == "2.50%"
    assert checks.poison_rate(0, 5) == 0.0


def test_poison_rate_matches_the_library_poisoned_set(tiny_fashion):
    from clipguard import attacks

    spec = {"kind": "backdoor", "trigger": {"name": "badnet_htba"}, "target_class": "bag", "count": 10}
    poisoned = attacks.build_poisoned(tiny_fashion, spec, seed=0)
    assert checks.poison_rate(poisoned.n_poison, len(tiny_fashion)) == pytest.approx(poisoned.poison_rate)


def test_run_poison_rate_and_bad_input():
    run = fake_run("r", metrics={"poison_count": 256, "n_train": 10_256})
    assert checks.run_poison_rate(run) == pytest.approx(256 / 10_256)
    assert checks.run_poison_rate(fake_run("clean", metrics={"n_train": 100})) == 0.0
    with pytest.raises(ValueError, match="r2"):
        checks.run_poison_rate(fake_run("r2", metrics={"poison_count": 3}))
    with pytest.raises(ValueError, match="non-negative"):
        checks.poison_rate(-1, 10)
    with pytest.raises(ValueError, match="fraction"):
        checks.format_rate(1.5)


# --- attacks that did not take ---------------------------------------------------------------------------------

def test_attack_took_threshold_and_runs():
    assert checks.attack_took(0.25) and not checks.attack_took(0.249)
    assert checks.attack_took(0.1, threshold=0.05)
    run = fake_run("b", metrics={"backdoor_asr": 0.008}, config={"poison": {"kind": "backdoor"}})
    assert not checks.attack_took(run)
    with pytest.raises(ValueError, match="no attack success"):
        checks.attack_took(fake_run("c", config={}))


def test_mark_untaken_marks_every_row_of_an_attack_that_did_not_take():
    frame = pd.DataFrame({"method": ["CLIP", "RoCLIP", "CLIP", "RoCLIP", "CLIP"],
                          "attack": ["WaNet", "WaNet", "Blended", "Blended", "Blended"],
                          "asr": [0.008, 0.0, 0.30, 0.01, 0.40]})
    marked = checks.mark_untaken(frame)
    assert marked["attack took"].tolist() == [False, False, True, True, True]
    assert marked.loc[1, "verdict"].startswith("attack did not take against CLIP (0.8%")
    assert marked.loc[3, "verdict"] == ""
    assert "attack took" not in frame.columns  # the input is left alone


def test_mark_untaken_needs_the_undefended_row():
    frame = pd.DataFrame({"method": ["RoCLIP"], "attack": ["WaNet"], "asr": [0.0]})
    with pytest.raises(ValueError, match="WaNet"):
        checks.mark_untaken(frame)
    with pytest.raises(KeyError, match="success"):
        checks.mark_untaken(frame, asr="success")


# --- collapsed defences and generated words ---------------------------------------------------------------------

def test_collapse_note_only_when_accuracy_falls_beyond_the_limit():
    clip = {"zero-shot": 0.818, "linear probe": 0.81}
    assert checks.collapse_note({"zero-shot": 0.78, "linear probe": 0.80}, clip) == ""
    note = checks.collapse_note({"zero-shot": 0.246, "linear probe": 0.40}, clip, who="RoCLIP with K = 2")
    assert "RoCLIP with K = 2's zero-shot 24.6% and linear probe 40.0% against CLIP's 81.8% and 81.0%" in note
    assert "collapsed" in note
    costly = checks.collapse_note({"zero-shot": 0.613, "linear probe": 0.681}, clip)
    assert "pays up to 20 points" in costly and "collapsed" not in costly
    with pytest.raises(KeyError):
        checks.collapse_note({"zero-shot": 0.5}, clip)


@pytest.mark.parametrize("auroc, words", [(0.5, "indistinguishable"), (0.91, "largely separated"),
                                          (0.87, "overlapping heavily"), (0.995, "almost completely"),
                                          (0.2, "reversed")])
def test_describe_auroc(auroc, words):
    assert words in checks.describe_auroc(auroc)


def test_compare_and_count_words():
    assert checks.compare(0.37, 0.10) == "above"
    assert checks.compare(0.05, 0.10) == "below"
    assert checks.compare(0.101, 0.10, tolerance=0.01) == "about equal to"
    assert checks.count_words(0, 16) == "none of the 16 targets"
    assert checks.count_words(3, 16) == "3 of the 16 targets"
    assert checks.count_words(16, 16) == "all 16 targets"
    with pytest.raises(ValueError):
        checks.count_words(17, 16)


# --- robust timing ----------------------------------------------------------------------------------------------

def test_epoch_timing_drops_a_run_timed_under_load():
    fast = [fake_run(f"f{i}", [27.0, 26.0, 28.0], {"n_train": 10_000}) for i in range(2)]
    slow = fake_run("slow", [73.6, 74.0, 70.0], {"n_train": 10_000})
    t = timing.epoch_timing(fast + [slow])
    assert t.seconds == pytest.approx(27.0)
    assert t.loaded == ("slow",)
    assert t.pairs_per_second == pytest.approx(10_000 / 27.0)
    assert t.runs == 3 and t.epochs == 9
    assert "1 run timed under load" in t.note and "2.7× slower" in t.note
    assert t.reliable
    assert not timing.epoch_timing([fast[0], slow]).reliable  # one run left: nothing to compare it with


def test_epoch_timing_median_is_robust_to_one_slow_epoch_and_skip_first():
    run = fake_run("a", [40.0, 10.0, 11.0, 12.0, 90.0], {"n_train": 100})
    assert timing.epoch_timing([run]).seconds == pytest.approx(12.0)
    assert timing.epoch_timing([run], skip_first=True).seconds == pytest.approx(11.5)
    assert "single run" in timing.epoch_timing([run]).note
    with pytest.raises(ValueError, match="no timed epochs"):
        timing.epoch_timing([fake_run("empty")])
    with pytest.raises(ValueError):
        timing.epoch_timing([])


def test_benchmark_ratios_read_the_stored_output(tmp_path):
    (tmp_path / "bench_x.txt").write_text(
        "# Measured on an idle machine\n5000 pairs, batch 128\n"
        "  CLIP                          1.36 s/epoch     3666 pairs/s   1.00x CLIP\n"
        "  CLIP + augmentation           1.92 s/epoch     2607 pairs/s   1.41x CLIP\n"
        "  RoCLIP averaged over K=3 epochs: 1.46x CLIP, 1.04x CLIP with the same augmentation (paper ...)\n"
        "  RoCLIP averaged over K=3 epochs, EDA ahead: 1.05x CLIP (target <= 1.06x), 1.01x CLIP with the same "
        "augmentation\n## a second, noisier run\n"
        "  CLIP + augmentation           0.92 s/epoch     2607 pairs/s   0.70x CLIP\n")
    ratios = timing.benchmark_ratios("bench_x", tmp_path)
    assert ratios["CLIP + augmentation"] == 1.41
    assert ratios["RoCLIP averaged over K=3 epochs"] == 1.46
    assert ratios["RoCLIP averaged over K=3 epochs over CLIP with the same augmentation"] == 1.04
    assert ratios["RoCLIP averaged over K=3 epochs, EDA ahead"] == 1.05
    assert ratios["RoCLIP averaged over K=3 epochs, EDA ahead over CLIP with the same augmentation"] == 1.01
    assert ratios["measured"].startswith("Measured on an idle machine")
    with pytest.raises(FileNotFoundError, match="bench_missing"):
        timing.benchmark_ratios("bench_missing", tmp_path)


def test_the_stored_roclip_benchmark_parses():
    ratios = timing.benchmark_ratios("bench_roclip")
    assert ratios["CLIP"] == 1.0 and ratios["RoCLIP averaged over K=3 epochs, EDA ahead"] > 1.0
    assert ratios["CLIP + augmentation, EDA ahead"] > 1.0


# --- formatted tables -------------------------------------------------------------------------------------------

def test_show_formats_percent_seconds_counts_and_missing_cells():
    frame = pd.DataFrame({"what": ["a", "b"], "asr": [0.05501181, math.nan], "s": [5.501181, None],
                          "n": [10200.0, 3.0]})
    html = formatting.show(frame, percent_columns=["asr"], seconds_columns=["s"], count_columns=["n"]).to_html()
    for text in ("5.5%", "5.5 s", "10,200", formatting.NA):
        assert text in html
    assert "5.501181" not in html and "nan" not in html.lower().replace("nan-", "")
    with pytest.raises(KeyError, match="nope"):
        formatting.show(frame, percent_columns=["nope"])


# --- scorecard --------------------------------------------------------------------------------------------------

def test_scorecard_rows_from_records(tmp_path):
    store = RunStore("smoke", root=tmp_path)
    (store.dir / "run1").mkdir(parents=True)
    (store.dir / "run1" / "provenance.json").write_text("{}")
    notebooks = tmp_path / "notebooks"
    (notebooks / "03_roclip").mkdir(parents=True)
    (notebooks / "03_roclip" / "roclip_defence.ipynb").write_text("{}")
    rows = [scorecard.claim("roclip.table2.targeted", "85% → 4%", "reproduced", runs=["run1"]),
            scorecard.claim("roclip.table2.backdoor", "99% → 1%", "reproduced", runs=["gone"]),
            scorecard.claim("roclip.extra", "x", "not measured", section="Figure 3: examples", paper="RoCLIP",
                            text="an extra claim", paper_value="y")]
    path = scorecard.record(store, "03_roclip/roclip_defence", rows, notebook_dir=notebooks)
    assert json.loads(path.read_text())["chapter"] == "03_roclip/roclip_defence"
    frame = scorecard.scorecard_frame(store, notebook_dir=notebooks).set_index("key")
    assert frame.loc["roclip.table2.targeted", "status"] == "reproduced"
    assert frame.loc["roclip.table2.backdoor", "status"] == "stale"
    assert frame.loc["roclip.table3.utility", "status"] == "not run"          # its chapter exists, no record
    assert frame.loc["safeclip.targeted", "status"] == "not yet built"
    assert frame.loc["threat.targeted_budget", "status"] == "not yet built"   # no such notebook in tmp
    assert frame.loc["roclip.extra", "claim"] == "an extra claim"
    assert len(frame) == len(scorecard.HEADLINES) + 1


def test_claim_and_record_refuse_bad_input(tmp_path):
    with pytest.raises(ValueError, match="status"):
        scorecard.claim("roclip.table2.targeted", "x", "great")
    with pytest.raises(KeyError, match="no.such"):
        scorecard.claim("no.such", "x", "reproduced", section="s")
    store = RunStore("smoke", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="missing"):
        scorecard.record(store, "missing/chapter", [], notebook_dir=tmp_path)


def test_defence_status_and_section_links():
    assert scorecard.defence_status(0.85, 0.04, took=True) == "reproduced"
    assert scorecard.defence_status(0.85, 0.04, took=True, collapsed=True) == "partly reproduced"
    assert scorecard.defence_status(0.85, 0.30, took=True) == "partly reproduced"
    assert scorecard.defence_status(0.85, 0.60, took=True) == "not reproduced"
    assert scorecard.defence_status(0.008, 0.0, took=False) == "not reproduced"
    link = scorecard.section_link("03_roclip/roclip_defence", "Table 2: attack success, CLIP vs RoCLIP", "T2")
    assert link == '<a href="../03_roclip/roclip_defence.html#table-2-attack-success-clip-vs-roclip">T2</a>'


def test_headlines_name_existing_chapters_and_unique_keys():
    keys = [h.key for h in scorecard.HEADLINES]
    assert len(keys) == len(set(keys))
    for h in scorecard.HEADLINES:
        if h.chapter:
            assert (scorecard.NOTEBOOK_DIR / f"{h.chapter}.ipynb").exists(), h.chapter


def test_headline_sections_are_headings_of_their_chapters():
    """A scorecard link names a heading; renaming the heading must fail here, not silently break the link."""
    for h in scorecard.HEADLINES:
        if not (h.chapter and h.section):
            continue
        nb = json.loads((scorecard.NOTEBOOK_DIR / f"{h.chapter}.ipynb").read_text())
        headings = {line.lstrip("#").strip() for cell in nb["cells"] if cell["cell_type"] == "markdown"
                    for line in "".join(cell["source"]).splitlines() if line.startswith("#")}
        assert h.section in headings, (h.key, h.section)


def test_rerun_cell_names_profile_and_page():
    text = formatting.rerun("cpu", "roclip_defence").data
    assert "--profile cpu --only roclip_defence" in text and "notebooks build" in text
    assert not text.lstrip().startswith("---")  # a transition inside an output breaks the Sphinx build
