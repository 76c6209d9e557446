"""Deploy tooling run from a checkout on the Docker host (not part of the installed package)."""
