"""The ``aidetect`` command line: the roof of the project (it may import every other package)."""
