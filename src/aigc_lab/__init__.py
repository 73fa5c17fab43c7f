"""aigc_lab: train generative models (GAN, masked LM, seq2seq) from composed Hydra configs."""

import time

__version__ = "0.1.0"

STARTED_AT = time.perf_counter()  # when the package was first imported: the launcher's t=0
