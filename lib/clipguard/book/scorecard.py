"""The reproduction scorecard: every headline claim of the four papers, the paper's value, ours, a status and a
link to the section that shows it (presentation only).

Each chapter states what it reproduced by storing a small *claims record* next to its runs
(:func:`record`, called at the end of the chapter with :func:`claim` rows that name the runs they rest on); the
scorecard page (``notebooks/99_scorecard``) reads every record of its profile and lists :data:`HEADLINES` in order.
A headline with no record says "not yet built" (no chapter measures it) or "not run" (its chapter exists but has
not been executed at this profile); a record whose runs are no longer in the run store says "stale". A chapter can
add a claim that is not in :data:`HEADLINES` by giving its paper, wording and paper value in :func:`claim`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import pandas as pd

from ..runs import RunStore
from ..utils import atomic_write_json
from .paper_values import ROCLIP
from .paper_values import detection as _detection
from .paper_values import threat_models as _threat

__all__ = ["STATUSES", "Headline", "HEADLINES", "claim", "record", "records", "scorecard_frame", "section_link",
           "defence_status", "NOTEBOOK_DIR"]

NOTEBOOK_DIR = Path(__file__).resolve().parents[3] / "notebooks"

#: What a chapter may say about a claim it measured.
STATUSES = ("reproduced", "partly reproduced", "not reproduced", "not measured")
#: What the scorecard itself may say when there is no (valid) record.
MISSING = ("not yet built", "not run", "stale")


@dataclass(frozen=True)
class Headline:
    key: str                  # "roclip.table2.targeted"
    paper: str                # "RoCLIP", "SafeCLIP", "CleanCLIP", "Detection", "Carlini–Terzis"
    claim: str                # the claim in words
    paper_value: str          # as printed
    chapter: str | None = None   # the notebook (under notebooks/, no suffix) that measures it; None: not built
    section: str | None = None   # the heading of the section that shows it


def _pct(value: float) -> str:
    return f"{value:g}%"


_T2, _T4, _T5, _T6, _T7 = (ROCLIP[k] for k in ("table2", "table4", "table5", "table6", "table7"))
_DEFENCE = "03_roclip/roclip_defence"
_ABLATIONS = "03_roclip/roclip_ablations"
_STRONG = "03_roclip/roclip_strong_attacks"
_FEW = "02_threat_models/how_few_poisons"
_WHERE = "02_threat_models/where_poisons_sit"
_DETECTION = "05_detection/local_outlier_detectors"

#: The headline claims, in the order the scorecard lists them. Paper values come from :mod:`.paper_values` where
#: they are stored there; the others are quoted from the project's figures-and-tables reference.
HEADLINES: tuple[Headline, ...] = (
    Headline("threat.targeted_budget", "Carlini–Terzis", "a targeted attack needs a tiny share of the data",
             f"{_threat.ATTACKS['targeted_budget']['paper']} ({_threat.ATTACKS['targeted_budget']['paper poisons']})",
             _FEW, "Paper values beside ours"),
    Headline("threat.backdoor_budget", "Carlini–Terzis", "a patch backdoor needs a tiny share of the data",
             f"{_threat.ATTACKS['backdoor_budget']['paper']} ({_threat.ATTACKS['backdoor_budget']['paper poisons']})",
             _FEW, "Paper values beside ours"),
    Headline("safeclip.supervised_gap", "SafeCLIP", "CLIP is poisoned with orders of magnitude fewer poisons than "
             "supervised learning", "about four orders of magnitude", _FEW, "Paper values beside ours"),
    Headline("roclip.table2.targeted", "RoCLIP", "RoCLIP defeats targeted poisoning (Table 2)",
             f"CLIP {_pct(_T2[('CLIP', 'targeted')])} → RoCLIP {_pct(_T2[('RoCLIP', 'targeted')])}",
             _DEFENCE, "Table 2: attack success, CLIP vs RoCLIP"),
    Headline("roclip.table2.backdoor", "RoCLIP", "RoCLIP defeats the patch backdoor (Table 2)",
             f"CLIP {_pct(_T2[('CLIP', 'backdoor')])} → RoCLIP {_pct(_T2[('RoCLIP', 'backdoor')])}",
             _DEFENCE, "Table 2: attack success, CLIP vs RoCLIP"),
    Headline("roclip.table3.utility", "RoCLIP", "RoCLIP's linear probe beats CLIP's by up to 10 points; zero-shot "
             "similar (Table 3)", "CIFAR-10 linear probe "
             f"{ROCLIP['table3'][('CLIP', 'linear probe')]['C10']:g}% → "
             f"{ROCLIP['table3'][('RoCLIP', 'linear probe')]['C10']:g}%", _DEFENCE, "Table 3: downstream accuracy"),
    Headline("roclip.figure2", "RoCLIP", "in matching epochs most clean images find a caption of their own category; "
             "poisoned images rarely find the adversarial one (Figure 2)", "clean: a majority; poisoned: few",
             _DEFENCE, "Figure 2: which captions the pool returns"),
    Headline("roclip.table4", "RoCLIP", "with K = 2, RoCLIP resists very strong targeted poisoning (Table 4)",
             f"CLIP {_pct(_T4['CLIP'][-1])} → RoCLIP {_pct(_T4['RoCLIP'][-1])} at {_T4['rates'][-1]}",
             _STRONG, "Table 4: very strong targeted poisoning"),
    Headline("roclip.table5.pool", "RoCLIP", "any pool size from 0.2% to 20% defends (Table 5)",
             "PSR and BSR " + " / ".join(_pct(v) for v in _T5["PSR"][:3]) + " for pools of 0.2% / 2% / 20%",
             _ABLATIONS, "Table 5: pool size"),
    Headline("roclip.table5.time", "RoCLIP", "RoCLIP costs little training time (Table 5)",
             f"{_T5['time (s)'][1] / _T5['time (s)'][4]:.3f}× CLIP per epoch, "
             f"{_T5['time (s)'][1] / _T5['time (s)'][3]:.3f}× CLIP with augmentation", _ABLATIONS, "Table 5: pool size"),
    Headline("roclip.table6.blended", "RoCLIP", "RoCLIP defeats the Blended backdoor (Table 6)",
             f"CLIP {_pct(_T6[('CLIP', 'Blended')][1])} → RoCLIP {_pct(_T6[('RoCLIP', 'Blended')][1])}",
             _STRONG, "Table 6: other backdoors"),
    Headline("roclip.table6.wanet", "RoCLIP", "RoCLIP defeats the WaNet backdoor (Table 6)",
             f"CLIP {_pct(_T6[('CLIP', 'WaNet')][1])} → RoCLIP {_pct(_T6[('RoCLIP', 'WaNet')][1])}",
             _STRONG, "Table 6: other backdoors"),
    Headline("roclip.table6.label_consistent", "RoCLIP", "RoCLIP defeats the label-consistent backdoor (Table 6)",
             f"CLIP {_pct(_T6[('CLIP', 'Label-consistent')][1])} → "
             f"RoCLIP {_pct(_T6[('RoCLIP', 'Label-consistent')][1])}", _STRONG, "Table 6: other backdoors"),
    Headline("roclip.table7.pool_only", "RoCLIP", "the pool alone already defends (Table 7)",
             f"PSR {_pct(_T7['PSR'][1])}, BSR {_pct(_T7['BSR'][1])}", _ABLATIONS, "Table 7: pool vs augmentation"),
    Headline("roclip.table7.aug_only", "RoCLIP", "augmentation alone cuts the backdoor but not targeted poisoning "
             "(Table 7)", f"PSR {_pct(_T7['PSR'][2])}, BSR {_pct(_T7['BSR'][2])}", _ABLATIONS,
             "Table 7: pool vs augmentation"),
    Headline("roclip.figure4", "RoCLIP", "RoCLIP still defends when the adversarial class looks like the target's "
             "own (Figure 4)", "defends (values not in the text)", _STRONG,
             "Figure 4: an adaptive attack with visually similar classes"),
    Headline("safeclip.figure4", "SafeCLIP", "after one epoch of CLIP, poisoned and clean image–caption cosines are "
             "indistinguishable (Figure 4a)", "indistinguishable", _WHERE, "Distributions per epoch"),
    Headline("safeclip.targeted", "SafeCLIP", "SafeCLIP defeats targeted poisoning", "93.75% → 0%"),
    Headline("safeclip.backdoor", "SafeCLIP", "SafeCLIP defeats backdoors", "up to 100% → 0%"),
    Headline("safeclip.utility", "SafeCLIP", "SafeCLIP keeps zero-shot and linear-probe accuracy comparable to CLIP",
             "comparable"),
    Headline("safeclip.safe_set", "SafeCLIP", "the GMM safe set is almost free of poisons (Figure 2)",
             "poison rate in the safe set as low as 3.75e-4%"),
    Headline("cleanclip.main", "CleanCLIP", "fine-tuning with unimodal self-supervision removes a backdoor while "
             "keeping clean accuracy", "Blended ASR 7.20%, clean accuracy 18.14% (λ₂ = 1)"),
    Headline("cleanclip.lambda", "CleanCLIP", "attack success falls as the self-supervision weight grows; clean "
             "accuracy barely changes (Figure 4)", "ASR 7.48% → 1.83% for λ₂ 0.5 → 8"),
    Headline("cleanclip.supervised", "CleanCLIP", "supervised fine-tuning on labelled images removes the trigger",
             "removes it"),
    Headline("detection.table1", "Detection", "k-distance, SLOF and DAO find backdoor samples (Table 1)",
             f"AUROC {_detection.TABLE1_AUROC['dao']}% (patch, RN50)", _DETECTION),
    Headline("detection.clipscore", "Detection", "CLIPScore (SafeCLIP's pair similarity) detects them worse "
             "(Table 1)", f"AUROC {_detection.TABLE1_AUROC['clip_score']}% (patch, RN50)", _DETECTION),
    Headline("detection.table2", "Detection", "removing the top-scored 10% by DAO and retraining removes the "
             "backdoor (Table 2)", f"ASR {_detection.TABLE2['asr_after']}; clean accuracy "
             f"{_detection.TABLE2['clean_accuracy']}"),
    Headline("detection.runtime", "Detection", "DAO scores CC3M quickly",
             f"{_detection.RUNTIME_CC3M_4XA100['dao']} on 4 A100 (ABL {_detection.RUNTIME_CC3M_4XA100['abl']})"),
)

_BY_KEY = {h.key: h for h in HEADLINES}


def defence_status(clip_asr: float, defended_asr: float, took: bool, collapsed: bool = False,
                   low: float = 0.15) -> str:
    """The status of a "the defence stops this attack" claim: ``not reproduced`` when the attack did not take
    against CLIP (nothing to stop) or the defence did not halve its success; ``reproduced`` when the defended
    success is at most ``low`` and the model did not collapse; ``partly reproduced`` otherwise."""
    if not took or defended_asr > 0.5 * clip_asr:
        return "not reproduced"
    if defended_asr <= low and not collapsed:
        return "reproduced"
    return "partly reproduced"


def claim(key: str, ours: str, status: str, section: str | None = None, runs: Iterable = (), note: str = "",
          paper: str | None = None, text: str | None = None, paper_value: str | None = None) -> dict:
    """One row of a chapter's claims record: ``key`` (a :data:`HEADLINES` key, or a new key with ``paper``,
    ``text`` and ``paper_value``), our value in words, a :data:`STATUSES` entry, the heading of the section that
    shows it (default: the headline's), the stored runs it rests on (run objects or ids) and a short note."""
    if status not in STATUSES:
        raise ValueError(f"claim {key!r}: status {status!r} is not one of {STATUSES}")
    headline = _BY_KEY.get(key)
    if headline is None and not (paper and text and paper_value):
        raise KeyError(f"claim {key!r} is not a headline ({sorted(_BY_KEY)}); give paper, text and paper_value "
                       "to add a new one")
    section = section or (headline.section if headline else None)
    if not section:
        raise ValueError(f"claim {key!r}: name the section (its heading) that shows it")
    return {"key": key, "ours": str(ours), "status": status, "section": section,
            "runs": [getattr(r, "id", r) for r in runs], "note": note,
            "paper": paper or headline.paper, "claim": text or headline.claim,
            "paper_value": paper_value or headline.paper_value}


def _records_dir(store: RunStore) -> Path:
    return store.dir / "claims"


def record(store: RunStore, chapter: str, claims: list[dict], notebook_dir: Path = NOTEBOOK_DIR) -> Path:
    """Store a chapter's claims (rows from :func:`claim`) for the scorecard, replacing its previous record.
    ``chapter`` is the notebook's path under ``notebooks/`` without suffix, e.g. ``"03_roclip/roclip_defence"``."""
    if not (Path(notebook_dir) / f"{chapter}.ipynb").exists():
        raise FileNotFoundError(f"record: no notebook {chapter}.ipynb under {notebook_dir}")
    keys = [c["key"] for c in claims]
    if len(set(keys)) != len(keys):
        raise ValueError(f"record: claim keys repeat in {chapter}: {keys}")
    path = _records_dir(store) / (chapter.replace("/", "__") + ".json")
    atomic_write_json(path, {"chapter": chapter, "profile": store.profile, "claims": claims})
    return path


def records(store: RunStore) -> dict[str, dict]:
    """Every stored claim of the store's profile, by key, each with its ``chapter``."""
    found = {}
    for path in sorted(_records_dir(store).glob("*.json")) if _records_dir(store).exists() else []:
        data = json.loads(path.read_text())
        for row in data["claims"]:
            if row["key"] in found:
                raise ValueError(f"claim {row['key']!r} recorded by both {found[row['key']]['chapter']} and "
                                 f"{data['chapter']}")
            found[row["key"]] = {**row, "chapter": data["chapter"]}
    return found


def section_link(chapter: str, section: str | None, text: str, from_chapter: str = "99_scorecard/scorecard") -> str:
    """An HTML link from one executed page to a section of another (Sphinx's id of the heading; no section: the
    page itself)."""
    from docutils.nodes import make_id

    depth = from_chapter.count("/")
    href = "../" * depth + f"{chapter}.html" + (f"#{make_id(section)}" if section else "")
    return f'<a href="{href}">{text}</a>'


def scorecard_frame(store: RunStore, notebook_dir: Path = NOTEBOOK_DIR) -> pd.DataFrame:
    """One row per headline (then any extra recorded claim): paper, claim, paper value, ours, status, where,
    with the status "not yet built" / "not run" / "stale" where no valid record exists."""
    stored = records(store)
    rows = []
    headlines = list(HEADLINES) + [Headline(k, r["paper"], r["claim"], r["paper_value"], r["chapter"], r["section"])
                                   for k, r in stored.items() if k not in _BY_KEY]
    for h in headlines:
        row = {"paper": h.paper, "claim": h.claim, "paper value": h.paper_value}
        found = stored.get(h.key)
        if found is not None:
            missing = [i for i in found["runs"] if not (store.dir / i / "provenance.json").exists()]
            status = "stale" if missing else found["status"]
            note = (f"{len(missing)} of its runs are no longer stored: rerun the chapter" if missing
                    else found.get("note", ""))
            row.update({"ours": found["ours"], "status": status, "note": note, "chapter": found["chapter"],
                        "section": found["section"]})
        elif h.chapter and (Path(notebook_dir) / f"{h.chapter}.ipynb").exists():
            row.update({"ours": "", "status": "not run", "chapter": h.chapter, "section": h.section,
                        "note": f"its chapter has not been executed at profile {store.profile}"})
        else:
            row.update({"ours": "", "status": "not yet built", "chapter": None, "section": None,
                        "note": "no chapter measures it yet"})
        row["chapter"], row["section"] = row["chapter"] or "", row["section"] or ""
        rows.append({"key": h.key, **row})
    return pd.DataFrame(rows)


def headline_table() -> pd.DataFrame:
    """The headline registry as a frame (for tests and the scorecard's appendix)."""
    return pd.DataFrame([asdict(h) for h in HEADLINES])
