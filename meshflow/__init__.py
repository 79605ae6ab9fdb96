"""meshflow: the pure core (mesh description, PKI, manifests, kubeconfigs) and the CLI."""
