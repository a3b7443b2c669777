"""cnnlab's version, in a module of its own so that anything (the file format, the command line,
the packaging) can read it without importing the package's root and everything the root
imports."""

__version__ = "0.1.0"
