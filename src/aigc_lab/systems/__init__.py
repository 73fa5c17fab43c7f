"""LightningModules: they wrap the plain models and own losses, optimizers and logging."""
