"""Streaming shards (clipguard.shards): exactly-once partition over ranks and workers, order under a seed, bounded
buffering, errors naming shard and key, resumable training, poisoned shards with a manifest."""

import importlib.util
import io
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from clipguard import attacks, data, shards
from clipguard.models import build_model
from clipguard.train import TrainConfig

WORDS = ["apple", "banana", "cherry"]


def _jpeg(rng, size=32):
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_shards(folder, n_shards=8, per_shard=16, size=32, broken=None):
    """Shards as img2dataset writes them (KEY.jpg, KEY.txt, KEY.json); ``broken``: key whose jpg is not an image."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for s in range(n_shards):
        with wds.TarWriter(str(folder / f"{s:05d}.tar")) as writer:
            for i in range(per_shard):
                key = f"{s:05d}{i:04d}"
                image = b"not an image" if key == broken else _jpeg(rng, size)
                writer.write({"__key__": key, "jpg": image, "txt": f"a {WORDS[(s + i) % 3]} number {s}-{i}",
                              "json": "{}"})
    return sorted(folder.glob("*.tar"))


def all_keys(n_shards=8, per_shard=16):
    return sorted(f"{s:05d}{i:04d}" for s in range(n_shards) for i in range(per_shard))


def keys_seen(stream, num_workers):
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=num_workers)
    return [key for _, _, key in loader]


@pytest.fixture(scope="module")
def eight(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("eight"))


@pytest.mark.parametrize("n_shards", [8, 7])
def test_two_ranks_two_workers_see_every_pair_exactly_once(tmp_path, n_shards):
    paths = write_shards(tmp_path, n_shards=n_shards)
    per_rank = [keys_seen(shards.ShardStream(paths, seed=3, epoch=1, rank=r, world_size=2, shuffle_buffer=8), 2)
                for r in range(2)]
    seen = per_rank[0] + per_rank[1]
    assert len(seen) == len(set(seen)) and sorted(seen) == all_keys(n_shards)
    # uneven: 7 shards over 2 ranks -> 4 and 3 shards (nothing dropped or repeated by the dataset)
    assert [len(k) for k in per_rank] == ([64, 64] if n_shards == 8 else [64, 48])


def test_order_is_a_function_of_seed_and_epoch(eight):
    def order(seed, epoch, rank=1):
        stream = shards.ShardStream(eight, seed=seed, epoch=epoch, rank=rank, world_size=2, shuffle_buffer=8)
        return keys_seen(stream, 2)

    first = order(0, 1)
    assert order(0, 1) == first
    second = order(0, 2)
    assert second != first and sorted(second + order(0, 2, rank=0)) == all_keys()  # new order, all pairs
    assert order(1, 1) != first
    stream = shards.ShardStream(eight, seed=0, epoch=1)
    assert stream.at_epoch(2).shard_order() != stream.shard_order()
    assert sorted(stream.shard_order()) == [str(p.resolve()) for p in eight]


def test_streamed_pairs_equal_the_in_memory_loader(eight):
    memory = data.load_webdataset(eight[:2], image_size=16)
    by_caption = {c: memory.images[i] for i, c in enumerate(memory.captions)}
    items = list(shards.ShardStream(eight[:2], image_size=16, shuffle_buffer=4))
    assert len(items) == 32
    for image, caption, _ in items:
        assert image.shape == (3, 16, 16) and image.dtype == torch.uint8
        assert torch.equal(image, by_caption[caption])
    assert shards.count_samples(eight[:3]) == [16, 16, 16]


@pytest.mark.parametrize("buffer", [1, 8, 20])
def test_shuffle_buffer_holds_at_most_its_size(tmp_path, buffer):
    """Two good shards (32 pairs), then one that is not a tar: when reading reaches it, the buffer holds at most
    ``buffer`` pairs, so at least 32 - buffer came out first; then a DataError names the bad shard."""
    good = write_shards(tmp_path, n_shards=2)
    bad = tmp_path / "00002.tar"
    bad.write_bytes(b"this is not a tar archive" * 40)
    received = []
    with pytest.raises(data.DataError, match=re.escape(str(bad.resolve()))):
        for _, _, key in shards.ShardStream([*good, bad], shuffle_buffer=buffer, shuffle_shards=False):
            received.append(key)
    assert 32 - buffer <= len(received) <= 32 and len(set(received)) == len(received)


def test_corrupt_member_is_reported_by_shard_and_key(tmp_path):
    paths = write_shards(tmp_path, n_shards=2, broken="000010005")
    message = re.escape(f"{paths[1].resolve()}, sample 000010005: corrupt or unreadable image")
    with pytest.raises(data.DataError, match=message):
        list(shards.ShardStream(paths))
    with pytest.raises(data.DataError, match=message):  # raised in a DataLoader worker, same type and message
        keys_seen(shards.ShardStream(paths), num_workers=1)
    with pytest.warns(UserWarning, match="sample 000010005"):
        assert len(list(shards.ShardStream(paths, on_error="skip"))) == 31


def test_bad_arguments_raise(eight, tmp_path):
    with pytest.raises(data.DataError, match="not found"):
        shards.ShardStream([eight[0], tmp_path / "missing.tar"])
    with pytest.raises(data.DataError, match="cannot feed 3 ranks"):
        shards.ShardStream(eight[:2], world_size=3)


def _train(paths, run_dir, stop_after_epoch=None, seed=0):
    config = TrainConfig(epochs=2, batch_size=16, lr=1e-3, warmup_steps=2, device="cpu", amp=False, progress=False,
                         log_every=1)
    stream = shards.ShardStream(paths, seed=seed, shuffle_buffer=8)
    return shards.train_streaming(build_model("clipguard-tiny", seed=0), stream, config, run_dir,
                                  stop_after_epoch=stop_after_epoch)


def test_resumed_streaming_run_ends_with_identical_weights(eight, tmp_path):
    paths = eight[:2]  # 32 pairs: 2 steps of 16 per epoch
    straight = _train(paths, tmp_path / "straight")
    first = _train(paths, tmp_path / "resumed", stop_after_epoch=1)
    assert len(first.epochs()) == 1 and len(straight.epochs()) == 2
    resumed = _train(paths, tmp_path / "resumed")
    assert [h["loss"] for h in resumed.steps()] == [h["loss"] for h in straight.steps()]
    assert straight.epochs()[0]["steps"] == 2
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="other data or settings"):
        _train(paths, tmp_path / "resumed", seed=1)


def _clean(paths, classnames):
    loaded = data.load_webdataset(paths, image_size=32)
    return data.ImageCaptionSet(loaded.images, loaded.captions, classnames=classnames, name="clean")


YELLOW = {"name": "badnet_yellow", "patch_fraction": 0.25, "placement": "random"}
MANIFEST_MATCH = ["poison_id", "component", "source_key", "source_image_key", "caption", "key", "trigger",
                  "trigger_params", "trigger_state", "sample_seed", "target", "target_label", "mode"]


@pytest.mark.parametrize("spec", [
    {"kind": "backdoor", "trigger": YELLOW, "target_class": "banana", "count": 6},
    {"kind": "backdoor", "trigger": YELLOW, "target_class": "banana", "rate": 0.05},  # round(0.05 * 64) = 3
    {"kind": "backdoor", "trigger": YELLOW, "target_class": "banana", "count": 5, "mode": "replace",
     "caption_source": "keep"},
    {"kind": "backdoor", "count": 11, "components": [{"trigger": YELLOW, "target_class": "banana"},
                                                     {"trigger": {"name": "badnet_htba"}, "target_class": "cherry"}]},
])
def test_poisoned_shards_carry_the_trigger_and_match_build_poisoned(eight, tmp_path, spec):
    sources = eight[:4]
    result = shards.write_poisoned_shards(sources, spec, tmp_path / "poisoned", seed=7, classnames=WORDS)
    manifest = attacks.load_manifest(result.manifest_path)
    n_poison = spec.get("count", 3)
    assert len(manifest) == n_poison and result.requested == n_poison
    assert [p.name for p in result.shards] == [p.name for p in sources]

    clean = _clean(sources, WORDS)
    images, captions, _ = zip(*shards.ShardStream(result.shards, shuffle_buffer=0, shuffle_shards=False))
    poisoned = data.ImageCaptionSet(torch.stack(images), list(captions))  # in stream order
    assert len(poisoned) == result.n_samples == 64 + (n_poison if spec.get("mode", "insert") == "insert" else 0)
    new_keys = set(poisoned.keys) - set(clean.keys)
    assert new_keys == set(manifest["key"])  # the manifest lists exactly the poisoned pairs
    assert [poisoned.keys[r] for r in manifest["row"]] == list(manifest["key"])  # rows in stream order
    if spec.get("mode") == "replace":
        assert not set(manifest["source_key"]) & set(poisoned.keys)

    # each yellow poison: an 8x8 yellow patch at its recorded place, the source image elsewhere
    source_of = dict(zip(clean.keys, clean.images))
    for row in manifest[manifest["trigger"] == "badnet_yellow"].itertuples():
        image, source = poisoned.images[row.row], source_of[row.source_key]
        y, x = (json.loads(row.trigger_state)[k] for k in ("y", "x"))
        patch = torch.zeros(32, 32, dtype=torch.bool)
        patch[y:y + 8, x:x + 8] = True
        assert torch.equal(image[:, patch], torch.tensor([255, 255, 0], dtype=torch.uint8)[:, None].expand(3, 64))
        assert torch.equal(image[:, ~patch], source[:, ~patch])
        assert row.target in poisoned.captions[row.row]

    # the same poisons as the in-memory builder on the same pairs
    reference = attacks.build_poisoned(clean, spec, seed=7).manifest
    assert manifest[MANIFEST_MATCH].to_dict("records") == reference[MANIFEST_MATCH].to_dict("records")


def test_poisoned_shards_reject_what_needs_the_whole_set(eight, tmp_path):
    with pytest.raises(attacks.PoisonSpecError, match="backdoor poisons only"):
        shards.write_poisoned_shards(eight[:1], {"kind": "targeted"}, tmp_path, seed=0)
    with pytest.raises(attacks.PoisonSpecError, match="caption_source"):
        shards.write_poisoned_shards(eight[:1], {"kind": "backdoor", "trigger": YELLOW, "target_class": "banana",
                                                 "count": 1, "caption_source": "dataset"}, tmp_path, seed=0)
    with pytest.raises(attacks.PoisonSpecError, match="distinct_captions"):
        shards.write_poisoned_shards(eight[:1], {"kind": "backdoor", "trigger": YELLOW, "target_class": "banana",
                                                 "count": 1, "distinct_captions": 1}, tmp_path, seed=0)
    with pytest.raises(data.DataError, match="overwrite its source"):
        shards.write_poisoned_shards(eight[:1], {"kind": "backdoor", "trigger": YELLOW, "target_class": "banana",
                                                 "count": 1}, eight[0].parent, seed=0)


def _script(name):
    path = Path(__file__).resolve().parents[1] / "data_scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scripts_export_shards_with_the_same_keys_and_poison_them(tmp_path, capsys):
    assert _script("export_shards").main(["--dataset", "shapes", "--n", "40", "--per-shard", "16",
                                          "--out", str(tmp_path / "shards")]) == 0
    streamed = list(shards.ShardStream(tmp_path / "shards", shuffle_buffer=0, shuffle_shards=False))
    assert shards.count_samples(tmp_path / "shards") == [16, 16, 8]
    keys = [data.content_key(image, caption) for image, caption, _ in streamed]
    assert keys == data.shapes(n=40, seed=0).keys  # PNG shards keep every pixel

    (tmp_path / "names.txt").write_text("circle\nsquare\n")
    spec = json.dumps({"kind": "backdoor", "trigger": {"name": "badnet_yellow"}, "target_class": "square", "count": 3})
    poison = _script("poison_shards")
    assert poison.main([str(tmp_path / "shards"), str(tmp_path / "poisoned"), "--seed", "0", "--spec", spec,
                        "--classnames", str(tmp_path / "names.txt")]) == 0
    manifest = attacks.load_manifest(tmp_path / "poisoned" / "manifest.csv")
    assert len(manifest) == 3 and set(manifest["target_label"]) == {1}
    assert poison.main([str(tmp_path / "shards"), str(tmp_path / "other"), "--seed", "0", "--spec",
                        '{"kind": "targeted"}']) == 1
    assert "backdoor poisons only" in capsys.readouterr().out


DDP_SCRIPT = """
import datetime, json, sys
import torch, torch.distributed as dist
from clipguard import shards
from clipguard.models import build_model
from clipguard.train import TrainConfig

