"""Language-labelled documents -> 64-token windows -> the activation store that feeds SAE training."""
