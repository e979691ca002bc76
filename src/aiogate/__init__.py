"""aiogate: an API gateway daemon on aiohttp and uvloop."""

__version__ = "0.1.0"

__all__ = ["__version__"]
