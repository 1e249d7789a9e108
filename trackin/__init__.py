"""trackin: a streaming online-tracking service, one small PyTorch model per stream.

The import root of the ``trackin`` distribution. Its subpackages are the repository's top-level folders
(``models/`` -> ``trackin.models``, ``service/`` -> ``trackin.service``, ``replay/`` -> ``trackin.replay``),
linked here so that the source keeps the design card's layout while nothing generic is installed
(docs/architecture.md).
"""

__version__ = "0.2.0"
