"""What a model is pruned for: task kinds, data, models, training, and the shipped factories."""
