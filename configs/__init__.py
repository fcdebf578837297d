"""Named configurations, one Python file each (ml_collections)."""
