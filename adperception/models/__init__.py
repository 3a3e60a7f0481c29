"""The multi-task network: backbones with partial sharing, necks, task heads, the model.

Importing this package registers every model component in ``adperception.registry.MODELS``.
"""

from adperception.models import backbones, heads, layers, necks  # noqa: F401
from adperception.models.digits import DigitsMTLNet
from adperception.models.multitask import MultiTaskModel

__all__ = ["DigitsMTLNet", "MultiTaskModel"]
