"""Training package: data readers, fit, evaluate, export (reproduces the CNN-LSTM ICH paper)."""
