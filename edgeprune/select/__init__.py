"""From a search's candidates to the one network a round delivers, and the budget policy."""
