"""Lets vLLM's CPU build load vision models on a machine without torchvision (test runs only).

vLLM imports `_num_image_tokens` from transformers' torchvision-only pixtral image processor for
every vision model (model_executor/models/vision.py -> pixtral.py), so with no torchvision no
vision model loads, although the model's own processor runs on Pillow. PyPI has only CUDA builds
of torchvision (they fail to load next to the CPU torch; the Makefile removes them), so here the
torchvision module name is served by transformers' own Pillow twin of it, which defines the same
function. Nothing else changes; with torchvision installed this does nothing.

Loaded as `sitecustomize` by putting this folder on PYTHONPATH: vLLM inspects model classes in a
subprocess, which must see the same modules.
"""

import importlib.abc
import importlib.util
import sys

_TARGET = "transformers.models.pixtral.image_processing_pixtral"
_TWIN = "transformers.models.pixtral.image_processing_pil_pixtral"


class _PillowTwin(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != _TARGET or importlib.util.find_spec("torchvision") is not None:
            return None
        twin = importlib.util.find_spec(_TWIN)
        return importlib.util.spec_from_file_location(name, twin.origin)


sys.meta_path.insert(0, _PillowTwin())
