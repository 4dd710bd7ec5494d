"""Ray actors of ray_export: the ZIP writer and the progress actor."""
