"""Catalog structures: per-tile catalogs (the network's view) and full-image catalogs in pixels and nJy."""

from ._catalog import *
