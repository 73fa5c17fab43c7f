from aigc_lab.callbacks.startup import StartupTimer

__all__ = ["StartupTimer"]
