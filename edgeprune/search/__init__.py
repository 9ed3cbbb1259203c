"""Search over channel plans: genome encodings and the genetic algorithm."""
