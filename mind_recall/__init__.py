"""The `mind` command line: one entry point dispatching to model/ and service/."""
