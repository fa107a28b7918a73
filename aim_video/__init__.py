"""aim-video: AIM adapters on frozen timm ViTs for video action recognition."""

__version__ = "0.1.0"
