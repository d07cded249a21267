"""Parameter roles: which trainable parameters of a stage's model are normalization parameters,
biases, the supervised classifier's weights, or ordinary weights (:class:`ParamRole`).

Core computes the roles because only the stage knows which module is the classifier; optimizer
plugins receive them (``build(options, *, model, roles)``) and decide what each role gets. SimCLR's
official optimizer makes the same distinctions by variable name (``batch_normalization``, ``bias``,
``head_supervised``); here they come from the module tree and the tensor shapes.
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from contrastive.interfaces import ParameterRoles, ParamRole, RoledParameter

#: Module types whose own parameters have the NORMALIZATION role (BatchNorm*, SyncBatchNorm and
#: InstanceNorm* derive from ``_NormBase``).
NORM_TYPES: tuple[type[nn.Module], ...] = (_NormBase, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm)


def parameter_roles(model: nn.Module, *, classifier: nn.Module | None = None) -> ParameterRoles:
    """The trainable parameters of ``model`` with their roles.

    Args:
        model: The module an optimizer will train; shared parameters are listed once.
        classifier: The supervised classifier inside ``model`` (fine-tuning, distillation), or
            None (pretraining).

    Returns:
        Every parameter with ``requires_grad``, in ``model.named_parameters()`` order.
    """
    normalization = {
        id(param)
        for module in model.modules()
        if isinstance(module, NORM_TYPES)
        for param in module.parameters(False)
    }
    in_classifier = {id(param) for param in classifier.parameters()} if classifier is not None else set()
    entries = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if id(param) in normalization:
            role = ParamRole.NORMALIZATION
        elif param.ndim <= 1:
            role = ParamRole.BIAS
        elif id(param) in in_classifier:
            role = ParamRole.CLASSIFIER
        else:
            role = ParamRole.WEIGHT
        entries.append(RoledParameter(name, param, role))
    return ParameterRoles(entries)
