"""Write a backdoored copy of webdataset shards plus its poison manifest (:func:`clipguard.shards.write_poisoned_shards`),
streaming shard by shard, so sets larger than memory (CC3M) can be poisoned. Bad shards or poisoned samples that
cannot be decoded stop with a message naming the shard and sample key.

    python data_scripts/poison_shards.py /data/cc3m/shards /data/cc3m_badnet --seed 0 --image-size 64 \\
        --spec '{"kind": "backdoor", "trigger": {"name": "badnet_random"}, "target_class": "banana", "count": 1500}'
"""

import argparse
import json
from pathlib import Path

from clipguard import attacks, data, shards


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="folder of .tar shards (or one shard)")
    parser.add_argument("out", type=Path, help="folder for the poisoned shards and manifest.csv")
    parser.add_argument("--spec", required=True, help="backdoor spec as JSON (see clipguard.attacks.BackdoorSpec)")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--image-size", type=int, default=32, help="size poisons are decoded, triggered and stored at")
    parser.add_argument("--classnames", type=Path, help="UTF-8 text file, one class name per line (target labels)")
    args = parser.parse_args(argv)
    try:
        spec = json.loads(args.spec)
        names = data.load_classnames(args.classnames) if args.classnames else None
        result = shards.write_poisoned_shards(args.source, spec, args.out, args.seed, args.image_size, names)
    except json.JSONDecodeError as error:
        print(f"error: --spec is not JSON: {error}")
        return 1
    except (data.DataError, attacks.PoisonSpecError, attacks.TriggerError) as error:
        print(f"error: {error}")
        return 1
    print(f"wrote {result.n_samples} pairs in {len(result.shards)} shard(s) to {args.out}: "
          f"{len(result.manifest)} poisons of {result.requested} asked for; manifest {result.manifest_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
