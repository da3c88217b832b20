"""The network: the grayscale CNN (`model`), built from a `Config` and loaded from `.keras`."""
