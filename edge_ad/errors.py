"""Errors that the CLI prints as one line: each names the input and what is wrong."""


class EdgeAdError(Exception):
    """Base class for every error edge-ad reports to a user."""


class BundleError(EdgeAdError):
    """A bundle directory, archive or bundle.yaml field is missing or invalid."""


class ImageError(EdgeAdError):
    """An image file or frame array cannot be used."""


class DataError(EdgeAdError):
    """A dataset folder or dataset name cannot be used."""


class SourceError(EdgeAdError):
    """A video source cannot be opened or fails while streaming."""
