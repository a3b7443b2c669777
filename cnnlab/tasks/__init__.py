"""The article's uses of a CNN, end to end: photo search (``search``), detection with a
classifier (``detect``), and video (``video``)."""
