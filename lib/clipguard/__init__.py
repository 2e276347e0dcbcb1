"""clipguard: poisoning CLIP and defending it, at a scale that runs on a laptop."""

import warnings

__version__ = "0.1.0"

# open_clip imports huggingface_hub, which imports tqdm.auto; in a notebook without ipywidgets that prints a warning
# into every chapter. Our own progress bars use plain tqdm.
warnings.filterwarnings("ignore", message="IProgress not found")
