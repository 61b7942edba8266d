"""funnel: a self-hosted newsletter and webinar funnel.

The core shared by the two doors (``cli.py`` and ``web/``).
"""

__version__ = "0.1.0"
