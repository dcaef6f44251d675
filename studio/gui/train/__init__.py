"""The Train screen: the wizard, the live dashboard and its charts, the run browser."""
