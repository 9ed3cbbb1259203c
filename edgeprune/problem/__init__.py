"""What a candidate scores: objectives, the latency door and its screen, robustness, Ray workers."""
