"""ray_export: export a segmentation project into one ZIP with a Ray job."""

__version__ = "0.1.0"
