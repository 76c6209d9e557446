"""aidetect: a continuously retrained detector of AI-generated images."""

__version__ = "0.1.0"
