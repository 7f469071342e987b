"""Host-application plugins and their shared stdlib-only client, shipped inside bgmask as bgmask.plugins."""
