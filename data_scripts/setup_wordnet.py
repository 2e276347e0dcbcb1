"""Make Debian's WordNet 3.0 (package ``wordnet-base``, files in /usr/share/wordnet) readable by NLTK, offline.

NLTK's reader needs a folder ``<nltk_data>/corpora/wordnet`` holding the database files and a ``lexnames`` file
(the 45 lexicographer files, which the Debian package documents in lexnames(5WN) but does not ship). This script
copies the database into such a folder and writes ``lexnames``; running it again changes nothing.

Destination: ``--dest DIR`` (an NLTK data folder), else the first entry of ``$NLTK_DATA``, else ``<repo>/.nltk_data``
(git-ignored). ``clipguard.augment.load_wordnet()`` searches the same places (and NLTK's default paths).

    apt-get install wordnet-base        # on a fresh Debian/Ubuntu machine
    python data_scripts/setup_wordnet.py [--dest DIR] [--source /usr/share/wordnet] [--quiet]
"""

import argparse
import sys
from pathlib import Path

try:
    from clipguard import augment
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
    from clipguard import augment


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", help="NLTK data folder (default: $NLTK_DATA, else <repo>/.nltk_data)")
    parser.add_argument("--source", default=str(augment.WORDNET_SOURCE), help="WordNet 3.0 database folder")
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")
    args = parser.parse_args(argv)
    try:
        folder, written = augment.install_wordnet(args.dest, args.source)
        wordnet = augment.load_wordnet(folder)
        synsets = wordnet.synsets("shirt")
        if not synsets:
            raise augment.WordNetUnavailable(f"{folder}: the corpus loads but has no synset for 'shirt'")
    except augment.WordNetUnavailable as error:
        print(f"setup_wordnet: {error}", file=sys.stderr)
        return 1
    if not args.quiet:
        state = f"wrote {', '.join(written)}" if written else "already up to date"
        print(f"WordNet 3.0 for NLTK at {folder} ({state}); synsets('shirt') = {[s.name() for s in synsets]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
