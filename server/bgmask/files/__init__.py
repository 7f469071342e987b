"""Image files on the CLI and API side: reading at their own precision, planning and writing results."""
