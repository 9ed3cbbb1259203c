"""The network's side of a choice: which channels can go together, the shrunk network, plans."""
