"""Memory modes (conf/memory/): where each component's weights live while a run goes on, and how the VAE
decodes. Everything acts through runner.hooks (named, removable hooks on the components' entry methods) and the
engine's `move_module`; `modes.py` holds the four strategies, `offload.py` the moving hooks, `vae.py` the
sliced and tiled decoding."""
