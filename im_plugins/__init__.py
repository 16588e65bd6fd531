"""Built-in plugins of im, registered exactly like third-party ones (see
``im_core.plugins.DEFAULT_PLUGINS``)."""
