"""What each verb does, step by step: prune (with rounds and its checkpoint), export, gate, ensemble, demo."""
