"""Small models for tests, importable so that pickled modules and factory specs resolve."""

from torch import nn


class TinyCNN(nn.Module):
    """A conv-BN-ReLU stack with a linear head: the shape of a real CNN at toy size."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.head(self.features(x))


def tiny_cnn(num_classes: int = 10) -> TinyCNN:
    """Factory used by the ``tiny_models:tiny_cnn`` spec."""
    return TinyCNN(num_classes=num_classes)


def not_a_model():
    """Factory that returns the wrong type."""
    return "hello"


class TinyResNet(nn.Module):
    """Stem, one residual block and a strided conv: coupled channels, widths above one 16-step."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.block = nn.Sequential(
            nn.Conv2d(32, 48, 3, padding=1, bias=False),
            nn.BatchNorm2d(48),
            nn.ReLU(),
            nn.Conv2d(48, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
        )
        self.down = nn.Sequential(nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = nn.functional.relu(x + self.block(x))
        return self.head(self.pool(self.down(x)).flatten(1))


def tiny_resnet(num_classes: int = 10) -> TinyResNet:
    """Factory used by the ``tiny_models:tiny_resnet`` spec (prunable on a 16-channel grid)."""
    return TinyResNet(num_classes=num_classes)


class TinyBlockNet(nn.Module):
    """Stem and two of torchvision's ResNet basic blocks without projection: two depth genes."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        from torchvision.models.resnet import BasicBlock

        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.blocks = nn.Sequential(BasicBlock(32, 32), BasicBlock(32, 32))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.head(self.pool(self.blocks(self.stem(x))).flatten(1))


def tiny_blocknet(num_classes: int = 10) -> TinyBlockNet:
    """Factory used by the ``tiny_models:tiny_blocknet`` spec (``prune --depth``)."""
    return TinyBlockNet(num_classes=num_classes)


def wide_cnn(num_classes: int = 10) -> TinyCNN:
    """A TinyCNN whose second convolution holds 4.7 MB of weights, so that pruning it changes the
    peak memory of one inference by megabytes (the memory-limit tests)."""
    return TinyCNN(num_classes=num_classes, width=256)
