"""The web console served at `/`."""
