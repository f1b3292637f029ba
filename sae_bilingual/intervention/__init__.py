"""Injecting final-model SAE features into a mid-training model (paper Tables 1 and 4)."""
