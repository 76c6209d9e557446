"""aidetect's ground: settings and version. It imports nothing of the project, so every other
package (storage, model, feedback, serving, flows, the CLI in ``cli/``) may import it."""

from aidetect.version import __version__

__all__ = ["__version__"]
