"""The desktop side: host-application profiles, plug-in install and auto-start at login."""
