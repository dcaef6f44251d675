"""How good an adapter is: the forgetting check (perplexity on general text)."""
