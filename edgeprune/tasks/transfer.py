"""Transfer learning as EvoPruneDeepTL does it: a backbone trained on a source task, frozen, and a
fully-connected head trained on the target task; then the GA prunes the head's neurons (``prune
--mode head``) or the backbone features the head reads (``--mode features``).

:func:`transfer_net` is a small CNN with a two-layer head on pooled features, :func:`transfer_vgg`
one with a VGG-style head on the flattened feature map (where the head is most of the latency),
for the offline pair this project uses:
Fashion-MNIST classes 0-4 (T-shirt, trouser, pullover, dress, coat) as the source and 5-9
(sandal, shirt, sneaker, bag, ankle boot) as the target, ``--data fashion-mnist@0-4`` and
``@5-9``: one data set, no download, and two tasks that share low-level features (edges, cloth
texture) but no class. :func:`freeze_backbone` is what ``edgeprune train --freeze-backbone`` does.
"""

from __future__ import annotations

from torch import nn


def _block(c_in: int, c_out: int, pool: bool) -> list[nn.Module]:
    """Conv 3x3 - BN - ReLU, then a 2x2 max-pool when ``pool``: the backbones' building block."""
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(), *([nn.MaxPool2d(2)] if pool else [])]


def transfer_net(num_classes: int = 5, hidden: int = 256, in_channels: int = 1) -> nn.Module:
    """Backbone (three conv blocks, global average pooling) → head (Linear 128→hidden, ReLU,
    Linear hidden→classes). ``prune --mode head`` searches the ``hidden`` neurons; ``--mode
    features`` the 128 features, which removes the last conv block's channels with them."""
    return nn.Sequential(
        *_block(in_channels, 32, False), *_block(32, 64, True), *_block(64, 128, True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(128, hidden), nn.ReLU(), nn.Linear(hidden, num_classes),
    )


def transfer_vgg(num_classes: int = 5, hidden: int = 1024, in_channels: int = 1) -> nn.Module:
    """A VGG-style head: the last feature map (64 channels at 7x7 from 28x28) is flattened, not
    pooled, into ``Linear(3136, hidden)``, ReLU, ``Linear(hidden, classes)``. As in VGG and
    AlexNet the head then holds most of the weights and, at batch 1 on a CPU where reading them
    is the cost, most of the latency: the model ``prune --mode head`` is for. ``--mode features``
    searches the 64 channels (49 features each)."""
    return nn.Sequential(
        *_block(in_channels, 32, True), *_block(32, 64, True), *_block(64, 64, False),
        nn.Flatten(), nn.Linear(64 * 7 * 7, hidden), nn.ReLU(), nn.Linear(hidden, num_classes),
    )


def head_layers(model: nn.Module) -> list[nn.Linear]:
    """The fully-connected layers after the last convolution: the head a transfer keeps training."""
    modules = list(model.modules())
    last_conv = max((i for i, m in enumerate(modules) if isinstance(m, nn.Conv2d)), default=-1)
    return [m for m in modules[last_conv + 1 :] if isinstance(m, nn.Linear)]


def freeze_backbone(model: nn.Module) -> list[nn.Linear]:
    """A new head on a frozen backbone: every parameter outside :func:`head_layers` stops
    learning (BatchNorm statistics included: frozen layers keep their running statistics in
    training), and the head is initialised afresh. Returns the head."""
    head = head_layers(model)
    if not head:
        raise ValueError("the model has no fully-connected layer after its last convolution to train as a head")
    trainable = {id(p) for layer in head for p in layer.parameters()}
    for p in model.parameters():
        p.requires_grad = id(p) in trainable
    for layer in head:
        layer.reset_parameters()
    return head
