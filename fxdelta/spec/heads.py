"""Task heads: the new layers a ``*For<Task>`` model puts on its backbone, trained with the deltas.

``from_pretrained`` of a sequence/token classification, question answering or image classification
model initialises these freshly; a delta that is trained while they stay frozen (at random weights)
learns against noise, and a checkpoint without them loses the task. Language-model heads are not
task heads: they are pre-trained (usually tied to the input embeddings).
"""

from __future__ import annotations

from typing import NamedTuple

from torch import nn

# The attribute names transformers gives task heads (``score`` for decoder-only classifiers).
HEAD_NAMES = ("classifier", "score", "qa_outputs", "classification_head", "pre_classifier")


class ModelKind(NamedTuple):
    """A kind of transformers model class, told by how its name ends."""

    suffix: str
    peft_task: str | None  # PEFT's task type for it (None: PEFT has no task class for it)
    new_head: bool  # whether it puts a new task head (fresh weights, trained with the deltas) on its backbone


# The one list of the *For<Task> (and LM) classes fxdelta knows; the first suffix a class name ends with wins.
MODEL_KINDS = (
    ModelKind("ForSequenceClassification", "SEQ_CLS", True),
    ModelKind("ForTokenClassification", "TOKEN_CLS", True),
    ModelKind("ForQuestionAnswering", "QUESTION_ANS", True),
    ModelKind("ForMultipleChoice", None, True),
    ModelKind("ForImageClassification", None, True),
    ModelKind("ForAudioClassification", None, True),
    ModelKind("ForCausalLM", "CAUSAL_LM", False),  # language-model heads are pre-trained, not task heads
    ModelKind("LMHeadModel", "CAUSAL_LM", False),
)
_TASKS = tuple(k.suffix for k in MODEL_KINDS if k.new_head)


def kind_of(model: nn.Module) -> ModelKind | None:
    """The kind of ``model``'s class, or None for a class of no kind listed (a bare backbone)."""
    name = type(model).__name__
    return next((k for k in MODEL_KINDS if name.endswith(k.suffix)), None)


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
