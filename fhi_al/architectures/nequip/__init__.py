"""NequIP-style E(3)-equivariant network on e3nn (model: NequIP); hypers.py imports neither torch nor e3nn."""
