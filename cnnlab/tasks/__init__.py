"""The article's uses of a CNN, end to end: photo search (``search``)."""
