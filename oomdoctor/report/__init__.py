"""Reports are plain data (`model`) turned into text, JSON or HTML by renderers."""
from .model import CATEGORIES, SCHEMA, Device, ExitInfo, Finding, Location, Remedy, Report, Step

__all__ = ["CATEGORIES", "SCHEMA", "Device", "ExitInfo", "Finding", "Location", "Remedy", "Report", "Step"]
