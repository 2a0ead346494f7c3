"""adplugin's primitive set, one family per module (rules side by side, registered on import)."""
