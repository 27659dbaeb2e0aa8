"""schedd: a batch scheduler for ML teams on a fixed pool of GPU virtual nodes."""
