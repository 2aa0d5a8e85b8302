"""Per-layer drift's pieces; ``vivit_deploy.accuracy.layers`` runs them and is where callers import them from."""
