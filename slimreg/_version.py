"""slimreg's version, in a module of its own: low modules name it without importing the package's front door."""

__version__ = "0.1.0"
