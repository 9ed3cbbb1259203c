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
