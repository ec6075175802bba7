"""Operating-system helpers every layer may use: files, local network, our own processes."""
