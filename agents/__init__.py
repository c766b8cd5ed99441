"""The PlaNet agent: acting, training, the collect/train/evaluate loop and the `bayes-planet` CLI."""
