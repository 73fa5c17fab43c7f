"""Plain ``torch.nn`` models. Nothing here imports Lightning or Hydra."""
