"""clipguard: poisoning CLIP and defending it, at a scale that runs on a laptop."""

__version__ = "0.1.0"
