"""aigc_lab: train generative models (GAN, masked LM, seq2seq) from composed Hydra configs."""

__version__ = "0.1.0"
