"""The paper's TopK SAE: a registered SAELens architecture, its training and its files."""
