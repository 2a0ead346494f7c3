"""Eager training: variables, gradient tapes (recording adplugin graphs), `ap.function`."""