folder, out = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))  # a rank out of step fails
rank = dist.get_rank()
stream = shards.ShardStream(folder, seed=0, rank=rank, world_size=2, shuffle_buffer=8)
config = TrainConfig(epochs=2, batch_size=16, lr=1e-3, warmup_steps=1, device="cpu", amp=False, progress=False)
result = shards.train_streaming(build_model("clipguard-tiny", seed=0), stream, config, out + "/run")
torch.save(result.model.state_dict(), f"{out}/rank{rank}.pt")
json.dump(result.epochs(), open(f"{out}/rank{rank}.json", "w"))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_ddp_ranks_with_uneven_shards_stay_in_step(tmp_path):
    """3 shards over 2 gloo ranks: 32 and 16 pairs, 8 per rank per step. Epochs end when rank 1 runs out (2 steps);
    without that rule rank 0 would wait forever in the all-gather of a third step."""
    write_shards(tmp_path / "shards", n_shards=3)
    (tmp_path / "ddp.py").write_text(DDP_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
               str(tmp_path / "ddp.py"), str(tmp_path / "shards"), str(tmp_path)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True,
                               env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    try:
        _, stderr = process.communicate(timeout=400)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # torchrun and its workers
            process.wait()
    assert process.returncode == 0, stderr[-3000:]
    epochs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [e["steps"] for e in epochs[0]] == [e["steps"] for e in epochs[1]] == [2, 2]
    weights = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name
    assert (tmp_path / "run" / "checkpoint.pt").exists()
