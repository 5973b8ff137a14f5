"""What ships: images, Kubernetes manifests, installs in fresh venvs, the docs."""
