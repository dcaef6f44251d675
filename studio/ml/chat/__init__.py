"""Chat in torch: one base with adapters attached, generation, streaming, greedy smoke answers."""
