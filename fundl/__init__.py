"""fundl: functional deep learning on JAX."""
