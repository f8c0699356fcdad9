"""One router per resource; ``api.app`` mounts them under ``/v1``."""
