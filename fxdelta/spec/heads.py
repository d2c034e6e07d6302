"""Task heads: the new layers a ``*For<Task>`` model puts on its backbone, trained with the deltas.

``from_pretrained`` of a sequence/token classification, question answering or image classification
model initialises these freshly; a delta that is trained while they stay frozen (at random weights)
learns against noise, and a checkpoint without them loses the task. Language-model heads are not
task heads: they are pre-trained (usually tied to the input embeddings).
"""

from __future__ import annotations

from torch import nn

# The attribute names transformers gives task heads (``score`` for decoder-only classifiers).
HEAD_NAMES = ("classifier", "score", "qa_outputs", "classification_head", "pre_classifier")
_TASKS = (
    "ForSequenceClassification",
    "ForTokenClassification",
    "ForQuestionAnswering",
    "ForMultipleChoice",
    "ForImageClassification",
    "ForAudioClassification",
)


def task_heads(backbone: nn.Module) -> list[str]:
    """Paths of the task heads of ``backbone``, or of the ``*For<Task>`` models it wraps."""
    found = []
    for path, module in backbone.named_modules():
        if type(module).__name__.endswith(_TASKS) and hasattr(getattr(module, "config", None), "model_type"):
            prefix = f"{path}." if path else ""
            found += [
                prefix + name
                for name, child in module.named_children()
                if name in HEAD_NAMES and any(True for _ in child.parameters())
            ]
    return found
